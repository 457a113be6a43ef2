//! The `engine` command line against a running engine's admin API.

use std::process::Command;
use std::time::Duration;

use engine::Engine;
use integration_tests::{engine_binary, free_addr, test_config, test_subscription, wait_for, Admin, Reply, Target};
use serde_json::Value;

/// Runs the binary off the runtime, so the engine's admin API (on the same runtime) answers.
async fn cli(admin: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(engine_binary());
    command.args(args).args(["--admin", admin]).env_remove("RUST_BACKTRACE");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run engine"))
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_and_its_errors() {
    let target = Target::start(|seen| {
        if seen.body.starts_with(b"bad") {
            Reply::Status(400, "rejected")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), test_subscription(&target.url()));
    let engine = Engine::start(config.build()).await.unwrap();
    let url = format!("http://{}", engine.admin_addr());
    let admin = Admin::new(engine.admin_addr());

    let (ok, out, _) = cli(&url, &["invoke", "test", "--data", "hello", "--key", "k1"]).await;
    assert!(ok && out.contains("is pending"), "{out}");
    let (ok, out, _) = cli(&url, &["invoke", "test", "--data", "bad input"]).await;
    assert!(ok, "{out}");
    wait_for("one success and one dead", Duration::from_secs(20), || async {
        let stats = admin.stats().await;
        stats["succeeded"] == 1 && stats["dead"] == 1
    })
    .await;

    let (ok, out, _) = cli(&url, &["stats", "--json"]).await;
    assert!(ok);
    let stats: Value = serde_json::from_str(&out).unwrap();
    for key in ["pending", "running", "succeeded", "dead", "cancelled"] {
        assert!(stats[key].is_u64(), "{key} in {out}");
        assert!(
            stats["subscriptions"]["test"][key].is_u64(),
            "subscriptions.test.{key} in {out}"
        );
    }
    let (ok, out, _) = cli(&url, &["stats"]).await;
    assert!(ok && out.contains("SUCCEEDED") && out.contains("test"), "{out}");
    // Outside cluster mode: no members, and group-wide answers say why not.
    let (ok, out, _) = cli(&url, &["cluster"]).await;
    assert!(ok && out.contains("cluster mode is off"), "{out}");
    let (ok, _, err) = cli(&url, &["stats", "--group"]).await;
    assert!(!ok && err.contains("cluster mode is off"), "{err}");

    let (ok, out, _) = cli(&url, &["calls", "list", "--status", "succeeded"]).await;
    assert!(ok && out.contains("succeeded") && out.contains("k1"), "{out}");
    let (ok, out, _) = cli(&url, &["dead", "list", "--json"]).await;
    assert!(ok);
    let dead: Value = serde_json::from_str(&out).unwrap();
    let id = dead["calls"][0]["id"].as_str().unwrap().to_string();
    let (ok, out, _) = cli(&url, &["calls", "show", &id]).await;
    assert!(ok && out.contains("HTTP 400") && out.contains("permanent"), "{out}");
    let (ok, out, _) = cli(&url, &["dead", "redrive", &id]).await;
    assert!(ok && out.contains("redrove 1"), "{out}");
    wait_for("the redriven call to die again", Duration::from_secs(20), || async {
        admin.call(&id).await["attempts"] == 2 && admin.status(&id).await == "dead"
    })
    .await;
    let (ok, out, _) = cli(&url, &["dead", "purge", "--subscription", "test"]).await;
    assert!(ok && out.contains("purged 1"), "{out}");

    let (ok, _, err) = cli(&url, &["calls", "show", "0193a3c4-0000-7000-8000-000000000000"]).await;
    assert!(!ok && err.contains("no call with id"), "{err}");
    let (ok, _, err) = cli(&url, &["calls", "cancel", "not-an-id"]).await;
    assert!(!ok && err.contains("not a call id"), "{err}");
    let (ok, _, err) = cli(&url, &["invoke", "nosuch", "--data", "x"]).await;
    assert!(!ok && err.contains("unknown subscription `nosuch`"), "{err}");
    let (ok, _, err) = cli(&url, &["dead", "purge"]).await;
    assert!(!ok && err.contains("--all"), "{err}");
    let nowhere = format!("http://{}", free_addr());
    let (ok, _, err) = cli(&nowhere, &["stats"]).await;
    assert!(!ok && err.contains("engine not reachable at"), "{err}");
    assert!(!err.contains("Stack backtrace"), "errors are one clear line: {err}");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_protects_the_api_when_configured() {
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), test_subscription(&target.url())).admin_token("s3cret");
    let engine = Engine::start(config.build()).await.unwrap();
    let url = format!("http://{}", engine.admin_addr());
    let anonymous = reqwest::get(format!("{url}/v1/stats")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 401);
    let (ok, _, err) = cli(&url, &["stats"]).await;
    assert!(!ok && err.contains("bearer token"), "{err}");
    let (ok, out, _) = cli(&url, &["stats", "--token", "s3cret"]).await;
    assert!(ok && out.contains("SUBSCRIPTION"), "{out}");
    engine.shutdown().await.unwrap();
}

/// Secrets come from the environment: `${NAME}` in the file, the value never printed.
#[test]
fn check_config_takes_secrets_from_the_environment_and_never_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.toml");
    std::fs::write(
        &path,
        "[admin]\ntoken = \"${TEST_ADMIN_TOKEN}\"\n[[subscription]]\nname = \"orders\"\ntarget = \"http://${TEST_HANDLER_HOST}/orders\"\n",
    )
    .unwrap();
    let check = |vars: &[(&str, &str)]| {
        let output = Command::new(engine_binary())
            .args(["check-config", "--config"])
            .arg(&path)
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, text) = check(&[
        ("TEST_ADMIN_TOKEN", "tok-9f8e7d"),
        ("TEST_HANDLER_HOST", "127.0.0.1:7001"),
    ]);
    println!("{text}");
    assert!(ok, "{text}");
    assert!(text.contains("orders -> http://127.0.0.1:7001/orders"), "{text}");
    assert!(
        text.contains("admin.token from the environment: ${TEST_ADMIN_TOKEN} (value not shown)"),
        "{text}"
    );
    assert!(!text.contains("tok-9f8e7d"), "the secret is never printed: {text}");

    let (ok, text) = check(&[("TEST_HANDLER_HOST", "127.0.0.1:7001")]);
    assert!(!ok);
    assert!(
        text.contains("admin.token uses the environment variable TEST_ADMIN_TOKEN, which is not set"),
        "{text}"
    );
}
