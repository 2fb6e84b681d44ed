//! The store's directory is created when missing, and a store that cannot be opened is named in
//! the error (it used to be a bare "unable to open database file").

use paystream_psp_sim::{SimConfig, Simulator};
use tempfile::TempDir;

use crate::helpers::{config, start};

/// The error `Simulator::open` gives for `cfg`, which must be refused.
async fn refusal(cfg: SimConfig) -> String {
    match Simulator::open(cfg).await {
        Ok(_) => panic!("the simulator opened"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_missing_data_directory_is_created() {
    let dir = TempDir::new().expect("temp dir");
    let store_path = dir.path().join("fresh").join("data").join("psp-sim.sqlite");
    let cfg = SimConfig {
        store_path: store_path.clone(),
        ..config(&dir)
    };
    let sim = start(cfg, dir).await;
    sim.pay("pay-fresh", 10).await;
    assert!(store_path.is_file(), "{} not created", store_path.display());
}

#[tokio::test]
async fn a_directory_that_cannot_be_created_is_named() {
    let dir = TempDir::new().expect("temp dir");
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "").expect("write");
    let error = refusal(SimConfig {
        store_path: blocker.join("data").join("psp-sim.sqlite"),
        ..config(&dir)
    })
    .await;
    assert!(error.contains("simulator data directory"), "{error}");
    assert!(
        error.contains(&blocker.join("data").display().to_string()),
        "{error}"
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_opened_is_named() {
    let dir = TempDir::new().expect("temp dir");
    let not_a_file = dir.path().join("psp-sim.sqlite");
    std::fs::create_dir(&not_a_file).expect("mkdir");
    let error = refusal(SimConfig {
        store_path: not_a_file.clone(),
        ..config(&dir)
    })
    .await;
    assert!(error.contains("simulator store"), "{error}");
    assert!(error.contains(&not_a_file.display().to_string()), "{error}");
}
