//! Memory bounded in bytes, not only in records: large records through `engine serve` (a
//! process, so its peak RSS can be read) from Tansu to a target that fails some attempts,
//! with records above `max_payload_bytes` going dead and to a dead-letter topic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::{produce, read_topic, Out, Tansu};
use integration_tests::{free_addr, rss_mib, spawn_engine, wait_for, Admin};
use rand::Rng;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

const LARGE: usize = 900 * 1024;
/// Records in the run; `BOUNDS_RECORDS=10000` makes the long run of docs/benchmarks.md.
fn records() -> usize {
    std::env::var("BOUNDS_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}
const OVERSIZED: usize = 5;
/// Peak resident memory allowed to the engine. The records total 900 MB; what the engine
/// holds is bounded by `window_bytes` (64 MiB), the source's batches (`batch_bytes`, 1 MiB,
/// about 40 in flight), librdkafka's prefetch (16 MiB) and SQLite's cache (64 MiB).
const RSS_BOUND_MIB: u64 = 320;

/// A target that keeps only the call ids it accepted and the bytes it received, and fails
/// 20% of attempts with 503.
async fn counting_target() -> (String, Arc<Mutex<(HashSet<String>, usize)>>) {
    let seen = Arc::new(Mutex::new((HashSet::new(), 0)));
    let state = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&state);
            async move {
                if rand::rng().random::<f64>() < 0.2 {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let id = headers
                    .get("engine-call-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let mut seen = state.lock().unwrap();
                if seen.0.insert(id) {
                    seen.1 += body.len();
                }
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_records_are_delivered_within_a_memory_bound_and_oversized_ones_go_dead_with_a_reason() {
    let records = records();
    let tansu = Tansu::start();
    tansu.create_topic("big", 3).await;
    tansu.create_topic("big.dead", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("message.max.bytes", "2000000")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let value = |i: usize, size: usize| {
        let mut v = format!("{i:08}").into_bytes();
        v.resize(size, b'x');
        v
    };
    for chunk in (0..records).collect::<Vec<_>>().chunks(50) {
        let records = chunk
            .iter()
            .map(|i| Out::keyed(format!("k{}", i % 97), value(*i, LARGE)))
            .collect();
        produce(&producer, "big", records).await;
    }
    let oversized = (0..OVERSIZED)
        .map(|i| Out::keyed(format!("huge{i}"), value(records + i, 1_200_000)))
        .collect();
    produce(&producer, "big", oversized).await;

    let (target, seen) = counting_target().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(
            Subscription::new("big", &target)
                .fast_retries()
                .kafka(&tansu.bootstrap(), &["big"])
                .kafka_set("group_id", "engine-big")
                .tansu_consumer()
                .dead_letter("topic", "big.dead"),
        )
        .write(&config);
    let engine = spawn_engine(&config);
    let admin = Admin::new(admin_addr);
    wait_for(
        "every large record to be delivered",
        Duration::from_secs(300 * (records as u64).div_ceil(1000)),
        || async {
            let stats = admin.try_stats().await;
            stats.is_some_and(|s| s["succeeded"] == records && s["dead"] == OVERSIZED)
        },
    )
    .await;
    let peak = rss_mib(engine.pid()).1 as u64;
    assert!(peak > 0, "the peak RSS is read from /proc");

    let (ids, bytes) = seen.lock().unwrap().clone();
    assert_eq!(ids.len(), records, "each record delivered once");
    assert_eq!(bytes, records * LARGE, "every byte of every record");
    let dead = admin.get("/v1/calls?status=dead").await;
    let reasons: Vec<String> = dead["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["last_error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reasons.len(), OVERSIZED);
    assert!(
        reasons.iter().all(|r| r.contains("above max_payload_bytes")),
        "the oversized records say why: {reasons:?}"
    );
    // Their dead letters are larger than the producer takes (1,000,000 bytes by default):
    // they are produced without the value, saying so, instead of stalling the topic.
    let letters = read_topic(&tansu.bootstrap(), "big.dead", 1, OVERSIZED, Duration::from_secs(1));
    assert_eq!(letters.len(), OVERSIZED, "every dead letter produced");
    for letter in &letters {
        assert!(letter.value.is_none(), "the value is left out");
        let omitted = letter.header("engine-omitted").unwrap_or_default();
        assert!(omitted.contains("1200000 bytes"), "and the letter says so: {omitted}");
    }
    assert!(
        peak < RSS_BOUND_MIB,
        "the engine's peak RSS was {peak} MiB for {} MB of records (bound {RSS_BOUND_MIB} MiB)",
        records * LARGE / 1_000_000
    );
    eprintln!("engine peak RSS: {peak} MiB for {records} records");
}
