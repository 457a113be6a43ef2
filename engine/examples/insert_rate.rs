//! Measures the store's insert rate with group commit against one transaction per row.
//!
//! `cargo run --release -p engine --example insert_rate -- [DIR] [--changelog]` (DIR
//! defaults to the current directory: use the disk you will run on, not a tmpfs). With
//! `--changelog`, the store notes every change for cluster mode and a task encodes each
//! changed call as the changelog publisher does (no Kafka): the store's side of its cost.

use std::time::Instant;

use engine::model::{KafkaSource, NewCall};
use engine::store::{Store, StoreOptions};

fn call(offset: i64) -> NewCall {
    NewCall {
        subscription: "bench".into(),
        target: "http://127.0.0.1:9/".into(),
        payload: vec![b'x'; 100],
        tombstone: false,
        key: Some(format!("key-{}", offset % 1000).into_bytes()),
        headers: None,
        source: Some(KafkaSource {
            topic: "bench".into(),
            partition: (offset % 3) as i32,
            offset,
            timestamp: Some(0),
        }),
        ordering_key: Some(format!("kkey-{}", offset % 1000).into_bytes()),
        dead_reason: None,
        block_group_if_dead: false,
        idempotency_key: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let changelog = args.iter().any(|a| a == "--changelog");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| ".".into());
    let dir = tempfile::tempdir_in(dir)?;
    let options = StoreOptions {
        changelog,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join("bench.db"), options)?;
    let encoded = store.take_changes().map(|mut changes| {
        tokio::spawn(async move {
            let (mut calls, mut bytes) = (0_u64, 0_usize);
            while let Some(committed) = changes.recv().await {
                for change in committed.changes {
                    if let engine::store::Change::Call(call) = change {
                        bytes += serde_json::to_vec(&call).map_or(0, |v| v.len());
                        calls += 1;
                    }
                }
            }
            (calls, bytes)
        })
    });

    // One row per transaction: each insert waits for its own commit.
    let single = 1_000;
    let started = Instant::now();
    for offset in 0..single {
        store.insert(vec![call(offset)]).await?;
    }
    let single_rate = single as f64 / started.elapsed().as_secs_f64();

    // Group commit: 4 concurrent producers of 500-row batches, as the Kafka source sends.
    let batches = 400;
    let batch = 500;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..4_i64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..batches / 4 {
                let first = 1_000_000 + (producer * (batches / 4) + b) * batch;
                store.insert((first..first + batch).map(call).collect()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rows = batches * batch;
    let group_rate = rows as f64 / started.elapsed().as_secs_f64();
    let stats = store.writer_stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    println!("one transaction per row: {single_rate:>9.0} rows/s ({single} rows)");
    println!("group commit:            {group_rate:>9.0} rows/s ({rows} rows, {commits} commits in all)");
    println!("ratio:                   {:>9.1}x", group_rate / single_rate);
    store.close();
    if let Some(encoded) = encoded {
        let (calls, bytes) = encoded.await?;
        println!(
            "changelog: {calls} snapshots encoded, {} bytes each on average",
            bytes / calls.max(1) as usize
        );
    }
    Ok(())
}
