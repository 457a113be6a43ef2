//! The reliability suite: SIGKILL of the engine under load, SIGKILL of the handler, a broker
//! outage, handler faults, and bad input. Each test prints its figures (docs/reliability.md
//! quotes them). `ENGINE_SOAK=1` runs the long versions.
//!
//! The promise under test: no record is lost, and no call completes twice except for an
//! attempt that was in flight at a crash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::{produce, producer, Out, Tansu};
use integration_tests::{
    free_addr, metric, spawn_engine, test_subscription, wait_for, workspace_binary, Admin, Proc, Reply, Seen, Target,
};
use rand::Rng;

fn soak() -> bool {
    std::env::var_os("ENGINE_SOAK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn sigkill(child: &mut Proc) {
    child.0.kill().expect("SIGKILL");
    child.0.wait().expect("reap");
}

fn sigterm(child: &mut Proc) {
    assert!(child.terminate().success(), "the engine exits cleanly on SIGTERM");
}

/// Run `command` (an engine) with its log at info, without colours, to `log_path`.
fn spawn_logged(mut command: Command, log_path: &std::path::Path) -> Proc {
    Proc(
        command
            .env("ENGINE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_path).unwrap())
            .spawn()
            .unwrap(),
    )
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
    const KEYS: usize = 200;
    let (records, kills) = if soak() { (200_000, 50) } else { (20_000, 10) };
    let tansu = Tansu::start();
    tansu.create_topic("kill", 3).await;
    // The handler lives in this process, which is never killed: its log is complete.
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let db = dir.path().join("engine.db");
    let config = dir.path().join("engine.toml");
    let subscription = Subscription::new("kill", &target.url())
        .ordering("key")
        .retries_between("10ms", "200ms")
        .kafka(&tansu.bootstrap(), &["kill"])
        .kafka_set("batch_size", 200)
        .tansu_consumer();
    EngineConfig::new(&db)
        .admin(admin_addr)
        .subscription(subscription)
        .write(&config);
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
fn spawn_handler(addr: std::net::SocketAddr) -> Proc {
    Proc(
        Command::new(workspace_binary("flaky-endpoint"))
            .args(["--listen", &addr.to_string(), "--latency-ms", "20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn flaky-endpoint"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_handler_repeatedly_delays_calls_but_loses_none() {
    let (calls, kills) = if soak() { (20_000, 100) } else { (2_000, 10) };
    let handler_addr = free_addr();
    let mut handler = spawn_handler(handler_addr);
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&format!("http://{handler_addr}/work"))
        .ordering("unordered")
        .set("timeout", "2s")
        .retries_between("20ms", "300ms");
    let (engine, admin) = integration_tests::start_engine(&dir, subscription).await;
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
    let retried = engine.figures()["test"].snapshot().retried;
    println!(
        "handler kills: {calls} calls, {kills} SIGKILLs of the handler, {retried} attempts retried, {} succeeded, {} dead",
        stats["succeeded"], stats["dead"]
    );
    assert_eq!(stats["dead"], 0);
    assert_eq!(ids.lock().unwrap().len(), calls);
    sigkill(&mut handler);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_second_broker_outage_is_logged_ridden_out_and_loses_nothing() {
    use connectors::dev_broker::DevBroker;
    const RECORDS: usize = 4_000;
    let outage = Duration::from_secs(if soak() { 120 } else { 30 });
    let broker = DevBroker::start(1).unwrap();
    broker.create_topic("outage", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    let subscription = Subscription::new("outage", &target.url())
        .kafka(&bootstrap, &["outage"])
        .kafka_option("reconnect.backoff.max.ms", "1000")
        .kafka_option("statistics.interval.ms", "1000");
    integration_tests::test_config(dir.path(), subscription)
        .admin(admin_addr)
        .write(&config);
    let log_path = dir.path().join("engine.log");
    let mut serve = Command::new(integration_tests::engine_binary());
    serve.args(["serve", "--config"]).arg(&config);
    let mut engine = spawn_logged(serve, &log_path);
    let admin = Admin::new(admin_addr);
    let half = |range: std::ops::Range<usize>| -> Vec<Out> {
        range
            .map(|n| Out::keyed(format!("k{}", n % 20), n.to_string()))
            .collect()
    };
    produce(&producer(&bootstrap), "outage", half(0..RECORDS / 2)).await;
    wait_for("some records delivered", Duration::from_secs(60), || async {
        admin.is_up().await && admin.stats().await["succeeded"].as_u64().unwrap_or(0) >= 100
    })
    .await;

    broker.all_down().unwrap();
    let down_at = Instant::now();
    // Records produced during the outage wait in the producer and arrive after it.
    let second = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move { produce(&producer(&bootstrap), "outage", half(RECORDS / 2..RECORDS)).await })
    };
    while down_at.elapsed() < outage {
        assert!(admin.is_up().await, "the engine stays up during the outage");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let kafka_down = admin.stats().await["subscriptions"]["outage"]["kafka_down"].clone();
    broker.all_up().unwrap();
    let up_at = Instant::now();
    second.await.unwrap();
    wait_for(
        "every record to become a succeeded call",
        Duration::from_secs(120),
        || async { admin.stats().await["succeeded"].as_u64() == Some(RECORDS as u64) },
    )
    .await;
    let resumed_after = up_at.elapsed();
    // The recovery is seen through librdkafka's statistics (every second here), which may
    // come after the last record: wait for it rather than stop the engine first.
    wait_for("the engine to see Kafka again", Duration::from_secs(30), || async {
        admin.stats().await["subscriptions"]["outage"]["kafka_down"] == false
    })
    .await;
    let stats = admin.stats().await;
    sigterm(&mut engine);
    let log = std::fs::read_to_string(&log_path).unwrap();
    println!(
        "broker outage: {} s down, {RECORDS} records, all succeeded {:.1} s after the broker came back, kafka_down during the outage: {kafka_down}",
        outage.as_secs(),
        resumed_after.as_secs_f64()
    );
    assert_eq!(stats["pending"].as_u64().unwrap() + stats["dead"].as_u64().unwrap(), 0);
    assert_eq!(kafka_down, true, "stats report the outage");
    assert!(
        log.contains("Kafka unreachable: every broker is down"),
        "the outage is logged clearly:\n{log}"
    );
    assert!(log.contains("Kafka reachable again"), "the recovery is logged:\n{log}");
    assert_eq!(
        log.matches("Kafka unreachable").count(),
        1,
        "the outage is logged once, not once per reconnect:\n{log}"
    );
}

/// A full disk, for real: the engine runs with a file-size limit (`RLIMIT_FSIZE`, with
/// SIGXFSZ ignored), so SQLite's writes fail as on a full disk; `prlimit` lifts the limit
/// later, as freeing space would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_consumption_is_reported_and_resumes_when_space_returns() {
    use connectors::dev_broker::DevBroker;
    const RECORDS: usize = 20_000;
    let broker = DevBroker::start(1).unwrap();
    broker.create_topic("full", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    let subscription = Subscription::new("full", &target.url())
        .set("paused", true)
        .kafka(&bootstrap, &["full"]);
    integration_tests::test_config(dir.path(), subscription)
        .admin(admin_addr)
        .write(&config);
    let log_path = dir.path().join("engine.log");
    // 2 MiB per file: the database and its WAL cannot grow past it.
    let mut limited = Command::new("bash");
    limited
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -S -f 2048; exec \"$0\" serve --config \"$1\"")
        .arg(integration_tests::engine_binary())
        .arg(&config);
    let mut engine = spawn_logged(limited, &log_path);
    let admin = Admin::new(admin_addr);
    wait_for("the engine to come up", Duration::from_secs(30), || admin.is_up()).await;
    let pad = "x".repeat(400);
    let records: Vec<Out> = (0..RECORDS)
        .map(|n| Out::keyed(format!("k{n}"), format!("{n}-{pad}")))
        .collect();
    produce(&producer(&bootstrap), "full", records).await;
    let metrics = || async {
        reqwest::get(format!("http://{admin_addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    wait_for(
        "the store to report failing writes",
        Duration::from_secs(60),
        || async { metric(&metrics().await, "engine_store_failing") == Some(1.0) },
    )
    .await;
    let total = || async {
        let stats = admin.stats().await;
        stats["pending"].as_u64().unwrap_or(0) + stats["succeeded"].as_u64().unwrap_or(0)
    };
    let held = total().await;
    // Two more failed writes of the held batch: had it been stored, its calls would count.
    let failed = metric(&metrics().await, "engine_store_failed_writes_total").unwrap();
    wait_for("two more failed writes", Duration::from_secs(60), || async {
        metric(&metrics().await, "engine_store_failed_writes_total").unwrap_or(0.0) >= failed + 2.0
    })
    .await;
    assert!(admin.is_up().await, "the engine stays up with a full disk");
    let still = total().await;
    assert_eq!(held, still, "no call is created while the disk is full");
    assert!(
        held < RECORDS as u64,
        "the limit was hit before every record was stored: {held}"
    );

    let lifted = Command::new("prlimit")
        .args(["--pid", &engine.pid().to_string(), "--fsize=unlimited:"])
        .status()
        .unwrap();
    assert!(lifted.success(), "prlimit");
    wait_for("every record to become a call", Duration::from_secs(60), || async {
        total().await == RECORDS as u64
    })
    .await;
    assert_eq!(metric(&metrics().await, "engine_store_failing"), Some(0.0));
    sigterm(&mut engine);
    let log = std::fs::read_to_string(&log_path).unwrap();
    println!(
        "full disk: {RECORDS} records, {held} calls stored when the 2 MiB limit hit, all {RECORDS} after it was lifted"
    );
    assert!(log.contains("store write failed"), "the full disk is logged:\n{log}");
    assert!(
        log.contains("store writes succeed again"),
        "the recovery is logged:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_faults_delay_calls_but_everything_completes_and_4xx_goes_dead_with_its_reason() {
    const CALLS: usize = 400;
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&format!("http://{addr}/hook"))
        .ordering("unordered")
        .set("timeout", "200ms")
        .set("max_output_bytes", 1024)
        .retries_between("10ms", "100ms");
    let (engine, admin) = integration_tests::start_engine(&dir, subscription).await;
    // Connection refused first: nothing listens yet.
    let mut ids = Vec::new();
    for n in 0..CALLS {
        let body = if n % 20 == 0 {
            format!("reject-{n}")
        } else {
            format!("job-{n}")
        };
        ids.push((admin.enqueue("test", body.as_bytes(), None).await, n % 20 == 0));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = admin.stats().await["subscriptions"]["test"]["waiting_retry"]
        .as_u64()
        .unwrap_or(0);
    let target = Target::start_on(addr, |seen| {
        if seen.body.starts_with(b"reject") {
            return Reply::Status(400, "rejected: malformed job");
        }
        match rand::rng().random_range(0..100) {
            0..50 => Reply::Status(503, "busy"),
            50..60 => Reply::Hang(Duration::from_millis(400)),
            60..70 => Reply::Large(1 << 20),
            _ => Reply::Status(200, "ok"),
        }
    })
    .await;
    wait_for("every call to finish", Duration::from_secs(120), || async {
        let stats = admin.stats().await;
        stats["succeeded"].as_u64().unwrap_or(0) + stats["dead"].as_u64().unwrap_or(0) == CALLS as u64
    })
    .await;
    let mut large_outputs = 0;
    let mut timeouts = 0;
    for (id, reject) in &ids {
        let call = admin.call(id).await;
        if *reject {
            assert_eq!(call["status"], "dead", "{call}");
            let error = call["last_error"].as_str().unwrap();
            assert_eq!(error, "HTTP 400: rejected: malformed job");
            // Refused connections before the handler came up, then one 400: never retried.
            let history = call["history"].as_array().unwrap();
            assert_eq!(history.last().unwrap()["http_status"], 400);
            assert_eq!(
                history.iter().filter(|a| a["http_status"] == 400).count(),
                1,
                "a 4xx is not retried"
            );
        } else {
            assert_eq!(call["status"], "succeeded", "{call}");
            let output = call["output"]["data"].as_str().unwrap_or_default();
            assert!(output.len() <= 1024, "output bounded by max_output_bytes");
            large_outputs += usize::from(output.len() == 1024);
            timeouts += call["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["error"].as_str().is_some_and(|e| e.starts_with("timed out")))
                .count();
        }
    }
    let requests = target.seen().len();
    println!(
        "handler faults: {CALLS} calls, {requests} requests (50% 503, 10% hang past the timeout, 10% 1 MiB bodies), {refused} waiting on a refused connection at first, {timeouts} timeouts, {large_outputs} outputs cut at 1 KiB, {} dead by 400",
        CALLS / 20
    );
    assert!(refused > 0, "calls were retried while the connection was refused");
    assert!(timeouts > 0 && large_outputs > 0);
    engine.shutdown().await.unwrap();
}

/// A handler that answers with malformed HTTP for its first responses, then properly.
async fn garbage_handler(responses: Vec<&'static [u8]>) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(Mutex::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            let n = {
                let mut served = count.lock().unwrap();
                *served += 1;
                *served - 1
            };
            let reply: &[u8] = responses
                .get(n)
                .copied()
                .unwrap_or(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = socket.write_all(reply).await;
            let _ = socket.shutdown().await;
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_handler_is_a_temporary_failure_and_the_call_completes() {
    let garbage: Vec<&'static [u8]> = vec![
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Bad\x01Header: v\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: whenever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\ntruncated",
        b"",
    ];
    let expected_failures = garbage.len();
    let (addr, served) = garbage_handler(garbage).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&format!("http://{addr}/hook"))
        .set("timeout", "2s")
        .retries_between("10ms", "50ms");
    let (engine, admin) = integration_tests::start_engine(&dir, subscription).await;
    let id = admin.enqueue("test", b"job", None).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    let history = call["history"].as_array().unwrap();
    let errors: Vec<&str> = history.iter().filter_map(|a| a["error"].as_str()).collect();
    println!(
        "garbage responses: {} attempts; errors recorded: {errors:#?}",
        history.len()
    );
    assert_eq!(history.len(), expected_failures + 1, "{history:#?}");
    assert!(history[..expected_failures].iter().all(|a| a["outcome"] == "temporary"));
    assert_eq!(history.last().unwrap()["outcome"], "success");
    assert_eq!(*served.lock().unwrap(), expected_failures + 1);
    engine.shutdown().await.unwrap();
}

#[test]
fn bad_config_files_are_refused_with_the_line_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "wrong type",
            "timeout = 5",
            "line 4",
            "invalid type: integer `5`, expected a duration",
        ),
        ("unknown key", "retries = 3", "line 4", "unknown field `retries`"),
        ("missing target", "", "line 1", "missing field `target`"),
    ];
    for (what, line, position, reason) in cases {
        let config = dir.path().join("engine.toml");
        let target = if what == "missing target" {
            ""
        } else {
            "target = \"http://127.0.0.1:9/x\""
        };
        std::fs::write(
            &config,
            format!(
                "[[subscription]]\nname = \"a\"\n{target}\n{line}\n[store]\npath = \"{}\"\n",
                dir.path().join("engine.db").display()
            ),
        )
        .unwrap();
        let output = Command::new(integration_tests::engine_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{what}: {stderr}");
        assert!(!output.status.success(), "{what}: refused");
        assert!(stderr.contains(position) && stderr.contains(reason), "{what}: {stderr}");
        assert!(!dir.path().join("engine.db").exists(), "{what}: nothing created");
    }
}

/// Run as an unprivileged user when root (root ignores file modes).
#[test]
fn a_read_only_database_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("engine.db");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[subscription]]\nname = \"a\"\ntarget = \"http://127.0.0.1:9/x\"\n",
            db.display()
        ),
    )
    .unwrap();
    // Create the database, then make it and its directory read-only.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 0;")
        .unwrap();
    drop(conn);
    let chmod = |mode: &str, path: &std::path::Path| {
        assert!(Command::new("chmod").arg(mode).arg(path).status().unwrap().success());
    };
    chmod("0444", &db);
    chmod("0444", &config);
    chmod("0555", dir.path());
    let mut command = if unsafe_is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        c.arg(integration_tests::engine_binary());
        c
    } else {
        Command::new(integration_tests::engine_binary())
    };
    let output = command.args(["serve", "--config"]).arg(&config).output().unwrap();
    chmod("0755", dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("read-only database: {stderr}");
    assert!(!output.status.success());
    // The engine's own words (docs/reliability.md), not a failure to run the binary at all.
    assert!(
        stderr.contains("is read-only: the engine needs to write to it and to its directory"),
        "{stderr}"
    );
}

fn unsafe_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
