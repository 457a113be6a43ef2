//! Signals: one sent before the workflow waits for it is kept in its inbox; one that does
//! not come in time gives the timeout; signals to unknown or ended calls are refused.

use std::time::Duration;

use integration_tests::config::Subscription;
use integration_tests::{free_addr, start_engine};
use sdk::{Endpoint, Workflow};

use super::{journal_kinds, outcomes, serve};

/// Sleeps first (so a signal can arrive before the wait), then waits for `approved` at
/// most `timeout_ms`.
fn approval() -> Endpoint {
    Endpoint::new().workflow("approve", |wf: Workflow, timeout_ms: u64| async move {
        wf.sleep(Duration::from_millis(300)).await;
        let approved = wf
            .signal_within::<String>("approved", Duration::from_millis(timeout_ms))
            .await?;
        Ok(approved.unwrap_or_else(|| "timed out".into()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_before_the_wait_is_kept_and_a_missing_one_times_out() {
    let addr = free_addr();
    let _handler = serve(approval(), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("approvals", &format!("http://{addr}/approve"))).await;

    // Signalled at once, while the workflow still sleeps: kept in its inbox.
    let early = admin.enqueue("approvals", b"60000", None).await;
    let (status, body) = admin
        .post(
            &format!("/v1/calls/{early}/signals/approved"),
            serde_json::json!("by alice"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    // Never signalled: the 200 ms timeout ends the wait.
    let late = admin.enqueue("approvals", b"200", None).await;

    admin.wait_status(&early, "succeeded").await;
    let call = admin.call(&early).await;
    assert_eq!(call["output"]["data"], "\"by alice\"");
    assert_eq!(journal_kinds(&call), ["sleep", "signal:approved", "sleep"]);
    assert_eq!(
        outcomes(&call),
        ["suspended", "suspended", "success"],
        "the signal was in the journal as the wait was stored: no request waited for it"
    );

    admin.wait_status(&late, "succeeded").await;
    assert_eq!(admin.call(&late).await["output"]["data"], "\"timed out\"");

    // Ended calls and unknown ids are refused; a signal's payload must be JSON.
    let (status, _) = admin
        .post(&format!("/v1/calls/{late}/signals/approved"), serde_json::json!(1))
        .await;
    assert_eq!(status, 409);
    let (status, _) = admin
        .post(
            "/v1/calls/0190a0a0-0000-7000-8000-000000000000/signals/approved",
            serde_json::json!(1),
        )
        .await;
    assert_eq!(status, 404);
    engine.shutdown().await.unwrap();
}

/// A signal that arrives while the workflow waits wakes it at once, long before the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_wait_wakes_the_workflow() {
    let addr = free_addr();
    let _handler = serve(approval(), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("approvals", &format!("http://{addr}/approve"))).await;
    let id = admin.enqueue("approvals", b"600000", None).await;
    integration_tests::wait_for("the wait to be stored", Duration::from_secs(30), || async {
        journal_kinds(&admin.call(&id).await).len() == 3
    })
    .await;
    let sent = std::time::Instant::now();
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/signals/approved"), serde_json::json!("by bob"))
        .await;
    assert_eq!(status, 202, "{body}");
    admin.wait_status(&id, "succeeded").await;
    assert!(
        sent.elapsed() < Duration::from_secs(60),
        "woken by the signal, not the 10 min timeout"
    );
    assert_eq!(admin.call(&id).await["output"]["data"], "\"by bob\"");
    engine.shutdown().await.unwrap();
}

/// An awakeable: the workflow hands its id to "another system" from a step (here a channel
/// the test reads), then waits; that system completes it through the API. A bad id is a
/// clear 400, and an id whose call is unknown a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awakeable_is_completed_by_another_system_with_its_id() {
    let (ids_tx, mut ids_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let addr = free_addr();
    let endpoint = Endpoint::new().workflow("payment", move |wf: Workflow, amount: u64| {
        let ids = ids_tx.clone();
        async move {
            let (id, paid) = wf.awakeable::<serde_json::Value>();
            wf.step("ask the provider", move || async move {
                ids.send(id).map_err(|e| sdk::Error::temporary(e.to_string()))?;
                Ok(())
            })
            .await?;
            let paid = paid.await?;
            Ok(format!("{amount} paid by {}", paid["payer"].as_str().unwrap_or("?")))
        }
    });
    let _handler = serve(endpoint, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("payments", &format!("http://{addr}/payment"))).await;
    let call = admin.enqueue("payments", b"42", None).await;
    let awakeable = tokio::time::timeout(Duration::from_secs(20), ids_rx.recv())
        .await
        .expect("the awakeable's id within 20 s")
        .unwrap();
    assert!(awakeable.starts_with(&format!("{call}.")), "{awakeable}");

    let (status, body) = admin.post("/v1/awakeables/not-an-id", serde_json::json!(1)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an awakeable id"), "{body}");
    let unknown = format!("{}.{}", uuid::Uuid::now_v7(), "x");
    assert_eq!(
        admin
            .post(&format!("/v1/awakeables/{unknown}"), serde_json::json!(1))
            .await
            .0,
        404
    );

    let (status, body) = admin
        .post(
            &format!("/v1/awakeables/{awakeable}"),
            serde_json::json!({"payer": "bob"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    admin.wait_status(&call, "succeeded").await;
    let done = admin.call(&call).await;
    assert_eq!(done["output"]["data"], "\"42 paid by bob\"");
    assert_eq!(
        journal_kinds(&done),
        [
            "signal:awakeable.".to_string() + awakeable.split_once('.').unwrap().1,
            "step:ask the provider".into()
        ]
    );
    // The step that handed the id out is stored before the wait: the id reached the other
    // system once, and the workflow made 2 requests.
    assert!(ids_rx.try_recv().is_err(), "the id was handed out once");
    assert_eq!(outcomes(&done), ["suspended", "success"]);
    engine.shutdown().await.unwrap();
}
