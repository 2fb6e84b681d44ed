//! TLS to NATS: a CA and a server certificate generated for the test (openssl CLI), nats-server
//! 2.15 requiring TLS, the services and a client trusting that CA through `PAYSTREAM_NATS_TLS_CA`;
//! a client that does not trust it is refused with a TLS error, not a hang. And PostgreSQL over TLS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use paystream_common::config::Config;
use paystream_common::nats;
use paystream_testkit::{TestDb, TestNats};

use crate::helpers::{Env, eventually};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`) and, signed by it, a certificate for 127.0.0.1 (`server.pem`).
fn make_ca(dir: &Path, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let mut a = vec!["req", "-x509"];
    a.extend_from_slice(&ec);
    a.extend_from_slice(&["-keyout", &ca_key, "-out", &ca, "-days", "2"]);
    a.extend_from_slice(&["-subj", "/CN=paystream test CA"]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    let mut r = vec!["req"];
    r.extend_from_slice(&ec);
    r.extend_from_slice(&[
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &r);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_clients_speak_tls_to_nats() {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "other");
    make_ca(certs.path(), "test");
    let tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
        certs.path().join("server.pem").display(),
        certs.path().join("server.key").display()
    );
    let nats = TestNats::start_with_conf(tls).await;
    let url = format!("tls://127.0.0.1:{}", nats.server.port());
    let ca = certs.path().join("test-ca.pem");

    // Without the CA, and with a CA that did not sign the server's certificate: refused, at once.
    for ca_arg in [None, Some(certs.path().join("other-ca.pem"))] {
        let mut args = vec!["paystream".to_owned(), format!("--nats-url={url}")];
        if let Some(ca) = &ca_arg {
            args.push(format!("--nats-tls-ca={}", ca.display()));
        }
        let cfg = Config::load_from(args).unwrap();
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            nats::connect(&cfg.client, "t", true),
        )
        .await
        .expect("a TLS failure is not retried")
        .expect_err("an untrusted server certificate is refused");
        assert!(
            matches!(err, nats::ConnectError::Tls { .. })
                && err.to_string().contains("certificate"),
            "{ca_arg:?}: {err}"
        );
        eprintln!("{err}");
    }

    // With it: the whole pipeline runs over TLS.
    let db = TestDb::sqlite().await;
    let env = Env::start_on(
        nats,
        db,
        &[
            &format!("--nats-url={url}"),
            &format!("--nats-tls-ca={}", ca.display()),
        ],
    )
    .await;
    let js = nats::jetstream(env.client().await);
    let pay = serde_json::json!({"payment_id": "0b6e4f55-2f4a-4a43-9b1e-8f5d2b7c9a10",
        "buyer_id": "b-tls", "merchant_id": "m-tls", "amount": 321, "currency": "USD"});
    js.publish("payments.request.b-tls", pay.to_string().into())
        .await
        .unwrap()
        .await
        .expect("acked over TLS");
    eventually(Duration::from_secs(20), "credited over TLS", || async {
        let b = paystream::queries::balance(env.db(), "m-tls")
            .await
            .unwrap();
        serde_json::to_value(b).unwrap()["balances"]["USD"] == 321
    })
    .await;
    env.shutdown().await;
}

/// PostgreSQL over TLS (sqlx with rustls/ring): `sslmode=require` in `DATABASE_URL`, and the
/// server confirms the services' connections are encrypted. Needs a PostgreSQL with `ssl = on`
/// (Debian's default); skipped without `PAYSTREAM_TEST_DATABASE_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_speak_tls_to_postgres() {
    use sea_orm::{ConnectionTrait, Statement};

    let Some(mut db) = TestDb::postgres().await else {
        return;
    };
    db.url = format!("{}?sslmode=require", db.url);
    let env = Env::start_on(TestNats::start(false).await, db, &[]).await;
    let conn = env.db();
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()".to_owned(),
        ))
        .await
        .unwrap()
        .expect("one row");
    assert!(
        row.try_get_by_index::<bool>(0).unwrap(),
        "the connection is encrypted"
    );
    let js = nats::jetstream(env.client().await);
    let pay = serde_json::json!({"payment_id": "4c1d2e3f-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
        "buyer_id": "b-pgtls", "merchant_id": "m-pgtls", "amount": 654, "currency": "USD"});
    js.publish("payments.request.b-pgtls", pay.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "credited over TLS to PostgreSQL",
        || async {
            let b = paystream::queries::balance(env.db(), "m-pgtls")
                .await
                .unwrap();
            serde_json::to_value(b).unwrap()["balances"]["USD"] == 654
        },
    )
    .await;
    env.shutdown().await;
}
