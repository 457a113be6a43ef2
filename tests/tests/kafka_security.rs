//! What managed Kafka clusters need: TLS (through a TLS proxy in front of Tansu, with a CA
//! made in the test), every compression codec, and SASL/SCRAM reaching the broker's
//! authentication step.

use std::time::Duration;

use integration_tests::config::Subscription;
use integration_tests::kafka::{create_topic_with, produce, Out, Tansu};
use integration_tests::tls::{TestCa, TlsProxy};
use integration_tests::{free_addr, start_engine, test_subscription, wait_for, Admin, Reply, Target};
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

fn subscription(bootstrap: &str, topics: &[&str], target: &str) -> Subscription {
    test_subscription(target)
        .fast_retries()
        .kafka(bootstrap, topics)
        .kafka_set("group_id", "engine-test-security")
        .tansu_consumer()
}

async fn succeeded(admin: &Admin) -> u64 {
    admin.stats().await["succeeded"].as_u64().unwrap_or(0)
}

/// An engine consuming topic `tls` over TLS through the proxy at `proxy`, trusting `ca_file`.
async fn start_tls_engine(
    dir: &tempfile::TempDir,
    proxy: std::net::SocketAddr,
    target: &Target,
    ca_file: &str,
) -> (engine::Engine, Admin) {
    start_engine(
        dir,
        subscription(&proxy.to_string(), &["tls"], &target.url())
            .kafka_option("security.protocol", "SSL")
            .kafka_option("ssl.ca.location", ca_file),
    )
    .await
}

/// The bodies the target saw, sorted.
fn bodies(target: &Target) -> Vec<String> {
    let mut values: Vec<String> = target
        .seen()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    values.sort();
    values
}

/// Records `0..n` of `topic` with distinct keys and values.
fn records(topic: &str, n: usize) -> Vec<Out> {
    (0..n)
        .map(|i| Out::keyed(format!("k{i}"), format!("{topic}-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_over_tls_verified_against_a_test_ca() {
    let ca = TestCa::new();
    let proxy_addr = free_addr();
    // Tansu tells clients to connect to the proxy, so nothing reaches it in plaintext.
    let tansu = Tansu::start_advertising(free_addr(), proxy_addr);
    let proxy = TlsProxy::start(proxy_addr, tansu.addr, &ca).await;
    let ca_file = ca.ca_file.display().to_string();
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", proxy_addr.to_string())
        .set("security.protocol", "SSL")
        .set("ssl.ca.location", &ca_file);
    create_topic_with(&client, "tls", 2).await;
    let producer: FutureProducer = client
        .clone()
        .set("message.timeout.ms", "60000")
        .create()
        .expect("TLS producer");
    produce(&producer, "tls", records("tls", 50)).await;

    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, admin) = start_tls_engine(&dir, proxy_addr, &target, &ca_file).await;
    wait_for("every record over TLS to succeed", Duration::from_secs(60), || async {
        succeeded(&admin).await == 50
    })
    .await;
    let mut wanted: Vec<String> = (0..50).map(|i| format!("tls-{i}")).collect();
    wanted.sort();
    assert_eq!(bodies(&target), wanted, "each record delivered once, byte for byte");
    assert!(proxy.handshakes() >= 2, "the clients went through the TLS proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_and_said() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let proxy_addr = free_addr();
    let tansu = Tansu::start_advertising(free_addr(), proxy_addr);
    let _proxy = TlsProxy::start(proxy_addr, tansu.addr, &ca).await;
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let other_ca = other.ca_file.display().to_string();
    let (_engine, admin) = start_tls_engine(&dir, proxy_addr, &target, &other_ca).await;
    let error = kafka_error(&admin, "a TLS error in /v1/stats").await;
    assert!(
        error.contains("SSL") && error.contains("certificate verify failed"),
        "the stats say why: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_topics_produced_with_every_compression_codec() {
    let tansu = Tansu::start();
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        tansu.create_topic(codec, 1).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", tansu.bootstrap())
            .set("compression.type", codec)
            .set("linger.ms", "20")
            .create()
            .expect("producer");
        produce(&producer, codec, records(codec, 40)).await;
    }
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, admin) = start_engine(&dir, subscription(&tansu.bootstrap(), &codecs, &target.url())).await;
    let expected = 40 * codecs.len() as u64;
    wait_for(
        "every compressed record to succeed",
        Duration::from_secs(60),
        || async { succeeded(&admin).await == expected },
    )
    .await;
    let mut wanted: Vec<String> = codecs
        .iter()
        .flat_map(|codec| (0..40).map(move |i| format!("{codec}-{i}")))
        .collect();
    wanted.sort();
    assert_eq!(
        bodies(&target),
        wanted,
        "every record of every codec, once, byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_with_a_password_from_the_environment_reaches_authentication() {
    // Tansu with --authentication requires SASL; it knows no such user, so the broker's
    // answer is an authentication failure: the engine got as far as authenticating.
    let tansu = Tansu::start_with(&["--authentication"]);
    std::env::set_var("TEST_KAFKA_PASSWORD", "not-a-real-password");
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (_engine, admin) = start_engine(
        &dir,
        subscription(&tansu.bootstrap(), &["scram"], &target.url())
            .kafka_option("security.protocol", "SASL_PLAINTEXT")
            .kafka_option("sasl.mechanisms", "SCRAM-SHA-256")
            .kafka_option("sasl.username", "engine")
            .kafka_option("sasl.password", "${TEST_KAFKA_PASSWORD}"),
    )
    .await;
    let error = kafka_error(&admin, "an authentication error in /v1/stats").await;
    assert!(
        error.to_lowercase().contains("authentication"),
        "the stats say the broker refused the credentials: {error}"
    );
    assert!(
        !error.contains("not-a-real-password"),
        "the password is never shown: {error}"
    );
}

/// Wait until the subscription's stats carry a Kafka error, and return it.
async fn kafka_error(admin: &Admin, what: &str) -> String {
    let read = || async {
        let stats = admin.stats().await;
        stats["subscriptions"]["test"]["kafka_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for(what, Duration::from_secs(30), || async { !read().await.is_empty() }).await;
    read().await
}

#[test]
fn the_build_has_tls_sasl_and_every_codec() {
    let features = ClientConfig::new()
        .create_native_config()
        .expect("native config")
        .get("builtin.features")
        .expect("builtin.features");
    for feature in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "zstd",
        "lz4",
        "snappy",
        "gzip",
    ] {
        assert!(
            features.split(',').any(|f| f == feature),
            "librdkafka lacks {feature}: {features}"
        );
    }
}
