//! Who does what when a service runs as several instances.
//!
//! - **Partition ownership.** Every instance of a service heartbeats a row in `members`; the live
//!   members (heartbeat within the TTL) split the buyer partitions by rendezvous hashing with
//!   bounded load, which every instance computes alike from the same member list, so each
//!   partition has one owner, each member its share, and few partitions move when a member comes
//!   or goes. The consumer loop pulls only the
//!   partitions it owns; JetStream's pinned-client priority group makes the server itself refuse a
//!   second puller while the owner holds the pin, so the moments when two instances disagree about
//!   the member list (a tick apart) cannot split a partition between them.
//! - **Leases.** A named lease (`leases`) gives one instance a job that must not run twice at once
//!   (the outbox relay), taken over by another when its holder stops renewing it.
//!
//! Architecture Invariant: only this module writes `members` and `leases`.

use std::time::Duration;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    Set,
};

use crate::time::now_ms;

pub mod member {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub service: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub instance_id: String,
        pub started_ms: i64,
        pub heartbeat_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod lease {
    use sea_orm::entity::prelude::*;

    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "leases")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub owner: String,
        pub until_ms: i64,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// FNV-1a, 32 bits: the hash nats-server's `{{partition(n, …)}}` transform uses, so
/// `partition_of` names the partition the server stores a buyer's messages under.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The partition the server stores this buyer's subjects under.
pub fn partition_of(buyer: &str, partitions: u16) -> u16 {
    assert!(partitions > 0, "at least one partition");
    u16::try_from(fnv1a_32(buyer.as_bytes()) % u32::from(partitions)).expect("below a u16")
}

/// FNV-1a, 64 bits, finalised, for rendezvous weights: stable across processes and Rust versions (unlike
/// std's hasher, which is not specified).
fn fnv1a_64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV alone spreads the last bytes poorly; murmur3's finaliser mixes every bit in.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The partitions `me` owns among `members`: rendezvous hashing with bounded load. Each partition
/// goes to the member with the highest weight for it that does not yet hold its share, so every
/// member owns ⌊P/M⌋ or ⌈P/M⌉ partitions and most
/// partitions stay where they were when a member comes or goes. Pure: every member computes the
/// same split from the same list. A member not in the list owns nothing.
pub fn assign(partitions: u16, members: &[String], me: &str) -> Vec<u16> {
    if !members.iter().any(|m| m == me) {
        return Vec::new();
    }
    // ⌊P/M⌋ each, and one more for as many members as the remainder allows.
    let (floor, extra) = (
        usize::from(partitions) / members.len(),
        usize::from(partitions) % members.len(),
    );
    let mut load = vec![0usize; members.len()];
    let mut above_floor = 0;
    let mut mine = Vec::new();
    for p in 0..partitions {
        let key = p.to_be_bytes();
        let owner = (0..members.len())
            .filter(|&i| load[i] < floor || (load[i] == floor && above_floor < extra))
            .max_by_key(|&i| {
                (
                    fnv1a_64(&[members[i].as_bytes(), &key]),
                    members[i].as_str(),
                )
            })
            .expect("the shares cover every partition");
        if load[owner] == floor {
            above_floor += 1;
        }
        load[owner] += 1;
        if members[owner] == me {
            mine.push(p);
        }
    }
    mine
}

/// One instance's membership of its service.
#[derive(Clone)]
pub struct Membership {
    db: DatabaseConnection,
    pub service: &'static str,
    pub instance_id: String,
    started_ms: i64,
    /// A member whose heartbeat is older than this is taken for dead.
    pub ttl: Duration,
}

impl Membership {
    pub fn new(db: DatabaseConnection, service: &'static str, ttl: Duration) -> Self {
        Self {
            db,
            service,
            instance_id: instance_id(),
            started_ms: now_ms(),
            ttl,
        }
    }

    /// Renews this instance's heartbeat and returns the live members, sorted.
    pub async fn heartbeat(&self) -> Result<Vec<String>, DbErr> {
        let now = now_ms();
        member::Entity::insert(member::ActiveModel {
            service: Set(self.service.to_owned()),
            instance_id: Set(self.instance_id.clone()),
            started_ms: Set(self.started_ms),
            heartbeat_ms: Set(now),
        })
        .on_conflict(
            OnConflict::columns([member::Column::Service, member::Column::InstanceId])
                .update_column(member::Column::HeartbeatMs)
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut live: Vec<String> = member::Entity::find()
            .filter(member::Column::Service.eq(self.service))
            .filter(member::Column::HeartbeatMs.gte(now - ttl_ms))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| m.instance_id)
            .collect();
        live.sort();
        // Members long dead are removed, so the table stays the size of the fleet.
        member::Entity::delete_many()
            .filter(member::Column::Service.eq(self.service))
            .filter(member::Column::HeartbeatMs.lt(now - ttl_ms * 10))
            .exec(&self.db)
            .await?;
        Ok(live)
    }

    /// Leaves at once (graceful shutdown), so the others take over without waiting for the TTL.
    pub async fn leave(&self) -> Result<(), DbErr> {
        member::Entity::delete_many()
            .filter(member::Column::Service.eq(self.service))
            .filter(member::Column::InstanceId.eq(&self.instance_id))
            .exec(&self.db)
            .await
            .map(|_| ())
    }
}

/// A name for this process that no other instance shares: host, pid and a random suffix.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let host = crate::text::bounded(&host, 40);
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &nonce[..8])
}

/// Takes or renews lease `name` for `owner` until `ttl` from now. Returns whether `owner` holds
/// it: true when it was free, expired, or already ours.
pub async fn try_lease<C: ConnectionTrait>(
    db: &C,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<bool, DbErr> {
    let now = now_ms();
    let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
    lease::Entity::insert(lease::ActiveModel {
        name: Set(name.to_owned()),
        owner: Set(owner.to_owned()),
        until_ms: Set(0),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    let taken = lease::Entity::update_many()
        .col_expr(lease::Column::Owner, owner.into())
        .col_expr(lease::Column::UntilMs, until.into())
        .filter(lease::Column::Name.eq(name))
        .filter(
            Condition::any()
                .add(lease::Column::Owner.eq(owner))
                .add(lease::Column::UntilMs.lt(now)),
        )
        .exec(db)
        .await?;
    Ok(taken.rows_affected == 1)
}

/// Gives lease `name` up if `owner` holds it, so another instance can take it at once.
pub async fn release_lease<C: ConnectionTrait>(
    db: &C,
    name: &str,
    owner: &str,
) -> Result<(), DbErr> {
    lease::Entity::update_many()
        .col_expr(lease::Column::UntilMs, 0i64.into())
        .filter(lease::Column::Name.eq(name))
        .filter(lease::Column::Owner.eq(owner))
        .exec(db)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("host-{i}-abcdef")).collect()
    }

    #[test]
    fn partition_matches_the_server() {
        // Seen on nats-server 2.15.1 with `{{partition(4,1)}}` / `{{partition(16,2)}}`.
        assert_eq!(partition_of("b1", 4), 0);
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
    }

    proptest! {
        #[test]
        fn every_partition_has_exactly_one_owner(n in 1usize..8, partitions in 1u16..64) {
            let members = names(n);
            let mut owned = vec![0u32; usize::from(partitions)];
            for m in &members {
                for p in assign(partitions, &members, m) {
                    owned[usize::from(p)] += 1;
                }
            }
            prop_assert!(owned.iter().all(|&c| c == 1));
        }

        #[test]
        fn every_member_gets_its_share(n in 1usize..8, partitions in 1u16..64) {
            let members = names(n);
            let (lo, hi) = (usize::from(partitions) / n, usize::from(partitions).div_ceil(n));
            for m in &members {
                let mine = assign(partitions, &members, m).len();
                prop_assert!((lo..=hi).contains(&mine), "{m} owns {mine}, not {lo}..={hi}");
            }
        }

        #[test]
        fn a_member_joining_moves_few_partitions(n in 1usize..6) {
            let before = names(n);
            let after = names(n + 1);
            let moved: usize = before
                .iter()
                .map(|m| {
                    let (b, a) = (assign(64, &before, m), assign(64, &after, m));
                    b.iter().filter(|p| !a.contains(p)).count()
                })
                .sum();
            // The newcomer's share must come from somewhere; little else moves.
            prop_assert!(moved <= 2 * 64usize.div_ceil(n + 1), "{moved} moved");
        }
    }

    #[test]
    fn the_split_is_even() {
        let members = names(3);
        for m in &members {
            let n = assign(8, &members, m).len();
            assert!((2..=3).contains(&n), "{m} owns {n} of 8");
        }
        assert!(assign(16, &members, "stranger").is_empty());
        assert!(assign(16, &[], "x").is_empty());
    }
}
