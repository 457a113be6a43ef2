//! `restate-peer`: the handler side of the Restate benchmark.
//!
//! Serves a Restate service `Bench` with one handler `run` (Restate's service protocol, HTTP/2,
//! on `--listen`), and `Flow/run`, the workflow benchmark's three steps and a sleep of zero. Each invocation's input is the Kafka record value, taken as raw bytes (the
//! handler accepts any content type): JSON `{"ts_us": <µs since the Unix epoch at produce
//! time>, "pad": "..."}`. The handler does no work: it records `now - ts_us` and returns.
//!
//! A plain HTTP/1.1 stats endpoint on `--stats`:
//! - `GET /stats` → JSON with the count of distinct invocations, attempts, parse errors, the
//!   wall-clock times of the first and last invocation, the smallest produce timestamp seen,
//!   and latency percentiles in microseconds. `GET /stats?raw=1` adds every latency.
//! - `POST /reset` → clears everything.
//!
//! ```text
//! restate-peer --listen 127.0.0.1:9080 --stats 127.0.0.1:9081
//! ```

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use restate_sdk::prelude::*;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(version, about = "Restate service Bench/run that records end-to-end latency")]
struct Args {
    /// Address of the Restate service endpoint (register it with the Restate admin API).
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Address of the plain HTTP stats endpoint (GET /stats, POST /reset).
    #[arg(long, default_value = "127.0.0.1:9081")]
    stats: SocketAddr,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Everything the handler records.
struct Recorder {
    /// Invocation ids seen: a retried or replayed invocation is counted once.
    seen: HashSet<String>,
    attempts: u64,
    parse_errors: u64,
    first_us: Option<u64>,
    last_us: Option<u64>,
    min_produced_us: Option<u64>,
    histogram: Histogram<u64>,
    raw: Vec<u64>,
    /// When each of those arrived, µs since the epoch.
    arrivals: Vec<u64>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            seen: HashSet::new(),
            attempts: 0,
            parse_errors: 0,
            first_us: None,
            last_us: None,
            min_produced_us: None,
            // 1 µs .. 1 hour, 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds"),
            raw: Vec::new(),
            arrivals: Vec::new(),
        }
    }

    fn record(&mut self, invocation_id: &str, input: &[u8], now: u64) {
        self.attempts += 1;
        self.completed(invocation_id, input, now);
    }

    /// An invocation reached its end (counted once per invocation id).
    fn completed(&mut self, invocation_id: &str, input: &[u8], now: u64) {
        if !self.seen.insert(invocation_id.to_owned()) {
            return;
        }
        self.first_us.get_or_insert(now);
        self.last_us = Some(now);
        match serde_json::from_slice::<Payload>(input) {
            Ok(payload) => {
                let latency = now.saturating_sub(payload.ts_us).max(1);
                self.histogram.saturating_record(latency);
                self.raw.push(latency);
                self.arrivals.push(now);
                let min = self.min_produced_us.get_or_insert(payload.ts_us);
                *min = (*min).min(payload.ts_us);
            }
            Err(_) => self.parse_errors += 1,
        }
    }

    fn stats(&self, raw: bool) -> serde_json::Value {
        let count = self.seen.len() as u64;
        let h = &self.histogram;
        let elapsed_us = match (self.first_us, self.last_us) {
            (Some(first), Some(last)) => last - first,
            _ => 0,
        };
        let mut stats = json!({
            "count": count,
            "attempts": self.attempts,
            "parse_errors": self.parse_errors,
            "first_us": self.first_us,
            "last_us": self.last_us,
            "min_produced_us": self.min_produced_us,
            "elapsed_us": elapsed_us,
            "throughput_per_s": if elapsed_us > 0 { (count.saturating_sub(1)) as f64 * 1e6 / elapsed_us as f64 } else { 0.0 },
            "latency_us": {
                "samples": h.len(),
                "min": if h.is_empty() { 0 } else { h.min() },
                "mean": if h.is_empty() { 0.0 } else { h.mean() },
                "p50": h.value_at_quantile(0.50),
                "p90": h.value_at_quantile(0.90),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
        });
        if raw {
            stats["latencies_us"] = json!(self.raw);
            stats["arrivals_us"] = json!(self.arrivals);
        }
        stats
    }
}

#[derive(Deserialize)]
struct Payload {
    ts_us: u64,
}

type Shared = Arc<Mutex<Recorder>>;

struct Bench {
    recorder: Shared,
}

#[restate_sdk::service]
impl Bench {
    /// Input: the Kafka record value as raw bytes (any content type is accepted).
    #[handler]
    async fn run(&self, ctx: Context<'_>, input: Vec<u8>) -> Result<(), TerminalError> {
        let now = now_us();
        self.recorder.lock().unwrap().record(ctx.invocation_id(), &input, now);
        Ok(())
    }
}

struct Flow {
    recorder: Shared,
}

/// The workflow benchmark's workflow: three journaled steps and a sleep of zero, recorded
/// when it ends. Each execution of the handler (the first, or a replay after a suspension)
/// counts as an attempt.
#[restate_sdk::service]
impl Flow {
    #[handler]
    async fn run(&self, ctx: Context<'_>, input: Vec<u8>) -> Result<(), TerminalError> {
        self.recorder.lock().unwrap().attempts += 1;
        ctx.run(|| async { Ok(()) }).name("a").await?;
        ctx.run(|| async { Ok(()) }).name("b").await?;
        ctx.run(|| async { Ok(()) }).name("c").await?;
        ctx.sleep(std::time::Duration::ZERO).await?;
        let now = now_us();
        self.recorder.lock().unwrap().completed(ctx.invocation_id(), &input, now);
        Ok(())
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

async fn serve_stats(recorder: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let raw = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "raw=1" || p == "raw=true"));
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats") => {
            let stats = recorder.lock().unwrap().stats(raw);
            respond(StatusCode::OK, stats.to_string())
        }
        (&Method::POST, "/reset") => {
            let _ = req.into_body().collect().await;
            *recorder.lock().unwrap() = Recorder::new();
            respond(StatusCode::OK, r#"{"reset":true}"#.to_owned())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            r#"{"error":"GET /stats or POST /reset"}"#.to_owned(),
        ),
    };
    Ok(response)
}

async fn stats_server(addr: SocketAddr, recorder: Shared) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind stats endpoint {addr}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| serve_stats(recorder.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let recorder: Shared = Arc::new(Mutex::new(Recorder::new()));

    let stats = tokio::spawn(stats_server(args.stats, recorder.clone()));
    // Fail early (before the SDK server starts) if the stats port is taken.
    tokio::task::yield_now().await;

    let endpoint = Endpoint::builder()
        .bind(Bench {
            recorder: recorder.clone(),
        })
        .bind(Flow { recorder })
        .build();
    eprintln!(
        "restate-peer: service Bench/run on http://{} (register this URI), stats on http://{}/stats",
        args.listen, args.stats
    );
    tokio::select! {
        () = HttpServer::new(endpoint).listen_and_serve(args.listen) => Ok(()),
        result = stats => result?,
    }
}
