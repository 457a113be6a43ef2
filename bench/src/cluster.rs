//! Cluster mode (docs/scaling.md) on one machine, every engine a process of its own in one
//! consumer group, against one Tansu broker and the SDK no-op handler:
//!
//! - throughput: the group forms on an empty topic of 6 partitions, then `records` keyed
//!   records are produced at once; calls/s from the first delivery to the last, with one
//!   engine without cluster mode (the changelog's cost) and with 1, 2 and 3 engines in it;
//! - restore: one paused engine stores `restore_calls` open calls, leaves (handing them to
//!   the changelog), and a second engine restores them; the restore's own time and the
//!   time from the second engine's start to every call pending there.

use std::time::{Duration, Instant};

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::free_addr;
use integration_tests::kafka::Tansu;

use crate::e2e::{cpu_seconds, metric, produce_all, producer, wait_delivered, wait_until, EngineProc, Handler};

const PARTITIONS: i32 = 6;

/// One way of running the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// One engine, `[cluster]` off.
    Single,
    /// This many engines in cluster mode.
    Cluster(usize),
}

impl Setup {
    fn engines(self) -> usize {
        match self {
            Self::Single => 1,
            Self::Cluster(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Self::Single => "1 engine, no cluster mode".into(),
            Self::Cluster(n) => format!("{n} engine{} in cluster mode", if n == 1 { "" } else { "s" }),
        }
    }
}

/// The config of one engine of a group.
fn config(
    dir: &std::path::Path,
    bootstrap: &str,
    topic: &str,
    group: &str,
    target: &str,
    cluster: bool,
    paused: bool,
) -> (String, String) {
    let admin = free_addr();
    let subscription = Subscription::new("bench", target)
        .ordering("key")
        .max_concurrency(256)
        .set("paused", paused)
        .retry("initial_delay", "100ms")
        .retry("max_attempts", 0)
        .kafka(bootstrap, &[topic])
        .kafka_set("group_id", group)
        .kafka_set("max_backlog", 2_000_000)
        .tansu_consumer();
    let mut engine = EngineConfig::new(dir.join("engine.db")).admin(admin);
    if cluster {
        engine = engine.cluster();
    }
    (engine.subscription(subscription).to_toml(), format!("http://{admin}"))
}

/// Start `n` engines of one group; the guard keeps their directories.
async fn start_group(
    n: usize,
    tansu: &Tansu,
    topic: &str,
    group: &str,
    target: &str,
    cluster: bool,
    paused: bool,
) -> anyhow::Result<(Vec<EngineProc>, Vec<tempfile::TempDir>)> {
    let mut engines = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..n {
        let dir = tempfile::tempdir_in("target")?;
        let (text, admin) = config(dir.path(), &tansu.bootstrap(), topic, group, target, cluster, paused);
        let path = dir.path().join("engine.toml");
        std::fs::write(&path, text)?;
        engines.push(EngineProc::spawn(path, admin).await?);
        dirs.push(dir);
    }
    Ok((engines, dirs))
}

/// Partitions held by each engine, and their rebalances so far.
async fn assignment(engines: &[EngineProc]) -> (Vec<usize>, u64) {
    let mut held = Vec::new();
    let mut rebalances = 0;
    for engine in engines {
        let stats = engine.stats().await.unwrap_or_default();
        let live = &stats["subscriptions"]["bench"];
        held.push(live["assigned"].as_array().map_or(0, Vec::len));
        rebalances += live["rebalances"].as_u64().unwrap_or(0);
    }
    (held, rebalances)
}

/// Wait until every partition is held, each engine holds some, and no rebalance happened
/// for two seconds.
async fn wait_stable(engines: &[EngineProc]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (Vec::new(), u64::MAX, Instant::now());
    loop {
        let (held, rebalances) = assignment(engines).await;
        let complete = held.iter().sum::<usize>() == PARTITIONS as usize && held.iter().all(|&h| h > 0);
        if (held.clone(), rebalances) != (last.0.clone(), last.1) {
            last = (held, rebalances, Instant::now());
        } else if complete && last.2.elapsed() >= Duration::from_secs(2) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the group did not settle: {:?}", last.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Throughput {
    calls_per_s: f64,
    produce_s: f64,
    cpu_us_per_call: f64,
}

async fn throughput(tansu: &Tansu, setup: Setup, records: usize, run: usize) -> anyhow::Result<Throughput> {
    let topic = match setup {
        Setup::Single => format!("cluster-{run}-single"),
        Setup::Cluster(n) => format!("cluster-{run}-{n}"),
    };
    let group = format!("engine-{topic}");
    tansu.create_topic(&topic, PARTITIONS).await;
    tansu.create_topic(&format!("{group}.calls"), PARTITIONS).await;
    tansu.create_topic(&format!("{group}.members"), 1).await;
    let handler = Handler::start().await?;
    let (engines, _dirs) = start_group(
        setup.engines(),
        tansu,
        &topic,
        &group,
        &handler.url,
        setup != Setup::Single,
        false,
    )
    .await?;
    wait_stable(&engines).await?;
    let cpu_before: f64 = engines.iter().map(|e| cpu_seconds(e.proc.pid())).sum();
    let started = Instant::now();
    produce_all(&producer(&tansu.bootstrap()), &topic, records, |_| 0).await?;
    let produce_s = started.elapsed().as_secs_f64();
    let done = wait_delivered(&handler.stats, records as u64, Duration::from_secs(60)).await?;
    let cpu: f64 = engines.iter().map(|e| cpu_seconds(e.proc.pid())).sum::<f64>() - cpu_before;
    let span = (done.last_us - done.first_us) as f64 / 1e6;
    for engine in engines {
        engine.proc.stop();
    }
    eprintln!(
        "  {} run {}: {records} calls, {span:.2} s first to last delivery, produced in {produce_s:.2} s",
        setup.label(),
        run + 1
    );
    Ok(Throughput {
        calls_per_s: (records - 1) as f64 / span,
        produce_s,
        cpu_us_per_call: cpu * 1e6 / records as f64,
    })
}

/// Calls pending on an engine.
async fn pending(engine: &EngineProc) -> u64 {
    let stats = engine.stats().await.unwrap_or_default();
    stats["subscriptions"]["bench"]["pending"].as_u64().unwrap_or(0)
}

struct RestoreRun {
    store_s: f64,
    took_s: f64,
    until_pending_s: f64,
    restored: f64,
}

async fn restore(tansu: &Tansu, calls: usize, run: usize) -> anyhow::Result<RestoreRun> {
    let topic = format!("restore-{run}");
    let group = format!("engine-{topic}");
    tansu.create_topic(&topic, PARTITIONS).await;
    tansu.create_topic(&format!("{group}.calls"), PARTITIONS).await;
    tansu.create_topic(&format!("{group}.members"), 1).await;
    let nowhere = format!("http://{}/", free_addr());
    let started = Instant::now();
    let (old, _old_dir) = start_group(1, tansu, &topic, &group, &nowhere, true, true).await?;
    produce_all(&producer(&tansu.bootstrap()), &topic, calls, |_| 0).await?;
    wait_until(
        "the first engine to store every call",
        Duration::from_secs(600),
        || async { pending(&old[0]).await == calls as u64 },
    )
    .await?;
    let store_s = started.elapsed().as_secs_f64();
    for engine in old {
        engine.proc.stop();
    }
    let started = Instant::now();
    let (new, _new_dir) = start_group(1, tansu, &topic, &group, &nowhere, true, true).await?;
    wait_until(
        "the second engine to restore every call",
        Duration::from_secs(600),
        || async { pending(&new[0]).await == calls as u64 },
    )
    .await?;
    let until_pending_s = started.elapsed().as_secs_f64();
    let metrics = new[0].metrics().await?;
    let result = RestoreRun {
        store_s,
        took_s: metric(&metrics, "engine_cluster_restore_seconds_total{subscription=\"bench\"}"),
        until_pending_s,
        restored: metric(&metrics, "engine_cluster_restored_calls_total{subscription=\"bench\"}"),
    };
    for engine in new {
        engine.proc.stop();
    }
    eprintln!(
        "  restore run {}: {calls} open calls stored in {store_s:.1} s, restored in {:.2} s, pending on the new engine {until_pending_s:.1} s after its start",
        run + 1,
        result.took_s
    );
    Ok(result)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(records: usize, engines: Vec<usize>, runs: usize, restore_calls: usize) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    let mut setups = vec![Setup::Single];
    setups.extend(engines.iter().map(|&n| Setup::Cluster(n)));
    let mut results: Vec<Vec<Throughput>> = setups.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        // Interleaved, the order turning each run, so drift hits every setup alike.
        for i in 0..setups.len() {
            let index = (i + run) % setups.len();
            results[index].push(throughput(&tansu, setups[index], records, run).await?);
        }
    }
    let single = median(results[0].iter().map(|t| t.calls_per_s).collect());
    println!("\n| engines | calls/s (median of {runs}) | vs one engine without cluster mode | engine CPU per call | produce time |");
    println!("|---|---|---|---|---|");
    for (setup, runs) in setups.iter().zip(&results) {
        let rate = median(runs.iter().map(|t| t.calls_per_s).collect());
        println!(
            "| {} | {rate:.0} | {:.2}x | {:.0} µs | {:.2} s |",
            setup.label(),
            rate / single,
            median(runs.iter().map(|t| t.cpu_us_per_call).collect()),
            median(runs.iter().map(|t| t.produce_s).collect()),
        );
    }
    if restore_calls > 0 {
        let mut restores = Vec::new();
        for run in 0..runs {
            restores.push(restore(&tansu, restore_calls, run).await?);
        }
        println!("\n| open calls | stored by the first engine | restore (claim, read, store) | second engine start to all pending | calls restored |");
        println!("|---|---|---|---|---|");
        for r in &restores {
            println!(
                "| {restore_calls} | {:.1} s | {:.2} s | {:.1} s | {:.0} |",
                r.store_s, r.took_s, r.until_pending_s, r.restored
            );
        }
    }
    Ok(())
}
