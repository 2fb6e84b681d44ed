//! The NATS micro service, driven by a plain NATS client: `$SRV.PING` finds it, `$SRV.INFO`
//! lists its endpoints, `$SRV.STATS` counts their requests and errors, the query
//! endpoints answer the same JSON as the CLI's `--json`, errors come as service-error headers,
//! and the dead-letter endpoints list and purge.

use std::time::Duration;

use bytes::Bytes;
use paystream_testkit::Backend;
use serde_json::{Value, json};

use crate::helpers::{Env, eventually, scalar};

async fn ask(client: &async_nats::Client, subject: &str, body: Value) -> async_nats::Message {
    client
        .request(
            subject.to_owned(),
            Bytes::from(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"))
}

fn answer(m: &async_nats::Message) -> Value {
    assert!(
        m.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .is_none(),
        "{m:?}"
    );
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_api() {
    let env = Env::start(Backend::Sqlite, &[])
        .await
        .expect("SQLite always runs");
    let client = env.client().await;
    let ping = ask(&client, "$SRV.PING.paystream", json!({})).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&ping.payload).unwrap()["name"],
        "paystream"
    );

    let pid = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d";
    let pay = json!({"payment_id": pid, "buyer_id": "b-api", "merchant_id": "m-api", "amount": 777, "currency": "USD"});
    client
        .publish("payments.request.b-api", Bytes::from(pay.to_string()))
        .await
        .unwrap();
    client
        .publish("payments.request.b-api", Bytes::from_static(b"garbage"))
        .await
        .unwrap();
    let db = env.db();
    eventually(Duration::from_secs(20), "wallet credited", || async {
        scalar(
            db,
            "SELECT COUNT(*) FROM applied_events WHERE consumer = 'wallet'",
        )
        .await
            == 1
    })
    .await;

    let status = answer(&ask(&client, "paystream.status", json!({"payment_id": pid})).await);
    let cli = serde_json::to_value(paystream::queries::status(db, pid).await.unwrap()).unwrap();
    assert_eq!(status, cli, "the same JSON as `status --json`");
    assert_eq!(status["state"], "SUCCESS");
    let balance = answer(
        &ask(
            &client,
            "paystream.balance",
            json!({"merchant_id": "m-api"}),
        )
        .await,
    );
    assert_eq!(
        balance,
        json!({"merchant_id": "m-api", "balances": {"USD": 777}})
    );
    let check = answer(&ask(&client, "paystream.ledger.check", json!({})).await);
    assert_eq!(check["ok"], true);

    let missing = ask(
        &client,
        "paystream.status",
        json!({"payment_id": "6f1c1e4e-6a3b-4f0e-9a55-2d1f6f9b8e01"}),
    )
    .await;
    let headers = missing.headers.expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("404")
    );
    let bad = ask(&client, "paystream.balance", json!({"merchant": "x"})).await;
    assert_eq!(
        bad.headers
            .unwrap()
            .get("Nats-Service-Error-Code")
            .map(|v| v.as_str()),
        Some("400")
    );

    eventually(Duration::from_secs(10), "the garbage dead-lettered", || {
        let client = client.clone();
        async move {
            let list = answer(&ask(&client, "paystream.dlq.list", json!({})).await);
            list.as_array().map(Vec::len) == Some(1)
        }
    })
    .await;
    let list = answer(
        &ask(
            &client,
            "paystream.dlq.list",
            json!({"consumer": "payment"}),
        )
        .await,
    );
    let id = list[0]["id"].as_u64().unwrap();
    assert!(list[0]["reason"].as_str().unwrap().starts_with("payload:"));
    let shown = answer(&ask(&client, "paystream.dlq.show", json!({"id": id})).await);
    assert_eq!(
        shown["payload"], "garbage",
        "undecodable payloads are shown as text"
    );
    let purged = answer(&ask(&client, "paystream.dlq.purge", json!({"ids": [id]})).await);
    assert_eq!(purged, json!({"purged": 1}));
    assert_eq!(
        answer(&ask(&client, "paystream.dlq.list", json!({})).await),
        json!([])
    );
    assert_eq!(
        paystream::audit::count(db, "dlq.purge").await.unwrap(),
        1,
        "purge audited"
    );
    // `nats micro info` / `nats micro stats` ask these: every endpoint listed, requests and
    // errors counted per endpoint.
    let info: Value =
        serde_json::from_slice(&ask(&client, "$SRV.INFO.paystream", json!({})).await.payload)
            .unwrap();
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    for subject in [
        "paystream.status",
        "paystream.balance",
        "paystream.ledger.check",
        "paystream.dlq.list",
        "paystream.dlq.show",
        "paystream.dlq.redrive",
        "paystream.dlq.purge",
        "paystream.audit",
    ] {
        assert!(subjects.contains(&subject), "{subject} in {subjects:?}");
    }
    let stats: Value = serde_json::from_slice(
        &ask(&client, "$SRV.STATS.paystream", json!({}))
            .await
            .payload,
    )
    .unwrap();
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let status_stats = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["subject"] == "paystream.status")
        .expect("stats of paystream.status");
    assert_eq!(
        (
            status_stats["num_requests"].as_u64(),
            status_stats["num_errors"].as_u64()
        ),
        (Some(2), Some(1)),
        "one answer and one 404: {status_stats}"
    );
    let trail = answer(&ask(&client, "paystream.audit", json!({})).await);
    assert_eq!(trail[0]["action"], "dlq.purge");
    assert_eq!(trail[0]["actor"], "nats");
    for key in ["at", "actor", "action", "target", "result"] {
        assert!(trail[0].get(key).is_some(), "audit entry has {key}");
    }
    env.shutdown().await;
}
