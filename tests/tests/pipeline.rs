//! The core pipeline against real HTTP targets on 127.0.0.1 and a real SQLite file.

use std::time::Duration;

use engine::model::{Inserted, NewCall};
use engine::store::{Store, StoreOptions};
use integration_tests::config::Subscription;
use integration_tests::unkind::UnkindTarget;
use integration_tests::{free_addr, record_call, start_engine, test_subscription, wait_for, Reply, Target};

/// Retries 10-100 ms apart (the default number of attempts).
fn fast(subscription: Subscription) -> Subscription {
    subscription.retry("initial_delay", "10ms").retry("max_delay", "100ms")
}

#[tokio::test]
async fn temporary_failures_are_retried_until_success() {
    let target = Target::start(|seen| {
        if seen.attempt <= 3 {
            Reply::Status(503, "not yet")
        } else {
            Reply::Status(200, "done")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;

    let id = admin.enqueue("test", b"hello", Some("k1")).await;
    admin.wait_status(&id, "succeeded").await;

    let call = admin.call(&id).await;
    assert_eq!(call["attempts"], 4);
    assert_eq!(call["output"]["data"], "done");
    let history = call["history"].as_array().unwrap();
    let outcomes: Vec<_> = history.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["temporary", "temporary", "temporary", "success"]);
    assert!(history[..3]
        .iter()
        .all(|a| a["http_status"] == 503 && a["error"].as_str().unwrap().contains("not yet")));

    let seen = target.seen();
    assert_eq!(seen.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let first = &seen[0];
    assert_eq!(first.body, b"hello");
    assert_eq!(first.header("idempotency-key"), Some(id.as_str()));
    assert_eq!(first.header("engine-call-id"), Some(id.as_str()));
    assert_eq!(first.header("engine-subscription"), Some("test"));
    let protocol = sdk::protocol::PROTOCOL_VERSION.to_string();
    assert_eq!(first.header("engine-protocol"), Some(protocol.as_str()));
    assert_eq!(first.header("engine-kafka-key"), Some("k1"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_goes_dead_with_its_reason() {
    let target = Target::start(|_| Reply::Status(400, "field `amount` is missing")).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;

    let id = admin.enqueue("test", b"{}", None).await;
    admin.wait_status(&id, "dead").await;
    let call = admin.call(&id).await;
    assert_eq!(call["attempts"], 1);
    let error = call["last_error"].as_str().unwrap();
    assert!(error.contains("HTTP 400") && error.contains("amount"), "{error}");
    assert_eq!(call["history"][0]["outcome"], "permanent");
    assert_eq!(target.seen().len(), 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_target_that_is_down_then_up_gets_the_call() {
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&format!("http://{addr}/hook")))).await;

    let id = admin.enqueue("test", b"x", None).await;
    wait_for("two failed connection attempts", Duration::from_secs(20), || async {
        admin.call(&id).await["history"]
            .as_array()
            .is_some_and(|h| h.len() >= 2)
    })
    .await;
    let call = admin.call(&id).await;
    // Still being retried: waiting (pending), or already in its next attempt (running).
    assert!(call["status"] == "pending" || call["status"] == "running", "{call}");
    let error = call["history"][0]["error"].as_str().unwrap();
    assert!(error.contains("connection failed"), "{error}");

    let _target = Target::start_on(addr, |_| Reply::Status(200, "up")).await;
    admin.wait_status(&id, "succeeded").await;
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hanging_target_times_out_and_is_retried() {
    let target = Target::start(|seen| {
        if seen.attempt == 1 {
            Reply::Hang(Duration::from_secs(30))
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()).set("timeout", "200ms"))).await;

    let id = admin.enqueue("test", b"x", None).await;
    admin.wait_status(&id, "succeeded").await;
    let call = admin.call(&id).await;
    assert_eq!(call["attempts"], 2);
    let error = call["history"][0]["error"].as_str().unwrap();
    assert!(error.contains("timed out after 200ms"), "{error}");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn retry_after_from_the_target_sets_the_delay() {
    let target = Target::start(|seen| {
        if seen.attempt == 1 {
            Reply::RetryAfter(429, "1")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;
    let id = admin.enqueue("test", b"x", None).await;
    admin.wait_status(&id, "succeeded").await;
    let history = admin.call(&id).await["history"].clone();
    let first_end = history[0]["started_at"].as_i64().unwrap() + history[0]["duration_ms"].as_i64().unwrap();
    let second_start = history[1]["started_at"].as_i64().unwrap();
    // Retry-After: 1 is clamped to max_delay = 100ms, not the 10ms backoff.
    assert!(
        second_start - first_end >= 90,
        "retried after {} ms",
        second_start - first_end
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_payload_becomes_a_dead_call_not_a_drop() {
    let target = Target::start(|_| Reply::Status(200, "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, test_subscription(&target.url()).set("max_payload_bytes", 8)).await;
    let id = admin.enqueue("test", b"way more than eight bytes", None).await;
    let call = admin.call(&id).await;
    assert_eq!(call["status"], "dead");
    assert!(call["last_error"].as_str().unwrap().contains("max_payload_bytes"));
    assert_eq!(call["payload"]["data"], "way more than eight bytes");
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn same_key_calls_run_one_at_a_time_in_order() {
    let target = Target::start(|seen| {
        // Every first attempt of an even payload fails, to interleave retries.
        let n: u32 = std::str::from_utf8(&seen.body).unwrap().parse().unwrap();
        if n.is_multiple_of(2) && seen.attempt == 1 {
            Reply::Status(503, "again")
        } else {
            Reply::Status(200, "ok")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;
    let mut ids = Vec::new();
    for n in 0..30 {
        let key = ["a", "b", "c"][n % 3];
        ids.push(admin.enqueue("test", n.to_string().as_bytes(), Some(key)).await);
    }
    for id in &ids {
        admin.wait_status(id, "succeeded").await;
    }
    for key in ["a", "b", "c"] {
        // Arrival order of every attempt of this key: retries repeat in place, later calls
        // never overtake an earlier one.
        let mut order: Vec<u32> = target
            .seen()
            .iter()
            .filter(|s| s.header("engine-kafka-key") == Some(key))
            .map(|s| std::str::from_utf8(&s.body).unwrap().parse().unwrap())
            .collect();
        order.dedup();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "key {key} ran out of order");
        assert_eq!(order.len(), 10);
    }
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_calls_never_overlap_at_a_slow_failing_python_target() {
    const CALLS: usize = 90;
    // The target holds each request 3 ms + an exponential tail and fails 30% of them; it
    // counts a request that arrives while another of its key is in flight, and successes
    // of a key out of order.
    let target = UnkindTarget::start(&["--error-rate", "0.3", "--latency-ms", "3", "--jitter", "exp:3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()))).await;
    for n in 0..CALLS {
        let key = ["a", "b", "c"][n % 3];
        admin.enqueue("test", format!("{key}:{n}").as_bytes(), Some(key)).await;
    }
    wait_for("every call to succeed", Duration::from_secs(60), || async {
        admin.stats().await["succeeded"] == CALLS
    })
    .await;
    let seen = target.stats().await;
    assert_eq!(seen["unique_ok"], CALLS, "{seen}");
    assert!(seen["errors"].as_u64().unwrap() > 0, "retries interleaved: {seen}");
    assert_eq!(
        seen["key_overlaps"], 0,
        "two calls of one key in flight at once: {seen}"
    );
    assert_eq!(
        seen["order_violations"], 0,
        "a key's calls succeeded out of order: {seen}"
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_record_stored_twice_is_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("engine.db"), StoreOptions::default()).unwrap();
    let first = store.insert(vec![record_call(5), record_call(6)]).await.unwrap();
    assert!(first.iter().all(|i| matches!(i, Inserted::New(_))));
    let again = store.insert(vec![record_call(5), record_call(7)]).await.unwrap();
    assert_eq!(again[0], Inserted::Duplicate);
    assert!(matches!(again[1], Inserted::New(_)));
    let counts = store.counts().await.unwrap();
    assert_eq!(counts["s"].pending, 3);
    store.close();
}

#[tokio::test]
async fn a_second_engine_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let error = Store::open(&path, StoreOptions::default()).unwrap_err().to_string();
    assert!(error.contains("in use by another engine"), "{error}");
    store.close();
}

#[tokio::test]
async fn finished_calls_are_purged_in_chunks_and_the_file_shrinks() {
    use engine::model::{now_millis, AttemptRecord, Transition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("engine.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let call = |n: usize| NewCall {
        subscription: "s".into(),
        target: "http://127.0.0.1:1/".into(),
        payload: format!("{n:0>2048}").into_bytes(),
        tombstone: false,
        key: None,
        headers: None,
        source: None,
        ordering_key: None,
        dead_reason: None,
        block_group_if_dead: false,
        idempotency_key: None,
    };
    let finished = 2500;
    store.insert((0..=finished).map(call).collect()).await.unwrap();
    let due = store.pending_after("s", 0, finished + 1).await.unwrap();
    for done in &due[..finished] {
        let attempt = AttemptRecord {
            attempt: 1,
            started_at: now_millis(),
            duration_ms: 1,
            outcome: "success",
            http_status: Some(200),
            error: None,
        };
        store.start_attempt(done.seq, 1, now_millis()).unwrap();
        store
            .finish_attempt(done.seq, attempt, Transition::Succeeded { output: None }, false, None)
            .unwrap();
    }
    store.flush().await.unwrap();
    let counts = store.counts().await.unwrap();
    assert_eq!((counts["s"].pending, counts["s"].succeeded), (1, finished as u64));
    assert_eq!(store.open_calls("s").await.unwrap(), 1);
    let pages_before = page_count(&path);

    let kept = store.purge(now_millis() - 60_000, 1000).await.unwrap();
    assert_eq!((kept.deleted, kept.more), (0, false), "not yet past retention");
    let mut chunks = Vec::new();
    loop {
        let chunk = store.purge(now_millis() + 1, 1000).await.unwrap();
        chunks.push(chunk.deleted);
        if !chunk.more && chunk.free_pages == 0 {
            break;
        }
        assert!(chunks.len() < 1000, "the purge ends: {chunk:?}");
    }
    assert!(
        chunks.iter().all(|n| *n <= 1000),
        "at most one chunk per commit: {chunks:?}"
    );
    assert_eq!(chunks.iter().sum::<usize>(), finished);
    let counts = store.counts().await.unwrap();
    assert_eq!(
        (counts["s"].pending, counts["s"].succeeded),
        (1, 0),
        "the pending call stays, and the counts follow"
    );
    assert!(store.call(due[0].id).await.unwrap().is_none());
    assert!(store.call(due[finished].id).await.unwrap().is_some());
    let pages_after = page_count(&path);
    assert!(
        pages_after * 4 < pages_before,
        "the freed pages go back to the file system: {pages_before} pages before, {pages_after} after"
    );
    store.close();
}

/// Pages in the database, as a reader sees it (the WAL included).
fn page_count(path: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn on_dead_block_holds_the_key_and_skip_lets_it_continue() {
    for (policy, later_runs) in [("block", false), ("skip", true)] {
        let target = Target::start(|seen| {
            if seen.body == b"poison" {
                Reply::Status(400, "rejected")
            } else {
                Reply::Status(200, "ok")
            }
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()).on_dead(policy))).await;
        let poison = admin.enqueue("test", b"poison", Some("k")).await;
        let after = admin.enqueue("test", b"after", Some("k")).await;
        let other = admin.enqueue("test", b"other", Some("other-key")).await;
        admin.wait_status(&poison, "dead").await;
        admin.wait_status(&other, "succeeded").await;
        if later_runs {
            admin.wait_status(&after, "succeeded").await;
        } else {
            // A later call of another key succeeding shows the engine went past `after`.
            let later = admin.enqueue("test", b"later", Some("third-key")).await;
            admin.wait_status(&later, "succeeded").await;
            assert_eq!(admin.status(&after).await, "pending", "on_dead = block holds the key");
        }
        engine.shutdown().await.unwrap();
        if !later_runs {
            // The block is stored: it holds across a restart too.
            let (engine, admin) = start_engine(&dir, fast(test_subscription(&target.url()).on_dead(policy))).await;
            let later = admin.enqueue("test", b"later", Some("fourth-key")).await;
            admin.wait_status(&later, "succeeded").await;
            assert_eq!(admin.status(&after).await, "pending", "still blocked after a restart");
            engine.shutdown().await.unwrap();
        }
    }
}
