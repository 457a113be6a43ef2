//! The Kafka source against a real Kafka-protocol broker (Tansu), real HTTP targets and a
//! real SQLite file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;
use integration_tests::config::Subscription;
use integration_tests::kafka::{produce, producer, Out, Tansu};
use integration_tests::{
    free_addr, metric, spawn_engine, test_config, test_subscription, wait_for, Admin, Reply, Seen, Target,
};
use rand::Rng;

/// A subscription named `test` consuming `topic` from Tansu, with fast retries.
fn kafka_subscription(bootstrap: &str, topic: &str, target: &str) -> Subscription {
    test_subscription(target)
        .fast_retries()
        .kafka(bootstrap, &[topic])
        .kafka_set("group_id", format!("engine-test-{topic}"))
        .tansu_consumer()
}

async fn start(dir: &tempfile::TempDir, subscription: Subscription) -> (Engine, Admin) {
    let engine = Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    (engine, admin)
}

async fn count(admin: &Admin, status: &str) -> u64 {
    admin.stats().await[status].as_u64().unwrap_or(0)
}

async fn total_calls(admin: &Admin) -> u64 {
    let stats = admin.stats().await;
    ["pending", "running", "succeeded", "dead", "cancelled"]
        .iter()
        .map(|s| stats[*s].as_u64().unwrap_or(0))
        .sum()
}

fn position(seen: &Seen) -> (i32, i64) {
    (
        seen.header("engine-kafka-partition").unwrap().parse().unwrap(),
        seen.header("engine-kafka-offset").unwrap().parse().unwrap(),
    )
}

/// A target that answers 503 to a random share `rate` of requests, 200 to the rest.
async fn flaky_target(rate: f64) -> Target {
    Target::start(move |_| {
        if rand::rng().random::<f64>() < rate {
            Reply::Status(503, "flaky")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await
}

/// Deliver `records` through a new 3-partition `topic` with `ordering` to a target failing
/// 30% of attempts; what the target saw once every call succeeded.
async fn deliver_through_a_flaky_target(topic: &str, ordering: &str, records: Vec<Out>) -> Vec<Seen> {
    let tansu = Tansu::start();
    tansu.create_topic(topic, 3).await;
    let target = flaky_target(0.3).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), topic, &target.url()).ordering(ordering),
    )
    .await;
    let expected = records.len() as u64;
    produce(&producer(&tansu.bootstrap()), topic, records).await;
    wait_for("every call to succeed", Duration::from_secs(120), || async {
        count(&admin, "succeeded").await == expected
    })
    .await;
    engine.shutdown().await.unwrap();
    target.seen()
}

/// Check that `offsets` (one group's deliveries, in arrival order) are in offset order, and
/// return how many calls they are (retries of one call repeat in place).
fn calls_in_offset_order(group: &str, mut offsets: Vec<i64>) -> usize {
    offsets.dedup();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "{group}: deliveries out of offset order: {offsets:?}"
    );
    offsets.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_with_20_percent_failures_become_exactly_one_call_each() {
    const RECORDS: usize = 10_000;
    let tansu = Tansu::start();
    tansu.create_topic("loss", 3).await;
    let target = flaky_target(0.2).await;
    let dir = tempfile::tempdir().unwrap();
    // The cooperative protocol, outside cluster mode: the engine's own rebalance callback
    // assigns incrementally (the other tests run librdkafka's eager default).
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), "loss", &target.url())
            .ordering("unordered")
            .kafka_option("partition.assignment.strategy", "cooperative-sticky"),
    )
    .await;
    let records = (0..RECORDS)
        .map(|n| Out::keyed(format!("k{}", n % 100), n.to_string()))
        .collect();
    let produced = produce(&producer(&tansu.bootstrap()), "loss", records).await;
    let partitions: HashSet<i32> = produced.iter().map(|p| p.0).collect();
    assert_eq!(partitions.len(), 3, "records spread over the 3 partitions");

    wait_for("every call to succeed", Duration::from_secs(120), || async {
        count(&admin, "succeeded").await == RECORDS as u64
    })
    .await;
    assert_eq!(total_calls(&admin).await, RECORDS as u64, "exactly one call per record");
    let delivered: HashSet<(i32, i64)> = target.seen().iter().map(position).collect();
    let expected: HashSet<(i32, i64)> = produced.into_iter().collect();
    assert_eq!(delivered, expected, "every record reached the handler");
    let failures = target.seen().len() - RECORDS;
    println!(
        "records {RECORDS}, handler requests {}, temporary failures retried {failures}",
        target.seen().len()
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_consuming_loses_nothing_and_duplicates_no_call() {
    const RECORDS: usize = 10_000;
    let tansu = Tansu::start();
    tansu.create_topic("restart", 3).await;
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    // Small batches so the kill lands between commits.
    let subscription = kafka_subscription(&tansu.bootstrap(), "restart", &target.url()).kafka_set("batch_size", 200);
    test_config(dir.path(), subscription).admin(admin_addr).write(&config);
    let admin = Admin::new(admin_addr);
    let bootstrap = tansu.bootstrap();
    let producing = tokio::spawn(async move {
        let producer = producer(&bootstrap);
        let mut positions = Vec::new();
        for chunk in 0..10 {
            let records = (0..RECORDS / 10)
                .map(|n| Out::keyed(format!("k{}", n % 50), format!("{chunk}-{n}")))
                .collect();
            positions.extend(produce(&producer, "restart", records).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        positions
    });

    let mut engine = spawn_engine(&config);
    wait_for("the engine to ingest some records", Duration::from_secs(60), || async {
        admin.is_up().await && total_calls(&admin).await >= 2_000
    })
    .await;
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();

    let mut engine = spawn_engine(&config);
    let produced = producing.await.unwrap();
    wait_for(
        "every record to become a succeeded call",
        Duration::from_secs(120),
        || async { admin.is_up().await && count(&admin, "succeeded").await >= RECORDS as u64 },
    )
    .await;
    assert_eq!(
        total_calls(&admin).await,
        RECORDS as u64,
        "no duplicate call after the restart"
    );
    let delivered: HashSet<(i32, i64)> = target.seen().iter().map(position).collect();
    assert_eq!(
        delivered,
        produced.into_iter().collect::<HashSet<_>>(),
        "no record lost"
    );
    assert!(engine.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_per_key_while_some_keys_retry() {
    const RECORDS: usize = 3_000;
    let records = (0..RECORDS)
        .map(|n| Out::keyed(format!("key-{}", n % 30), n.to_string()))
        .collect();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for seen in deliver_through_a_flaky_target("order", "key", records).await {
        let key = seen.header("engine-kafka-key").unwrap().to_string();
        per_key.entry(key).or_default().push(position(&seen).1);
    }
    assert_eq!(per_key.len(), 30);
    for (key, offsets) in per_key {
        let calls = calls_in_offset_order(&format!("key {key}"), offsets);
        assert_eq!(calls, RECORDS / 30, "key {key}: every call delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_order_holds_per_partition_across_several_partitions_while_some_retry() {
    const RECORDS: usize = 1_500;
    // Many keys, so every partition holds records of many keys: only the partition orders them.
    let records = (0..RECORDS)
        .map(|n| Out::keyed(format!("key-{n}"), n.to_string()))
        .collect();
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for seen in deliver_through_a_flaky_target("by-partition", "partition", records).await {
        let (partition, offset) = position(&seen);
        per_partition.entry(partition).or_default().push(offset);
    }
    assert_eq!(per_partition.len(), 3, "records in every partition");
    let delivered: usize = per_partition
        .into_iter()
        .map(|(partition, offsets)| calls_in_offset_order(&format!("partition {partition}"), offsets))
        .sum();
    assert_eq!(delivered, RECORDS, "every call delivered once it succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_unordered_mode_a_failing_record_does_not_delay_the_others() {
    const RECORDS: usize = 1_000;
    let tansu = Tansu::start();
    tansu.create_topic("unordered", 3).await;
    let healed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healed);
    let target = Target::start(move |seen| {
        if seen.body == b"poison" && !flag.load(Ordering::SeqCst) {
            Reply::Status(503, "poison")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), "unordered", &target.url()).ordering("unordered"),
    )
    .await;
    let mut records = vec![Out {
        value: Some(b"poison".to_vec()),
        partition: Some(0),
        ..Out::default()
    }];
    records.extend((1..RECORDS).map(|n| Out {
        value: Some(n.to_string().into_bytes()),
        partition: Some((n % 3) as i32),
        ..Out::default()
    }));
    produce(&producer(&tansu.bootstrap()), "unordered", records).await;
    wait_for("every other call to succeed", Duration::from_secs(60), || async {
        count(&admin, "succeeded").await == RECORDS as u64 - 1
    })
    .await;
    // One snapshot: two requests could see the poison call once as pending and again as running.
    let stats = admin.stats().await;
    let waiting = stats["pending"].as_u64().unwrap_or(0) + stats["running"].as_u64().unwrap_or(0);
    assert_eq!(waiting, 1, "only the poison record waits");
    healed.store(true, Ordering::SeqCst);
    wait_for(
        "the poison record to succeed once healed",
        Duration::from_secs(30),
        || async { count(&admin, "succeeded").await == RECORDS as u64 },
    )
    .await;
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_the_backlog() {
    const RECORDS: usize = 400;
    const MAX_BACKLOG: i64 = 20;
    const BATCH: i64 = 10;
    let tansu = Tansu::start();
    tansu.create_topic("slow", 3).await;
    let target = Target::start(|_| Reply::Hang(Duration::from_millis(10))).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), "slow", &target.url())
            .ordering("unordered")
            .max_concurrency(2)
            .kafka_set("max_backlog", MAX_BACKLOG)
            .kafka_set("batch_size", BATCH),
    )
    .await;
    let records = (0..RECORDS).map(|n| Out::keyed("k", n.to_string())).collect();
    produce(&producer(&tansu.bootstrap()), "slow", records).await;

    let stats = Arc::clone(&engine.figures()["test"]);
    let mut highest = 0;
    let mut samples = 0;
    while stats.snapshot().succeeded < RECORDS as u64 {
        highest = highest.max(stats.snapshot().backlog);
        samples += 1;
        assert!(samples < 60_000, "did not finish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The store agrees with the in-memory count once the last outcomes are written.
    wait_for("the store to record every success", Duration::from_secs(10), || async {
        count(&admin, "succeeded").await == RECORDS as u64
    })
    .await;
    println!("highest backlog {highest} (bound {MAX_BACKLOG}, batch {BATCH}) over {samples} samples");
    assert!(
        highest <= MAX_BACKLOG + BATCH,
        "backlog {highest} passed the bound plus one batch"
    );
    assert!(
        highest >= MAX_BACKLOG / 2,
        "the backlog should reach the bound: {highest}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_the_trip_keys_values_tombstones_headers() {
    let tansu = Tansu::start();
    tansu.create_topic("bytes", 1).await;
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), "bytes", &target.url()).ordering("partition"),
    )
    .await;
    let records = vec![
        Out {
            key: Some(vec![0xff, 0x00, b',', b'=']),
            value: Some(vec![0x00, 0xc3, 0x28, 0xff]),
            headers: vec![
                ("trace id".into(), Some(b"a,b=c".to_vec())),
                ("nil".into(), None),
                ("bin".into(), Some(vec![0xfe, 0x01])),
            ],
            ..Out::default()
        },
        Out {
            key: Some(b"empty".to_vec()),
            value: Some(Vec::new()),
            ..Out::default()
        },
        Out {
            key: Some(b"tomb".to_vec()),
            value: None,
            ..Out::default()
        },
    ];
    produce(&producer(&tansu.bootstrap()), "bytes", records).await;
    wait_for("three calls to succeed", Duration::from_secs(60), || async {
        count(&admin, "succeeded").await == 3
    })
    .await;
    let seen: HashMap<Vec<u8>, Seen> = target
        .seen()
        .into_iter()
        .map(|s| (sdk::protocol::decode_bytes(s.header("engine-kafka-key").unwrap()), s))
        .collect();
    let binary = &seen[&vec![0xff, 0x00, b',', b'=']];
    assert_eq!(binary.body, vec![0x00, 0xc3, 0x28, 0xff]);
    let headers = sdk::protocol::decode_record_headers(binary.header("engine-kafka-headers").unwrap());
    assert_eq!(
        headers,
        vec![
            ("trace id".to_string(), Some(b"a,b=c".to_vec())),
            ("nil".to_string(), None),
            ("bin".to_string(), Some(vec![0xfe, 0x01])),
        ]
    );
    let empty = &seen[&b"empty".to_vec()];
    assert!(empty.body.is_empty());
    assert_eq!(empty.header("engine-kafka-tombstone"), None);
    let tomb = &seen[&b"tomb".to_vec()];
    assert!(tomb.body.is_empty());
    assert_eq!(tomb.header("engine-kafka-tombstone"), Some("true"));
    assert_eq!(tomb.header("engine-kafka-topic"), Some("bytes"));
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_is_reported_per_partition_and_drains_to_zero() {
    const RECORDS: u64 = 300;
    let tansu = Tansu::start();
    tansu.create_topic("lag", 3).await;
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    let target = Target::start(move |_| {
        if gate.load(Ordering::Relaxed) {
            Reply::Status(200, "ok")
        } else {
            Reply::Status(503, "not yet")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start(
        &dir,
        kafka_subscription(&tansu.bootstrap(), "lag", &target.url())
            .ordering("unordered")
            .kafka_set("max_backlog", 20)
            .kafka_set("batch_size", 10)
            .kafka_option("statistics.interval.ms", "200"),
    )
    .await;
    let records = (0..RECORDS)
        .map(|n| Out::keyed(format!("k{n}"), n.to_string()))
        .collect();
    produce(&producer(&tansu.bootstrap()), "lag", records).await;

    // Backpressure holds most records in Kafka: they show as lag on all three partitions.
    let lag_of = |stats: &serde_json::Value| -> (usize, i64) {
        let partitions = stats["subscriptions"]["test"]["lag"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let total = partitions.iter().filter_map(|p| p["lag"].as_i64()).sum();
        (partitions.len(), total)
    };
    wait_for("lag on three partitions", Duration::from_secs(20), || async {
        let (partitions, total) = lag_of(&admin.stats().await);
        partitions == 3 && total >= (RECORDS - 60) as i64
    })
    .await;
    let stats = admin.stats().await;
    println!("lag while held back: {}", stats["subscriptions"]["test"]["lag"]);

    // Some attempts failed (503) before the target opens: the histogram counts them too.
    let scheduler = Arc::clone(&engine.figures()["test"]);
    wait_for("a failed attempt", Duration::from_secs(20), || async {
        scheduler.snapshot().retried > 0
    })
    .await;
    open.store(true, Ordering::Relaxed);
    wait_for("every call to succeed", Duration::from_secs(30), || async {
        count(&admin, "succeeded").await == RECORDS
    })
    .await;
    wait_for("the lag to drain", Duration::from_secs(15), || async {
        lag_of(&admin.stats().await) == (3, 0)
    })
    .await;
    wait_for("a throughput figure", Duration::from_secs(5), || async {
        admin.stats().await["subscriptions"]["test"]["throughput"]["finished_per_second"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    })
    .await;

    let metrics = admin.metrics().await;
    let sub = "subscription=\"test\"";
    assert!(metric(&metrics, &format!("engine_records_consumed_total{{{sub}}}")).unwrap() >= RECORDS as f64);
    assert_eq!(
        metric(&metrics, &format!("engine_calls_total{{{sub},outcome=\"succeeded\"}}")),
        Some(RECORDS as f64)
    );
    for partition in 0..3 {
        let series = format!("engine_consumer_lag{{{sub},topic=\"lag\",partition=\"{partition}\"}}");
        assert_eq!(metric(&metrics, &series), Some(0.0), "{series}");
    }
    // Every attempt, the 503s included, is in the latency histogram.
    let attempts = metric(&metrics, &format!("engine_attempt_duration_seconds_count{{{sub}}}")).unwrap();
    let inf = metric(
        &metrics,
        &format!("engine_attempt_duration_seconds_bucket{{{sub},le=\"+Inf\"}}"),
    );
    assert!(attempts > RECORDS as f64, "{attempts}");
    assert_eq!(inf, Some(attempts));
    let commits = metric(&metrics, "engine_store_commit_rows_count").unwrap();
    let rows = metric(&metrics, "engine_store_commit_rows_sum").unwrap();
    assert!(
        commits >= 1.0 && rows >= RECORDS as f64,
        "{commits} commits, {rows} rows"
    );
    assert!(metric(&metrics, "engine_store_commit_duration_seconds_count") == Some(commits));
    engine.shutdown().await.unwrap();
}

/// The ids of the dead calls the admin API lists.
async fn dead_call_ids(admin: &Admin) -> HashSet<String> {
    admin.get("/v1/dead?limit=1000").await["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_calls_appear_on_the_dead_letter_topic_exactly_once_with_error_headers() {
    const RECORDS: usize = 200;
    let tansu = Tansu::start();
    tansu.create_topic("dlq-src", 3).await;
    tansu.create_topic("dlq-out", 1).await;
    let target = Target::start(|seen| {
        if seen.body.starts_with(b"bad") {
            Reply::Status(400, "refused: bad order")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = kafka_subscription(&tansu.bootstrap(), "dlq-src", &target.url())
        .ordering("unordered")
        .dead_letter("topic", "dlq-out");
    let (engine, admin) = start(&dir, subscription.clone()).await;
    let records: Vec<Out> = (0..RECORDS)
        .map(|n| {
            let value = if n % 5 == 0 {
                format!("bad-{n}")
            } else {
                format!("good-{n}")
            };
            let mut out = Out::keyed(format!("k{n}"), value);
            out.headers = vec![("trace".into(), Some(format!("t{n}").into_bytes()))];
            out
        })
        .collect();
    let bad = RECORDS / 5;
    produce(&producer(&tansu.bootstrap()), "dlq-src", records).await;
    wait_for("every call to finish", Duration::from_secs(30), || async {
        count(&admin, "succeeded").await + count(&admin, "dead").await == RECORDS as u64
    })
    .await;
    assert_eq!(count(&admin, "dead").await, bad as u64);
    let stats = Arc::clone(&engine.figures()["test"]);
    wait_for("every dead call to be published", Duration::from_secs(30), || async {
        stats.snapshot().dead_lettered == bad as u64
    })
    .await;
    let dead_ids = dead_call_ids(&admin).await;
    assert_eq!(dead_ids.len(), bad);
    // A restart finds nothing left to publish: one more dead call after it is published,
    // and any republishing of the earlier ones would have happened before that.
    engine.shutdown().await.unwrap();
    let (engine, admin) = start(&dir, subscription).await;
    let mut late = Out::keyed("k-late", "bad-1000");
    late.headers = vec![("trace".into(), Some(b"t1000".to_vec()))];
    produce(&producer(&tansu.bootstrap()), "dlq-src", vec![late]).await;
    let stats = Arc::clone(&engine.figures()["test"]);
    wait_for(
        "the dead call made after the restart to be published",
        Duration::from_secs(30),
        || async { stats.snapshot().dead_lettered == 1 },
    )
    .await;
    let dead_ids = dead_call_ids(&admin).await;
    assert_eq!(dead_ids.len(), bad + 1);
    engine.shutdown().await.unwrap();

    let bootstrap = tansu.bootstrap();
    let letters = tokio::task::spawn_blocking(move || {
        integration_tests::kafka::read_topic(&bootstrap, "dlq-out", 1, bad + 1, Duration::from_secs(3))
    })
    .await
    .unwrap();
    println!("{} dead letters for {} dead calls", letters.len(), dead_ids.len());
    assert_eq!(letters.len(), bad + 1, "exactly one dead letter per dead call");
    let mut seen_ids = HashSet::new();
    for letter in &letters {
        let id = letter.header("engine-call-id").expect("call id header");
        assert!(dead_ids.contains(&id), "{id} is not a dead call");
        assert!(seen_ids.insert(id.clone()), "{id} published twice");
        let value = String::from_utf8(letter.value.clone().unwrap()).unwrap();
        let n: usize = value.strip_prefix("bad-").expect("only bad records").parse().unwrap();
        let key = if n == 1000 {
            "k-late".to_string()
        } else {
            format!("k{n}")
        };
        assert_eq!(letter.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(letter.header("trace"), Some(format!("t{n}")));
        let error = letter.header("engine-error").unwrap();
        assert!(error.contains("400") && error.contains("bad order"), "{error}");
        assert_eq!(letter.header("engine-subscription").as_deref(), Some("test"));
        assert_eq!(letter.header("engine-source-topic").as_deref(), Some("dlq-src"));
        assert!(letter.header("engine-source-offset").is_some());
        assert_eq!(letter.header("engine-attempts").as_deref(), Some("1"));
    }
}

/// A topic deleted and created again under the same name starts its offsets at 0 again: the
/// new topic's records, at offsets the engine has already stored (0-2) and past them (3-4),
/// are all delivered as new calls, none mistaken for the old topic's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_delivers_every_new_record() {
    let tansu = Tansu::start();
    let topic = "recreated";
    tansu.create_topic(topic, 1).await;
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = || kafka_subscription(&tansu.bootstrap(), topic, &target.url());

    let (engine, admin) = start(&dir, subscription()).await;
    let first: Vec<Out> = (0..3)
        .map(|i| Out::keyed(format!("k{i}"), format!("old-{i}")))
        .collect();
    produce(&producer(&tansu.bootstrap()), topic, first).await;
    wait_for("the old topic's records", Duration::from_secs(60), || async {
        count(&admin, "succeeded").await == 3
    })
    .await;
    engine.shutdown().await.unwrap();

    tansu.delete_topic(topic).await;
    tansu.create_topic(topic, 1).await;
    let second: Vec<Out> = (0..5)
        .map(|i| Out::keyed(format!("k{i}"), format!("new-{i}")))
        .collect();
    let positions = produce(&producer(&tansu.bootstrap()), topic, second).await;
    assert_eq!(positions.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);

    let (engine, admin) = start(&dir, subscription()).await;
    wait_for("every record of the new topic", Duration::from_secs(60), || async {
        count(&admin, "succeeded").await == 8
    })
    .await;
    assert_eq!(
        target.bodies_sorted(),
        ["new-0", "new-1", "new-2", "new-3", "new-4", "old-0", "old-1", "old-2"]
    );
    engine.shutdown().await.unwrap();
}
