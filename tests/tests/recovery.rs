//! Crash recovery: SIGKILL the engine process mid-flight, restart it on the same database,
//! and check that every call finishes and none is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{free_addr, spawn_engine, test_config, test_subscription, wait_for, Admin, Reply, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_flight_then_restarted_every_call_finishes() {
    const CALLS: usize = 100;
    const CONCURRENCY: usize = 8;
    // Once `hold` is set, the target keeps every new request: the kill then lands while
    // attempts are surely in flight.
    let hold = Arc::new(AtomicBool::new(false));
    let holding = Arc::clone(&hold);
    let target = Target::start(move |_| {
        if holding.load(Ordering::SeqCst) {
            Reply::Hang(Duration::from_secs(120))
        } else {
            Reply::Hang(Duration::from_millis(100))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    let subscription = test_subscription(&target.url())
        .max_concurrency(CONCURRENCY as u32)
        .ordering("unordered");
    test_config(dir.path(), subscription).admin(admin_addr).write(&config);
    let admin = Admin::new(admin_addr);

    let mut engine = spawn_engine(&config);
    wait_for("the admin API", Duration::from_secs(60), || admin.is_up()).await;
    let mut ids = Vec::new();
    for n in 0..CALLS {
        ids.push(admin.enqueue("test", n.to_string().as_bytes(), None).await);
    }
    wait_for("some calls to succeed", Duration::from_secs(30), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) >= 16
    })
    .await;
    hold.store(true, Ordering::SeqCst);
    let held_since = Instant::now();
    // Held attempts stop the limit from growing, so once every held attempt's start is
    // stored, nothing changes until the kill.
    let held = || target.seen().iter().filter(|s| s.at > held_since).count();
    wait_for(
        "held attempts, their starts stored",
        Duration::from_secs(30),
        || async {
            let running = admin.stats().await["running"].as_u64().unwrap_or(0);
            held() > 0 && running == held() as u64
        },
    )
    .await;
    let held = held();
    engine.0.kill().unwrap(); // SIGKILL: no chance to clean up
    engine.0.wait().unwrap();
    hold.store(false, Ordering::SeqCst);
    let before_restart = admin.is_up().await;
    assert!(!before_restart, "the engine should be gone");

    let mut engine = spawn_engine(&config);
    wait_for("the admin API after restart", Duration::from_secs(60), || admin.is_up()).await;
    wait_for("every call to succeed", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) == CALLS as u64
    })
    .await;

    let mut interrupted = 0;
    for id in &ids {
        let call = admin.call(id).await;
        assert_eq!(call["status"], "succeeded", "{call}");
        let history = call["history"].as_array().unwrap();
        interrupted += history.iter().filter(|a| a["outcome"] == "interrupted").count();
    }
    let mut deliveries: HashMap<String, Vec<u32>> = HashMap::new();
    for seen in target.seen() {
        deliveries.entry(seen.call_id).or_default().push(seen.attempt);
    }
    assert_eq!(deliveries.len(), CALLS, "every call reached the target");
    let duplicates: usize = deliveries.values().map(|attempts| attempts.len() - 1).sum();
    // A repeat under a higher attempt number follows an attempt recorded as started, which
    // recovery marks `interrupted`; a repeat under the same number follows an attempt whose
    // start was not committed yet when the engine died (the start is not awaited).
    let after_recorded_start: usize = deliveries
        .values()
        .map(|attempts| attempts.windows(2).filter(|w| w[1] > w[0]).count())
        .sum();
    println!(
        "calls {CALLS}, attempts held at the kill {held}, interrupted attempts recorded {interrupted}, duplicate deliveries {duplicates} ({after_recorded_start} after a recorded start)"
    );
    assert_eq!(
        interrupted, held,
        "the {held} attempts in flight at the kill are recorded as interrupted"
    );
    assert!(
        duplicates >= held,
        "the interrupted attempts were delivered again: {duplicates}"
    );
    assert!(
        duplicates <= CONCURRENCY,
        "only attempts in flight at the kill may repeat: {duplicates}"
    );
    assert!(
        after_recorded_start <= interrupted,
        "every repeat after a recorded start is explained by an interrupted attempt"
    );

    // A graceful stop (SIGTERM) leaves nothing running.
    let status = engine.terminate();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}
