//! Child calls and `join_all`: a fan-out of 100 children against an unkind child handler
//! (jitter, 30% temporary failures, some permanent ones), with the engine killed during the
//! fan-out in the second test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::{free_addr, spawn_engine, test_config, wait_for, Admin};
use sdk::{Durable, Endpoint, Error, Workflow};

use super::{outcomes, serve};

/// `gather`: one child per line in subscription `lines`, all joined; the output lists each
/// child's result in creation order (`-1` for a child that failed for good).
/// `line`: jittery, fails temporarily 30% of the time, and for good when `n % 17 == 5`.
fn fan_out(requests: Arc<AtomicU32>) -> Endpoint {
    Endpoint::new()
        .workflow("gather", move |wf: Workflow, lines: u32| {
            let requests = Arc::clone(&requests);
            async move {
                requests.fetch_add(1, Ordering::SeqCst);
                let children: Vec<Durable<u32>> = (0..lines).map(|n| wf.call("lines", &n)).collect();
                let results = wf.join_all(children).await;
                let out: Vec<i64> = results
                    .iter()
                    .map(|r| r.as_ref().map_or(-1, |v| i64::from(*v)))
                    .collect();
                Ok(out)
            }
        })
        .function("line", |_ctx, n: u32| async move {
            let (delay, fail) = {
                use rand::Rng;
                let mut rng = rand::rng();
                (rng.random_range(1..20), rng.random::<f64>() < 0.3)
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if n % 17 == 5 {
                return Err(Error::permanent(format!("line {n}: out of stock")));
            }
            if fail {
                return Err(Error::temporary("the inventory service answered 503"));
            }
            Ok(n * 10)
        })
}

fn expected(lines: u32) -> Vec<i64> {
    (0..lines)
        .map(|n| if n % 17 == 5 { -1 } else { i64::from(n * 10) })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gather_of_100_children_is_one_suspension_and_one_wake_with_results_in_order() {
    let requests = Arc::new(AtomicU32::new(0));
    let addr = free_addr();
    let _handler = serve(fan_out(Arc::clone(&requests)), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(
        dir.path(),
        Subscription::new("orders", &format!("http://{addr}/gather")),
    )
    .subscription(Subscription::new("lines", &format!("http://{addr}/line")).fast_retries())
    .build();
    let engine = engine::Engine::start(config).await.unwrap();
    let admin = Admin::new(engine.admin_addr());

    let id = admin.enqueue("orders", b"100", None).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    let output: Vec<i64> = serde_json::from_str(call["output"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(output, expected(100), "each child's result, in creation order");
    assert_eq!(
        outcomes(&call),
        ["suspended", "success"],
        "one suspension starting the 100 children, one wake when all ended"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    let stats = admin.stats().await;
    assert_eq!(stats["subscriptions"]["lines"]["dead"], 6, "{stats}");
    assert_eq!(stats["subscriptions"]["lines"]["succeeded"], 94, "{stats}");
    let journal = call["journal"].as_array().unwrap();
    assert_eq!(journal.len(), 100);
    assert!(
        journal[5]["error"].as_str().unwrap().contains("out of stock"),
        "{}",
        journal[5]
    );
    engine.shutdown().await.unwrap();
}

/// SIGKILL the engine while the children run: after the restart there are still exactly
/// 100 children (they were created with the suspension, in one transaction), and the
/// workflow completes with every result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_during_a_fan_out_makes_no_duplicate_children() {
    let requests = Arc::new(AtomicU32::new(0));
    let addr = free_addr();
    let _handler = serve(fan_out(Arc::clone(&requests)), addr).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_addr = free_addr();
    let config = dir.path().join("engine.toml");
    EngineConfig::new(dir.path().join("engine.db"))
        .admin(admin_addr)
        .subscription(Subscription::new("orders", &format!("http://{addr}/gather")))
        .subscription(
            Subscription::new("lines", &format!("http://{addr}/line"))
                .retries_between("200ms", "400ms")
                .set("max_concurrency", 4),
        )
        .write(&config);
    let admin = Admin::new(admin_addr);
    let engine = spawn_engine(&config);
    wait_for("the engine", Duration::from_secs(30), || admin.is_up()).await;
    let id = admin.enqueue("orders", b"100", None).await;
    wait_for("some children to end", Duration::from_secs(30), || async {
        let stats = admin.stats().await;
        stats["subscriptions"]["lines"]["succeeded"].as_u64().unwrap_or(0) >= 10
    })
    .await;
    engine.crash();

    let _engine = spawn_engine(&config);
    wait_for("the engine again", Duration::from_secs(30), || admin.is_up()).await;
    wait_for("the workflow to finish", Duration::from_secs(60), || async {
        admin.status(&id).await == "succeeded"
    })
    .await;
    let call = admin.call(&id).await;
    let output: Vec<i64> = serde_json::from_str(call["output"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(output, expected(100));
    let stats = admin.stats().await;
    let lines = &stats["subscriptions"]["lines"];
    assert_eq!(
        lines["succeeded"].as_u64().unwrap() + lines["dead"].as_u64().unwrap(),
        100,
        "exactly 100 children, none made twice: {lines}"
    );
}
