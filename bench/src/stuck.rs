//! Stuck keys hold back only themselves, at any number: many keys fail for a minute while
//! healthy keys flow; the healthy keys' latency is compared with a run without the failing
//! keys. Both runs use the default retry policy and window, as a user would.

use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::free_addr;
use integration_tests::kafka::Tansu;
use rdkafka::producer::FutureRecord;

use crate::e2e::{self, delivered, produce_at_rate, producer, EngineProc, Handler};
use crate::handler::percentile;
use crate::now_us;

/// Latencies (µs, sorted) of the healthy calls of one run.
struct Run {
    healthy: Vec<u64>,
    /// The same, for calls that arrived after the first 10 s of the flow (once the failing
    /// keys' first attempts, a burst ahead of the flow, are done).
    settled: Vec<u64>,
    delivered: u64,
    produced: u64,
}

async fn run_once(tansu: &Tansu, failing_keys: usize, rate: u64, seconds: u64, run: usize) -> anyhow::Result<Run> {
    let topic = format!("stuck-{run}");
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    let handler = Handler::start().await?;
    let dir = tempfile::tempdir_in("target")?;
    let admin = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin)
        .subscription(
            Subscription::new("bench", &handler.url)
                .retry("max_attempts", 0)
                .kafka(&bootstrap, &[&topic])
                .kafka_set("group_id", format!("engine-{topic}"))
                .tansu_consumer(),
        )
        .write(&config);
    let engine = EngineProc::spawn(config, format!("http://{admin}")).await?;
    let out = producer(&bootstrap);
    // Warm up: the group join is not part of the measure.
    produce_at_rate(&out, &topic, 100, 1).await?;
    e2e::wait_delivered(&handler.stats, 100, Duration::from_secs(60)).await?;
    reqwest::Client::new()
        .post(handler.stats.replace("/stats", "/reset"))
        .send()
        .await?;

    // Every failing key gets one record that fails every attempt for `seconds`, all at once
    // ahead of the healthy flow.
    // They fail a little past the flow, so that every healthy call delivered is one of the
    // flow's, and the failing keys weigh on all of it.
    let fail_until = now_us() + (seconds + 10) * 1_000_000;
    let mut pending = Vec::with_capacity(failing_keys);
    for i in 0..failing_keys {
        let key = format!("stuck-{i}");
        let value = format!(r#"{{"ts_us":{},"fail_until_us":{fail_until}}}"#, now_us());
        match out.send_result(FutureRecord::to(&topic).key(&key).payload(&value)) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => anyhow::bail!("produce: {e}"),
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    let flow_from = now_us();
    let produced = produce_at_rate(&out, &topic, rate, seconds).await?;
    // Up to 10 s for the last healthy calls (a stall is reported as calls not delivered).
    let _ = e2e::wait_delivered(&handler.stats, produced, Duration::from_secs(10)).await;
    let d = delivered(&handler.stats, true).await?;
    engine.proc.stop();
    // Only healthy calls can succeed before `fail_until`.
    let mut healthy: Vec<u64> = d
        .arrivals_us
        .iter()
        .zip(&d.latencies_us)
        .filter(|(at, _)| (flow_from..fail_until).contains(*at))
        .map(|(_, l)| *l)
        .collect();
    healthy.sort_unstable();
    let mut settled: Vec<u64> = d
        .arrivals_us
        .iter()
        .zip(&d.latencies_us)
        .filter(|(at, _)| (flow_from + 10_000_000..fail_until).contains(*at))
        .map(|(_, l)| *l)
        .collect();
    settled.sort_unstable();
    let delivered = healthy.len() as u64;
    Ok(Run {
        healthy,
        settled,
        delivered,
        produced,
    })
}

pub async fn run(failing_keys: usize, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    let without = run_once(&tansu, 0, rate, seconds, 0).await?;
    let with = run_once(&tansu, failing_keys, rate, seconds, 1).await?;
    let p99 = |r: &Run| percentile(&r.healthy, 0.99) as f64 / 1000.0;
    let p50 = |r: &Run| percentile(&r.healthy, 0.50) as f64 / 1000.0;
    println!(
        "Healthy keys: 1,000, at {rate} records/s for {seconds} s; default retry policy and window (10,000 calls)."
    );
    println!();
    println!("| run | healthy calls delivered during the flow | p50 | p99 | p99 after the first 10 s |");
    println!("|---|---|---|---|---|");
    for (name, r) in [
        ("healthy keys alone".to_string(), &without),
        (format!("with {failing_keys} keys failing for {seconds} s"), &with),
    ] {
        println!(
            "| {name} | {} of {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            r.delivered,
            r.produced,
            p50(r),
            p99(r),
            percentile(&r.settled, 0.99) as f64 / 1000.0
        );
    }
    println!();
    println!(
        "Healthy p99 with the failing keys / without: {:.2} over the whole flow, {:.2} after its first 10 s (goal <= 2).",
        p99(&with) / p99(&without),
        percentile(&with.settled, 0.99) as f64 / percentile(&without.settled, 0.99).max(1) as f64
    );
    Ok(())
}
