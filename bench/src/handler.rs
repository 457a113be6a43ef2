//! The no-op handler of the end-to-end benchmarks, built on our SDK: each call's payload is
//! JSON `{"ts_us": <µs since the epoch at produce time>, "fail": N, ...}`; the handler records
//! `now - ts_us` at its start and answers 503 for the first `N` attempts (the head-of-line
//! scenario), 200 otherwise. `GET /stats` on a second port gives the same JSON as the
//! Restate peer (bench/restate-peer), so both sides are read the same way.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use sdk::{Context, Endpoint, Error, Workflow};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::now_us;

#[derive(Debug, Default)]
pub struct Recorder {
    seen: HashSet<String>,
    attempts: u64,
    /// (arrival, latency) in µs, of each call's first successful attempt.
    samples: Vec<(u64, u64)>,
    min_produced_us: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Payload {
    ts_us: u64,
    #[serde(default)]
    fail: u32,
    /// Fail every attempt before this time (µs since the epoch).
    #[serde(default)]
    fail_until_us: Option<u64>,
}

impl Recorder {
    /// Record one attempt; `Err` when the payload asks this attempt to fail.
    fn attempt(&mut self, call_id: &str, attempt: u32, body: &[u8], now: u64) -> Result<(), Error> {
        self.attempts += 1;
        let payload: Payload =
            serde_json::from_slice(body).map_err(|e| Error::permanent(format!("bad bench payload: {e}")))?;
        if payload.fail_until_us.is_some_and(|until| now < until) {
            return Err(Error::temporary("failing until a set time, on purpose"));
        }
        if attempt <= payload.fail {
            return Err(Error::temporary(format!(
                "failing attempt {attempt} of {} on purpose",
                payload.fail
            )));
        }
        if self.seen.insert(call_id.to_owned()) {
            self.samples.push((now, now.saturating_sub(payload.ts_us)));
            let min = self.min_produced_us.get_or_insert(payload.ts_us);
            *min = (*min).min(payload.ts_us);
        }
        Ok(())
    }

    /// One request of a workflow (its first, or one after a suspension).
    fn request(&mut self) {
        self.attempts += 1;
    }

    /// A workflow reached its end: counted once per call, its latency from produce to end.
    fn completed(&mut self, call_id: &str, produced_us: u64, now: u64) {
        if self.seen.insert(call_id.to_owned()) {
            self.samples.push((now, now.saturating_sub(produced_us)));
            let min = self.min_produced_us.get_or_insert(produced_us);
            *min = (*min).min(produced_us);
        }
    }

    pub fn stats(&self, raw: bool) -> Value {
        let mut latencies: Vec<u64> = self.samples.iter().map(|s| s.1).collect();
        latencies.sort_unstable();
        let first_us = self.samples.iter().map(|s| s.0).min();
        let last_us = self.samples.iter().map(|s| s.0).max();
        let mut stats = json!({
            "count": self.seen.len(),
            "attempts": self.attempts,
            "first_us": first_us,
            "last_us": last_us,
            "min_produced_us": self.min_produced_us,
            "latency_us": {
                "p50": percentile(&latencies, 0.50),
                "p99": percentile(&latencies, 0.99),
                "p999": percentile(&latencies, 0.999),
                "max": latencies.last().copied().unwrap_or(0),
            },
        });
        if raw {
            stats["latencies_us"] = json!(self.samples.iter().map(|s| s.1).collect::<Vec<_>>());
            stats["arrivals_us"] = json!(self.samples.iter().map(|s| s.0).collect::<Vec<_>>());
        }
        stats
    }
}

/// The value at quantile `q` of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[derive(Debug, Deserialize)]
struct StatsQuery {
    raw: Option<u8>,
}

/// Serve the handler on `listen` (function `run`, workflow `flow`) and its stats on
/// `stats`, until killed. `flow` is the workflow benchmark's: three steps and a sleep of
/// zero, recorded when it ends; its requests are counted as attempts.
pub async fn serve(listen: SocketAddr, stats: SocketAddr) -> anyhow::Result<()> {
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let handler_recorder = Arc::clone(&recorder);
    let endpoint = Endpoint::new().raw("run", move |ctx: Context, body| {
        let recorder = Arc::clone(&handler_recorder);
        async move {
            let now = now_us();
            recorder
                .lock()
                .expect("recorder lock")
                .attempt(&ctx.call_id, ctx.attempt, &body, now)?;
            Ok(Vec::new())
        }
    });
    let flow_recorder = Arc::clone(&recorder);
    let endpoint = endpoint.workflow("flow", move |wf: Workflow, input: Value| {
        let recorder = Arc::clone(&flow_recorder);
        recorder.lock().expect("recorder lock").request();
        async move {
            for name in ["a", "b", "c"] {
                wf.step(name, || async { Ok(()) }).await?;
            }
            wf.sleep(Duration::ZERO).await;
            let produced_us = input["ts_us"].as_u64().unwrap_or(0);
            let call_id = wf.context().call_id.clone();
            recorder
                .lock()
                .expect("recorder lock")
                .completed(&call_id, produced_us, now_us());
            Ok(())
        }
    });
    let stats_app = Router::new()
        .route(
            "/stats",
            get(
                |State(r): State<Arc<Mutex<Recorder>>>, Query(q): Query<StatsQuery>| async move {
                    Json(r.lock().expect("recorder lock").stats(q.raw == Some(1)))
                },
            ),
        )
        .route(
            "/reset",
            post(|State(r): State<Arc<Mutex<Recorder>>>| async move {
                *r.lock().expect("recorder lock") = Recorder::default();
                "ok"
            }),
        )
        .with_state(recorder);
    let stats_listener = tokio::net::TcpListener::bind(stats).await?;
    tokio::spawn(async move { axum::serve(stats_listener, stats_app).await });
    endpoint.serve(listen).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), 500);
        assert_eq!(percentile(&v, 0.99), 990);
        assert_eq!(percentile(&v, 0.999), 999);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn a_call_asked_to_fail_twice_succeeds_on_its_third_attempt_and_counts_once() {
        let mut r = Recorder::default();
        let body = br#"{"ts_us": 100, "fail": 2}"#;
        assert!(r.attempt("c", 1, body, 1_000).is_err());
        assert!(r.attempt("c", 2, body, 2_000).is_err());
        assert!(r.attempt("c", 3, body, 3_000).is_ok());
        assert!(r.attempt("c", 4, body, 4_000).is_ok());
        let stats = r.stats(true);
        assert_eq!(stats["count"], 1);
        assert_eq!(stats["attempts"], 4);
        assert_eq!(stats["latencies_us"], json!([2_900]));
    }
}
