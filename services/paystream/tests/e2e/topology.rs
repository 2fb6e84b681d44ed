//! The stream and consumer definitions the services apply are exactly the files in `nats/`
//! (with default configuration nothing is substituted), and the server accepts them as written.

use paystream_common::config::Config;
use paystream_common::nats;
use paystream_common::streams::{self, CONSUMER_FILES, STREAM_FILES};
use paystream_testkit::TestNats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_definitions_are_the_files() {
    let server = TestNats::start(false).await;
    let cfg = Config::load_from(["paystream", &format!("--nats-url={}", server.url())]).unwrap();
    for ((file, text), applied) in STREAM_FILES
        .iter()
        .zip(streams::stream_configs(&cfg).unwrap())
    {
        let written: async_nats::jetstream::stream::Config = serde_json::from_str(text).unwrap();
        assert_eq!(applied, written, "nats/{file} is applied as written");
    }
    for (_, file, text) in CONSUMER_FILES {
        let written: async_nats::jetstream::consumer::pull::Config =
            serde_json::from_str(text).unwrap();
        let name = written.durable_name.clone().unwrap();
        let (_, applied) = streams::consumer_config(&cfg, &name).unwrap();
        assert_eq!(applied, written, "nats/{file} is applied as written");
    }

    let js = nats::jetstream(nats::connect(&cfg, "test", false).await.unwrap());
    streams::ensure_streams(&js, &cfg).await.unwrap();
    for (file, text) in STREAM_FILES {
        let written: async_nats::jetstream::stream::Config = serde_json::from_str(text).unwrap();
        let info = js
            .get_stream(&written.name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        let got = info.config;
        assert_eq!(got.subjects, written.subjects, "{file}");
        assert_eq!(
            got.subject_transform, written.subject_transform,
            "{file}: the server kept the partition transform"
        );
        assert_eq!(
            (got.retention, got.storage, got.max_age),
            (written.retention, written.storage, written.max_age),
            "{file}"
        );
        assert_eq!(got.duplicate_window, written.duplicate_window, "{file}");
    }
    for (stream, file, text) in CONSUMER_FILES {
        let written: async_nats::jetstream::consumer::pull::Config =
            serde_json::from_str(text).unwrap();
        let name = written.durable_name.clone().unwrap();
        streams::ensure_consumer(&js, &cfg, &name).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .get_consumer(&name)
            .await
            .unwrap();
        let got = consumer.info().await.unwrap().config.clone();
        assert_eq!(
            (got.max_deliver, &got.backoff),
            (written.max_deliver, &written.backoff),
            "{file}"
        );
        assert_eq!(got.ack_policy, written.ack_policy, "{file}");
    }
    // Partitions are configuration: a published subject is stored under its buyer's partition.
    js.publish("payments.request.b-42", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let stored = js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let tokens: Vec<&str> = stored.subject.split('.').collect();
    assert_eq!(
        (tokens.len(), tokens[0], tokens[1], tokens[3]),
        (4, "payments", "request", "b-42")
    );
    assert!(tokens[2].parse::<u16>().unwrap() < 16);
}
