//! The web dashboard in a real headless Chromium (Debian's package), driven by
//! `tests/browser/dashboard.mjs` (playwright-core): load the overview, see counters, open a
//! dead call, click redrive, see it succeed with both eras in its history; open a dead
//! workflow, see its journal, restart it from an entry and see it succeed; send a waiting
//! workflow its signal.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and `npm ci` in tests/browser; `scripts/test`
//! provisions both. Set `DASHBOARD_SCREENSHOTS=docs/img` to refresh the screenshots in docs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use integration_tests::{free_addr, Admin, Reply, Target};
use sdk::{Endpoint, Error, Workflow};

const TOKEN: &str = "dashboard-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_counters_and_redrives_a_dead_call_in_a_real_browser() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run scripts/test (it runs `npm ci` there)"
    );
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let target = Target::start(move |seen| {
        if flag.load(Ordering::Relaxed) || !seen.body.starts_with(b"order-") {
            Reply::Status(200, "ok")
        } else {
            Reply::Status(400, "order refused: unknown customer")
        }
    })
    .await;
    // A workflow whose payment step fails for good until the bug is fixed.
    let fixed = Arc::new(AtomicBool::new(false));
    let workflow_addr = free_addr();
    let listener = tokio::net::TcpListener::bind(workflow_addr).await.unwrap();
    let flag = Arc::clone(&fixed);
    let endpoint = Endpoint::new()
        .workflow("fulfil", move |wf: Workflow, order: u32| {
            let fixed = Arc::clone(&flag);
            async move {
                let item: String = wf
                    .step("fetch", move || async move { Ok(format!("item-{order}")) })
                    .await?;
                wf.sleep(std::time::Duration::from_millis(5)).await;
                wf.step("charge", move || async move {
                    if fixed.load(Ordering::Relaxed) {
                        Ok(format!("{item} charged"))
                    } else {
                        Err(Error::permanent("card processor rejected the request (bug)"))
                    }
                })
                .await
            }
        })
        // A workflow waiting for the signal `go`, sent from the dashboard.
        .workflow("approve", |wf: Workflow, (): ()| async move {
            wf.signal::<String>("go").await
        });
    tokio::spawn(async move { endpoint.serve_on(listener, std::future::pending::<()>()).await });
    let dir = tempfile::tempdir().unwrap();
    let config = integration_tests::test_config(
        dir.path(),
        integration_tests::config::Subscription::new("orders", &target.url()).ordering("key"),
    )
    .subscription(integration_tests::config::Subscription::new(
        "fulfil",
        &format!("http://{workflow_addr}/fulfil"),
    ))
    .subscription(integration_tests::config::Subscription::new(
        "approvals",
        &format!("http://{workflow_addr}/approve"),
    ))
    .admin_token(TOKEN);
    let engine = engine::Engine::start(config.build()).await.unwrap();
    let admin = Admin::with_token(engine.admin_addr(), TOKEN);
    for n in 0..5 {
        let id = admin.enqueue("orders", format!("ping-{n}").as_bytes(), Some("k")).await;
        admin.wait_status(&id, "succeeded").await;
    }
    let dead = admin.enqueue("orders", b"order-42", Some("customer-7")).await;
    admin.wait_status(&dead, "dead").await;
    let workflow = admin.enqueue("fulfil", b"7", None).await;
    admin.wait_status(&workflow, "dead").await;
    let waiting = admin.enqueue("approvals", b"null", None).await;
    integration_tests::wait_for(
        "the workflow to wait for its signal",
        std::time::Duration::from_secs(20),
        || async { admin.call(&waiting).await["waiting_for"].is_object() },
    )
    .await;
    // The target and the workflow's step are fixed: a redrive, a restart now succeed.
    healthy.store(true, Ordering::Relaxed);
    fixed.store(true, Ordering::Relaxed);

    let screenshots =
        std::env::var("DASHBOARD_SCREENSHOTS").map_or_else(|_| dir.path().join("screenshots"), PathBuf::from);
    let url = format!("http://{}/", engine.admin_addr());
    let dead_id = dead.clone();
    let workflow_id = workflow.clone();
    let waiting_id = waiting.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .env("DASHBOARD_URL", url)
            .env("DEAD_CALL_ID", dead_id)
            .env("WORKFLOW_ID", &workflow_id)
            .env("WAITING_ID", &waiting_id)
            .env("SUBSCRIPTION", "orders")
            .env("ADMIN_TOKEN", TOKEN)
            .env("SCREENSHOT_DIR", &screenshots)
            .output()
            .expect("run node (is Node.js installed?)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{stderr}");

    // The API agrees with what the browser saw: succeeded, with both eras in the history.
    let call = admin.call(&dead).await;
    assert_eq!(call["status"], "succeeded");
    let history = call["history"].as_array().unwrap();
    assert!(history.len() >= 2, "{history:?}");
    assert_eq!(history[0]["http_status"], 400);
    assert_eq!(history.last().unwrap()["http_status"], 200);
    assert_eq!(
        call["attempts_before_redrive"], 1,
        "the eras: one attempt before the redrive"
    );
    assert!(call["redriven_at"].as_i64().is_some());
    let workflow = admin.call(&workflow).await;
    assert_eq!(workflow["status"], "succeeded");
    assert_eq!(workflow["output"]["data"], "\"item-7 charged\"");
    let waiting = admin.call(&waiting).await;
    assert_eq!(waiting["status"], "succeeded");
    assert_eq!(waiting["output"]["data"], "\"from the dashboard\"");
    engine.shutdown().await.unwrap();
}
