//! Durable workflows end to end: the SDK's `Endpoint::workflow` served on 127.0.0.1, the
//! engine storing journals in a real SQLite file, with the engine and the handler killed at
//! the moments that matter.

mod children;
mod kills;
mod large;
mod pinning;
mod produce;
mod python;
mod restart;
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
                deployment: None,
            })),
        )
    };
    for attempt in [1, 2] {
        store.start_attempt(seq, attempt, 0).unwrap();
        let (record, transition) = answer(attempt);
        store.finish_attempt(seq, record, transition, false, None).unwrap();
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
        store.journal(seq).await.unwrap().journal,
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

/// After a restart, the engine reads every pending call back, sleeping workflows too. Those
/// must not fill its window (8 here): a call that is due runs at once, and the sleepers keep
/// their wake times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_workflows_read_after_a_restart_do_not_hold_back_calls_that_are_due() {
    let addr = free_addr();
    let naps = Endpoint::new().workflow("nap", |wf: Workflow, n: u32| async move {
        if n < 100 {
            wf.sleep(Duration::from_secs(3600)).await;
        }
        Ok(n)
    });
    let _handler = serve(naps, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = Subscription::new("naps", &format!("http://{addr}/nap")).set("window", 8_i64);
    let (engine, admin) = start_engine(&dir, subscription.clone()).await;
    let mut sleepers = Vec::new();
    for n in 0..20_u32 {
        sleepers.push(admin.enqueue("naps", n.to_string().as_bytes(), None).await);
    }
    for id in &sleepers {
        wait_for("each workflow to go to sleep", Duration::from_secs(30), || async {
            journal_kinds(&admin.call(id).await) == ["sleep"]
        })
        .await;
    }
    engine.shutdown().await.unwrap();

    let (engine, admin) = start_engine(&dir, subscription).await;
    let due = admin.enqueue("naps", b"100", None).await;
    admin.wait_status(&due, "succeeded").await;
    for id in &sleepers {
        assert_eq!(admin.status(id).await, "pending", "still asleep");
    }
    assert_eq!(admin.stats().await["succeeded"], 1);
    engine.shutdown().await.unwrap();
}

/// Sleeps of 0, 1 s and a day, with the engine stopped during the day: the zero sleep costs
/// no request, the one-second sleep lasts at least a second, and the day-long one resumes
/// after a restart once its wake time has passed. The day is not waited for: while the
/// engine is stopped, the stored wake time (of the entry and of the call) is moved to the
/// present, as if the day had gone by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeps_of_zero_a_second_and_a_day_survive_a_restart() {
    let ran = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let addr = free_addr();
    let log = Arc::clone(&ran);
    let sleeper = Endpoint::new().workflow("sleeper", move |wf: Workflow, _: u32| {
        let log = Arc::clone(&log);
        async move {
            for (name, sleep) in [
                ("a", Duration::ZERO),
                ("b", Duration::from_secs(1)),
                ("c", Duration::from_secs(86_400)),
            ] {
                let log = Arc::clone(&log);
                wf.step(name, move || async move {
                    log.lock().unwrap().push(name.to_string());
                    Ok(())
                })
                .await?;
                wf.sleep(sleep).await;
            }
            Ok("rested")
        }
    });
    let _handler = serve(sleeper, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = Subscription::new("rest", &format!("http://{addr}/sleeper"));
    let (engine, admin) = start_engine(&dir, subscription.clone()).await;
    let id = admin.enqueue("rest", b"1", None).await;
    let kinds = ["step:a", "sleep", "step:b", "sleep", "step:c", "sleep"];
    wait_for("the day-long sleep to be stored", Duration::from_secs(30), || async {
        journal_kinds(&admin.call(&id).await) == kinds
    })
    .await;
    let call = admin.call(&id).await;
    let history = call["history"].as_array().unwrap();
    let (wake_b, wake_c) = (
        call["journal"][3]["wake_at"].as_i64().unwrap(),
        call["journal"][5]["wake_at"].as_i64().unwrap(),
    );
    let started: Vec<i64> = history.iter().map(|a| a["started_at"].as_i64().unwrap()).collect();
    assert!(
        started.iter().any(|&at| at >= wake_b),
        "an attempt after the 1 s sleep's wake time: {started:?}, wake {wake_b}"
    );
    assert!(wake_c - started[0] >= 86_399_000, "a day's sleep");
    engine.shutdown().await.unwrap();

    // A day goes by while the engine is stopped.
    let db = rusqlite::Connection::open(dir.path().join("engine.db")).unwrap();
    let past = wake_c - 86_400_000;
    let entry: String = db
        .query_row(
            "SELECT entry FROM journal WHERE position = 5 AND call_seq = (SELECT seq FROM calls WHERE id = ?1)",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let moved = entry.replace(&wake_c.to_string(), &past.to_string());
    assert_ne!(moved, entry);
    db.execute(
        "UPDATE journal SET entry = ?2 WHERE position = 5 AND call_seq = (SELECT seq FROM calls WHERE id = ?1)",
        rusqlite::params![&id, moved],
    )
    .unwrap();
    db.execute(
        "UPDATE calls SET next_attempt_at = ?2 WHERE id = ?1",
        rusqlite::params![&id, past],
    )
    .unwrap();
    drop(db);

    let (engine, admin) = start_engine(&dir, subscription).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    assert_eq!(call["output"]["data"], "\"rested\"");
    assert_eq!(*ran.lock().unwrap(), ["a", "b", "c"], "each step ran once");
    // One request per step (a step's result is stored before the next step runs) and one
    // to finish: the zero sleep rides with step a and costs no request of its own.
    assert_eq!(
        outcomes(&call),
        ["suspended", "suspended", "suspended", "success"],
        "a + sleep(0); b + sleep(1 s); c + sleep(1 day); done"
    );
    engine.shutdown().await.unwrap();
}

/// Code changed under a sleeping workflow behind `wf.patched`: the run that slept through
/// the deploy keeps the old path (no pause), a run started after it takes the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_point_keeps_old_runs_on_the_old_path_and_new_runs_on_the_new() {
    let addr = free_addr();
    let v1 = Endpoint::new().workflow("notify", |wf: Workflow, _: u32| async move {
        wf.step("charge", || async { Ok(1) }).await?;
        wf.sleep(Duration::from_secs(2)).await;
        wf.step("email", || async { Ok(()) }).await?;
        Ok("email")
    });
    let v1 = serve(v1, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("notify", &format!("http://{addr}/notify"))).await;
    let old_run = admin.enqueue("notify", b"1", None).await;
    wait_for("the first run to sleep", Duration::from_secs(30), || async {
        journal_kinds(&admin.call(&old_run).await) == ["step:charge", "sleep"]
    })
    .await;

    v1.stop().await;
    let v2 = Endpoint::new().workflow("notify", |wf: Workflow, _: u32| async move {
        wf.step("charge", || async { Ok(1) }).await?;
        if wf.patched("sms") {
            wf.sleep(Duration::from_millis(100)).await;
            wf.step("sms", || async { Ok(()) }).await?;
            Ok("sms")
        } else {
            wf.sleep(Duration::from_secs(2)).await;
            wf.step("email", || async { Ok(()) }).await?;
            Ok("email")
        }
    });
    let _v2 = serve(v2, addr).await;
    let new_run = admin.enqueue("notify", b"2", None).await;
    admin.wait_status(&old_run, "succeeded").await;
    admin.wait_status(&new_run, "succeeded").await;
    assert_eq!(admin.call(&old_run).await["output"]["data"], "\"email\"");
    let new = admin.call(&new_run).await;
    assert_eq!(new["output"]["data"], "\"sms\"");
    assert_eq!(journal_kinds(&new), ["step:charge", "patch", "sleep"]);
    assert_eq!(admin.stats().await["paused"], 0);
    engine.shutdown().await.unwrap();
}
