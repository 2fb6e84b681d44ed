//! Starting a simulator for one test and talking to it.

use std::time::Duration;

use paystream_psp_sim::{SimConfig, SimError, Simulator};
use reqwest::{Certificate, Client, ClientBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long faulted requests are held in tests: long enough to measure, short for the suite.
pub const HANG_MS: u64 = 200;

/// A configuration with a fresh store in `dir`, short hangs and seeded dice.
pub fn config(dir: &TempDir) -> SimConfig {
    SimConfig {
        store_path: dir.path().join("psp-sim.sqlite"),
        hang_ms: HANG_MS,
        seed: Some(7),
        ..SimConfig::default()
    }
}

/// A running simulator and a client for it.
pub struct TestSim {
    pub base: String,
    pub client: Client,
    pub sim: Simulator,
    /// Keeps the store alive until the test ends (or hands it to a restarted simulator).
    pub dir: TempDir,
    shutdown: oneshot::Sender<()>,
    served: JoinHandle<Result<(), SimError>>,
}

/// Starts a simulator with a fresh store.
pub async fn spawn() -> TestSim {
    spawn_with(|_| {}).await
}

/// Starts a simulator with a fresh store and `adjust`ed configuration.
pub async fn spawn_with(adjust: impl FnOnce(&mut SimConfig)) -> TestSim {
    let dir = TempDir::new().expect("temp dir");
    let mut cfg = config(&dir);
    adjust(&mut cfg);
    start(cfg, dir).await
}

/// Starts a simulator on `cfg`, whose store lives in `dir`.
pub async fn start(cfg: SimConfig, dir: TempDir) -> TestSim {
    let sim = Simulator::open(cfg).await.expect("simulator opens");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (shutdown, stop) = oneshot::channel::<()>();
    let served = tokio::spawn(sim.clone().serve(listener, async move {
        let _ = stop.await;
    }));
    TestSim {
        base: sim.base_url(addr),
        client: client_builder().build().expect("client"),
        sim,
        dir,
        shutdown,
        served,
    }
}

/// A client builder with the suite's timeout. reqwest is built without a crypto provider of its
/// own (`rustls-no-provider`), so ring's is installed first, as the binary does.
pub fn client_builder() -> ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder().timeout(Duration::from_secs(10))
}

/// A client that trusts only the CA whose certificate is `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> Client {
    let ca = Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate PEM");
    client_builder()
        .tls_certs_only([ca])
        .build()
        .expect("client")
}

/// A charge body for `amount` USD minor units to merchant `m-1`.
pub fn charge_body(amount: i64) -> Value {
    json!({"amount": amount, "currency": "USD", "merchant_id": "m-1"})
}

/// A charge body carrying the test card `script`.
pub fn scripted_body(amount: i64, script: &str) -> Value {
    json!({"amount": amount, "currency": "USD", "merchant_id": "m-1", "metadata": {"sim": script}})
}

impl TestSim {
    /// Stops serving gracefully and returns the store's directory for a restart.
    pub async fn stop(self) -> (SimConfig, TempDir) {
        let _ = self.shutdown.send(());
        self.served
            .await
            .expect("serve task")
            .expect("serve ends cleanly");
        (config(&self.dir), self.dir)
    }

    pub async fn post_payment(&self, key: &str, body: &Value) -> Response {
        self.client
            .post(format!("{}/v1/payments", self.base))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("POST /v1/payments")
    }

    /// Charges and expects a 200, returning its JSON answer.
    pub async fn pay(&self, key: &str, amount: i64) -> Value {
        let response = self.post_payment(key, &charge_body(amount)).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("charge answer")
    }

    pub async fn post_refund(&self, key: &str, amount: i64) -> Response {
        self.client
            .post(format!("{}/v1/refunds", self.base))
            .header("Idempotency-Key", key)
            .json(&json!({"payment_id": key, "amount": amount}))
            .send()
            .await
            .expect("POST /v1/refunds")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET")
    }

    /// The status of `key`, or `None` on 404.
    pub async fn status(&self, key: &str) -> Option<Value> {
        let response = self.get(&format!("/v1/payments/{key}")).await;
        match response.status() {
            StatusCode::OK => Some(response.json().await.expect("status answer")),
            StatusCode::NOT_FOUND => None,
            other => panic!("unexpected status {other}"),
        }
    }

    /// The settlement file of `date`, expecting a 200.
    pub async fn settlement(&self, date: &str) -> String {
        let response = self.get(&format!("/v1/settlements/{date}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv")
        );
        response.text().await.expect("settlement body")
    }

    pub async fn stats(&self) -> Value {
        let response = self.get("/v1/sim/stats").await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("stats answer")
    }
}

/// The UTC day (`YYYY-MM-DD`) of an RFC 3339 timestamp from the simulator.
pub fn day_of(rfc3339: &str) -> String {
    let at: jiff::Timestamp = rfc3339.parse().expect("RFC 3339");
    at.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}
