//! The reliability suite: SIGKILL of the engine under load, SIGKILL of the handler, a broker
//! outage, handler faults, and bad input. Each test prints its figures (docs/reliability.md
//! quotes them). `ENGINE_SOAK=1` runs the long versions.
//!
//! The promise under test: no record is lost, and no call completes twice except for an
//! attempt that was in flight at a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::kafka::{produce, producer, Out, Tansu, TANSU_CONSUMER_OPTIONS};
use integration_tests::{free_addr, spawn_engine, wait_for, workspace_binary, Admin, Reply, Seen, Target};
use rand::Rng;

fn soak() -> bool {
    std::env::var_os("ENGINE_SOAK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn sigterm(child: &mut Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "the engine exits cleanly on SIGTERM");
}

fn kafka_position(seen: &Seen) -> (i32, i64) {
    (
        seen.header("engine-kafka-partition").unwrap().parse().unwrap(),
        seen.header("engine-kafka-offset").unwrap().parse().unwrap(),
    )
}

/// Rows of the engine's SQLite file, read directly after the engine stopped.
fn db_rows<T>(db: &std::path::Path, sql: &str, row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Vec<T> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut statement = conn.prepare(sql).unwrap();
    statement.query_map([], row).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_loop_loses_no_record_and_explains_every_duplicate() {
    let (records, kills) = if soak() { (200_000, 50) } else { (20_000, 10) };
    const KEYS: usize = 200;
    let tansu = Tansu::start();
    tansu.create_topic("kill", 3).await;
    // The handler lives in this process, which is never killed: its log is complete.
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let db = dir.path().join("engine.db");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[store]
path = "{db}"
[admin]
listen = "{admin_addr}"
[[subscription]]
name = "kill"
target = "{target}"
ordering = "key"
[subscription.retry]
initial_delay = "10ms"
max_delay = "200ms"
max_attempts = 0
[subscription.kafka]
brokers = "{bootstrap}"
topics = ["kill"]
batch_size = 200
[subscription.kafka.options]
{TANSU_CONSUMER_OPTIONS}
"#,
            db = db.display(),
            target = target.url(),
            bootstrap = tansu.bootstrap(),
        ),
    )
    .unwrap();
    let admin = Admin::new(admin_addr);

    // A steady rate: the whole set over about 20 s, in chunks of 100.
    let bootstrap = tansu.bootstrap();
    let producing = tokio::spawn(async move {
        let producer = producer(&bootstrap);
        let chunks = records / 100;
        let pause = Duration::from_secs(20) / chunks as u32;
        let mut positions = Vec::with_capacity(records);
        for chunk in 0..chunks {
            let out = (0..100)
                .map(|i| {
                    let n = chunk * 100 + i;
                    Out::keyed(format!("key-{}", n % KEYS), n.to_string())
                })
                .collect();
            positions.extend(produce(&producer, "kill", out).await);
            tokio::time::sleep(pause).await;
        }
        positions
    });

    let started = Instant::now();
    let mut kill_times = Vec::new();
    for _ in 0..kills {
        let mut engine = spawn_engine(&config);
        wait_for("the engine to come up", Duration::from_secs(30), || admin.is_up()).await;
        // Kill while it works: once it has made progress since the restart.
        let before = admin.stats().await;
        let progress =
            |s: &serde_json::Value| s["succeeded"].as_u64().unwrap_or(0) + s["pending"].as_u64().unwrap_or(0);
        wait_for("progress after the restart", Duration::from_secs(60), || async {
            let now = admin.stats().await;
            progress(&now) > progress(&before) || now["succeeded"].as_u64() == Some(records as u64)
        })
        .await;
        let delay = rand::rng().random_range(0..1_500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        kill_times.push(Instant::now());
        sigkill(&mut engine);
    }
    let mut engine = spawn_engine(&config);
    let produced = producing.await.unwrap();
    wait_for(
        "every record to become a succeeded call",
        Duration::from_secs(if soak() { 1_800 } else { 240 }),
        || async { admin.is_up().await && admin.stats().await["succeeded"].as_u64() == Some(records as u64) },
    )
    .await;
    let elapsed = started.elapsed();
    sigterm(&mut engine);

    // Exactly one call per produced record, all succeeded.
    let calls = db_rows(&db, r#"SELECT id, partition, "offset", status FROM calls"#, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i32>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    });
    assert_eq!(calls.len(), records, "one call per record");
    let positions: HashSet<(i32, i64)> = calls.iter().map(|c| (c.1, c.2)).collect();
    assert_eq!(positions.len(), records, "no two calls for one record");
    assert_eq!(
        positions,
        produced.into_iter().collect::<HashSet<_>>(),
        "no record lost"
    );
    assert!(calls.iter().all(|c| c.3 == "succeeded"), "every call succeeded");
    let interrupted = db_rows(
        &db,
        "SELECT count(*) FROM attempts WHERE outcome = 'interrupted'",
        |r| r.get::<_, i64>(0),
    )[0];

    // Deliveries, in arrival order.
    let seen = target.seen();
    let mut by_call: HashMap<&str, Vec<&Seen>> = HashMap::new();
    for s in &seen {
        by_call.entry(s.call_id.as_str()).or_default().push(s);
    }
    assert_eq!(by_call.len(), records, "every call was delivered");
    // Each delivery beyond the first is explained by a kill between it and the one before:
    // the earlier attempt was in flight when its engine died.
    let mut duplicates = 0;
    for deliveries in by_call.values() {
        for pair in deliveries.windows(2) {
            duplicates += 1;
            // A request written just before the kill may reach the handler a moment after.
            let slack = Duration::from_millis(250);
            assert!(
                kill_times.iter().any(|k| pair[0].at <= *k + slack && *k <= pair[1].at),
                "call {} delivered at {:?} and again at {:?} (attempts {} and {}) with no kill in between; kills at {:?}",
                pair[0].call_id,
                pair[0].at - started,
                pair[1].at - started,
                pair[0].attempt,
                pair[1].attempt,
                kill_times.iter().map(|k| *k - started).collect::<Vec<_>>()
            );
        }
    }
    // Key order: per key, first deliveries follow offsets.
    let mut first_seen: HashSet<&str> = HashSet::new();
    let mut last_offset: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for s in &seen {
        if !first_seen.insert(s.call_id.as_str()) {
            continue;
        }
        let (partition, offset) = kafka_position(s);
        let key = s.header("engine-kafka-key").unwrap().to_string();
        if let Some(previous) = last_offset.insert((key.clone(), partition), offset) {
            assert!(
                previous < offset,
                "key {key}: offset {offset} delivered first after {previous}"
            );
        }
    }
    println!(
        "kill loop: {records} records, {kills} SIGKILLs, {} deliveries, {duplicates} duplicate deliveries (each after a kill), {interrupted} attempts recorded as interrupted, 0 lost, {:.1} s",
        seen.len(),
        elapsed.as_secs_f64()
    );
}

/// The flaky-endpoint example as the handler process, on a fixed address.
fn spawn_handler(addr: std::net::SocketAddr) -> Child {
    Command::new(workspace_binary("flaky-endpoint"))
        .args(["--listen", &addr.to_string(), "--latency-ms", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flaky-endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_handler_repeatedly_delays_calls_but_loses_none() {
    let (calls, kills) = if soak() { (20_000, 100) } else { (2_000, 10) };
    let handler_addr = free_addr();
    let mut handler = spawn_handler(handler_addr);
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = integration_tests::start_engine(
        &dir,
        &format!("http://{handler_addr}/work"),
        "ordering = \"unordered\"\ntimeout = \"2s\"\n[subscription.retry]\ninitial_delay = \"20ms\"\nmax_delay = \"300ms\"\nmax_attempts = 0",
    )
    .await;
    let ids = Arc::new(Mutex::new(Vec::new()));
    let enqueue = {
        let (admin, ids) = (admin.clone(), Arc::clone(&ids));
        tokio::spawn(async move {
            for n in 0..calls {
                let id = admin.enqueue("test", format!("job-{n}").as_bytes(), None).await;
                ids.lock().unwrap().push(id);
                if n % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    for _ in 0..kills {
        let delay = rand::rng().random_range(100..600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        sigkill(&mut handler);
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(50..400))).await;
        handler = spawn_handler(handler_addr);
    }
    enqueue.await.unwrap();
    wait_for("every call to succeed", Duration::from_secs(120), || async {
        admin.stats().await["succeeded"].as_u64() == Some(calls as u64)
    })
    .await;
    let stats = admin.stats().await;
    let retried = engine.schedulers()["test"]
        .retried
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "handler kills: {calls} calls, {kills} SIGKILLs of the handler, {retried} attempts retried, {} succeeded, {} dead",
        stats["succeeded"], stats["dead"]
    );
    assert_eq!(stats["dead"], 0);
    assert_eq!(ids.lock().unwrap().len(), calls);
    sigkill(&mut handler);
    engine.shutdown().await.unwrap();
}
