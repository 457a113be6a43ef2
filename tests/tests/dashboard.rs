//! The web dashboard in a real headless Chromium (Debian's package), driven by
//! `tests/browser/dashboard.mjs` (playwright-core): load the overview, see counters, open a
//! dead call, click redrive, see it succeed with both eras in its history.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM`) and `npm ci` in tests/browser; `scripts/test`
//! provisions both. Set `DASHBOARD_SCREENSHOTS=docs/img` to refresh the screenshots in docs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use integration_tests::{Admin, Reply, Target};

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
    let dir = tempfile::tempdir().unwrap();
    let config = integration_tests::test_config(
        dir.path(),
        integration_tests::config::Subscription::new("orders", &target.url()).ordering("key"),
    )
    .admin_token(TOKEN);
    let engine = engine::Engine::start(config.build()).await.unwrap();
    let admin = Admin::with_token(engine.admin_addr(), TOKEN);
    for n in 0..5 {
        let id = admin.enqueue("orders", format!("ping-{n}").as_bytes(), Some("k")).await;
        admin.wait_status(&id, "succeeded").await;
    }
    let dead = admin.enqueue("orders", b"order-42", Some("customer-7")).await;
    admin.wait_status(&dead, "dead").await;
    // The target is fixed: a redrive now succeeds.
    healthy.store(true, Ordering::Relaxed);

    let screenshots =
        std::env::var("DASHBOARD_SCREENSHOTS").map_or_else(|_| dir.path().join("screenshots"), PathBuf::from);
    let url = format!("http://{}/", engine.admin_addr());
    let dead_id = dead.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .env("DASHBOARD_URL", url)
            .env("DEAD_CALL_ID", dead_id)
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
    engine.shutdown().await.unwrap();
}
