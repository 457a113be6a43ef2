//! The engine killed while a workflow's step is in flight, before the sleep after it is
//! stored: the steps stored before replay, the one in flight runs again, then the sleep is
//! stored and kept.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::{free_addr, spawn_engine, wait_for, Admin};
use sdk::{Endpoint, Workflow};

use super::{journal_kinds, serve};

#[derive(Default)]
struct Runs {
    charge: AtomicU32,
    pack: AtomicU32,
    email: AtomicU32,
}

/// charge → pack (hangs on its first run) → sleep 1 s → email.
fn prepare(runs: Arc<Runs>) -> Endpoint {
    Endpoint::new().workflow("prepare", move |wf: Workflow, order: u32| {
        let runs = Arc::clone(&runs);
        async move {
            let r = Arc::clone(&runs);
            wf.step("charge", move || async move {
                r.charge.fetch_add(1, Ordering::SeqCst);
                Ok(order)
            })
            .await?;
            let r = Arc::clone(&runs);
            wf.step("pack", move || async move {
                if r.pack.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
            .await?;
            wf.sleep(Duration::from_secs(1)).await;
            let r = Arc::clone(&runs);
            wf.step("email", move || async move {
                r.email.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await?;
            Ok(order)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_before_the_sleep_is_stored_reruns_only_the_step_in_flight() {
    let runs = Arc::new(Runs::default());
    let handler_addr = free_addr();
    let _handler = serve(prepare(Arc::clone(&runs)), handler_addr).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(Subscription::new("orders", &format!("http://{handler_addr}/prepare")).fast_retries())
        .write(&config);
    let admin = Admin::new(admin_addr);

    let engine = spawn_engine(&config);
    wait_for("the engine", Duration::from_secs(30), || admin.is_up()).await;
    let id = admin.enqueue("orders", b"5", None).await;
    wait_for("charge stored and pack running", Duration::from_secs(30), || async {
        runs.pack.load(Ordering::SeqCst) == 1 && journal_kinds(&admin.call(&id).await) == ["step:charge"]
    })
    .await;
    engine.crash();

    let _engine = spawn_engine(&config);
    wait_for("the engine again", Duration::from_secs(30), || admin.is_up()).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    assert_eq!(journal_kinds(&call), ["step:charge", "step:pack", "sleep"]);
    assert_eq!(
        runs.charge.load(Ordering::SeqCst),
        1,
        "charge was stored: replayed, not run"
    );
    assert_eq!(runs.pack.load(Ordering::SeqCst), 2, "pack was in flight: run again");
    assert_eq!(runs.email.load(Ordering::SeqCst), 1);
}
