//! The SDK and its examples end to end: engine → forward → flaky-endpoint, signed requests,
//! and the producer's three send modes against a real broker.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use engine::Engine;
use integration_tests::config::EngineConfig;
use integration_tests::kafka::Tansu;
use integration_tests::{free_addr, test_config, test_subscription, wait_for, workspace_binary, Admin};
use sdk::signing::{KeyPair, Verifier};
use sdk::{Context, Endpoint, Error};

/// Kills the process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(name: &str, args: &[&str]) -> Running {
    Running(
        Command::new(workspace_binary(name))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}")),
    )
}

async fn wait_http(url: &str) {
    let url = url.to_string();
    wait_for(&format!("{url} to answer"), Duration::from_secs(60), || {
        let url = url.clone();
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_to_forward_to_a_flaky_endpoint_delivers_every_record() {
    const CALLS: usize = 300;
    let endpoint = free_addr();
    let forward = free_addr();
    let _flaky = spawn(
        "flaky-endpoint",
        &["--listen", &endpoint.to_string(), "--failure-rate", "0.3"],
    );
    let _forward = spawn(
        "forward",
        &[
            "--listen",
            &forward.to_string(),
            "--to",
            &format!("http://{endpoint}/ingest"),
        ],
    );
    wait_http(&format!("http://{endpoint}/stats")).await;
    wait_http(&format!("http://{forward}/health")).await;

    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&format!("http://{forward}/forward"))
        .ordering("unordered")
        .retries_between("10ms", "100ms");
    let engine = Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    for n in 0..CALLS {
        admin.enqueue("test", format!("record {n}").as_bytes(), None).await;
    }
    wait_for("every call to succeed", Duration::from_secs(120), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) == CALLS as u64
    })
    .await;
    let stats: serde_json::Value = reqwest::get(format!("http://{endpoint}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("flaky-endpoint saw: {stats}");
    assert_eq!(stats["unique_calls_ok"], CALLS, "every record arrived at the endpoint");
    assert!(
        stats["failed_503"].as_u64().unwrap() > 0,
        "the failure rate was exercised"
    );
    let duplicates = stats["duplicate_successes"].as_u64().unwrap();
    println!("duplicates by idempotency key: {duplicates}");
    engine.shutdown().await.unwrap();
}

async fn echo(_ctx: Context, body: axum::body::Bytes) -> Result<Vec<u8>, Error> {
    Ok(body.to_vec())
}

#[tokio::test]
async fn signed_engine_requests_are_accepted_and_unsigned_ones_refused() {
    let keys = KeyPair::generate();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handler = listener.local_addr().unwrap();
    let endpoint = Endpoint::new()
        .raw("echo", echo)
        .verify_with(Verifier::from_base64(&keys.public_base64()).unwrap());
    tokio::spawn(endpoint.serve_on(listener, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let target = format!("http://{handler}/echo");
    let signed = EngineConfig::new(dir.path().join("signed.db"))
        .signing_key(&keys.private_base64())
        .subscription(test_subscription(&target));
    let engine = Engine::start(signed.build()).await.unwrap();
    let admin = Admin::new(engine.admin_addr());
    let id = admin.enqueue("test", b"hello", None).await;
    wait_for("the signed call to succeed", Duration::from_secs(20), || async {
        admin.status(&id).await == "succeeded"
    })
    .await;
    engine.shutdown().await.unwrap();

    // The key from the environment (ENGINE_SIGNING_KEY), to `engine serve` as a process.
    let admin_addr = free_addr();
    let config = dir.path().join("env-signed.toml");
    EngineConfig::new(dir.path().join("env-signed.db"))
        .admin(admin_addr)
        .subscription(test_subscription(&target))
        .write(&config);
    let mut serve = integration_tests::Proc(
        Command::new(integration_tests::engine_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("ENGINE_SIGNING_KEY", keys.private_base64())
            .env("ENGINE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = Admin::new(admin_addr);
    wait_for("the engine to come up", Duration::from_secs(30), || admin.is_up()).await;
    let id = admin.enqueue("test", b"hello", None).await;
    wait_for(
        "the call signed with the key from the environment to succeed",
        Duration::from_secs(20),
        || async { admin.status(&id).await == "succeeded" },
    )
    .await;
    assert!(serve.terminate().success());

    let unsigned = EngineConfig::new(dir.path().join("unsigned.db")).subscription(test_subscription(&target));
    let engine = Engine::start(unsigned.build()).await.unwrap();
    let admin = Admin::new(engine.admin_addr());
    let id = admin.enqueue("test", b"hello", None).await;
    wait_for("the unsigned call to go dead", Duration::from_secs(20), || async {
        admin.status(&id).await == "dead"
    })
    .await;
    let call = admin.call(&id).await;
    assert!(call["last_error"].as_str().unwrap().contains("HTTP 401"), "{call}");
    engine.shutdown().await.unwrap();
}

fn summary_of(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_default()
        .to_string()
}

fn figure(summary: &str, name: &str) -> u64 {
    summary
        .split(", ")
        .find_map(|part| {
            part.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no `{name}` in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_reports_every_failure_in_sync_and_async_modes_when_the_broker_stalls() {
    let binary = workspace_binary("produce");
    for mode in ["sync", "async", "fire-and-forget"] {
        let mut tansu = Tansu::start();
        tansu.create_topic("produce", 3).await;
        // All delivered while the broker is up.
        let output = Command::new(&binary)
            .args([
                "--brokers",
                &tansu.bootstrap(),
                "--topic",
                "produce",
                "--mode",
                mode,
                "--count",
                "200",
                "--keys",
                "5",
            ])
            .output()
            .unwrap();
        let summary = summary_of(&output);
        println!("{mode}, broker up: {summary}");
        // What reached the broker, read back, against what the mode reported.
        let bootstrap = tansu.bootstrap();
        let stored = tokio::task::spawn_blocking(move || {
            integration_tests::kafka::read_topic(&bootstrap, "produce", 3, 200, Duration::from_secs(3))
        })
        .await
        .unwrap();
        println!("{mode}: {} records read back from the topic", stored.len());
        if mode == "fire-and-forget" {
            assert_eq!(figure(&summary, "sent"), 200);
            assert_eq!(figure(&summary, "unknown"), 200, "{summary}");
            assert_eq!(stored.len(), 200, "handed over and flushed at exit: all on the broker");
        } else {
            assert_eq!(figure(&summary, "acked"), 200, "{summary}");
            assert_eq!(figure(&summary, "failed"), 0, "{summary}");
            assert_eq!(
                stored.len() as u64,
                figure(&summary, "acked"),
                "every ack is a stored record"
            );
        }

        // The broker hangs mid-run (SIGSTOP), long past the producer's timeout, and comes back
        // after the producer has given up: every record reported acked must then be on it.
        tansu.create_topic("produce-stalled", 3).await;
        let child = Command::new(&binary)
            .args([
                "--brokers",
                &tansu.bootstrap(),
                "--topic",
                "produce-stalled",
                "--mode",
                mode,
            ])
            .args(["--count", "40", "--rate", "200", "--timeout", "300ms"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tansu.freeze();
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        tansu.thaw();
        let summary = summary_of(&output);
        let sent = figure(&summary, "sent");
        let bootstrap = tansu.bootstrap();
        let stored = tokio::task::spawn_blocking(move || {
            integration_tests::kafka::read_topic(&bootstrap, "produce-stalled", 3, 0, Duration::from_secs(3))
        })
        .await
        .unwrap()
        .len() as u64;
        println!("{mode}, broker stalled: {summary}; {stored} records on the broker afterwards");
        assert!(stored <= sent, "nothing arrives that was not sent: {summary}");
        if mode == "fire-and-forget" {
            assert_eq!(figure(&summary, "unknown"), sent, "nothing is known: {summary}");
        } else {
            let (acked, failed) = (figure(&summary, "acked"), figure(&summary, "failed"));
            assert!(failed > 0, "failures are reported: {summary}");
            assert_eq!(acked + failed, 40, "every record is accounted for: {summary}");
            assert!(stored >= acked, "every acked record is on the broker: {summary}");
        }
        tansu.stop();
    }
}
