//! Restarting an ended workflow from a journal entry: the entries before it replay, the
//! rest run again, and a signal the dropped entries had consumed is handed out again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use integration_tests::config::Subscription;
use integration_tests::{free_addr, start_engine};
use sdk::{Endpoint, Error, Workflow};

use super::{journal_kinds, serve};

#[derive(Default)]
struct Fulfilment {
    fetched: AtomicU32,
    charged: AtomicU32,
    /// The payment step fails for good while this is set (a bug, later fixed).
    broken: AtomicBool,
}

/// fetch (a step) → wait for `go` → charge (a step that fails for good while broken).
fn fulfil(state: Arc<Fulfilment>) -> Endpoint {
    Endpoint::new().workflow("fulfil", move |wf: Workflow, order: u32| {
        let state = Arc::clone(&state);
        async move {
            let s = Arc::clone(&state);
            let item: String = wf
                .step("fetch", move || async move {
                    s.fetched.fetch_add(1, Ordering::SeqCst);
                    Ok(format!("item-{order}"))
                })
                .await?;
            let go: String = wf.signal("go").await?;
            let s = Arc::clone(&state);
            let charged: String = wf
                .step("charge", move || async move {
                    s.charged.fetch_add(1, Ordering::SeqCst);
                    if s.broken.load(Ordering::SeqCst) {
                        return Err(Error::permanent("card processor rejected the request (bug)"));
                    }
                    Ok("charged".to_string())
                })
                .await?;
            Ok(format!("{item} {charged} after {go}"))
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workflow_restarted_from_an_entry_replays_the_entries_before_it_and_runs_the_rest_again() {
    let state = Arc::new(Fulfilment::default());
    state.broken.store(true, Ordering::SeqCst);
    let addr = free_addr();
    let _handler = serve(fulfil(Arc::clone(&state)), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("fulfil", &format!("http://{addr}/fulfil"))).await;

    let id = admin.enqueue("fulfil", b"7", None).await;
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/signals/go"), serde_json::json!("approval"))
        .await;
    assert_eq!(status, 202, "{body}");
    admin.wait_status(&id, "dead").await;
    let call = admin.call(&id).await;
    // The failing step ended the run: it left no entry.
    assert_eq!(journal_kinds(&call), ["step:fetch", "signal:go"]);

    // Refused with reasons: a journal shorter than `from`, a call still pending.
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/restart?from=3"), serde_json::json!(null))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("2 journal entries"), "{body}");
    let waiting = admin.enqueue("fulfil", b"8", None).await;
    let (status, body) = admin
        .post(&format!("/v1/calls/{waiting}/restart"), serde_json::json!(null))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("cancel it first"), "{body}");

    // The bug is fixed; run again from entry 1: fetch replays, the signal is handed out
    // again from the inbox, charge runs again.
    state.broken.store(false, Ordering::SeqCst);
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/restart?from=1"), serde_json::json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    assert_eq!(call["output"]["data"], "\"item-7 charged after approval\"");
    // The signal's entry is new (made again from the inbox), not the dropped one.
    assert_eq!(journal_kinds(&call), ["step:fetch", "signal:go"]);
    assert_eq!(
        state.fetched.load(Ordering::SeqCst),
        2,
        "fetch ran for each of the two calls, once"
    );
    assert_eq!(
        state.charged.load(Ordering::SeqCst),
        2,
        "charge ran again after the restart"
    );

    // From the start: every step runs again (the signal is still there for it).
    let (status, body) = admin
        .post(&format!("/v1/calls/{id}/restart"), serde_json::json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    admin.wait_status(&id, "succeeded").await;
    assert_eq!(state.fetched.load(Ordering::SeqCst), 3);
    assert_eq!(state.charged.load(Ordering::SeqCst), 3);
    engine.shutdown().await.unwrap();
}
