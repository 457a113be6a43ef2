//! `wf.produce`: records a workflow produces reach Kafka exactly once per journal entry,
//! checked by consuming the topic after a loop of SIGKILLs of the engine (a real Tansu
//! broker, the engine as a process).

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::{produce, producer, read_topic, Out, Tansu};
use integration_tests::{free_addr, spawn_engine, wait_for, Admin};
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
    let _engine = spawn_engine(&config);
    wait_for("the engine again", Duration::from_secs(30), || admin.is_up()).await;
    wait_for("every workflow to complete", Duration::from_secs(90), || async {
        admin.stats().await["succeeded"].as_u64() == Some(ORDERS as u64)
    })
    .await;

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
