//! The embedded default: `engine dev`, and fault injection on librdkafka's mock cluster.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::dev_broker::DevBroker;
use engine::Engine;
use integration_tests::kafka::{produce, producer, Out};
use integration_tests::{
    engine_binary, free_addr, test_config, test_subscription, wait_for, Admin, Proc, Reply, Target,
};

#[tokio::test]
async fn a_broker_outage_mid_stream_loses_nothing() {
    const RECORDS: usize = 3_000;
    let broker = DevBroker::start(1).unwrap();
    broker.create_topic("outage", 3).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = test_subscription(&target.url())
        .kafka(&bootstrap, &["outage"])
        .kafka_option("reconnect.backoff.max.ms", "500");
    let config = test_config(dir.path(), subscription).build();
    let engine = Engine::start(config).await.unwrap();
    let admin = Admin::new(engine.admin_addr());
    let first = (0..RECORDS / 2)
        .map(|n| Out::keyed(format!("k{}", n % 20), n.to_string()))
        .collect();
    produce(&producer(&bootstrap), "outage", first).await;
    wait_for("the first half to be ingested", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"].as_u64().unwrap_or(0) >= 100
    })
    .await;

    broker.all_down().unwrap();
    let second_half = {
        let bootstrap = bootstrap.clone();
        tokio::spawn(async move {
            let records = (RECORDS / 2..RECORDS)
                .map(|n| Out::keyed(format!("k{}", n % 20), n.to_string()))
                .collect();
            produce(&producer(&bootstrap), "outage", records).await
        })
    };
    // The outage itself: the engine must ride it out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(admin.is_up().await, "the engine stays up during the outage");
    broker.all_up().unwrap();
    second_half.await.unwrap();

    wait_for(
        "every record to become a succeeded call",
        Duration::from_secs(90),
        || async { admin.stats().await["succeeded"].as_u64().unwrap_or(0) == RECORDS as u64 },
    )
    .await;
    let stats = admin.stats().await;
    assert_eq!(stats["pending"].as_u64().unwrap() + stats["dead"].as_u64().unwrap(), 0);
    engine.shutdown().await.unwrap();
}

/// `engine dev` as a process, its database in `dir`, with stdin and stdout piped.
fn spawn_dev(dir: &std::path::Path, admin_addr: std::net::SocketAddr, extra: &[&str]) -> Proc {
    Proc(
        Command::new(engine_binary())
            .arg("dev")
            .arg("--db")
            .arg(dir.join("dev.db"))
            .args(["--admin", &admin_addr.to_string()])
            .args(extra)
            .env("ENGINE_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn engine dev"),
    )
}

/// Every line the child prints, collected as it prints them.
fn capture_stdout(child: &mut Proc) -> Arc<Mutex<Vec<String>>> {
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let lines = Arc::clone(&output);
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_dev_delivers_records_from_its_printed_address_and_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let mut child = spawn_dev(dir.path(), admin_addr, &["--failure-rate", "0"]);
    let output = capture_stdout(&mut child);
    let printed = |needle: &str| output.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
    wait_for("the bootstrap address", Duration::from_secs(60), || async {
        printed("Kafka bootstrap:").is_some()
    })
    .await;
    let line = printed("Kafka bootstrap:").unwrap();
    let bootstrap = line.split_whitespace().nth(2).unwrap().to_string();

    produce(
        &producer(&bootstrap),
        "dev",
        vec![Out::keyed("k", "from-a-kafka-client")],
    )
    .await;
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "user-7: from-stdin").unwrap();
    stdin.flush().unwrap();

    wait_for("both records to be handled", Duration::from_secs(60), || async {
        printed("from-a-kafka-client").is_some_and(|l| l.contains("OK"))
            && printed("\"from-stdin\"").is_some_and(|l| l.contains("OK") && l.contains("key user-7"))
    })
    .await;
    // The handler prints before the engine has committed the outcome: wait for the store.
    let admin = Admin::new(admin_addr);
    wait_for(
        "both calls to be recorded as succeeded",
        Duration::from_secs(10),
        || async { admin.stats().await["succeeded"] == 2 },
    )
    .await;
    assert!(child.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_dev_keeps_its_limit_up_against_its_failing_demo_handler() {
    const CALLS: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let mut child = spawn_dev(dir.path(), admin_addr, &[]);
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines().map_while(Result::ok) {});
    let admin = Admin::new(admin_addr);
    wait_for("the admin API", Duration::from_secs(60), || async {
        reqwest::get(format!("http://{admin_addr}/v1/stats")).await.is_ok()
    })
    .await;
    // A burst from 8 clients at once, so that the endpoint is kept busy.
    let senders: Vec<_> = (0..8)
        .map(|client| {
            tokio::spawn(async move {
                let admin = Admin::new(admin_addr);
                for n in (client..CALLS).step_by(8) {
                    let key = format!("user{}", n % 40);
                    admin.enqueue("dev", format!("record {n}").as_bytes(), Some(&key)).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    wait_for(
        "every call to succeed past the 30% failures",
        Duration::from_secs(120),
        || async { admin.stats().await["succeeded"] == CALLS },
    )
    .await;
    let stats = admin.stats().await;
    let endpoint = stats["endpoints"].as_object().unwrap().values().next().unwrap();
    println!("{endpoint}");
    assert!(
        endpoint["limit"].as_u64().unwrap() >= 4,
        "the demo handler's random 503s are not overload: {endpoint}"
    );
    assert!(
        endpoint["usual_error_rate"].as_f64().is_some(),
        "the engine found the errors to be the application's: {endpoint}"
    );
    assert!(endpoint["changes_by_reason"].get("overload").is_none(), "{endpoint}");
    assert!(child.terminate().success());
}

/// A new broker behind the same name (here a fresh mock cluster, as on every `engine dev`
/// start) reuses offsets 0, 1, …: its records are new calls, never duplicates of the stored
/// ones at those offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_at_reused_offsets_are_new_calls_not_duplicates() {
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    for (run, values) in [["first-1", "first-2"], ["second-1", "second-2"]].iter().enumerate() {
        let broker = DevBroker::start(1).unwrap();
        broker.create_topic("dev", 1).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let subscription = test_subscription(&target.url()).kafka(&bootstrap, &["dev"]);
        let engine = Engine::start(test_config(dir.path(), subscription).build())
            .await
            .unwrap();
        let admin = Admin::new(engine.admin_addr());
        let records = values.iter().map(|v| Out::keyed("k", *v)).collect();
        produce(&producer(&bootstrap), "dev", records).await;
        let expected = 2 * (run as u64 + 1);
        wait_for("this run's records to succeed", Duration::from_secs(60), || async {
            admin.stats().await["succeeded"] == expected
        })
        .await;
        engine.shutdown().await.unwrap();
    }
    assert_eq!(target.bodies_sorted(), ["first-1", "first-2", "second-1", "second-2"]);
}

/// `engine dev --example checkout`, as a user tries it: an order typed on stdin is charged,
/// reserved line by line (one line out of stock), waits for its `shipped` signal (sent
/// with the CLI), and its confirmation comes back from the confirmations topic; `engine
/// calls show` prints the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_dev_runs_the_checkout_workflow_from_an_order_to_its_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let mut child = spawn_dev(dir.path(), admin_addr, &["--example", "checkout"]);
    let output = capture_stdout(&mut child);
    let printed = |needle: &str| output.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
    wait_for("engine dev to start", Duration::from_secs(60), || async {
        printed("Type an order").is_some()
    })
    .await;
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(stdin, "o-1 book lampx2 gone-vase").unwrap();
    stdin.flush().unwrap();

    wait_for("the order to wait for its signal", Duration::from_secs(60), || async {
        printed("waiting up to").is_some()
    })
    .await;
    let waiting = printed("waiting up to").unwrap();
    assert!(waiting.contains("2 line(s) reserved, 1 unavailable"), "{waiting}");
    let call_id = waiting
        .split("engine calls signal ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the call id in the hint")
        .to_string();

    let admin = format!("http://{admin_addr}");
    let cli = |args: Vec<String>| {
        let admin = admin.clone();
        async move {
            let shown = format!("{args:?}");
            let output = tokio::task::spawn_blocking(move || {
                Command::new(engine_binary())
                    .args(&args)
                    .args(["--admin", &admin])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            assert!(
                output.status.success(),
                "engine {shown}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let shown = cli(vec!["calls".into(), "show".into(), call_id.clone()]).await;
    assert!(shown.contains("step charge"), "{shown}");
    assert!(shown.contains("call reserve-line"), "{shown}");
    assert!(
        shown.contains("signal shipped") && shown.contains("<- waits"),
        "{shown}"
    );
    assert!(shown.contains("waiting for:"), "{shown}");
    assert!(
        shown.contains("deployment    checkout-"),
        "pinned to the example's build: {shown}"
    );

    let sent = cli(vec![
        "calls".into(),
        "signal".into(),
        call_id.clone(),
        "shipped".into(),
        r#"{"carrier": "ups"}"#.into(),
    ])
    .await;
    assert!(sent.contains("signal `shipped` sent"), "{sent}");

    wait_for("the confirmation from Kafka", Duration::from_secs(60), || async {
        printed("confirmation on confirmations").is_some()
    })
    .await;
    let confirmation = printed("confirmation on confirmations").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(confirmation.split_once(": ").unwrap().1).expect("the confirmation is JSON");
    assert_eq!(json["order"], "o-1");
    assert_eq!(json["carrier"], "ups");
    assert_eq!(json["reserved"].as_array().unwrap().len(), 2);
    let unavailable = json["unavailable"][0].as_str().unwrap();
    assert!(
        unavailable.starts_with("gone-vase: ") && unavailable.ends_with("out of stock"),
        "{unavailable}"
    );
    assert!(json["refunded_cents"].as_i64().unwrap() > 0);

    let admin_client = Admin::new(admin_addr);
    wait_for("the workflow to complete", Duration::from_secs(10), || async {
        admin_client.call(&call_id).await["status"] == "succeeded"
    })
    .await;
    let shown = cli(vec!["calls".into(), "show".into(), call_id.clone()]).await;
    assert!(shown.contains("produce to confirmations key o-1"), "{shown}");
    assert!(!shown.contains("waiting for:"), "{shown}");
    assert!(child.terminate().success());
}
