//! Durable workflows end to end: the SDK's `Endpoint::workflow` served on 127.0.0.1, the
//! engine storing journals in a real SQLite file, with the engine and the handler killed at
//! the moments that matter.

mod children;
mod produce;
mod signals;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::model::{AttemptRecord, Transition};
use engine::store::{Store, StoreOptions};
use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::{free_addr, record_call, spawn_engine, start_engine, wait_for, Admin};
use sdk::{Endpoint, Error, Workflow};
use serde_json::Value;

/// How many times each step really ran (not replayed).
#[derive(Default)]
struct Runs {
    charge: AtomicU32,
    email: AtomicU32,
}

/// charge (a step) → sleep → email (a step, which hangs on its first run when asked).
fn checkout(runs: Arc<Runs>, sleep: Duration, hang_first_email: bool) -> Endpoint {
    Endpoint::new().workflow("checkout", move |wf: Workflow, order: u32| {
        let runs = Arc::clone(&runs);
        async move {
            let r = Arc::clone(&runs);
            let receipt: String = wf
                .step("charge", move || async move {
                    r.charge.fetch_add(1, Ordering::SeqCst);
                    Ok(format!("charged order {order}"))
                })
                .await?;
            wf.sleep(sleep).await;
            let r = Arc::clone(&runs);
            wf.step("email", move || async move {
                let run = r.email.fetch_add(1, Ordering::SeqCst);
                if hang_first_email && run == 0 {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
            .await?;
            Ok(format!("{receipt}, emailed"))
        }
    })
}

/// A handler served on 127.0.0.1.
struct Handler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handler {
    /// Stop listening and close every idle connection, as a stopped deployment would (a
    /// request in flight is left to the engine's timeout).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

/// Serve `endpoint` on `addr` (waiting for the port to be free again).
async fn serve(endpoint: Endpoint, addr: SocketAddr) -> Handler {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            // The stopped handler's listener is still closing: try again shortly.
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("cannot listen on {addr}: {e}"),
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = endpoint
            .serve_on(listener, async move {
                let _ = stopped.await;
            })
            .await;
    });
    Handler { stop, task }
}

fn outcomes(call: &Value) -> Vec<String> {
    call["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect()
}

fn journal_kinds(call: &Value) -> Vec<String> {
    call["journal"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    format!(
                        "{}{}",
                        e["kind"].as_str().unwrap(),
                        e["name"].as_str().map(|n| format!(":{n}")).unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_runs_once_and_the_sleep_is_durable_in_two_requests() {
    let runs = Arc::new(Runs::default());
    let addr = free_addr();
    let _handler = serve(checkout(Arc::clone(&runs), Duration::from_millis(1500), false), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("orders", &format!("http://{addr}/checkout"))).await;

    let id = admin.enqueue("orders", b"7", None).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    assert_eq!(call["output"]["data"], "\"charged order 7, emailed\"");
    // The charge is stored with the sleep in one answer; after the sleep, the email runs
    // and the workflow completes in the same request: 2 handler requests in all.
    assert_eq!(outcomes(&call), ["suspended", "success"], "2 handler requests");
    assert_eq!(journal_kinds(&call), ["step:charge", "sleep"]);
    assert_eq!(call["journal"][0]["ok"], "charged order 7");
    let history = call["history"].as_array().unwrap();
    let slept = history[1]["started_at"].as_i64().unwrap() - history[0]["started_at"].as_i64().unwrap();
    assert!(slept >= 1500, "the sleep lasted {slept} ms on the engine's clock");
    assert_eq!(runs.charge.load(Ordering::SeqCst), 1);
    assert_eq!(runs.email.load(Ordering::SeqCst), 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_killed_mid_step_runs_that_step_again_and_replays_the_earlier_ones() {
    let runs = Arc::new(Runs::default());
    let addr = free_addr();
    let handler = serve(checkout(Arc::clone(&runs), Duration::ZERO, true), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(
        &dir,
        Subscription::new("orders", &format!("http://{addr}/checkout"))
            .fast_retries()
            .set("timeout", "2s"),
    )
    .await;

    let id = admin.enqueue("orders", b"8", None).await;
    wait_for("the email step to start", Duration::from_secs(30), || async {
        runs.email.load(Ordering::SeqCst) == 1
    })
    .await;
    handler.stop().await;
    let _handler = serve(checkout(Arc::clone(&runs), Duration::ZERO, true), addr).await;

    admin.wait_status(&id, "succeeded").await;
    assert_eq!(
        runs.charge.load(Ordering::SeqCst),
        1,
        "charge replayed from the journal"
    );
    assert_eq!(runs.email.load(Ordering::SeqCst), 2, "the interrupted step ran again");
    let call = admin.call(&id).await;
    assert_eq!(journal_kinds(&call), ["step:charge", "sleep"]);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_sleep_resumes_it_without_running_earlier_steps() {
    let runs = Arc::new(Runs::default());
    let handler_addr = free_addr();
    let _handler = serve(checkout(Arc::clone(&runs), Duration::from_secs(3), false), handler_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(Subscription::new("orders", &format!("http://{handler_addr}/checkout")))
        .write(&config);
    let admin = Admin::new(admin_addr);

    let engine = spawn_engine(&config);
    wait_for("the engine", Duration::from_secs(30), || admin.is_up()).await;
    let id = admin.enqueue("orders", b"9", None).await;
    wait_for("the sleep to be stored", Duration::from_secs(30), || async {
        journal_kinds(&admin.call(&id).await) == ["step:charge", "sleep"]
    })
    .await;
    engine.crash();

    let _engine = spawn_engine(&config);
    wait_for("the engine again", Duration::from_secs(30), || admin.is_up()).await;
    wait_for("the workflow to finish", Duration::from_secs(30), || async {
        admin.status(&id).await == "succeeded"
    })
    .await;
    let call = admin.call(&id).await;
    let wake_at = call["journal"][1]["wake_at"].as_i64().unwrap();
    let last = call["history"].as_array().unwrap().last().unwrap()["started_at"]
        .as_i64()
        .unwrap();
    assert!(last >= wake_at, "resumed at {last}, not before the wake time {wake_at}");
    assert_eq!(runs.charge.load(Ordering::SeqCst), 1, "charge never ran again");
    assert_eq!(runs.email.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_no_longer_matches_its_journal_is_paused_and_a_redrive_resumes_it() {
    let runs = Arc::new(Runs::default());
    let addr = free_addr();
    let v1 = serve(checkout(Arc::clone(&runs), Duration::from_secs(2), false), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("orders", &format!("http://{addr}/checkout"))).await;
    let id = admin.enqueue("orders", b"10", None).await;
    wait_for("the sleep to be stored", Duration::from_secs(30), || async {
        journal_kinds(&admin.call(&id).await).len() == 2
    })
    .await;

    // A deployment that renamed the first step while the workflow slept.
    v1.stop().await;
    let renamed = Endpoint::new().workflow("checkout", |wf: Workflow, _order: u32| async move {
        wf.step("authorize", || async { Ok::<_, Error>(1) }).await?;
        Ok(())
    });
    let v2 = serve(renamed, addr).await;
    admin.wait_status(&id, "paused").await;
    let call = admin.call(&id).await;
    let error = call["last_error"].as_str().unwrap();
    assert!(
        error.contains("nondeterminism: journal entry 0 is step `charge`, but the code asks for step `authorize`"),
        "{error}"
    );
    assert_eq!(outcomes(&call).last().unwrap(), "paused");
    assert_eq!(admin.stats().await["paused"], 1);

    // Roll back, then resume the paused call.
    v2.stop().await;
    let _v1 = serve(checkout(Arc::clone(&runs), Duration::from_secs(2), false), addr).await;
    let redriven = admin.post(&format!("/v1/calls/{id}/redrive"), Value::Null).await;
    assert_eq!(redriven.0, 200, "{}", redriven.1);
    admin.wait_status(&id, "succeeded").await;
    assert_eq!(runs.charge.load(Ordering::SeqCst), 1);
    assert_eq!(runs.email.load(Ordering::SeqCst), 1);
    engine.shutdown().await.unwrap();
}

/// The store appends an answer's entries only where the journal stands: a second copy of
/// the same answer (late, or sent twice) changes nothing.
#[tokio::test]
async fn a_duplicate_workflow_answer_is_dropped_by_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("engine.db"), StoreOptions::default()).unwrap();
    let inserted = store.insert(vec![record_call(0)]).await.unwrap();
    let engine::model::Inserted::New(id) = inserted[0] else {
        panic!("{inserted:?}")
    };
    let seq = store.pending_page("s", 0, 10, usize::MAX).await.unwrap()[0].seq;
    let answer = |attempt| {
        (
            AttemptRecord {
                attempt,
                started_at: 0,
                duration_ms: 1,
                outcome: "suspended",
                http_status: Some(202),
                error: None,
            },
            Transition::Suspended(Box::new(engine::workflow::Suspended {
                from: 0,
                entries: vec![r#"{"kind":"step","name":"a","ok":1}"#.into()],
                resume_at: Some(0),
                wait: None,
                children: Vec::new(),
                outbox: Vec::new(),
                calls: Vec::new(),
            })),
        )
    };
    for attempt in [1, 2] {
        store.start_attempt(seq, attempt, 0).unwrap();
        let (record, transition) = answer(attempt);
        store.finish_attempt(seq, record, transition, false).unwrap();
    }
    store.flush().await.unwrap();
    let call = store.call(id).await.unwrap().unwrap();
    assert_eq!(
        call.journal.len(),
        1,
        "the second copy was fenced out: {:?}",
        call.journal
    );
    assert_eq!(
        store.journal(seq).await.unwrap().0,
        br#"[{"kind":"step","name":"a","ok":1}]"#
    );
    store.close();
}

/// An unkind handler: every step fails temporarily 30% of the time after a jittery delay
/// (1-30 ms). Twenty workflows still complete, and no step that succeeded ever ran again:
/// only failed runs are repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_jittery_steps_rerun_only_when_they_failed() {
    use std::collections::HashMap;
    use std::sync::Mutex;

    let succeeded: Arc<Mutex<HashMap<(String, &'static str), u32>>> = Arc::default();
    let record = Arc::clone(&succeeded);
    let endpoint = Endpoint::new().workflow("flaky", move |wf: Workflow, n: u32| {
        let record = Arc::clone(&record);
        async move {
            let mut total = 0;
            for name in ["reserve", "charge", "ship"] {
                let record = Arc::clone(&record);
                let call = wf.context().call_id.clone();
                total += wf
                    .step(name, move || async move {
                        let (delay, fail) = {
                            use rand::Rng;
                            let mut rng = rand::rng();
                            (rng.random_range(1..30), rng.random::<f64>() < 0.3)
                        };
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        if fail {
                            return Err(Error::temporary("the payment API answered 503"));
                        }
                        *record.lock().unwrap().entry((call, name)).or_default() += 1;
                        Ok(n)
                    })
                    .await?;
            }
            Ok(total)
        }
    });
    let addr = free_addr();
    let _handler = serve(endpoint, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(
        &dir,
        Subscription::new("flaky", &format!("http://{addr}/flaky")).fast_retries(),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(admin.enqueue("flaky", n.to_string().as_bytes(), None).await);
    }
    wait_for("every workflow to complete", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"] == 20
    })
    .await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(admin.call(id).await["output"]["data"], (3 * n).to_string());
    }
    let succeeded = succeeded.lock().unwrap().clone();
    assert_eq!(succeeded.len(), 60, "every step of every workflow succeeded");
    assert!(
        succeeded.values().all(|runs| *runs == 1),
        "a step that succeeded ran again: {succeeded:?}"
    );
    engine.shutdown().await.unwrap();
}
