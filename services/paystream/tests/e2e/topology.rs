//! The stream and consumer definitions the services apply are exactly the files in `nats/`
//! (with default configuration nothing is substituted but, for partitioned services, the
//! partition in the durable name and filter), and the server accepts them as written.

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
        let service = streams::service_of(&name);
        let (_, applied) = if streams::is_partitioned(&cfg, service).unwrap() {
            streams::partition_consumer_config(&cfg, service, 0).unwrap()
        } else {
            streams::consumer_config(&cfg, service).unwrap()
        };
        assert_eq!(applied, written, "nats/{file} is applied as written");
    }

    let js = nats::jetstream(nats::connect(&cfg.client, "test", false).await.unwrap());
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
        let service = streams::service_of(&name);
        let durables: Vec<String> = if streams::is_partitioned(&cfg, service).unwrap() {
            streams::ensure_partition_consumers(&js, &cfg, service)
                .await
                .unwrap();
            (0..cfg.partitions)
                .map(|p| streams::partition_durable(service, p))
                .collect()
        } else {
            streams::ensure_consumer(&js, &cfg, service).await.unwrap();
            vec![name.clone()]
        };
        for (p, durable) in durables.iter().enumerate() {
            let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
                .get_stream(stream)
                .await
                .unwrap()
                .get_consumer(durable)
                .await
                .unwrap();
            let got = consumer.info().await.unwrap().config.clone();
            assert_eq!(
                (got.max_deliver, &got.backoff),
                (written.max_deliver, &written.backoff),
                "{file}"
            );
            assert_eq!(got.ack_policy, written.ack_policy, "{file}");
            assert_eq!(
                (
                    &got.priority_groups,
                    &got.priority_policy,
                    got.priority_timeout
                ),
                (
                    &written.priority_groups,
                    &written.priority_policy,
                    written.priority_timeout
                ),
                "{file}: the server kept the ownership group"
            );
            if durables.len() > 1 {
                let tokens: Vec<&str> = got.filter_subject.split('.').collect();
                assert_eq!(
                    tokens[2],
                    p.to_string(),
                    "{durable} filters its own partition"
                );
            }
        }
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
    assert_eq!(
        tokens[2].parse::<u16>().unwrap(),
        paystream_common::ownership::partition_of("b-42", 16),
        "paystream computes the partition the server stores a buyer under"
    );
}
