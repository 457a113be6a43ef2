//! Measures the store's insert rate with group commit against one transaction per row.
//!
//! `cargo run --release -p engine --example insert_rate -- [DIR]` (DIR defaults to the
//! current directory: use the disk you will run on, not a tmpfs).

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
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let dir = tempfile::tempdir_in(dir)?;
    let store = Store::open(dir.path().join("bench.db"), StoreOptions::default())?;

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
    Ok(())
}
