//! Operators' actions through the admin API: list, retry now, cancel, redrive, purge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;
use integration_tests::config::Subscription;
use integration_tests::{start_engine, test_subscription, wait_for, Admin, Reply, Target};
use serde_json::{json, Value};

async fn post(admin: &Admin, engine: &Engine, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}{path}", engine.admin_addr()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let _ = admin;
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// A target that rejects `poison` (400) until healed.
async fn healable() -> (Target, Arc<AtomicBool>) {
    let healed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&healed);
    let target = Target::start(move |seen| {
        if seen.body == b"poison" && !flag.load(Ordering::SeqCst) {
            Reply::Status(400, "bad poison")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    (target, healed)
}

/// Retries 10-100 ms apart (the default number of attempts).
fn fast(subscription: Subscription) -> Subscription {
    subscription.retry("initial_delay", "10ms").retry("max_delay", "100ms")
}

#[tokio::test]
async fn a_redriven_dead_call_succeeds_with_both_eras_in_its_history() {
    let (target, healed) = healable().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;
    let id = admin.enqueue("test", b"poison", None).await;
    admin.wait_status(&id, "dead").await;
    let dead = admin.get("/v1/dead?subscription=test").await;
    assert_eq!(dead["calls"][0]["id"], id.as_str());

    healed.store(true, Ordering::SeqCst);
    let (status, call) = post(&admin, &engine, &format!("/v1/calls/{id}/redrive"), Value::Null).await;
    assert_eq!(status, 200, "{call}");
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    let outcomes: Vec<_> = call["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, [json!("permanent"), json!("success")], "{call}");
    assert_eq!(call["attempts"], 2);

    let (status, body) = post(&admin, &engine, &format!("/v1/calls/{id}/redrive"), Value::Null).await;
    assert_eq!(status, 409, "a succeeded call cannot be redriven: {body}");
    let (status, _) = post(
        &admin,
        &engine,
        "/v1/calls/0193a3c4-0000-7000-8000-000000000000/cancel",
        Value::Null,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(&admin, &engine, "/v1/calls/not-a-uuid/cancel", Value::Null).await;
    assert_eq!(status, 400);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn redriving_the_dead_call_of_a_blocked_key_releases_the_key_in_order() {
    let (target, healed) = healable().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()).on_dead("block"))).await;
    let poison = admin.enqueue("test", b"poison", Some("k")).await;
    let after = admin.enqueue("test", b"after", Some("k")).await;
    admin.wait_status(&poison, "dead").await;
    assert_eq!(admin.status(&after).await, "pending");

    healed.store(true, Ordering::SeqCst);
    let (status, body) = post(&admin, &engine, "/v1/dead/redrive", json!({ "subscription": "test" })).await;
    assert_eq!((status, body["redriven"].clone()), (200, json!(1)));
    admin.wait_status(&after, "succeeded").await;
    assert_eq!(admin.status(&poison).await, "succeeded");
    let order: Vec<Vec<u8>> = target
        .seen()
        .iter()
        .filter(|s| s.attempt > 0)
        .map(|s| s.body.clone())
        .collect();
    assert_eq!(
        order.last().unwrap(),
        b"after",
        "the redriven call ran before the rest of its key"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn purging_a_blocking_dead_call_releases_its_key() {
    let (target, _healed) = healable().await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()).on_dead("block"))).await;
    let poison = admin.enqueue("test", b"poison", Some("k")).await;
    let after = admin.enqueue("test", b"after", Some("k")).await;
    admin.wait_status(&poison, "dead").await;
    let (status, body) = post(&admin, &engine, "/v1/dead/purge", json!({ "ids": [poison] })).await;
    assert_eq!((status, body["purged"].clone()), (200, json!(1)));
    admin.wait_status(&after, "succeeded").await;
    let response = reqwest::get(format!("http://{}/v1/calls/{poison}", engine.admin_addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "purged calls are gone");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_now_and_cancel_act_on_a_waiting_call() {
    let target = Target::start(|seen| {
        if seen.attempt == 1 {
            Reply::Status(503, "later")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Retries wait an hour unless an operator says otherwise.
    let slow = test_subscription(&target.url())
        .ordering("unordered")
        .retry("initial_delay", "1h")
        .retry("max_delay", "1h")
        .retry("jitter", 0.0);
    let (engine, admin) = start_engine(&dir, slow).await;
    let retried = admin.enqueue("test", b"a", None).await;
    let cancelled = admin.enqueue("test", b"b", None).await;
    wait_for("both first attempts", Duration::from_secs(20), || async {
        target.seen().len() == 2
    })
    .await;
    wait_for("both to be waiting", Duration::from_secs(20), || async {
        admin.stats().await["pending"] == 2
    })
    .await;

    let (status, _) = post(&admin, &engine, &format!("/v1/calls/{retried}/retry"), Value::Null).await;
    assert_eq!(status, 200);
    admin.wait_status(&retried, "succeeded").await;

    let (status, call) = post(&admin, &engine, &format!("/v1/calls/{cancelled}/cancel"), Value::Null).await;
    assert_eq!((status, call["status"].clone()), (200, json!("cancelled")));
    let (status, _) = post(&admin, &engine, &format!("/v1/calls/{cancelled}/retry"), Value::Null).await;
    assert_eq!(status, 409, "a cancelled call is not retried");
    let stats = admin.stats().await;
    assert_eq!(
        (stats["pending"].clone(), stats["cancelled"].clone()),
        (json!(0), json!(1))
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn calls_are_listed_with_filters_and_a_cursor() {
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, test_subscription(&target.url()).set("paused", true)).await;
    for n in 0..5 {
        admin
            .enqueue(
                "test",
                n.to_string().as_bytes(),
                Some(if n % 2 == 0 { "even" } else { "odd" }),
            )
            .await;
    }
    let first = admin.get("/v1/calls?limit=2").await;
    assert_eq!(first["calls"].as_array().unwrap().len(), 2);
    let next = first["next"].as_i64().unwrap();
    let rest = admin.get(&format!("/v1/calls?limit=10&after={next}")).await;
    assert_eq!(rest["calls"].as_array().unwrap().len(), 3);
    assert!(rest["next"].is_null());
    let even = admin.get("/v1/calls?key=even&status=pending").await;
    assert_eq!(even["calls"].as_array().unwrap().len(), 3);
    assert_eq!(even["calls"][0]["key"]["data"], "even");
    let response = reqwest::get(format!("http://{}/v1/calls?subscription=nope", engine.admin_addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = reqwest::get(format!("http://{}/v1/calls?status=weird", engine.admin_addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Malformed queries and bodies are JSON errors too, naming the problem.
    for path in ["/v1/calls?since=abc", "/v1/dead?colour=red"] {
        let response = reqwest::get(format!("http://{}{path}", engine.admin_addr()))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {body}");
    }
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/dead/redrive", engine.admin_addr()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON") || e.contains("json")),
        "{body}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retried_enqueue_with_the_same_idempotency_key_makes_one_call() {
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, test_subscription(&target.url())).await;
    let url = format!("http://{}/v1/subscriptions/test/calls", engine.admin_addr());
    let http = reqwest::Client::new();
    let enqueue = |key: &'static str| {
        let request = http.post(&url).body("order 7");
        async move {
            let response = request.header("Idempotency-Key", key).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let (first_status, first) = enqueue("order-7").await;
    assert_eq!(first_status, 201, "{first}");
    admin.wait_status(first["id"].as_str().unwrap(), "succeeded").await;
    let (again_status, again) = enqueue("order-7").await;
    assert_eq!(again_status, 200, "a retry is not a new call: {again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["status"], "succeeded", "the first call as it is now");
    let (other_status, other) = enqueue("order-8").await;
    assert_eq!(other_status, 201);
    assert_ne!(other["id"], first["id"]);
    admin.wait_status(other["id"].as_str().unwrap(), "succeeded").await;
    assert_eq!(admin.stats().await["succeeded"], 2, "two keys, two calls");
    assert_eq!(target.seen().len(), 2, "each delivered once");

    let too_long: &'static str = Box::leak("k".repeat(256).into_boxed_str());
    let (status, error) = enqueue(too_long).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("Idempotency-Key"), "{error}");
}
