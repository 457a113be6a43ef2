//! Benchmarks, reported as ratios measured in one run against one broker (Tansu).
//!
//! `cargo run --release -p bench -- ingest [--records N]`: the raw rdkafka consume rate of
//! N small records next to the engine's durable ingest rate (Kafka to calls in SQLite, with
//! delivery paused), from the same topic on the same broker.
//!
//! `bench e2e`: end to end through the SDK handler, latency at fixed rates, head-of-line
//! blocking against a naive consumer, memory with a 1M backlog, and Restate side by side
//! (see `scripts/bench`, which provisions and runs all of it).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine::Engine;
use integration_tests::config::{EngineConfig, Subscription, TANSU_CONSUMER};
use integration_tests::kafka::{produce, producer, Out, Tansu};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

mod cluster;
mod e2e;
mod flows;
mod handler;
mod limits;
mod purge;
mod report;
mod stuck;
mod timers;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the engine, as ratios measured in one run")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Adaptive concurrency against unkind targets (random 5xx, jitter, capacity, a
    /// saturating service, changing capacity), next to fixed limits.
    Limits {
        /// Multiply every target's number of calls (0.5 for a quick run).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Only the targets whose name starts with this (for example `3` or `1a`).
        #[arg(long)]
        only: Option<String>,
        /// Run each completion-time comparison this many times (interleaved) and report the median.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
    },
    /// The SDK no-op handler of the end-to-end scenarios (started by them as a process).
    Handler {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        stats: std::net::SocketAddr,
    },
    /// End to end: throughput, latency at fixed rates, head-of-line, memory and restart,
    /// and the same workloads through Restate when its binaries are given.
    E2e(report::E2eArgs),
    /// Retention under load: `calls` succeeded calls past retention purged while records
    /// flow at `rate`/s; commit times, latency and file size.
    Purge {
        #[arg(long, default_value_t = 5_000_000)]
        calls: usize,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Seconds records flow from the start (the purge begins after about 12 s).
        #[arg(long, default_value_t = 100)]
        flow_seconds: u64,
    },
    /// Stuck keys: `failing_keys` keys fail for `seconds` while 1,000 healthy keys flow at
    /// `rate`/s; the healthy keys' latency next to a run without the failing keys.
    Stuck {
        #[arg(long, default_value_t = 20_000)]
        failing_keys: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Durable timers: `workflows` sleeping workflows woken over `spread` seconds; how late
    /// each wakes.
    Timers {
        #[arg(long, default_value_t = 100_000)]
        workflows: usize,
        #[arg(long, default_value_t = 60)]
        spread: u64,
    },
    /// Cluster mode: throughput with 1, 2 and 3 engines in one group against one engine
    /// without it, and the restore time of open calls.
    Cluster {
        #[arg(long, default_value_t = 60_000)]
        records: usize,
        /// Engine counts in cluster mode, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        engines: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Open calls to restore (0: skip the restore).
        #[arg(long, default_value_t = 100_000)]
        restore_calls: usize,
    },
    /// Raw consume rate vs durable ingest rate from the same topic.
    Ingest {
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Repeat and report the median and the spread.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Ingest {
            records,
            payload_bytes,
            runs,
        } => ingest(records, payload_bytes, runs).await,
        Scenario::Handler { listen, stats } => handler::serve(listen, stats).await,
        Scenario::E2e(args) => report::run(args).await,
        Scenario::Limits { scale, only, repeat } => limits::run(scale, only, repeat).await,
        Scenario::Cluster {
            records,
            engines,
            runs,
            restore_calls,
        } => cluster::run(records, engines, runs, restore_calls).await,
        Scenario::Timers { workflows, spread } => timers::run(workflows, spread).await,
        Scenario::Stuck {
            failing_keys,
            rate,
            seconds,
        } => stuck::run(failing_keys, rate, seconds).await,
        Scenario::Purge {
            calls,
            payload_bytes,
            rate,
            flow_seconds,
        } => purge::run(calls, payload_bytes, rate, flow_seconds).await,
    }
}

async fn ingest(records: usize, payload_bytes: usize, runs: usize) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    tansu.create_topic("bench", 3).await;
    let payload = vec![b'x'; payload_bytes];
    let producer = producer(&tansu.bootstrap());
    for chunk in 0..records.div_ceil(50_000) {
        let n = 50_000.min(records - chunk * 50_000);
        let batch = (0..n)
            .map(|i| Out::keyed(format!("k{}", i % 1000), payload.clone()))
            .collect();
        produce(&producer, "bench", batch).await;
    }
    println!("produced {records} records of {payload_bytes} bytes to 3 partitions on Tansu");

    let source_only = source_consume(&tansu.bootstrap(), records).await?;
    println!("source only (batches acknowledged at once): {source_only:.0} records/s");
    let mut raw = Vec::new();
    let mut engine = Vec::new();
    for run in 0..runs {
        raw.push(raw_consume(&tansu.bootstrap(), records, run)?);
        engine.push(engine_ingest(&tansu.bootstrap(), records, run).await?);
        println!(
            "run {}: raw consume {:.0} records/s, engine ingest {:.0} records/s, ratio {:.2}",
            run + 1,
            raw[run],
            engine[run],
            engine[run] / raw[run]
        );
    }
    let ratios: Vec<f64> = raw.iter().zip(&engine).map(|(r, e)| e / r).collect();
    println!("| measure | median | min | max |");
    println!("|---|---|---|---|");
    for (name, values) in [
        ("raw consume (records/s)", &raw),
        ("engine ingest (records/s)", &engine),
        ("ratio engine / raw", &ratios),
    ] {
        let (median, min, max) = summary(values);
        println!("| {name} | {median:.2} | {min:.2} | {max:.2} |");
    }
    Ok(())
}

fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2], sorted[0], sorted[sorted.len() - 1])
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn consumer_options(config: &mut ClientConfig) {
    for (key, value) in TANSU_CONSUMER {
        config.set(key, value);
    }
}

/// Records/s of a plain consumer-group member doing nothing with the records, from the
/// first record to the last.
fn raw_consume(bootstrap: &str, records: usize, run: usize) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raw-{run}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    consumer_options(&mut config);
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&["bench"])?;
    let mut seen = 0;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < records {
        anyhow::ensure!(Instant::now() < deadline, "raw consumer timed out at {seen} records");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => {
                started.get_or_insert_with(Instant::now);
                seen += 1;
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
            None => {}
        }
    }
    Ok(records as f64 / started.context("no record")?.elapsed().as_secs_f64())
}

/// Records/s through the engine's Kafka source alone, every batch acknowledged at once.
async fn source_consume(bootstrap: &str, records: usize) -> anyhow::Result<f64> {
    let mut config = connectors::kafka::SourceConfig::new("bench", bootstrap, vec!["bench".into()], "source-only");
    for (key, value) in TANSU_CONSUMER {
        config.options.insert(key.into(), value.into());
    }
    let (source, mut batches) = connectors::kafka::Source::start(config)?;
    let mut seen = 0;
    let mut started = None;
    while seen < records {
        let batch = batches.recv().await.context("source stopped")?;
        started.get_or_insert_with(Instant::now);
        seen += batch.records.len();
        batch.ack.ack();
    }
    let rate = records as f64 / started.context("no batch")?.elapsed().as_secs_f64();
    drop(batches);
    tokio::task::spawn_blocking(move || source.stop()).await?;
    Ok(rate)
}

/// Records/s from Kafka to durable calls, delivery paused, from the first call to the last.
async fn engine_ingest(bootstrap: &str, records: usize, run: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in("target")?;
    let subscription = Subscription::new("bench", "http://127.0.0.1:9/")
        .set("paused", true)
        .kafka(bootstrap, &["bench"])
        .kafka_set("group_id", format!("engine-{run}"))
        .kafka_set("max_backlog", 100_000_000)
        .tansu_consumer();
    let config = EngineConfig::new(dir.path().join("bench.db"))
        .subscription(subscription)
        .build();
    let engine = Engine::start(config).await?;
    let stats = std::sync::Arc::clone(&engine.figures()["bench"]);
    let ingested = || stats.snapshot().ingested as usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while ingested() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "engine ingested nothing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let first = ingested();
    while ingested() < records {
        anyhow::ensure!(Instant::now() < deadline, "engine ingest timed out at {}", ingested());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let rate = (records - first) as f64 / elapsed.as_secs_f64();
    let writer = engine.store().writer_stats();
    let commits = writer.commits.load(std::sync::atomic::Ordering::Relaxed);
    let rows = writer.rows.load(std::sync::atomic::Ordering::Relaxed);
    let busy = Duration::from_micros(writer.commit_micros.load(std::sync::atomic::Ordering::Relaxed));
    eprintln!(
        "  engine: {commits} commits, {:.0} rows per commit, writer busy {busy:.2?} of {elapsed:.2?}",
        rows as f64 / commits.max(1) as f64
    );
    engine.shutdown().await?;
    Ok(rate)
}
