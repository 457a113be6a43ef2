//! Adaptive concurrency and rate limits against real endpoints on 127.0.0.1.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use engine::Engine;
use integration_tests::config::{Endpoint, EngineConfig, Subscription};
use integration_tests::{test_config, test_subscription, wait_for, Admin};

/// An endpoint that serves at most `capacity` requests at once (10 ms each) and answers 429
/// above that.
struct LimitedEndpoint {
    in_flight: AtomicU64,
    served: AtomicU64,
    rejected: AtomicU64,
    capacity: u64,
    arrivals: Mutex<Vec<Instant>>,
}

async fn serve(capacity: u64) -> (String, Arc<LimitedEndpoint>) {
    let state = Arc::new(LimitedEndpoint {
        in_flight: AtomicU64::new(0),
        served: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        capacity,
        arrivals: Mutex::new(Vec::new()),
    });
    let shared = Arc::clone(&state);
    let app = axum::Router::new().fallback(move || {
        let state = Arc::clone(&shared);
        async move {
            state.arrivals.lock().unwrap().push(Instant::now());
            let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let answer = if now > state.capacity {
                state.rejected.fetch_add(1, Ordering::SeqCst);
                StatusCode::TOO_MANY_REQUESTS
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                state.served.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            };
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            answer
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/work", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_converges_near_the_endpoint_capacity() {
    const CAPACITY: u64 = 8;
    const CALLS: u64 = 3_000;
    let (url, endpoint) = serve(CAPACITY).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&url)
        .ordering("unordered")
        .max_concurrency(256)
        .retries_between("10ms", "200ms");
    // Queue every call first (delivery paused), so the endpoint meets the whole backlog.
    let paused = test_config(dir.path(), subscription.clone().set("paused", true));
    let paused = Engine::start(paused.build()).await.unwrap();
    let admin = Admin::new(paused.admin_addr());
    for n in 0..CALLS {
        admin.enqueue("test", n.to_string().as_bytes(), None).await;
    }
    paused.shutdown().await.unwrap();
    let engine = Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    let (_, limiter) = engine.endpoints().all().next().unwrap();
    let limiter = Arc::clone(limiter);
    // Sample the limit over the second half of the run, once it has had time to adapt.
    let mut samples = Vec::new();
    while endpoint.served.load(Ordering::SeqCst) < CALLS {
        if endpoint.served.load(Ordering::SeqCst) > CALLS / 2 {
            samples.push(limiter.snapshot().limit as f64);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_for("every call to succeed", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) == CALLS
    })
    .await;
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let rejected = endpoint.rejected.load(Ordering::SeqCst);
    println!(
        "capacity {CAPACITY}: mean limit {mean:.1} over {} samples, 429 answers {rejected} for {CALLS} calls",
        samples.len()
    );
    let c = CAPACITY as f64;
    assert!(
        (0.7 * c..=1.3 * c).contains(&mean),
        "mean limit {mean:.1} outside [0.7 C, 1.3 C]"
    );
    // The limit and its changes are visible in stats and metrics.
    let stats = admin.stats().await;
    let endpoint_stats = stats["endpoints"].as_object().unwrap().values().next().unwrap().clone();
    assert!(endpoint_stats["cuts"].as_u64().unwrap() > 0 && endpoint_stats["raises"].as_u64().unwrap() > 0);
    assert!(!endpoint_stats["recent_changes"].as_array().unwrap().is_empty());
    let metrics = admin.metrics().await;
    assert!(
        metrics.contains("engine_endpoint_concurrency_limit{endpoint=\"http://127.0.0.1:"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "engine_calls_total{{subscription=\"test\",outcome=\"succeeded\"}} {CALLS}"
        )),
        "{metrics}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_rate_limit_holds() {
    const RATE: usize = 50;
    const CALLS: usize = 200;
    let (url, endpoint) = serve(1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&url)
        .ordering("unordered")
        .set("rate_limit", RATE as i64)
        .set("rate_burst", 1)
        .retries_between("10ms", "200ms");
    let engine = Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    for n in 0..CALLS {
        admin.enqueue("test", n.to_string().as_bytes(), None).await;
    }
    wait_for("every call to succeed", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) == CALLS as u64
    })
    .await;
    let arrivals = endpoint.arrivals.lock().unwrap().clone();
    assert_eq!(
        arrivals.len(),
        CALLS,
        "waiting for the rate limit is not a failed attempt"
    );
    let busiest = busiest_second(&arrivals);
    println!("rate limit {RATE}/s: busiest one-second window had {busiest} requests");
    assert!(
        busiest as f64 <= RATE as f64 * 1.1 + 1.0,
        "{busiest} requests in one second"
    );
    let total = arrivals.last().unwrap().duration_since(arrivals[0]).as_secs_f64();
    assert!(
        total >= (CALLS - RATE) as f64 / RATE as f64,
        "{CALLS} calls took only {total:.2}s"
    );
    engine.shutdown().await.unwrap();
}

/// The busiest one-second window of `arrivals`.
fn busiest_second(arrivals: &[Instant]) -> usize {
    arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_rate_limit_holds_across_two_subscriptions() {
    const RATE: usize = 40;
    const PER_SUBSCRIPTION: usize = 80;
    let (url, endpoint) = serve(1_000).await;
    let dir = tempfile::tempdir().unwrap();
    let origin = url.trim_end_matches("/work");
    let unordered = |name: &str| Subscription::new(name, &url).ordering("unordered");
    let config = EngineConfig::new(dir.path().join("engine.db"))
        .endpoint(Endpoint::origin(origin).rate_limit(RATE as u32, 1))
        .subscription(unordered("a"))
        .subscription(unordered("b"));
    let engine = Engine::start(config.build()).await.unwrap();
    let admin = Admin::new(engine.admin_addr());
    for n in 0..PER_SUBSCRIPTION {
        admin.enqueue("a", n.to_string().as_bytes(), None).await;
        admin.enqueue("b", n.to_string().as_bytes(), None).await;
    }
    wait_for(
        "every call of both subscriptions to succeed",
        Duration::from_secs(60),
        || async { admin.stats().await["succeeded"].as_u64().unwrap_or(0) == 2 * PER_SUBSCRIPTION as u64 },
    )
    .await;
    let arrivals = endpoint.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2 * PER_SUBSCRIPTION);
    let busiest = busiest_second(&arrivals);
    println!("endpoint rate limit {RATE}/s over two subscriptions: busiest second had {busiest}");
    assert!(
        busiest as f64 <= RATE as f64 * 1.1 + 1.0,
        "{busiest} requests in one second: the two subscriptions share the endpoint's limit"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_whole_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let record = Arc::clone(&seen);
    let first = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().fallback(move || {
        let (record, first) = (Arc::clone(&record), Arc::clone(&first));
        async move {
            record.lock().unwrap().push(Instant::now());
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/work", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    let subscription = test_subscription(&url)
        .ordering("unordered")
        .max_concurrency(1)
        .retries_between("10ms", "200ms");
    let engine = Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    admin.enqueue("test", b"first", None).await;
    wait_for("the 429", Duration::from_secs(10), || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    admin.enqueue("test", b"second", None).await;
    wait_for("both calls to succeed", Duration::from_secs(20), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) == 2
    })
    .await;
    let times = seen.lock().unwrap().clone();
    assert!(
        times[1].duration_since(times[0]) >= Duration::from_millis(900),
        "a new call waited for the endpoint's Retry-After too"
    );
    engine.shutdown().await.unwrap();
}

use axum::response::IntoResponse;
