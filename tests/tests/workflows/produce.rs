//! Records the engine produces through its outbox reach Kafka exactly once, checked by
//! consuming the topic after a loop of SIGKILLs of the engine (a real Tansu broker, the
//! engine as a process): `wf.produce` once per journal entry, and a subscription's
//! `output_topic` once per successful call.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::{produce, producer, read_topic, Out, Tansu};
use integration_tests::unkind::UnkindTarget;
use integration_tests::{free_addr, spawn_engine, wait_for, Admin, Proc};
use sdk::{Endpoint, Workflow};

use super::serve;

const ORDERS: usize = 40;

/// charge → produce "confirmed" → short sleep → produce "shipped": two records per order.
fn confirmations() -> Endpoint {
    Endpoint::new().workflow("confirm", |wf: Workflow, order: u32| async move {
        let receipt: String = wf
            .step("charge", move || async move { Ok(format!("paid-{order}")) })
            .await?;
        let key = order.to_string();
        wf.produce(
            "confirmations",
            Some(&key),
            &serde_json::json!({"order": order, "event": "confirmed", "receipt": receipt}),
        );
        wf.sleep(Duration::from_millis(100)).await;
        wf.produce(
            "confirmations",
            Some(&key),
            &serde_json::json!({"order": order, "event": "shipped"}),
        );
        Ok(receipt)
    })
}

/// After the kill loop: start the engine once more and wait until `calls` calls succeeded.
async fn run_until_all_succeed(config: &Path, admin: &Admin, calls: u64) -> Proc {
    let engine = spawn_engine(config);
    wait_for("the engine again", Duration::from_secs(30), || admin.is_up()).await;
    wait_for("every call to succeed", Duration::from_secs(90), || async {
        admin.stats().await["succeeded"].as_u64() == Some(calls)
    })
    .await;
    engine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_reach_kafka_exactly_once_across_a_kill_loop() {
    let tansu = Tansu::start();
    tansu.create_topic("wf-orders", 2).await;
    tansu.create_topic("confirmations", 2).await;
    let handler_addr = free_addr();
    let _handler = serve(confirmations(), handler_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(
            Subscription::new("orders", &format!("http://{handler_addr}/confirm"))
                .fast_retries()
                .kafka(&tansu.bootstrap(), &["wf-orders"])
                .kafka_set("group_id", "engine-test-wf-orders")
                .tansu_consumer(),
        )
        .write(&config);
    let admin = Admin::new(admin_addr);
    let records: Vec<Out> = (0..ORDERS)
        .map(|n| Out::keyed(format!("o{n}"), n.to_string()))
        .collect();
    produce(&producer(&tansu.bootstrap()), "wf-orders", records).await;

    // Kill the engine four times, a little later each time, while workflows run.
    for round in 0..4_u64 {
        let engine = spawn_engine(&config);
        wait_for("the engine", Duration::from_secs(30), || admin.is_up()).await;
        tokio::time::sleep(Duration::from_millis(300 + 250 * round)).await;
        engine.crash();
    }
    let _engine = run_until_all_succeed(&config, &admin, ORDERS as u64).await;

    let bootstrap = tansu.bootstrap();
    let read = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "confirmations", 2, 2 * ORDERS, Duration::from_secs(3))
    })
    .await
    .unwrap();
    let mut per_entry: HashMap<(String, String), u32> = HashMap::new();
    for record in &read {
        let call = record.header("engine-call-id").expect("engine-call-id header");
        let entry = record.header("engine-entry").expect("engine-entry header");
        *per_entry.entry((call, entry)).or_default() += 1;
    }
    let duplicates: Vec<_> = per_entry.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "records published twice: {duplicates:?}");
    assert_eq!(read.len(), 2 * ORDERS, "every produced entry, once");
    let events: Vec<String> = read
        .iter()
        .map(|r| {
            let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            value["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(events.iter().filter(|e| *e == "confirmed").count(), ORDERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_successful_call_reaches_the_output_topic_once_in_key_order_across_a_kill_loop() {
    const RECORDS: usize = 300;
    const KEYS: usize = 20;
    let tansu = Tansu::start();
    tansu.create_topic("out-src", 3).await;
    tansu.create_topic("outputs", 1).await;
    // A Python service: jittery, 30% random 503s, answering "done:<body>".
    let target = UnkindTarget::start(&[
        "--error-rate",
        "0.3",
        "--latency-ms",
        "2",
        "--jitter",
        "exp:5",
        "--echo",
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(
            Subscription::new("orders", &target.url())
                .fast_retries()
                .set("output_topic", "outputs")
                .kafka(&tansu.bootstrap(), &["out-src"])
                .kafka_set("group_id", "engine-test-outputs")
                .tansu_consumer(),
        )
        .write(&config);
    let admin = Admin::new(admin_addr);
    let records: Vec<Out> = (0..RECORDS)
        .map(|n| {
            let key = format!("k{}", n % KEYS);
            Out::keyed(key.clone(), format!("{key}:{n}"))
        })
        .collect();
    produce(&producer(&tansu.bootstrap()), "out-src", records).await;

    for round in 0..3_u64 {
        let engine = spawn_engine(&config);
        wait_for("the engine", Duration::from_secs(30), || admin.is_up()).await;
        // Killed mid-run: after some calls succeeded, while others are in flight.
        let at_least = 60 * (round + 1);
        wait_for("calls to succeed", Duration::from_secs(60), || async {
            admin.stats().await["succeeded"].as_u64() >= Some(at_least)
        })
        .await;
        let succeeded = admin.stats().await["succeeded"].as_u64().unwrap_or(0);
        engine.crash();
        println!("round {round}: killed with {succeeded} calls succeeded");
    }
    let _engine = run_until_all_succeed(&config, &admin, RECORDS as u64).await;

    let bootstrap = tansu.bootstrap();
    let read =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "outputs", 1, RECORDS, Duration::from_secs(3)))
            .await
            .unwrap();
    let stats = target.stats().await;
    println!(
        "{} outputs for {RECORDS} calls; the target answered {} requests, {} random 503s, {} duplicate successes",
        read.len(),
        stats["requests"],
        stats["errors"],
        stats["duplicates"]
    );
    let mut calls = HashSet::new();
    let mut last_of_key: HashMap<String, usize> = HashMap::new();
    for record in &read {
        assert_eq!(record.header("engine-entry").as_deref(), Some("output"));
        let call = record.header("engine-call-id").expect("engine-call-id header");
        assert!(calls.insert(call.clone()), "the output of {call} was published twice");
        let value = String::from_utf8(record.value.clone().unwrap()).unwrap();
        let body = value.strip_prefix("done:").expect("the target's answer");
        let (key, n) = body.split_once(':').unwrap();
        assert_eq!(
            record.key.as_deref(),
            Some(key.as_bytes()),
            "an output keeps its record's key"
        );
        let n: usize = n.parse().unwrap();
        if let Some(last) = last_of_key.insert(key.to_string(), n) {
            assert!(last < n, "outputs of {key} out of order: {n} after {last}");
        }
    }
    assert_eq!(read.len(), RECORDS, "one output per call");
    assert_eq!(stats["order_violations"], 0);
}

/// Unpublished outbox rows marked attempted (handed to the producer, no acknowledgement
/// stored): what an engine killed between the two leaves.
fn forget_acknowledgements(db: &Path) -> usize {
    let conn = rusqlite::Connection::open(db).unwrap();
    let attempted: usize = conn
        .query_row("SELECT count(*) FROM outbox WHERE attempted_at IS NOT NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute("UPDATE outbox SET published_at = NULL", []).unwrap();
    attempted
}

fn unpublished(db: &Path) -> usize {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT count(*) FROM outbox WHERE published_at IS NULL", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_already_in_their_topic_are_not_produced_again_when_their_acknowledgement_was_lost() {
    const RECORDS: usize = 50;
    let tansu = Tansu::start();
    tansu.create_topic("rb-src", 1).await;
    tansu.create_topic("rb-outputs", 1).await;
    let target = UnkindTarget::start(&["--error-rate", "0.2", "--jitter", "exp:3", "--echo"]).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    let db = dir.path().join("engine.db");
    EngineConfig::new(&db)
        .admin(admin_addr)
        .subscription(
            Subscription::new("orders", &target.url())
                .fast_retries()
                .set("output_topic", "rb-outputs")
                .kafka(&tansu.bootstrap(), &["rb-src"])
                .kafka_set("group_id", "engine-test-read-back")
                .tansu_consumer(),
        )
        .write(&config);
    let admin = Admin::new(admin_addr);
    let records: Vec<Out> = (0..RECORDS)
        .map(|n| Out::keyed(format!("k{n}"), format!("r{n}")))
        .collect();
    produce(&producer(&tansu.bootstrap()), "rb-src", records).await;
    let mut engine = run_until_all_succeed(&config, &admin, RECORDS as u64).await;
    wait_for("every output to be published", Duration::from_secs(30), || async {
        unpublished(&db) == 0
    })
    .await;
    assert!(engine.terminate().success());

    // Every output is in its topic, but the store no longer knows it: the publisher must
    // read the topic back and produce none of them again.
    assert_eq!(
        forget_acknowledgements(&db),
        RECORDS,
        "every output was handed to the producer"
    );
    let _engine = run_until_all_succeed(&config, &admin, RECORDS as u64).await;
    wait_for(
        "the outputs to be found in their topic",
        Duration::from_secs(30),
        || async { unpublished(&db) == 0 },
    )
    .await;
    let bootstrap = tansu.bootstrap();
    let read =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, "rb-outputs", 1, RECORDS, Duration::from_secs(3)))
            .await
            .unwrap();
    let calls: HashSet<String> = read.iter().filter_map(|r| r.header("engine-call-id")).collect();
    assert_eq!(calls.len(), RECORDS, "one output per call");
    assert_eq!(
        read.len(),
        RECORDS,
        "outputs produced again although they were in their topic"
    );
}
