//! Durable timers at scale: `workflows` workflows, stored at once, each sleep until its own
//! wake time (spread evenly over `spread` seconds, starting once every workflow has had
//! time to go to sleep), then finish with one step that notes how late it woke. Reported:
//! the lateness percentiles as the handler saw them (its clock minus the wake time: the
//! engine's timer plus the request), the engine's own `engine_workflow_wake_lag_seconds`,
//! and the handler requests per workflow.
//!
//! The engine runs in process on a SQLite file; the handler is the SDK in process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::model::NewCall;
use engine::store::{Store, StoreOptions};
use engine::Engine;
use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::{free_addr, metric};
use sdk::{Endpoint, Workflow};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(workflows: usize, spread: u64) -> anyhow::Result<()> {
    let lateness = Arc::new(Mutex::new(Vec::<i64>::with_capacity(workflows)));
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler_addr = free_addr();
    let endpoint = {
        let lateness = Arc::clone(&lateness);
        let requests = Arc::clone(&requests);
        Endpoint::new().workflow("sleeper", move |wf: Workflow, wake_at: i64| {
            let lateness = Arc::clone(&lateness);
            requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                wf.sleep_until(UNIX_EPOCH + Duration::from_millis(wake_at as u64)).await;
                wf.step("woke", move || async move {
                    let late = now_ms() - wake_at;
                    lateness.lock().expect("lateness").push(late);
                    Ok(late)
                })
                .await
            }
        })
    };
    let listener = tokio::net::TcpListener::bind(handler_addr).await?;
    let server = tokio::spawn(async move {
        axum::serve(listener, endpoint.router()).await.ok();
    });

    let dir = tempfile::tempdir()?;
    let db = dir.path().join("engine.db");
    let target = format!("http://{handler_addr}/sleeper");
    // Time for every workflow's first request (its sleep), before the first wakes.
    let settle_ms = 20_000 + workflows as i64 / 2;
    let first_wake = now_ms() + settle_ms;
    let started = Instant::now();
    {
        let store = Store::open(&db, StoreOptions::default())?;
        for chunk in (0..workflows).collect::<Vec<_>>().chunks(5000) {
            let batch = chunk
                .iter()
                .map(|&n| {
                    let wake_at = first_wake + (n as i64 * spread as i64 * 1000) / workflows.max(1) as i64;
                    NewCall {
                        subscription: "sleepers".into(),
                        target: target.clone(),
                        payload: wake_at.to_string().into_bytes(),
                        tombstone: false,
                        key: None,
                        headers: None,
                        source: None,
                        ordering_key: None,
                        dead_reason: None,
                        block_group_if_dead: false,
                        idempotency_key: None,
                    }
                })
                .collect();
            store.insert(batch).await?;
        }
        store.close();
    }
    let stored_s = started.elapsed().as_secs_f64();
    let admin = free_addr();
    let config = EngineConfig::new(db.clone())
        .admin(admin)
        .subscription(Subscription::new("sleepers", &target))
        .build();
    let engine = Engine::start(config).await?;
    let client = reqwest::Client::new();
    let stats_url = format!("http://{admin}/v1/stats");
    let mut asleep_at = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats: serde_json::Value = client.get(&stats_url).send().await?.json().await?;
        let succeeded = stats["succeeded"].as_u64().unwrap_or(0);
        let handled = requests.load(std::sync::atomic::Ordering::Relaxed);
        if asleep_at.is_none() && handled >= workflows as u64 {
            asleep_at = Some(now_ms());
        }
        if succeeded >= workflows as u64 {
            break;
        }
        anyhow::ensure!(
            now_ms() < first_wake + spread as i64 * 1000 + 120_000,
            "not done 2 minutes after the last wake time: {succeeded} of {workflows} succeeded"
        );
    }
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    engine.shutdown().await?;
    server.abort();

    let mut late = lateness.lock().expect("lateness").clone();
    late.sort_unstable();
    let pct = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];
    let bucket = |le: &str| {
        metric(
            &metrics,
            &format!("engine_workflow_wake_lag_seconds_bucket{{subscription=\"sleepers\",le=\"{le}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let woken = metric(
        &metrics,
        "engine_workflow_wake_lag_seconds_count{subscription=\"sleepers\"}",
    )
    .unwrap_or(0.0);
    let handled = requests.load(std::sync::atomic::Ordering::Relaxed);
    println!("| workflows | wake times over | all asleep before the first wake | lateness p50 / p99 / p99.9 / max (handler) | engine wake lag <= 25 ms / <= 50 ms | handler requests per workflow |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {workflows} | {spread} s | {} | {} / {} / {} / {} ms | {:.1}% / {:.1}% | {:.2} |",
        asleep_at.map_or("no".into(), |at| format!(
            "yes, {:.1} s before (stored in {stored_s:.1} s)",
            (first_wake - at) as f64 / 1000.0
        )),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        late.last().copied().unwrap_or(0),
        100.0 * bucket("0.025") / woken.max(1.0),
        100.0 * bucket("0.05") / woken.max(1.0),
        handled as f64 / workflows as f64
    );
    Ok(())
}
