//! Deployment pinning: a workflow runs to its end on the deployment it started on. A new
//! deployment at a new URL takes new calls (and calls not started yet); code replaced in
//! place under a running workflow pauses it instead of replaying it on other code.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::config::Subscription;
use integration_tests::{free_addr, metric, start_engine, wait_for, Admin};
use sdk::{Endpoint, Workflow};

use super::{journal_kinds, serve};

/// label (a step) → sleep → send (a step); the result names the deployment that ran it.
fn shipping(deployment: &'static str, sleep: Duration) -> Endpoint {
    Endpoint::new()
        .deployment(deployment)
        .workflow("ship", move |wf: Workflow, order: u32| async move {
            let label: String = wf
                .step("label", move || async move { Ok(format!("label-{order}")) })
                .await?;
            wf.sleep(sleep).await;
            wf.step(
                "send",
                move || async move { Ok(format!("{label} sent by {deployment}")) },
            )
            .await
        })
}

fn subscription(addr: SocketAddr) -> Subscription {
    Subscription::new("shipping", &format!("http://{addr}/ship")).ordering("key")
}

async fn asleep(admin: &Admin, id: &str) {
    wait_for("the workflow to sleep", Duration::from_secs(20), || async {
        journal_kinds(&admin.call(id).await) == ["step:label", "sleep"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_finishes_on_the_deployment_it_started_on_and_new_calls_go_to_the_new_one() {
    let (v1_addr, v2_addr) = (free_addr(), free_addr());
    let _v1 = serve(shipping("v1", Duration::from_secs(2)), v1_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, subscription(v1_addr)).await;
    // Started on v1 and asleep; a second call of the same key waits behind it, not started.
    let started = admin.enqueue("shipping", b"1", Some("k")).await;
    asleep(&admin, &started).await;
    // Its 2 s sleep parks it: counted by the scheduler's gauge.
    wait_for(
        "the sleeping workflow to be counted as parked",
        Duration::from_secs(10),
        || async { metric(&admin.metrics().await, "engine_calls_parked{subscription=\"shipping\"}") == Some(1.0) },
    )
    .await;
    let waiting = admin.enqueue("shipping", b"2", Some("k")).await;
    assert_eq!(admin.call(&started).await["deployment"], "v1");
    engine.shutdown().await.unwrap();

    // v2 is deployed at a new URL and the subscription points there; v1 keeps serving.
    let _v2 = serve(shipping("v2", Duration::from_millis(10)), v2_addr).await;
    let (engine, admin) = start_engine(&dir, subscription(v2_addr)).await;
    admin.wait_status(&started, "succeeded").await;
    admin.wait_status(&waiting, "succeeded").await;
    let started = admin.call(&started).await;
    assert_eq!(
        started["output"]["data"], "\"label-1 sent by v1\"",
        "pinned to v1 to its end"
    );
    assert_eq!(started["target"], format!("http://{v1_addr}/ship"));
    let waiting = admin.call(&waiting).await;
    assert_eq!(
        waiting["output"]["data"], "\"label-2 sent by v2\"",
        "not started: it follows the target"
    );
    assert_eq!(waiting["deployment"], "v2");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_replaced_in_place_under_a_running_workflow_pauses_it_until_its_deployment_is_back() {
    let addr = free_addr();
    let v1 = serve(shipping("v1", Duration::from_secs(1)), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, subscription(addr)).await;
    let id = admin.enqueue("shipping", b"3", None).await;
    asleep(&admin, &id).await;

    // v2 replaces v1 at the same URL while the workflow sleeps.
    v1.stop().await;
    let v2 = serve(shipping("v2", Duration::from_secs(1)), addr).await;
    admin.wait_status(&id, "paused").await;
    let call = admin.call(&id).await;
    let reason = call["last_error"].as_str().unwrap();
    assert!(
        reason.contains("started on deployment `v1`") && reason.contains("deployment `v2` answered"),
        "{reason}"
    );
    assert_eq!(
        journal_kinds(&call),
        ["step:label", "sleep"],
        "nothing of v2's answer was stored"
    );

    // v1 is back at its URL: a redrive finishes the workflow on it.
    v2.stop().await;
    let _v1 = serve(shipping("v1", Duration::from_secs(1)), addr).await;
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/redrive"), serde_json::json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    admin.wait_status(&id, "succeeded").await;
    assert_eq!(admin.call(&id).await["output"]["data"], "\"label-3 sent by v1\"");
    engine.shutdown().await.unwrap();
}
