//! HTTPS with a throwaway CA: a client trusting it charges as over HTTP, one that does not is
//! refused before anything is sent, and a bad certificate or key stops the simulator at start-up
//! with the variable and the path in the error.

use std::path::{Path, PathBuf};

use paystream_psp_sim::{SimConfig, Simulator};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqwest::StatusCode;
use tempfile::TempDir;

use crate::helpers::{charge_body, client_trusting, config, start};

/// A CA and a certificate it signed for the simulator's test address.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn throwaway_pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write PEM");
    path
}

/// A configuration serving HTTPS with `pki`'s certificate, its files in `dir`.
fn https_config(dir: &TempDir, pki: &Pki) -> SimConfig {
    SimConfig {
        tls_cert: Some(write(dir.path(), "cert.pem", &pki.cert_pem)),
        tls_key: Some(write(dir.path(), "key.pem", &pki.key_pem)),
        ..config(dir)
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_is_served_over_https() {
    let pki = throwaway_pki();
    let dir = TempDir::new().expect("temp dir");
    let mut sim = start(https_config(&dir, &pki), dir).await;
    assert!(sim.sim.serves_https());
    assert!(sim.base.starts_with("https://127.0.0.1:"), "{}", sim.base);
    sim.client = client_trusting(&pki.ca_pem);

    sim.pay("pay-tls", 10).await;
    sim.pay("pay-tls", 10).await;
    assert_eq!(sim.status("pay-tls").await.unwrap()["charge_count"], 1);
    assert_eq!(sim.stats().await["double_charges"], 0);
}

#[tokio::test]
async fn a_client_not_trusting_the_ca_is_refused_and_nothing_is_charged() {
    let pki = throwaway_pki();
    let dir = TempDir::new().expect("temp dir");
    let mut sim = start(https_config(&dir, &pki), dir).await;
    sim.client = client_trusting(&throwaway_pki().ca_pem);

    let refused = sim
        .client
        .post(format!("{}/v1/payments", sim.base))
        .header("Idempotency-Key", "pay-untrusted")
        .json(&charge_body(10))
        .send()
        .await
        .expect_err("the certificate does not verify");
    assert!(refused.is_connect(), "{refused:?}");
    assert!(
        format!("{refused:?}").contains("InvalidCertificate"),
        "{refused:?}"
    );

    let plain = crate::helpers::client_builder()
        .build()
        .expect("client")
        .get(sim.base.replacen("https://", "http://", 1) + "/v1/sim/stats")
        .send()
        .await;
    assert!(
        plain.map_or(true, |answer| answer.status() != StatusCode::OK),
        "plain HTTP must not be answered on the HTTPS port"
    );
    assert_eq!(sim.sim.stats().await.unwrap().payments, 0);
}

/// The error `Simulator::open` gives for `cfg`, which must be refused.
async fn refusal(cfg: SimConfig) -> String {
    match Simulator::open(cfg).await {
        Ok(_) => panic!("the simulator opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_start_up_naming_the_variable_and_the_path() {
    let pki = throwaway_pki();
    let dir = TempDir::new().expect("temp dir");
    let good = https_config(&dir, &pki);
    let (cert, key) = (
        good.tls_cert.clone().unwrap(),
        good.tls_key.clone().unwrap(),
    );
    let missing = dir.path().join("missing.pem");
    let garbage = write(dir.path(), "garbage.pem", "not a PEM file\n");
    let other_key = write(
        dir.path(),
        "other-key.pem",
        &KeyPair::generate().unwrap().serialize_pem(),
    );
    let with = |tls_cert: Option<&PathBuf>, tls_key: Option<&PathBuf>| SimConfig {
        tls_cert: tls_cert.cloned(),
        tls_key: tls_key.cloned(),
        ..config(&dir)
    };
    let cases = [
        (with(Some(&cert), None), "PAYSTREAM_PSP_SIM_TLS_KEY", &cert),
        (with(None, Some(&key)), "PAYSTREAM_PSP_SIM_TLS_CERT", &key),
        (
            with(Some(&missing), Some(&key)),
            "PAYSTREAM_PSP_SIM_TLS_CERT",
            &missing,
        ),
        (
            with(Some(&cert), Some(&missing)),
            "PAYSTREAM_PSP_SIM_TLS_KEY",
            &missing,
        ),
        (
            with(Some(&garbage), Some(&key)),
            "PAYSTREAM_PSP_SIM_TLS_CERT",
            &garbage,
        ),
        (
            with(Some(&cert), Some(&garbage)),
            "PAYSTREAM_PSP_SIM_TLS_KEY",
            &garbage,
        ),
        (
            with(Some(&key), Some(&key)),
            "PAYSTREAM_PSP_SIM_TLS_CERT",
            &key,
        ),
        (
            with(Some(&cert), Some(&other_key)),
            "PAYSTREAM_PSP_SIM_TLS_KEY",
            &other_key,
        ),
    ];
    for (cfg, var, path) in cases {
        let error = refusal(cfg).await;
        assert!(error.contains(var), "{var} not in: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{} not in: {error}",
            path.display()
        );
    }
    assert!(Simulator::open(good).await.is_ok());
}
