//! Adaptive concurrency vs a fixed limit, against `flaky-endpoint --capacity C`.
//!
//! For each capacity, the same backlog of calls is delivered twice: with the adaptive limit
//! (the default), and with a fixed limit of 256. Reported: time to converge (the limit
//! stays within [0.7 C, 1.3 C] for a second), throughput as a fraction of the endpoint's
//! capacity (C requests per 2 × latency, its best rate), and the share of 429 answers.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use engine::model::NewCall;
use engine::store::{Store, StoreOptions};
use engine::{Config, Engine};
use integration_tests::{free_addr, workspace_binary};

use crate::e2e::Proc;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    limit: usize,
    ok: u64,
    throttled: u64,
}

async fn endpoint_stats(url: &str) -> anyhow::Result<(u64, u64)> {
    let body = reqwest_get(url).await?;
    let value: serde_json::Value = serde_json::from_str(&body)?;
    Ok((
        value["ok"].as_u64().unwrap_or(0),
        value["throttled_429"].as_u64().unwrap_or(0),
    ))
}

async fn reqwest_get(url: &str) -> anyhow::Result<String> {
    // A plain HTTP/1.0 GET, to keep the bench's dependencies to the engine's own.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

pub async fn run(capacities: &[u64], latency_ms: u64, seconds: u64) -> anyhow::Result<()> {
    println!("| capacity C | limit | converged after | throughput / capacity | 429 share after convergence | mean limit after convergence |");
    println!("|---|---|---|---|---|---|");
    for &capacity in capacities {
        for adaptive in [true, false] {
            let row = one(capacity, latency_ms, seconds, adaptive).await?;
            println!("{row}");
        }
    }
    Ok(())
}

async fn one(capacity: u64, latency_ms: u64, seconds: u64, adaptive: bool) -> anyhow::Result<String> {
    let best_rate = capacity as f64 / (2.0 * latency_ms as f64 / 1000.0);
    let calls = (best_rate * seconds as f64) as i64;
    let addr = free_addr();
    let _endpoint = Proc(
        Command::new(workspace_binary("flaky-endpoint"))
            .args(["--listen", &addr.to_string(), "--capacity", &capacity.to_string()])
            .args(["--latency-ms", &latency_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stats_url = format!("http://{addr}/stats");
    let deadline = Instant::now() + Duration::from_secs(30);
    while endpoint_stats(&stats_url).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "flaky-endpoint did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = tempfile::tempdir_in(".")?;
    let db = dir.path().join("limits.db");
    let target = format!("http://{addr}/work");
    // The backlog is in the store before delivery starts.
    let store = Store::open(&db, StoreOptions::default())?;
    for chunk in (0..calls).collect::<Vec<_>>().chunks(5000) {
        let batch = chunk
            .iter()
            .map(|n| NewCall {
                subscription: "bench".into(),
                target: target.clone(),
                payload: n.to_string().into_bytes(),
                tombstone: false,
                key: None,
                headers: None,
                source: None,
                ordering_key: None,
                dead_reason: None,
                block_group_if_dead: false,
            })
            .collect();
        store.insert(batch).await?;
    }
    store.close();
    drop(store);

    let concurrency = if adaptive {
        String::new()
    } else {
        "[endpoint.concurrency]\nadaptive = false\nmax = 256\n".to_string()
    };
    let config = Config::from_toml(&format!(
        r#"
[store]
path = "{db}"
[admin]
listen = "127.0.0.1:0"
[[endpoint]]
origin = "http://{addr}"
{concurrency}
[[subscription]]
name = "bench"
target = "{target}"
ordering = "unordered"
max_concurrency = 256
[subscription.retry]
initial_delay = "20ms"
max_delay = "500ms"
max_attempts = 0
"#,
        db = db.display()
    ))?;
    let started = Instant::now();
    let engine = Engine::start(config).await?;
    let (_, endpoint) = engine.endpoints().all().next().expect("one endpoint");
    let endpoint = std::sync::Arc::clone(endpoint);
    let stats = std::sync::Arc::clone(&engine.schedulers()["bench"]);
    let mut samples = Vec::new();
    while stats.succeeded.load(Relaxed) < calls as u64 {
        let (ok, throttled) = endpoint_stats(&stats_url).await?;
        samples.push(Sample {
            at: started.elapsed().as_secs_f64(),
            limit: endpoint.snapshot().limit,
            ok,
            throttled,
        });
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(seconds * 20),
            "run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed().as_secs_f64();
    let (ok_end, throttled_end) = endpoint_stats(&stats_url).await?;
    engine.shutdown().await?;

    let c = capacity as f64;
    let within = |s: &Sample| (0.7 * c..=1.3 * c).contains(&(s.limit as f64));
    let converged = if adaptive {
        samples
            .iter()
            .enumerate()
            .find(|(i, s)| within(s) && samples[*i..].iter().take_while(|t| t.at - s.at <= 1.0).all(within))
            .map(|(i, _)| i)
    } else {
        None
    };
    let from = converged.map_or(samples[0], |i| samples[i]);
    let window = (total - from.at).max(1e-3);
    let ok = ok_end - from.ok;
    let throttled = throttled_end - from.throttled;
    let after: Vec<&Sample> = converged.map(|i| samples[i..].iter().collect()).unwrap_or_default();
    let mean_limit = if after.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{:.1}",
            after.iter().map(|s| s.limit as f64).sum::<f64>() / after.len() as f64
        )
    };
    Ok(format!(
        "| {capacity} | {} | {} | {:.0}% ({:.0} of {:.0} calls/s) | {:.1}% | {mean_limit} |",
        if adaptive { "adaptive" } else { "fixed 256" },
        converged.map_or("-".to_string(), |i| format!("{:.2} s", samples[i].at)),
        100.0 * ok as f64 / window / best_rate,
        ok as f64 / window,
        best_rate,
        100.0 * throttled as f64 / (ok + throttled).max(1) as f64,
    ))
}
