//! Cluster mode on a real broker (Tansu): engines as processes in one consumer group, each
//! partition's calls following the partition through the changelog topic, delivering to a
//! jittery Python target that fails 20% of requests with 503.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::config::{Endpoint, EngineConfig, Subscription};
use integration_tests::kafka::{produce, producer, read_topic, Out, Tansu};
use integration_tests::unkind::UnkindTarget;
use integration_tests::{free_addr, spawn_engine, wait_for, Admin, Proc};

const TOPIC: &str = "so-orders";
const GROUP: &str = "so-group";
const PARTITIONS: i32 = 6;
const KEYS: usize = 60;

struct Member {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin: Admin,
}

impl Member {
    fn new(tansu: &Tansu, target: &str) -> Self {
        Self::configured(tansu, target, |engine, subscription| (engine, subscription))
    }

    /// A member whose config `adjust` changes.
    fn configured(
        tansu: &Tansu,
        target: &str,
        adjust: impl FnOnce(EngineConfig, Subscription) -> (EngineConfig, Subscription),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin_addr = free_addr();
        let config = dir.path().join("engine.toml");
        let subscription = Subscription::new("orders", target)
            .ordering("key")
            .fast_retries()
            .set("timeout", "5s")
            .kafka(&tansu.bootstrap(), &[TOPIC])
            .kafka_set("group_id", GROUP)
            .tansu_consumer();
        let engine = EngineConfig::new(dir.path().join("engine.db"))
            .admin(admin_addr)
            .cluster();
        let (engine, subscription) = adjust(engine, subscription);
        engine.subscription(subscription).write(&config);
        Self {
            dir,
            config,
            admin: Admin::new(admin_addr),
        }
    }

    async fn start(&self) -> Proc {
        let engine = spawn_engine(&self.config);
        wait_for("an engine to start", Duration::from_secs(30), || self.admin.is_up()).await;
        engine
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("engine.db")
    }
}

/// A broker with the source topic, its changelog topic and the members topic.
async fn broker() -> Tansu {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, PARTITIONS).await;
    tansu.create_topic(&format!("{GROUP}.calls"), PARTITIONS).await;
    tansu.create_topic(&format!("{GROUP}.members"), 1).await;
    tansu
}

/// `key:seq` records, `per_key` for each key, in seq order per key.
fn records(from: usize, per_key: usize) -> Vec<Out> {
    (from..from + per_key)
        .flat_map(|seq| (0..KEYS).map(move |k| Out::keyed(format!("k{k}"), format!("k{k}:{seq}"))))
        .collect()
}

/// (record position, call id) of every succeeded call made from a Kafka record in a store file.
fn succeeded(db: &Path) -> Vec<((i32, i64), String)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut query = conn
        .prepare(r#"SELECT partition, "offset", id FROM calls WHERE status = 'succeeded' AND topic IS NOT NULL"#)
        .unwrap();
    query
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// (record position, call id, attempts) of every open call in a store file.
fn open_calls(db: &Path) -> Vec<((i32, i64), String, i64)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut query = conn
        .prepare(r#"SELECT partition, "offset", id, attempts FROM calls WHERE status IN ('pending', 'running')"#)
        .unwrap();
    query
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Succeeded calls in a store file that were made before `at` (ms since the epoch).
fn created_before(db: &Path, at: i64) -> usize {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row(
        "SELECT count(*) FROM calls WHERE status = 'succeeded' AND created_at < ?1",
        [at],
        |r| r.get(0),
    )
    .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Panic with where the records that did not succeed are.
fn explain_missing(tansu: &Tansu, members: &[Member], positions: &[(i32, i64)], seen: &serde_json::Value) -> ! {
    // Which records have a snapshot in the changelog, and in how many changelog records.
    let mut in_changelog = std::collections::HashMap::<(i32, i64), usize>::new();
    for record in read_topic(
        &tansu.bootstrap(),
        &format!("{GROUP}.calls"),
        PARTITIONS,
        1,
        Duration::from_secs(3),
    ) {
        let Some(value) = record.value else { continue };
        let snapshot: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
        if let (Some(partition), Some(offset)) = (snapshot["partition"].as_i64(), snapshot["offset"].as_i64()) {
            *in_changelog.entry((partition as i32, offset)).or_default() += 1;
        }
    }
    let mut lines = vec![format!(
        "records not in the changelog: {:?}",
        positions
            .iter()
            .filter(|p| !in_changelog.contains_key(p))
            .take(20)
            .collect::<Vec<_>>()
    )];
    for (n, member) in members.iter().enumerate() {
        let conn =
            rusqlite::Connection::open_with_flags(member.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut missing = Vec::new();
        for (partition, offset) in positions {
            let status: Option<String> = conn
                .query_row(
                    r#"SELECT status FROM calls WHERE partition = ?1 AND "offset" = ?2"#,
                    [i64::from(*partition), *offset],
                    |r| r.get(0),
                )
                .ok();
            if status.as_deref() != Some("succeeded") {
                missing.push(format!("{partition}/{offset}:{}", status.unwrap_or_else(|| "-".into())));
            }
        }
        lines.push(format!(
            "engine {n}: {} not succeeded here, first {:?}",
            missing.len(),
            &missing[..missing.len().min(12)]
        ));
    }
    panic!("not every record succeeded: {seen}\n{}", lines.join("\n"));
}

/// Every record succeeded, in key order, no key in two engines at once, and each record is
/// exactly one call (one id) across the engines' databases: a call that moved kept its id.
fn assert_one_call_per_record_in_order(members: &[Member], seen: &serde_json::Value, total: u64) {
    assert_eq!(seen["unique_ok"], total, "{seen}");
    assert_eq!(seen["order_violations"], 0, "per-key order across the moves: {seen}");
    assert_eq!(seen["key_overlaps"], 0, "one key in two engines at once: {seen}");
    let mut ids_by_record = std::collections::HashMap::<(i32, i64), HashSet<String>>::new();
    for member in members {
        for (record, id) in succeeded(&member.db()) {
            ids_by_record.entry(record).or_default().insert(id);
        }
    }
    assert_eq!(ids_by_record.len() as u64, total, "records with a succeeded call");
    let split: Vec<_> = ids_by_record.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(split.is_empty(), "records that became two calls: {split:?}");
}

async fn unique_ok(target: &UnkindTarget) -> u64 {
    target.stats().await["unique_ok"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engines_calls_move_to_the_others_none_lost_keys_in_order() {
    let tansu = broker().await;
    let target = UnkindTarget::start(&["--error-rate", "0.2", "--latency-ms", "2", "--jitter", "exp:5"]).await;
    // The eager protocol, named: every rebalance revokes and restores every partition (the
    // other tests run cluster mode's default, the cooperative one).
    let members: Vec<Member> = (0..3)
        .map(|_| {
            Member::configured(&tansu, &target.url(), |engine, subscription| {
                (
                    engine,
                    subscription.kafka_option("partition.assignment.strategy", "range"),
                )
            })
        })
        .collect();
    let mut engines = Vec::new();
    for member in &members {
        engines.push(Some(member.start().await));
    }
    let producer = producer(&tansu.bootstrap());

    // A steady keyed load: 40 records per key in 8 waves; the second engine is killed for
    // good once a third of them succeeded, with calls of its partitions open.
    let (waves, per_wave) = (8, 5);
    let total = (waves * per_wave * KEYS) as u64;
    let mut killed = false;
    for wave in 0..waves {
        produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !killed && unique_ok(&target).await >= total / 3 {
            engines[1].take().unwrap().crash();
            killed = true;
        }
    }
    if !killed {
        wait_for("a third to succeed", Duration::from_secs(60), || async {
            unique_ok(&target).await >= total / 3
        })
        .await;
        engines[1].take().unwrap().crash();
    }
    wait_for("every record to succeed", Duration::from_secs(120), || async {
        unique_ok(&target).await >= total
    })
    .await;
    let seen = target.stats().await;
    for engine in engines.iter_mut().filter_map(Option::as_mut) {
        engine.terminate();
    }
    assert_one_call_per_record_in_order(&members, &seen, total);
    // What the killed engine left open moved: each record finished on a survivor, and a
    // call it had already tried finished there as the same call (it was in the changelog).
    let survivors: std::collections::HashMap<(i32, i64), String> = [&members[0], &members[2]]
        .iter()
        .flat_map(|m| succeeded(&m.db()))
        .collect();
    let left_behind = open_calls(&members[1].db());
    let tried = left_behind.iter().filter(|(_, _, attempts)| *attempts > 0).count();
    assert!(
        tried > 0,
        "the kill left no tried call open, so nothing was shown: {left_behind:?}"
    );
    for (record, id, attempts) in &left_behind {
        let finished = survivors.get(record);
        assert!(
            finished.is_some(),
            "{record:?} left open on the killed engine never finished"
        );
        if *attempts > 0 {
            assert_eq!(
                finished,
                Some(id),
                "{record:?} was tried as {id} and finished as another call"
            );
        }
    }
}

/// Outbox records (outputs, workflow records) not yet published in a store file.
fn unpublished(db: &Path) -> usize {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT count(*) FROM outbox WHERE published_at IS NULL", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_not_yet_published_move_with_their_partition_when_an_engine_dies() {
    const OUTPUTS: &str = "so-outputs";
    // The output topic does not exist yet: every output stays unpublished for now.
    let tansu = broker().await;
    let target = UnkindTarget::start(&[
        "--error-rate",
        "0.2",
        "--latency-ms",
        "2",
        "--jitter",
        "exp:5",
        "--echo",
    ])
    .await;
    let members: Vec<Member> = (0..2)
        .map(|_| {
            Member::configured(&tansu, &target.url(), |engine, subscription| {
                (engine, subscription.set("output_topic", OUTPUTS))
            })
        })
        .collect();
    let mut first = Some(members[0].start().await);
    let mut second = members[1].start().await;
    wait_for("each engine to hold 3 partitions", Duration::from_secs(60), || async {
        assigned(&members[0].admin).await.len() == 3 && assigned(&members[1].admin).await.len() == 3
    })
    .await;
    let total = (5 * KEYS) as u64;
    produce(&producer(&tansu.bootstrap()), TOPIC, records(0, 5)).await;
    wait_for("every record to succeed", Duration::from_secs(120), || async {
        unique_ok(&target).await >= total
    })
    .await;
    let seen = target.stats().await;
    let left = unpublished(&members[0].db());
    assert!(left > 0, "the first engine had no unpublished output to leave behind");

    // The first engine dies for good; its partitions, finished calls and their outputs
    // move to the second, which publishes them once the topic exists.
    first.take().unwrap().crash();
    wait_for(
        "the second engine to hold every partition",
        Duration::from_secs(60),
        || async { assigned(&members[1].admin).await.len() == PARTITIONS as usize },
    )
    .await;
    tansu.create_topic(OUTPUTS, 1).await;
    let bootstrap = tansu.bootstrap();
    let read =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, OUTPUTS, 1, total as usize, Duration::from_secs(3)))
            .await
            .unwrap();
    second.terminate();
    println!(
        "{} outputs for {total} records; {left} were unpublished on the killed engine",
        read.len()
    );
    assert_one_call_per_record_in_order(&members, &seen, total);
    let mut calls = HashSet::new();
    let mut records = HashSet::new();
    for record in &read {
        let call = record.header("engine-call-id").expect("engine-call-id header");
        assert!(calls.insert(call.clone()), "the output of {call} was published twice");
        let value = String::from_utf8(record.value.clone().unwrap()).unwrap();
        records.insert(value.strip_prefix("done:").expect("the target's answer").to_string());
    }
    assert_eq!(
        records.len() as u64,
        total,
        "one output per record, none lost with the killed engine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_from_one_engine_to_three_and_back_during_the_load_moves_open_calls_both_ways() {
    let tansu = broker().await;
    // A capacity of 8 in flight, failing more: every move finds calls open.
    let target = UnkindTarget::start(&[
        "--error-rate",
        "0.3",
        "--latency-ms",
        "20",
        "--jitter",
        "exp:10",
        "--capacity",
        "8",
    ])
    .await;
    let members: Vec<Member> = (0..3).map(|_| Member::new(&tansu, &target.url())).collect();
    let producer = producer(&tansu.bootstrap());
    let mut first = members[0].start().await;

    // The first engine alone, with a backlog (the target takes about 200 calls/s).
    let (waves, per_wave) = (12, 4);
    let total = (waves * per_wave * KEYS) as u64;
    let mut positions = Vec::new();
    for wave in 0..4 {
        positions.extend(produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await);
    }
    wait_for("the first engine to deliver", Duration::from_secs(30), || async {
        unique_ok(&target).await > 100
    })
    .await;
    // Scale out: two engines join; partitions move off the first with calls open.
    assert_eq!(restores(&members[0].admin).await, 1, "the first engine's own start");
    let joined_at = now_ms();
    let mut others = Vec::new();
    for member in &members[1..] {
        others.push(member.start().await);
    }
    wait_for("each engine to hold 2 partitions", Duration::from_secs(60), || async {
        for member in &members {
            if assigned(&member.admin).await.len() != 2 {
                return false;
            }
        }
        true
    })
    .await;
    // The cooperative protocol (cluster mode's default) revoked only the 4 partitions that
    // moved: the first engine kept its other 2 and never had to restore them (the eager
    // protocol revokes all 6 at each of the two joins).
    assert_eq!(
        restores(&members[0].admin).await,
        1,
        "the first engine restored partitions it kept"
    );
    for wave in 4..waves {
        positions.extend(produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
        if wave == 8 {
            // Scale in, once the new engines finished calls the first one had made: both
            // leave gracefully, and their calls move back to the first.
            wait_for(
                "a call moved out to finish on a new engine",
                Duration::from_secs(60),
                || async {
                    members[1..]
                        .iter()
                        .map(|m| created_before(&m.db(), joined_at))
                        .sum::<usize>()
                        > 0
                },
            )
            .await;
            for mut engine in others.drain(..) {
                assert!(engine.terminate().success());
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while unique_ok(&target).await < total {
        if std::time::Instant::now() > deadline {
            explain_missing(&tansu, &members, &positions, &target.stats().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen = target.stats().await;
    let restores_after = restores(&members[0].admin).await;
    assert!(first.terminate().success());
    assert_one_call_per_record_in_order(&members, &seen, total);
    assert!(
        open_calls(&members[0].db()).is_empty(),
        "the first engine has nothing left open"
    );
    assert!(
        restores_after >= 2,
        "the first engine restored the partitions it took back: {restores_after}"
    );
}

/// Restores of partitions from the changelog an engine has made since its start.
async fn restores(admin: &Admin) -> u64 {
    let total = integration_tests::metric(
        &admin.metrics().await,
        "engine_cluster_restores_total{subscription=\"orders\"}",
    );
    total.map_or(0, |t| t as u64)
}

/// Partitions a store file holds calls of (`open`: open calls only).
fn partitions_held(db: &Path, open: bool) -> usize {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let filter = if open {
        "WHERE status IN ('pending', 'running')"
    } else {
        ""
    };
    conn.query_row(
        &format!("SELECT count(DISTINCT partition) FROM calls {filter}"),
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_session_delivers_nothing_of_its_lost_partitions_when_it_wakes() {
    let tansu = broker().await;
    // Slow enough that both engines hold open calls of every partition they own.
    let target = UnkindTarget::start(&[
        "--error-rate",
        "0.2",
        "--latency-ms",
        "20",
        "--jitter",
        "exp:10",
        "--capacity",
        "8",
    ])
    .await;
    let members: Vec<Member> = (0..2).map(|_| Member::new(&tansu, &target.url())).collect();
    let mut paused = members[0].start().await;
    let mut other = members[1].start().await;
    let producer = producer(&tansu.bootstrap());
    let (waves, per_wave) = (8, 4);
    let total = (waves * per_wave * KEYS) as u64;
    for wave in 0..4 {
        produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await;
    }
    wait_for("both engines to hold open calls", Duration::from_secs(60), || async {
        members.iter().all(|m| partitions_held(&m.db(), true) > 0)
    })
    .await;
    // Frozen past `session.timeout.ms` (6 s): the group gives its partitions to the other.
    paused.pause();
    produce(&producer, TOPIC, records(4 * per_wave, per_wave)).await;
    wait_for(
        "the other engine to take every partition",
        Duration::from_secs(60),
        || async { partitions_held(&members[1].db(), false) == PARTITIONS as usize },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // It wakes with the calls of partitions it no longer owns still in its store.
    paused.resume();
    for wave in 5..waves {
        produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_for("every record to succeed", Duration::from_secs(180), || async {
        unique_ok(&target).await >= total
    })
    .await;
    let seen = target.stats().await;
    assert!(paused.terminate().success());
    assert!(other.terminate().success());
    assert_one_call_per_record_in_order(&members, &seen, total);
    // Deliveries twice: the attempts in flight at the pause (the target takes 8 at once),
    // answered while the engine was frozen, and successes stored just before it whose
    // snapshots had not reached the changelog yet (the new owner restores those calls as
    // pending): both are delivered again by the new owner. 12 were seen in a loaded CI run
    // with a 13 s freeze, and no key in two engines at once (checked above); the woken
    // engine delivering calls of its lost partitions shows as far more, with overlaps.
    assert!(
        seen["duplicates"].as_u64().unwrap() <= 16,
        "the woken engine delivered calls of partitions it had lost: {seen}"
    );
}

/// The partitions an engine holds now, as its admin API reports them.
async fn assigned(admin: &Admin) -> Vec<String> {
    let stats = admin.stats().await;
    serde_json::from_value(stats["subscriptions"]["orders"]["assigned"].clone()).unwrap_or_default()
}

async fn rebalances(admin: &Admin) -> u64 {
    admin.stats().await["subscriptions"]["orders"]["rebalances"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restarted_within_its_session_keeps_its_partitions_and_the_others_see_no_rebalance() {
    let tansu = broker().await;
    let target = UnkindTarget::start(&["--error-rate", "0.2", "--latency-ms", "5", "--jitter", "exp:5"]).await;
    let members: Vec<Member> = ["engine-a", "engine-b"]
        .into_iter()
        .map(|instance| {
            Member::configured(&tansu, &target.url(), |engine, subscription| {
                let endpoint = Endpoint::origin(target.url().trim_end_matches("/work")).rate_limit(600, 600);
                (
                    engine.cluster_set("instance", instance).endpoint(endpoint),
                    subscription,
                )
            })
        })
        .collect();
    let mut first = members[0].start().await;
    let restarted = members[1].start().await;
    wait_for(
        "each engine to hold half the partitions",
        Duration::from_secs(60),
        || async { assigned(&members[0].admin).await.len() == 3 && assigned(&members[1].admin).await.len() == 3 },
    )
    .await;
    let (held_first, held_restarted) = (assigned(&members[0].admin).await, assigned(&members[1].admin).await);
    let rebalances_before = rebalances(&members[0].admin).await;
    // The endpoint's 600/s is the group's: each engine, holding half the partitions, allows
    // 300 once it has restored them.
    for member in &members {
        let endpoint = || async {
            let endpoints = member.admin.stats().await["endpoints"].clone();
            endpoints
                .as_object()
                .and_then(|e| e.values().next())
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(endpoint().await["rate_limit"], 600);
        wait_for(
            "the rate limit split by partitions held",
            Duration::from_secs(30),
            || async { endpoint().await["rate_allowed"] == 300 },
        )
        .await;
    }
    let producer = producer(&tansu.bootstrap());
    let (waves, per_wave) = (6, 5);
    let total = (waves * per_wave * KEYS) as u64;
    for wave in 0..3 {
        produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await;
    }
    wait_for("a sixth to succeed", Duration::from_secs(60), || async {
        unique_ok(&target).await >= total / 6
    })
    .await;
    // Killed and back well within `session.timeout.ms` (6 s), under the same instance id.
    restarted.crash();
    let mut restarted = members[1].start().await;
    for wave in 3..waves {
        produce(&producer, TOPIC, records(wave * per_wave, per_wave)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for("every record to succeed", Duration::from_secs(120), || async {
        unique_ok(&target).await >= total
    })
    .await;
    let seen = target.stats().await;
    let (after_first, after_restarted) = (assigned(&members[0].admin).await, assigned(&members[1].admin).await);
    let rebalances_after = rebalances(&members[0].admin).await;
    let restores = integration_tests::metric(
        &members[1].admin.metrics().await,
        "engine_cluster_restores_total{subscription=\"orders\"}",
    );
    assert!(first.terminate().success());
    assert!(restarted.terminate().success());
    assert_one_call_per_record_in_order(&members, &seen, total);
    assert_eq!(
        rebalances_after, rebalances_before,
        "the engine that stayed saw a rebalance when the other restarted"
    );
    assert_eq!(after_first, held_first, "the engine that stayed kept its partitions");
    assert_eq!(
        after_restarted, held_restarted,
        "the restarted engine got its partitions back"
    );
    assert!(
        restores.is_some_and(|r| r >= 1.0),
        "the restarted engine restored its partitions: {restores:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_open_calls_follow_their_partitions_to_a_new_engine() {
    const CALLS: usize = 100_000;
    let tansu = broker().await;
    // Paused: the calls stay open, stored but never delivered.
    let nowhere = format!("http://{}/", free_addr());
    let members: Vec<Member> = (0..2)
        .map(|_| {
            Member::configured(&tansu, &nowhere, |engine, subscription| {
                (
                    engine,
                    subscription
                        .set("paused", true)
                        .kafka_set("max_backlog", 2 * CALLS as i64),
                )
            })
        })
        .collect();
    let pending = |admin: &Admin| {
        let admin = admin.clone();
        async move {
            admin.stats().await["subscriptions"]["orders"]["pending"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let mut old_owner = members[0].start().await;
    let producer = producer(&tansu.bootstrap());
    let started = std::time::Instant::now();
    for chunk in 0..CALLS / 10_000 {
        let records = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| Out::keyed(format!("k{}", i % 1000), format!("k{}:{}", i % 1000, i / 1000)))
            .collect();
        produce(&producer, TOPIC, records).await;
    }
    wait_for(
        "the first engine to store every call",
        Duration::from_secs(300),
        || async { pending(&members[0].admin).await == CALLS as u64 },
    )
    .await;
    let stored = started.elapsed();
    let ids: HashSet<((i32, i64), String)> = open_calls(&members[0].db())
        .into_iter()
        .map(|(record, id, _)| (record, id))
        .collect();
    assert_eq!(ids.len(), CALLS);
    // Leaving the group hands every partition over: its open calls are in the changelog.
    assert!(old_owner.terminate().success());
    let started = std::time::Instant::now();
    let mut new_owner = members[1].start().await;
    wait_for(
        "the second engine to restore every call",
        Duration::from_secs(300),
        || async { pending(&members[1].admin).await == CALLS as u64 },
    )
    .await;
    let until_restored = started.elapsed();
    // The restore's figures are counted once its last partition is stored.
    let restores = || async {
        let metrics = members[1].admin.metrics().await;
        integration_tests::metric(&metrics, "engine_cluster_restores_total{subscription=\"orders\"}").unwrap_or(0.0)
    };
    wait_for("the restore to be counted", Duration::from_secs(10), || async {
        restores().await >= 1.0
    })
    .await;
    let metrics = members[1].admin.metrics().await;
    let restored = integration_tests::metric(&metrics, "engine_cluster_restored_calls_total{subscription=\"orders\"}")
        .unwrap_or(0.0);
    let restore_seconds = integration_tests::metric(
        &metrics,
        "engine_cluster_restore_seconds_total{subscription=\"orders\"}",
    )
    .unwrap_or(0.0);
    // Read before it stops: leaving the group hands the calls over again.
    let moved: HashSet<((i32, i64), String)> = open_calls(&members[1].db())
        .into_iter()
        .map(|(record, id, _)| (record, id))
        .collect();
    assert!(new_owner.terminate().success());
    eprintln!(
        "{CALLS} open calls: stored by the first engine {stored:.1?} after the first record; \
         restored in {restore_seconds:.2} s (claim, changelog read, store); {until_restored:.1?} from \
         the second engine's start to every call pending there"
    );
    assert_eq!(moved.len(), CALLS, "open calls on the new owner");
    assert!(moved == ids, "every open call moved under its own id");
    assert_eq!(
        restored as usize, CALLS,
        "calls restored from the changelog, none read again from the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_refuses_to_start_without_a_fitting_changelog_topic() {
    let tansu = Tansu::start();
    tansu.create_topic("so-refuse", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("engine.toml");
    let write = |group: &str| {
        EngineConfig::new(dir.path().join("engine.db"))
            .cluster()
            .subscription(
                Subscription::new("orders", "http://127.0.0.1:9/")
                    .kafka(&tansu.bootstrap(), &["so-refuse"])
                    .kafka_set("group_id", group)
                    .tansu_consumer(),
            )
            .write(&config);
    };
    // It must exit by itself; one that starts anyway is killed after 30 s.
    let start = || {
        let mut child = std::process::Command::new(integration_tests::engine_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("ENGINE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run engine serve");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("engine serve started without a fitting changelog topic");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    };

    write("so-missing");
    let missing = start();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "{stderr}");
    assert!(
        stderr.contains("the changelog topic `so-missing.calls` does not exist")
            && stderr.contains("--partitions 3 --config cleanup.policy=compact"),
        "{stderr}"
    );

    tansu.create_topic("so-small.calls", 2).await;
    write("so-small");
    let small = start();
    let stderr = String::from_utf8_lossy(&small.stderr);
    assert!(!small.status.success(), "{stderr}");
    assert!(
        stderr.contains("the changelog topic `so-small.calls` has 2 partitions, fewer than its source topics (3)"),
        "{stderr}"
    );

    tansu.create_topic("so-fit.calls", 3).await;
    write("so-fit");
    let no_members = start();
    let stderr = String::from_utf8_lossy(&no_members.stderr);
    assert!(!no_members.status.success(), "{stderr}");
    assert!(
        stderr.contains("the members topic `so-fit.members` does not exist")
            && stderr.contains("--partitions 1 --config cleanup.policy=compact"),
        "{stderr}"
    );
}

/// The members an engine's admin API lists: (id, stale).
async fn members(admin: &Admin) -> Vec<(String, bool)> {
    let view = admin.get("/v1/cluster").await;
    view["members"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_string(), m["stale"].as_bool().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_engines_admin_api_answers_for_the_whole_group() {
    let tansu = broker().await;
    // Half of the records fail for good (400): dead letters on both engines.
    let target = UnkindTarget::start(&[
        "--error-rate",
        "0.5",
        "--error-status",
        "400",
        "--latency-ms",
        "5",
        "--jitter",
        "exp:5",
    ])
    .await;
    let (a, b) = (Member::new(&tansu, &target.url()), Member::new(&tansu, &target.url()));
    let _engine_a = a.start().await;
    let mut engine_b = b.start().await;
    let id_b = b.admin.get("/v1/cluster").await["me"].as_str().unwrap().to_string();
    let id_a = a.admin.get("/v1/cluster").await["me"].as_str().unwrap().to_string();
    wait_for("each engine to see both", Duration::from_secs(30), || async {
        members(&a.admin).await.len() == 2 && members(&b.admin).await.len() == 2
    })
    .await;
    wait_for("the partitions to be shared", Duration::from_secs(60), || async {
        assigned(&a.admin).await.len() == 3 && assigned(&b.admin).await.len() == 3
    })
    .await;

    let records = records(0, 2);
    let total = records.len() as u64;
    produce(&producer(&tansu.bootstrap()), TOPIC, records).await;
    let group_stats = || async {
        let stats = a.admin.get("/v1/stats?scope=group").await;
        let count = |s: &str| stats[s].as_u64().unwrap_or(0);
        (count("succeeded"), count("dead"), stats)
    };
    wait_for(
        "every record to end, counted over the group",
        Duration::from_secs(90),
        || async {
            let (succeeded, dead, _) = group_stats().await;
            succeeded + dead == total
        },
    )
    .await;
    let (_, dead, stats) = group_stats().await;
    assert!(dead > 5, "{stats}");
    let dead_on = |id: &str| stats["members"][id]["stats"]["dead"].as_u64().unwrap();
    assert!(
        dead_on(&id_a) > 0 && dead_on(&id_b) > 0,
        "dead letters on both: {stats}"
    );
    assert_eq!(dead_on(&id_a) + dead_on(&id_b), dead);

    // A call held by B, shown and acted on through A.
    let on_b = b.admin.get("/v1/dead?limit=1").await;
    let call_on_b = on_b["calls"][0]["id"].as_str().unwrap().to_string();
    let shown = a.admin.get(&format!("/v1/calls/{call_on_b}")).await;
    assert_eq!(shown["id"].as_str(), Some(call_on_b.as_str()), "{shown}");
    assert_eq!(shown["member"].as_str(), Some(id_b.as_str()));
    let (status, redriven) = a
        .admin
        .post(&format!("/v1/calls/{call_on_b}/redrive"), serde_json::json!(null))
        .await;
    assert_eq!(status, 200, "{redriven}");
    let redriven: serde_json::Value = serde_json::from_str(&redriven).unwrap();
    assert_eq!(redriven["status"].as_str(), Some("pending"), "{redriven}");
    assert_eq!(redriven["member"].as_str(), Some(id_b.as_str()), "redriven on B");
    let unknown = "0192c4d1-0000-7000-8000-000000000000";
    let (status, body) = a
        .admin
        .post(&format!("/v1/calls/{unknown}/cancel"), serde_json::json!(null))
        .await;
    assert_eq!(status, 404, "{body}");

    // One merged page over both, in creation order, each member's own cursor to go on.
    wait_for("the redriven call to end again", Duration::from_secs(30), || async {
        ["dead", "succeeded"].contains(&b.admin.status(&call_on_b).await.as_str())
    })
    .await;
    let (_, dead, _) = group_stats().await;
    let page = a.admin.get("/v1/dead?scope=group&limit=1000").await;
    let listed = page["calls"].as_array().unwrap();
    assert_eq!(listed.len() as u64, dead, "{page}");
    let held_by: HashSet<&str> = listed.iter().map(|c| c["member"].as_str().unwrap()).collect();
    assert_eq!(held_by, HashSet::from([id_a.as_str(), id_b.as_str()]));
    let created: Vec<i64> = listed.iter().map(|c| c["created_at"].as_i64().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] <= w[1]), "creation order");
    let first = a.admin.get("/v1/dead?scope=group&limit=4").await;
    assert_eq!(first["calls"].as_array().unwrap().len(), 4);
    let mut paged = first["calls"].as_array().unwrap().len();
    for id in [&id_a, &id_b] {
        let mut after = first["members"][id.as_str()]["next"].as_i64();
        while let Some(cursor) = after {
            let more = a
                .admin
                .get(&format!("/v1/dead?member={id}&after={cursor}&limit=3"))
                .await;
            paged += more["calls"].as_array().unwrap().len();
            after = more["next"].as_i64();
        }
    }
    assert_eq!(paged as u64, dead, "every dead call once, paging each member on");

    // A bulk action over the group.
    let (status, purged) = a
        .admin
        .post(
            "/v1/dead/purge?scope=group",
            serde_json::json!({"subscription": "orders"}),
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    let purged: serde_json::Value = serde_json::from_str(&purged).unwrap();
    assert_eq!(purged["purged"].as_u64(), Some(dead), "{purged}");
    assert_eq!(b.admin.get("/v1/dead").await["calls"].as_array().unwrap().len(), 0);

    // A member that stops cleanly leaves the view at once.
    engine_b.terminate();
    wait_for(
        "the stopped engine to leave the view",
        Duration::from_secs(15),
        || async { members(&a.admin).await == [(id_a.clone(), false)] },
    )
    .await;
    let stats = a.admin.get("/v1/stats?scope=group").await;
    assert_eq!(stats["members"].as_object().unwrap().len(), 1, "{stats}");
}

/// (id, status) of every call of `subscription` in a store file.
fn calls_of(db: &Path, subscription: &str) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut query = conn
        .prepare("SELECT id, status FROM calls WHERE subscription = ?1")
        .unwrap();
    query
        .query_map([subscription], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Open and finished reservations (`reserve-line` calls) in a store file.
fn reservations(db: &Path) -> (usize, usize) {
    let children = calls_of(db, checkout::RESERVE_LINE);
    let open = children
        .iter()
        .filter(|(_, s)| s == "pending" || s == "running")
        .count();
    (open, children.len() - open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_child_calls_follow_it_when_its_engine_leaves_or_dies() {
    const CONFIRMATIONS: &str = "so-confirmations";
    const ORDERS: usize = 240;
    const LINES: usize = 2;
    let tansu = broker().await;
    tansu.create_topic(CONFIRMATIONS, 1).await;
    // The checkout example: charge (20% "gateway busy", retried), a durable sleep, one
    // `reserve-line` child call per line, a wait for a signal that does not come, and a
    // confirmation produced to Kafka.
    let addr = free_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let endpoint = checkout::endpoint(checkout::Settings {
        confirmations_topic: CONFIRMATIONS.into(),
        cooling_off: Duration::from_millis(300),
        shipping_timeout: Duration::from_millis(500),
        gateway_busy_rate: 0.2,
        narrate: false,
    });
    tokio::spawn(async move {
        let _ = endpoint.serve_on(listener, std::future::pending()).await;
    });
    let base = format!("http://{addr}");
    let members: Vec<Member> = (0..2)
        .map(|_| {
            Member::configured(&tansu, &format!("{base}/checkout"), |engine, subscription| {
                // Reservations wait their turn (10/s on each engine): children are open
                // when an engine leaves or dies.
                let lines = Subscription::new(checkout::RESERVE_LINE, &format!("{base}/reserve-line"))
                    .fast_retries()
                    .set("rate_limit", 10)
                    .set("rate_burst", 1);
                (engine.subscription(lines), subscription)
            })
        })
        .collect();
    let mut first = members[0].start().await;
    let mut second = members[1].start().await;
    let each_holds_three =
        || async { assigned(&members[0].admin).await.len() == 3 && assigned(&members[1].admin).await.len() == 3 };
    wait_for(
        "each engine to hold 3 partitions",
        Duration::from_secs(60),
        each_holds_three,
    )
    .await;
    let orders: Vec<Out> = (0..ORDERS)
        .map(|n| {
            let order = checkout::Order {
                id: format!("order-{n}"),
                customer: format!("customer-{}", n % 7),
                lines: (0..LINES)
                    .map(|line| checkout::Line {
                        sku: format!("sku-{n}-{line}"),
                        quantity: 1,
                        price_cents: 100,
                    })
                    .collect(),
            };
            Out::keyed(order.id.clone(), serde_json::to_string(&order).unwrap())
        })
        .collect();
    produce(&producer(&tansu.bootstrap()), TOPIC, orders).await;
    let open_and_done = |db: PathBuf| async move {
        wait_for(
            "an engine to hold open and finished reservations",
            Duration::from_secs(60),
            || async { matches!(reservations(&db), (open, done) if open >= 10 && done >= 5) },
        )
        .await;
    };

    // The first engine leaves (SIGTERM) with reservations open: they are handed over with
    // their workflows, none left in its store.
    open_and_done(members[0].db()).await;
    assert!(first.terminate().success());
    assert_eq!(
        reservations(&members[0].db()).0,
        0,
        "reservations left behind by a clean stop"
    );
    wait_for(
        "the second engine to hold every partition",
        Duration::from_secs(60),
        || async { assigned(&members[1].admin).await.len() == PARTITIONS as usize },
    )
    .await;

    // It comes back, takes 3 partitions again (the second engine hands over its open
    // reservations this time), and then dies for good with reservations open.
    let first = members[0].start().await;
    wait_for(
        "each engine to hold 3 partitions again",
        Duration::from_secs(60),
        each_holds_three,
    )
    .await;
    open_and_done(members[0].db()).await;
    first.crash();
    let killed = calls_of(&members[0].db(), checkout::RESERVE_LINE);

    // Every order completes once, on the survivor where it moved, its reservations with it.
    let done = |members: &[Member]| {
        let mut ids = std::collections::HashMap::<(i32, i64), HashSet<String>>::new();
        for member in members {
            for (record, id) in succeeded(&member.db()) {
                ids.entry(record).or_default().insert(id);
            }
        }
        ids
    };
    wait_for("every order to complete", Duration::from_secs(240), || async {
        done(&members).len() == ORDERS
    })
    .await;
    let survivor_open = reservations(&members[1].db()).0;
    second.terminate();
    let split: Vec<_> = done(&members).into_iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(split.is_empty(), "orders that became two calls: {split:?}");
    assert_eq!(survivor_open, 0, "reservations left open on the survivor");
    // Reservations open on the killed engine finished on the survivor under their ids.
    let survived = calls_of(&members[1].db(), checkout::RESERVE_LINE);
    let survived: std::collections::HashMap<String, String> = survived.into_iter().collect();
    let left_open: Vec<&String> = killed
        .iter()
        .filter(|(_, status)| status == "pending" || status == "running")
        .map(|(id, _)| id)
        .collect();
    let finished: Vec<&&String> = left_open
        .iter()
        .filter(|id| survived.get(**id).is_some_and(|s| s == "succeeded"))
        .collect();
    assert!(
        left_open.len() >= 10,
        "{} reservations open at the kill",
        left_open.len()
    );
    assert_eq!(
        finished.len(),
        left_open.len(),
        "reservations open on the killed engine that did not succeed on the survivor"
    );
    let bootstrap = tansu.bootstrap();
    let read =
        tokio::task::spawn_blocking(move || read_topic(&bootstrap, CONFIRMATIONS, 1, ORDERS, Duration::from_secs(3)))
            .await
            .unwrap();
    let mut confirmed = std::collections::HashMap::<String, usize>::new();
    for record in &read {
        let confirmation: checkout::Confirmation = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            confirmation.reserved.len(),
            LINES,
            "every line reserved: {confirmation:?}"
        );
        *confirmed.entry(confirmation.order).or_default() += 1;
    }
    println!(
        "{ORDERS} orders; {} reservations open on the killed engine, all finished on the survivor; {} confirmations ({} orders confirmed more than once)",
        left_open.len(),
        read.len(),
        confirmed.values().filter(|n| **n > 1).count()
    );
    assert_eq!(confirmed.len(), ORDERS, "a confirmation for every order");
}
