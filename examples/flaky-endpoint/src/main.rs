//! `flaky-endpoint`: a local HTTP target that misbehaves on purpose, for demos, tests and
//! benchmarks.
//!
//! - `--failure-rate F`: answer 503 to a fraction F of requests;
//! - `--capacity C`: answer 429 while more than C requests are in flight (with
//!   `Retry-After` when `--retry-after N` is given);
//! - `--latency-ms L`: base latency, growing with load (`L * (1 + in_flight / C)`);
//! - `GET /stats`: what it received (requests, unique calls by idempotency key, duplicates,
//!   answers by status, the highest concurrency seen).
//!
//! Any `POST` path is accepted, so it can stand in for any target URL.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use rand::Rng;
use sdk::protocol::header;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(version, about = "A local HTTP endpoint that fails on purpose")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Fraction of requests answered with 503, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Requests served at once; above this, 429. 0: unlimited.
    #[arg(long, default_value_t = 0)]
    capacity: u64,
    /// Send `Retry-After: N` with each 429 (the engine pauses the whole endpoint when it
    /// served nothing else in the last second; otherwise only that call waits).
    #[arg(long)]
    retry_after: Option<u64>,
    /// Base latency in milliseconds; it rises with the number of requests in flight.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    throttled: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    duplicates: AtomicU64,
    seen: Mutex<HashSet<String>>,
}

#[derive(Debug)]
struct Endpoint {
    args: Args,
    counters: Counters,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failure_rate),
        "--failure-rate must be within [0, 1]"
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "flaky-endpoint on http://{} (failure rate {}, capacity {}, latency {} ms); stats at /stats",
        listener.local_addr()?,
        args.failure_rate,
        args.capacity,
        args.latency_ms
    );
    let state = Arc::new(Endpoint {
        args,
        counters: Counters::default(),
    });
    let app = Router::new()
        .route("/stats", get(stats))
        .fallback(handle)
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Decrements the in-flight count however the request ends.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn handle(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> impl IntoResponse {
    let c = &endpoint.counters;
    c.requests.fetch_add(1, Relaxed);
    let now = c.in_flight.fetch_add(1, Relaxed) + 1;
    let _guard = InFlight(&c.in_flight);
    c.max_in_flight.fetch_max(now, Relaxed);
    let capacity = endpoint.args.capacity;
    if capacity > 0 && now > capacity {
        c.throttled.fetch_add(1, Relaxed);
        let mut response = (StatusCode::TOO_MANY_REQUESTS, "over capacity\n").into_response();
        if let Some(seconds) = endpoint.args.retry_after {
            response.headers_mut().insert("retry-after", seconds.into());
        }
        return response;
    }
    if endpoint.args.latency_ms > 0 {
        let load = if capacity > 0 {
            now as f64 / capacity as f64
        } else {
            0.0
        };
        let millis = endpoint.args.latency_ms as f64 * (1.0 + load);
        tokio::time::sleep(Duration::from_secs_f64(millis / 1000.0)).await;
    }
    if rand::rng().random::<f64>() < endpoint.args.failure_rate {
        c.failed.fetch_add(1, Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "injected failure\n").into_response();
    }
    c.ok.fetch_add(1, Relaxed);
    if let Some(key) = headers.get(header::IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok()) {
        if !c.seen.lock().expect("seen lock").insert(key.to_string()) {
            c.duplicates.fetch_add(1, Relaxed);
        }
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn stats(State(endpoint): State<Arc<Endpoint>>) -> Json<serde_json::Value> {
    let c = &endpoint.counters;
    Json(json!({
        "requests": c.requests.load(Relaxed),
        "ok": c.ok.load(Relaxed),
        "failed_503": c.failed.load(Relaxed),
        "throttled_429": c.throttled.load(Relaxed),
        "unique_calls_ok": c.seen.lock().expect("seen lock").len(),
        "duplicate_successes": c.duplicates.load(Relaxed),
        "in_flight": c.in_flight.load(Relaxed),
        "max_in_flight": c.max_in_flight.load(Relaxed),
    }))
}
