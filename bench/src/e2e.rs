//! End-to-end scenarios, each run against one Tansu broker with every component a process of
//! its own: `engine serve` (release), the SDK no-op handler (`bench handler`), and for the
//! comparison restate-server with its peer handler (bench/restate-peer).
//!
//! - throughput: N records produced up front, then delivered; calls/s from the first
//!   delivery to the last, commit batch sizes, commits/s, CPU per record.
//! - latency: records produced at a fixed rate; produce → handler start p50/p99/p999.
//! - head-of-line: 1% of records fail twice; the engine against a naive inline-retry consumer.
//! - memory: RSS with a 1M-call backlog, and the time from restart to the first delivery.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::Tansu;
use integration_tests::{free_addr, workspace_binary};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::now_us;

pub use integration_tests::Proc;

/// CPU seconds (user + system) used so far by a process.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // After the command name: state is field 3; utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

pub use integration_tests::rss_mib;

pub async fn get_json(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

pub async fn post_json(url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = reqwest::Client::new().post(url).json(body).send().await?;
    let status = response.status();
    let text = response.text().await?;
    anyhow::ensure!(status.is_success(), "POST {url}: {status}: {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Wait until `condition` holds, polling every 50 ms.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The SDK handler as a process; `stats` is its stats URL.
pub struct Handler {
    _proc: Proc,
    pub url: String,
    pub stats: String,
}

impl Handler {
    pub async fn start() -> anyhow::Result<Self> {
        let (listen, stats) = (free_addr(), free_addr());
        let child = Command::new(std::env::current_exe()?)
            .args([
                "handler",
                "--listen",
                &listen.to_string(),
                "--stats",
                &stats.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let handler = Self {
            _proc: Proc(child),
            url: format!("http://{listen}/run"),
            stats: format!("http://{stats}/stats"),
        };
        let stats_url = handler.stats.clone();
        wait_until("the bench handler", Duration::from_secs(10), || {
            let url = stats_url.clone();
            async move { get_json(&url).await.is_ok() }
        })
        .await?;
        Ok(handler)
    }
}

/// The figures a handler (ours or Restate's peer) reports.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    pub count: u64,
    pub first_us: u64,
    pub last_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub arrivals_us: Vec<u64>,
    pub latencies_us: Vec<u64>,
}

pub async fn delivered(stats_url: &str, raw: bool) -> anyhow::Result<Delivered> {
    let url = if raw {
        format!("{stats_url}?raw=1")
    } else {
        stats_url.to_string()
    };
    let v = get_json(&url).await?;
    let list = |k: &str| -> Vec<u64> {
        v[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    Ok(Delivered {
        count: v["count"].as_u64().unwrap_or(0),
        first_us: v["first_us"].as_u64().unwrap_or(0),
        last_us: v["last_us"].as_u64().unwrap_or(0),
        p50_us: v["latency_us"]["p50"].as_u64().unwrap_or(0),
        p99_us: v["latency_us"]["p99"].as_u64().unwrap_or(0),
        p999_us: v["latency_us"]["p999"].as_u64().unwrap_or(0),
        arrivals_us: list("arrivals_us"),
        latencies_us: list("latencies_us"),
    })
}

/// Wait until the handler counted `n` calls, or no progress for `stall`.
pub async fn wait_delivered(stats_url: &str, n: u64, stall: Duration) -> anyhow::Result<Delivered> {
    let mut last = (0, Instant::now());
    loop {
        let d = delivered(stats_url, false).await?;
        if d.count >= n {
            return Ok(d);
        }
        if d.count != last.0 {
            last = (d.count, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < stall,
            "stalled at {} of {n} deliveries for {stall:?}",
            d.count
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// A bench payload of about 100 bytes: the produce time, failures asked for, padding.
pub fn payload(fail: u32) -> Vec<u8> {
    let head = format!(r#"{{"ts_us":{},"fail":{fail},"pad":""#, now_us());
    let pad = 98usize.saturating_sub(head.len());
    format!("{head}{}\"}}", "x".repeat(pad)).into_bytes()
}

/// Produce `n` records at once (each stamped when handed to the client). `fail(i)` says how
/// many attempts record `i` fails.
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    n: usize,
    fail: impl Fn(usize) -> u32,
) -> anyhow::Result<()> {
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        // 997 keys: a prime, so that records picked by `i % 100` spread over all keys.
        let key = format!("key-{}", i % 997);
        let value = payload(fail(i));
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((e, _)) => {
                    anyhow::ensure!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    for d in pending.drain(..) {
                        d.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// Produce at `rate` records/s for `seconds`, in ticks of 10 ms, each record stamped when
/// produced. Returns how many were produced.
pub async fn produce_at_rate(producer: &FutureProducer, topic: &str, rate: u64, seconds: u64) -> anyhow::Result<u64> {
    let start = Instant::now();
    let total = rate * seconds;
    let mut sent = 0u64;
    let mut pending = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let key = format!("key-{}", sent % 1000);
            let value = payload(0);
            match producer.send_result(FutureRecord::to(topic).key(&key).payload(&value)) {
                Ok(d) => pending.push(d),
                Err((e, _)) => anyhow::bail!("produce: {e}"),
            }
            sent += 1;
        }
        if pending.len() > 50_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(sent)
}

/// `engine serve` (the release binary next to this one) on a fresh database.
pub struct EngineProc {
    pub proc: Proc,
    pub admin: String,
    pub config: PathBuf,
}

pub struct EngineSetup<'a> {
    pub dir: &'a Path,
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub target: &'a str,
    pub group: &'a str,
    /// Store the calls without delivering them.
    pub paused: bool,
}

impl EngineProc {
    pub fn config(setup: &EngineSetup<'_>, admin: std::net::SocketAddr) -> String {
        let subscription = Subscription::new("bench", setup.target)
            .ordering("key")
            .max_concurrency(256)
            .set("paused", setup.paused)
            .retry("initial_delay", "100ms")
            .retry("multiplier", 2.0)
            .retry("max_delay", "2s")
            .retry("max_attempts", 0)
            .kafka(setup.bootstrap, &[setup.topic])
            .kafka_set("group_id", setup.group)
            .kafka_set("max_backlog", 2_000_000)
            .tansu_consumer();
        EngineConfig::new(setup.dir.join("engine.db"))
            .admin(admin)
            .subscription(subscription)
            .to_toml()
    }

    pub async fn start(setup: &EngineSetup<'_>) -> anyhow::Result<Self> {
        let admin = free_addr();
        let config = setup.dir.join("engine.toml");
        std::fs::write(&config, Self::config(setup, admin))?;
        Self::spawn(config, format!("http://{admin}")).await
    }

    pub async fn spawn(config: PathBuf, admin: String) -> anyhow::Result<Self> {
        let child = Command::new(workspace_binary("engine"))
            .args(["serve", "--config"])
            .arg(&config)
            .env(
                "ENGINE_LOG",
                std::env::var("BENCH_ENGINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn engine")?;
        let engine = Self {
            proc: Proc(child),
            admin,
            config,
        };
        let health = format!("{}/healthz", engine.admin);
        wait_until("the engine's admin API", Duration::from_secs(30), || {
            let url = health.clone();
            async move { reqwest::get(&url).await.is_ok() }
        })
        .await?;
        Ok(engine)
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.admin)).await?.text().await?)
    }

    pub async fn stats(&self) -> anyhow::Result<Value> {
        get_json(&format!("{}/v1/stats", self.admin)).await
    }
}

pub fn metric(metrics: &str, series: &str) -> f64 {
    integration_tests::metric(metrics, series).unwrap_or(0.0)
}

/// `engine serve` on a fresh database under `target/`, in key order, from `topic` to the
/// bench handler. The directory lives as long as the returned guard.
async fn keyed_engine(
    bootstrap: &str,
    topic: &str,
    handler: &Handler,
) -> anyhow::Result<(EngineProc, tempfile::TempDir)> {
    let dir = tempfile::tempdir_in("target")?;
    let group = format!("engine-{topic}");
    let engine = EngineProc::start(&EngineSetup {
        dir: dir.path(),
        bootstrap,
        topic,
        target: &handler.url,
        group: &group,
        paused: false,
    })
    .await?;
    Ok((engine, dir))
}

/// One run of the throughput scenario for the engine.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub calls_per_s: f64,
    pub rows_per_commit: f64,
    pub commits_per_s: f64,
    pub cpu_us_per_record: f64,
}

pub async fn engine_throughput(tansu: &Tansu, records: usize, run: usize) -> anyhow::Result<Throughput> {
    let topic = format!("e2e-{run}");
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    produce_all(&producer(&bootstrap), &topic, records, |_| 0).await?;
    let handler = Handler::start().await?;
    let started = Instant::now();
    let (engine, _dir) = keyed_engine(&bootstrap, &topic, &handler).await?;
    let cpu_before = cpu_seconds(engine.proc.pid());
    let done = wait_delivered(&handler.stats, records as u64, Duration::from_secs(60)).await?;
    let total = started.elapsed();
    let cpu = cpu_seconds(engine.proc.pid()) - cpu_before;
    // The last outcomes are committed a moment after the last delivery.
    wait_until("every call succeeded", Duration::from_secs(30), || async {
        engine
            .stats()
            .await
            .is_ok_and(|s| s["succeeded"].as_u64() == Some(records as u64))
    })
    .await?;
    let metrics = engine.metrics().await?;
    let commits = metric(&metrics, "engine_store_commit_rows_count");
    let rows = metric(&metrics, "engine_store_commit_rows_sum");
    let span = (done.last_us - done.first_us) as f64 / 1e6;
    engine.proc.stop();
    eprintln!(
        "  engine run {}: {records} calls in {total:.1?} from start, {span:.2} s first to last delivery",
        run + 1
    );
    Ok(Throughput {
        calls_per_s: (records - 1) as f64 / span,
        rows_per_commit: rows / commits.max(1.0),
        commits_per_s: commits / total.as_secs_f64(),
        cpu_us_per_record: cpu * 1e6 / records as f64,
    })
}

/// Latency at a fixed rate through the engine: (delivered figures, produced count).
pub async fn engine_latency(tansu: &Tansu, rate: u64, seconds: u64) -> anyhow::Result<Delivered> {
    let topic = format!("latency-{rate}");
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    let handler = Handler::start().await?;
    let (engine, _dir) = keyed_engine(&bootstrap, &topic, &handler).await?;
    // Warm up: the group join and the first fetches are not part of the steady state.
    produce_all(&producer(&bootstrap), &topic, 10, |_| 0).await?;
    wait_delivered(&handler.stats, 10, Duration::from_secs(60)).await?;
    reqwest::Client::new()
        .post(handler.stats.replace("/stats", "/reset"))
        .send()
        .await?;
    let produced = produce_at_rate(&producer(&bootstrap), &topic, rate, seconds).await?;
    let result = wait_delivered(&handler.stats, produced, Duration::from_secs(30)).await;
    let d = delivered(&handler.stats, true).await?;
    engine.proc.stop();
    result?;
    Ok(d)
}

/// Head-of-line: seconds until every record is handled, for the engine.
pub async fn engine_hol(tansu: &Tansu, records: usize, failing: bool, run: usize) -> anyhow::Result<f64> {
    let topic = format!("hol-{}-{run}", if failing { "fail" } else { "ok" });
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    produce_all(&producer(&bootstrap), &topic, records, |i| {
        if failing && i % 100 == 7 {
            2
        } else {
            0
        }
    })
    .await?;
    let handler = Handler::start().await?;
    let started = Instant::now();
    let (engine, _dir) = keyed_engine(&bootstrap, &topic, &handler).await?;
    wait_delivered(&handler.stats, records as u64, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    engine.proc.stop();
    Ok(elapsed)
}

/// Head-of-line: a plain consumer that calls the handler inline and retries inline with the
/// same backoff as the engine (100 ms, doubling), committing after each record.
pub async fn naive_hol(tansu: &Tansu, records: usize, run: usize) -> anyhow::Result<f64> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let topic = format!("hol-naive-{run}");
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    produce_all(
        &producer(&bootstrap),
        &topic,
        records,
        |i| if i % 100 == 7 { 2 } else { 0 },
    )
    .await?;
    let handler = Handler::start().await?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("naive-{topic}"))
        .set("auto.offset.reset", "earliest");
    crate::consumer_options(&mut config);
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[&topic])?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut done = 0;
    while done < records {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("naive consumer: no record for 60 s")??;
        let id = format!("{}-{}-{}", message.topic(), message.partition(), message.offset());
        let body = message.payload().unwrap_or_default().to_vec();
        let mut delay = Duration::from_millis(100);
        for attempt in 1.. {
            let response = http
                .post(&handler.url)
                .header(sdk::protocol::header::CALL_ID, &id)
                .header(sdk::protocol::header::ATTEMPT, attempt.to_string())
                .header(sdk::protocol::header::SUBSCRIPTION, "naive")
                .header(
                    sdk::protocol::header::PROTOCOL,
                    sdk::protocol::PROTOCOL_VERSION.to_string(),
                )
                .body(body.clone())
                .send()
                .await?;
            if response.status().is_success() {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        consumer.store_offset_from_message(&message)?;
        done += 1;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Memory with a backlog, and the time from a restart to the first delivery.
#[derive(Debug, Clone)]
pub struct Memory {
    pub backlog: u64,
    pub ingest_s: f64,
    pub rss_mib: f64,
    pub peak_mib: f64,
    pub restart_rss_mib: f64,
    pub first_delivery_s: f64,
}

pub async fn engine_memory(tansu: &Tansu, records: usize) -> anyhow::Result<Memory> {
    let topic = "memory";
    tansu.create_topic(topic, 3).await;
    let bootstrap = tansu.bootstrap();
    produce_all(&producer(&bootstrap), topic, records, |_| 0).await?;
    let handler = Handler::start().await?;
    let dir = tempfile::tempdir_in("target")?;
    let setup = EngineSetup {
        dir: dir.path(),
        bootstrap: &bootstrap,
        topic,
        target: &handler.url,
        group: "engine-memory",
        paused: true,
    };
    let started = Instant::now();
    let engine = EngineProc::start(&setup).await?;
    wait_until("the backlog to be stored", Duration::from_secs(600), || async {
        engine
            .stats()
            .await
            .is_ok_and(|s| s["pending"].as_u64() == Some(records as u64))
    })
    .await?;
    let ingest_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, peak) = rss_mib(engine.proc.pid());
    let (config, admin) = (engine.config.clone(), engine.admin.clone());
    engine.proc.stop();
    // Restart with delivery on: how long until the first call reaches the handler?
    let text = std::fs::read_to_string(&config)?.replace("paused = true", "");
    std::fs::write(&config, text)?;
    let restarted = Instant::now();
    let engine = EngineProc::spawn(config, admin).await?;
    wait_delivered(&handler.stats, 1, Duration::from_secs(120)).await?;
    let first_delivery_s = restarted.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (restart_rss, _) = rss_mib(engine.proc.pid());
    engine.proc.stop();
    Ok(Memory {
        backlog: records as u64,
        ingest_s,
        rss_mib: rss,
        peak_mib: peak,
        restart_rss_mib: restart_rss,
        first_delivery_s,
    })
}
