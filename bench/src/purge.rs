//! Retention under load: millions of succeeded calls past retention are purged while records
//! keep flowing. Reports commit times and end-to-end latency before and during the purge,
//! the file size before and after, and, for comparison, how long the single DELETE of
//! earlier versions takes on a copy of the same file (one commit that long stalls ingest).

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::free_addr;
use integration_tests::kafka::Tansu;
use serde_json::Value;

use crate::e2e::{self, delivered, produce_at_rate, producer, EngineProc, Handler};
use crate::handler::percentile;
use crate::now_us;

/// Calls in the seeded database that finished a day ago, `payload_bytes` each.
fn seed(db: &Path, calls: usize, payload_bytes: usize) -> anyhow::Result<()> {
    // The engine makes the schema; the rows are written in bulk, as if finished a day ago,
    // with ids ordered by time as the engine's UUID v7 are.
    engine::store::Store::open(db, engine::store::StoreOptions::default())?.close();
    let conn = rusqlite::Connection::open(db)?;
    let day_ago = engine::model::now_millis() - 86_400_000;
    conn.execute_batch("BEGIN")?;
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO calls (id, subscription, target, payload, status, attempts, next_attempt_at, created_at, updated_at)
         SELECT printf('%08x-%04x-7000-8000-%012x', ?3 >> 16, ?3 & 65535, i), 'bench', 'http://127.0.0.1:1/',
                randomblob(?2), 'succeeded', 1, ?3, ?3, ?3 FROM n",
        rusqlite::params![calls as i64, payload_bytes as i64, day_ago],
    )?;
    conn.execute(
        "INSERT INTO attempts (call_seq, attempt, started_at, duration_ms, outcome, http_status)
         SELECT seq, 1, updated_at, 1, 'success', 200 FROM calls",
        [],
    )?;
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")?;
    Ok(())
}

/// Bytes of the database and of its WAL.
fn file_bytes(db: &Path) -> (u64, u64) {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    (size(db), size(&db.with_extension("db-wal")))
}

/// Seconds the purge of earlier versions (one DELETE of every expired call and its
/// attempts, in one transaction) takes on a copy of `db`.
fn one_delete_seconds(db: &Path) -> anyhow::Result<f64> {
    let copy = db.with_file_name("copy.db");
    std::fs::copy(db, &copy)?;
    let mut conn = rusqlite::Connection::open(&copy)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let before = engine::model::now_millis();
    let started = Instant::now();
    let tx = conn.transaction()?;
    tx.execute(
        "DELETE FROM attempts WHERE call_seq IN (
             SELECT seq FROM calls WHERE status IN ('succeeded', 'cancelled') AND updated_at < ?1)",
        [before],
    )?;
    tx.execute(
        "DELETE FROM calls WHERE status IN ('succeeded', 'cancelled') AND updated_at < ?1",
        [before],
    )?;
    tx.commit()?;
    let took = started.elapsed().as_secs_f64();
    drop(conn);
    for path in [
        copy.clone(),
        copy.with_extension("db-wal"),
        copy.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(path);
    }
    Ok(took)
}

/// The store's commit-time histogram: (upper bound in seconds, commits at or under it).
fn commit_buckets(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("engine_store_commit_duration_seconds_bucket{le=\"")?;
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.parse().ok()?))
        })
        .collect()
}

/// Store commits between two snapshots of the commit-time histogram.
struct CommitFigures {
    count: f64,
    over_50ms: f64,
    /// (upper bound in seconds, commits at or under it), cumulative.
    buckets: Vec<(f64, f64)>,
}

impl CommitFigures {
    fn between(from: &[(f64, f64)], to: &[(f64, f64)]) -> Self {
        let buckets: Vec<(f64, f64)> = to
            .iter()
            .zip(from)
            .map(|((bound, after), (_, before))| (*bound, after - before))
            .collect();
        let count = buckets.last().map_or(0.0, |(_, n)| *n);
        let under_50ms = buckets
            .iter()
            .find(|(b, _)| (*b - 0.05).abs() < 1e-9)
            .map_or(0.0, |(_, n)| *n);
        Self {
            count,
            over_50ms: count - under_50ms,
            buckets,
        }
    }

    fn p99(&self) -> String {
        let bound = self
            .buckets
            .iter()
            .find(|(_, n)| *n >= self.count * 0.99)
            .map_or(f64::INFINITY, |(b, _)| *b);
        format!("{} ms", bound * 1000.0)
    }
}

/// End-to-end latencies (µs, sorted) of the calls that arrived in `window` (µs since epoch).
fn latencies(d: &e2e::Delivered, window: std::ops::Range<u64>) -> Vec<u64> {
    let mut out: Vec<u64> = d
        .arrivals_us
        .iter()
        .zip(&d.latencies_us)
        .filter(|(at, _)| window.contains(*at))
        .map(|(_, l)| *l)
        .collect();
    out.sort_unstable();
    out
}

fn latency_cell(sorted: &[u64]) -> String {
    format!(
        "{:.1} / {:.1} ms ({} calls)",
        percentile(sorted, 0.50) as f64 / 1000.0,
        percentile(sorted, 0.99) as f64 / 1000.0,
        sorted.len()
    )
}

pub async fn run(old_calls: usize, payload_bytes: usize, rate: u64, flow_seconds: u64) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    tansu.create_topic("purge", 3).await;
    let bootstrap = tansu.bootstrap();
    let dir = tempfile::tempdir_in("target")?;
    let db = dir.path().join("engine.db");
    let seeding = Instant::now();
    seed(&db, old_calls, payload_bytes)?;
    let size_before = file_bytes(&db).0;
    eprintln!(
        "purge: seeded {old_calls} calls in {:.0} s, {:.0} MiB",
        seeding.elapsed().as_secs_f64(),
        size_before as f64 / 1_048_576.0
    );
    let single = one_delete_seconds(&db)?;
    eprintln!("purge: one DELETE (earlier versions) takes {single:.1} s on a copy");

    let handler = Handler::start().await?;
    let admin = free_addr();
    let subscription = Subscription::new("bench", &handler.url)
        .max_concurrency(256)
        .kafka(&bootstrap, &["purge"])
        .kafka_set("group_id", "engine-purge")
        .tansu_consumer();
    let config = dir.path().join("engine.toml");
    // Retention 2 min: the first purge runs 12 s after the start, once records flow; the
    // seeded calls are all past it, the flowing ones are not.
    EngineConfig::new(&db)
        .admin(admin)
        .store("retention", "120s")
        .subscription(subscription)
        .write(&config);
    let mut engine = EngineProc::spawn(config, format!("http://{admin}")).await?;
    // Records flow for `flow_seconds` from the start (the purge begins after about 12 s);
    // longer would grow Tansu's in-memory log until the broker, not the engine, is the
    // bottleneck. The purge goes on alone after that.
    let flow = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move { produce_at_rate(&producer(&bootstrap), "purge", rate, flow_seconds).await })
    };
    e2e::wait_delivered(&handler.stats, 1, Duration::from_secs(60)).await?;
    let metrics_before = commit_buckets(&engine.metrics().await?);
    let mut metrics_at_start = Vec::new();
    let mut metrics_at_flow_end = None;
    let started = Instant::now();
    let (mut purge_from, mut purge_to) = (None, None);
    while purge_to.is_none() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let stats: Value = engine.stats().await?;
        let succeeded = stats["succeeded"].as_u64().unwrap_or(0);
        let flowed = delivered(&handler.stats, false).await?.count;
        if purge_from.is_none() && succeeded < old_calls as u64 {
            purge_from = Some((Instant::now(), now_us()));
            metrics_at_start = commit_buckets(&engine.metrics().await?);
        }
        if metrics_at_flow_end.is_none() && flow.is_finished() {
            metrics_at_flow_end = Some((commit_buckets(&engine.metrics().await?), now_us()));
        }
        // Done when only the flowing calls are left.
        if purge_from.is_some() && succeeded <= flowed + 1000 {
            purge_to = Some((Instant::now(), now_us()));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3000),
            "the purge did not finish in time"
        );
    }
    let (from, to) = (purge_from.unwrap(), purge_to.unwrap());
    let purge_seconds = (to.0 - from.0).as_secs_f64();
    // Then the freed pages go back to the file system, a little per commit: wait until the
    // file stops shrinking.
    let (mut smallest, mut shrunk_at) = (file_bytes(&db).0, Instant::now());
    while shrunk_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let size = file_bytes(&db).0;
        if size < smallest {
            (smallest, shrunk_at) = (size, Instant::now());
        }
    }
    let vacuum_seconds = (shrunk_at - to.0).as_secs_f64();
    let metrics_after = commit_buckets(&engine.metrics().await?);
    let (metrics_flowing, flow_end_us) = metrics_at_flow_end.unwrap_or((metrics_after, now_us()));
    flow.abort();
    let d = delivered(&handler.stats, true).await?;
    engine.proc.terminate();
    let size_after = file_bytes(&db);

    let before = latencies(&d, d.first_us + 2_000_000..from.1);
    let during = latencies(&d, from.1..flow_end_us);
    let commits_before = CommitFigures::between(&metrics_before, &metrics_at_start);
    let commits_during = CommitFigures::between(&metrics_at_start, &metrics_flowing);
    let flow_during_purge = flow_end_us.saturating_sub(from.1) as f64 / 1e6;

    println!(
        "Calls past retention: {old_calls} ({payload_bytes}-byte payloads, one attempt each); records flowing: {rate}/s for the first {flow_during_purge:.0} s of the purge (\"during the purge\" below); deleting them took {purge_seconds:.1} s in all, giving the pages back {vacuum_seconds:.1} s more."
    );
    println!();
    println!("| | before the purge (steady flow) | during the purge |");
    println!("|---|---|---|");
    println!("| commits | {} | {} |", commits_before.count, commits_during.count);
    println!(
        "| commit p99 (histogram bucket) | <= {} | <= {} |",
        commits_before.p99(),
        commits_during.p99()
    );
    println!(
        "| commits over 50 ms | {} | {} |",
        commits_before.over_50ms, commits_during.over_50ms
    );
    println!(
        "| end-to-end p50 / p99 | {} | {} |",
        latency_cell(&before),
        latency_cell(&during)
    );
    println!();
    println!(
        "Database file before / after: {:.0} MiB / {:.0} MiB (WAL {:.0} MiB after). The single DELETE of earlier versions takes {single:.1} s on a copy of the seeded file: one commit that long, with ingest and outcomes waiting behind it.",
        size_before as f64 / 1_048_576.0,
        size_after.0 as f64 / 1_048_576.0,
        size_after.1 as f64 / 1_048_576.0,
    );
    Ok(())
}
