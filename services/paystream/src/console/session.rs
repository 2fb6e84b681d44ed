//! Console sessions: in memory only, one NATS connection each (as the person who signed in),
//! ending after `PAYSTREAM_CONSOLE_SESSION_TTL` without a request. The password is used to
//! connect and then dropped: it is never stored, on disk or in memory. Each session carries the
//! CSRF token its forms must send back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paystream_common::nats::ServerErrors;

/// Sessions open at once, at most (a flood of sign-ins cannot exhaust memory or connections).
pub const SESSIONS_MAX: usize = 1_000;

/// One signed-in person.
pub struct Session {
    /// The NATS user (or the creds file's name), shown on every page.
    pub user: String,
    /// The connection opened with their credentials: every page asks `paystream.*` through it.
    pub client: async_nats::Client,
    pub errors: ServerErrors,
    /// Sent back by every form; compared in constant time.
    pub csrf: String,
    /// Whether the NATS server lets this user call the operator actions (asked at sign-in, so a
    /// viewer is offered none; NATS still decides every action).
    pub may_act: bool,
    last_used: Instant,
}

#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<String, Session>>>,
}

/// 256 random bits, hex.
pub fn token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}{b}")
}

/// Equal strings, in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Opens a session; returns its token. `None` when `SESSIONS_MAX` are open.
    pub fn open(
        &self,
        user: String,
        client: async_nats::Client,
        errors: ServerErrors,
        may_act: bool,
        ttl: Duration,
    ) -> Option<String> {
        let mut map = self.inner.lock().expect("sessions lock");
        map.retain(|_, s| s.last_used.elapsed() < ttl);
        if map.len() >= SESSIONS_MAX {
            return None;
        }
        let id = token();
        map.insert(
            id.clone(),
            Session {
                user,
                client,
                errors,
                csrf: token(),
                may_act,
                last_used: Instant::now(),
            },
        );
        Some(id)
    }

    /// The session of `id` if it has not expired (and marks it used); an expired one is closed.
    pub fn get(&self, id: &str, ttl: Duration) -> Option<View> {
        let mut map = self.inner.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        if s.last_used.elapsed() >= ttl {
            map.remove(id);
            return None;
        }
        s.last_used = Instant::now();
        Some(View {
            user: s.user.clone(),
            client: s.client.clone(),
            errors: s.errors.clone(),
            csrf: s.csrf.clone(),
            may_act: s.may_act,
        })
    }

    pub fn close(&self, id: &str) {
        self.inner.lock().expect("sessions lock").remove(id);
    }

    /// Closes every session idle for `ttl` (their NATS connections close with them).
    pub fn sweep(&self, ttl: Duration) -> usize {
        let mut map = self.inner.lock().expect("sessions lock");
        map.retain(|_, s| s.last_used.elapsed() < ttl);
        map.len()
    }
}

/// What a request may use of its session.
#[derive(Clone)]
pub struct View {
    pub user: String,
    pub client: async_nats::Client,
    pub errors: ServerErrors,
    pub csrf: String,
    pub may_act: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct_and_compared_whole() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]));
    }
}
