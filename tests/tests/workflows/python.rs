//! A workflow handler in Python, written from docs/protocol.md without our SDK
//! (`tests/targets/workflow.py`): jittery, failing 20% of its requests with 503 before it
//! touches the journal. Every workflow completes and no stored step runs twice.

use std::time::Duration;

use integration_tests::config::Subscription;
use integration_tests::unkind::UnkindTarget;
use integration_tests::{start_engine, wait_for};

use super::journal_kinds;

const WORKFLOWS: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_workflow_handler_speaking_the_protocol_runs_each_step_once_despite_random_503s() {
    let handler = UnkindTarget::start_script("workflow.py", &["--error-rate", "0.2", "--jitter-ms", "10"]).await;
    let dir = tempfile::tempdir().unwrap();
    let target = format!("http://{}/order", handler.addr);
    let (engine, admin) = start_engine(&dir, Subscription::new("orders", &target).fast_retries()).await;
    let mut ids = Vec::new();
    for n in 0..WORKFLOWS {
        ids.push(admin.enqueue("orders", n.to_string().as_bytes(), None).await);
    }
    wait_for("every workflow to succeed", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"].as_u64() == Some(WORKFLOWS)
    })
    .await;
    let stats = handler.stats().await;
    println!("Python workflow handler: {stats}");
    assert_eq!(stats["completed"], WORKFLOWS);
    assert_eq!(stats["steps_run"], 3 * WORKFLOWS, "three steps per workflow");
    assert_eq!(stats["steps_run_twice"], 0, "a stored step never runs again");
    assert_eq!(
        stats["mismatches"], 0,
        "replayed results are the ones the steps returned"
    );
    assert!(
        stats["injected"].as_u64().unwrap() > 0,
        "some requests failed on purpose"
    );

    let call = admin.call(&ids[7]).await;
    assert_eq!(journal_kinds(&call), ["step:reserve", "step:charge", "sleep"]);
    let output: serde_json::Value = serde_json::from_str(call["output"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(output["order"], 7);
    assert_eq!(
        output["reserved"], call["journal"][0]["ok"],
        "the output uses the stored result"
    );
    engine.shutdown().await.unwrap();
}
