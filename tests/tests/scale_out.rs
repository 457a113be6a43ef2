//! Cluster mode on a real broker (Tansu): engines as processes in one consumer group, each
//! partition's calls following the partition through the changelog topic, delivering to a
//! jittery Python target that fails 20% of requests with 503.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::config::{EngineConfig, Subscription};
use integration_tests::kafka::{produce, producer, Out, Tansu};
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
        let dir = tempfile::tempdir().unwrap();
        let admin_addr = free_addr();
        let config = dir.path().join("engine.toml");
        EngineConfig::new(dir.path().join("engine.db"))
            .admin(admin_addr)
            .cluster()
            .subscription(
                Subscription::new("orders", target)
                    .ordering("key")
                    .fast_retries()
                    .set("timeout", "5s")
                    .kafka(&tansu.bootstrap(), &[TOPIC])
                    .kafka_set("group_id", GROUP)
                    .tansu_consumer(),
            )
            .write(&config);
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

/// `key:seq` records, `per_key` for each key, in seq order per key.
fn records(from: usize, per_key: usize) -> Vec<Out> {
    (from..from + per_key)
        .flat_map(|seq| (0..KEYS).map(move |k| Out::keyed(format!("k{k}"), format!("k{k}:{seq}"))))
        .collect()
}

/// (record position, call id) of every succeeded call in a store file.
fn succeeded(db: &Path) -> Vec<((i32, i64), String)> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut query = conn
        .prepare(r#"SELECT partition, "offset", id FROM calls WHERE status = 'succeeded'"#)
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

async fn unique_ok(target: &UnkindTarget) -> u64 {
    target.stats().await["unique_ok"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engines_calls_move_to_the_others_none_lost_keys_in_order() {
    let tansu = Tansu::start();
    tansu.create_topic(TOPIC, PARTITIONS).await;
    tansu.create_topic(&format!("{GROUP}.calls"), PARTITIONS).await;
    let target = UnkindTarget::start(&["--error-rate", "0.2", "--latency-ms", "2", "--jitter", "exp:5"]).await;
    let members: Vec<Member> = (0..3).map(|_| Member::new(&tansu, &target.url())).collect();
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
    assert_eq!(seen["unique_ok"], total, "{seen}");
    assert_eq!(seen["order_violations"], 0, "per-key order across the move: {seen}");
    assert_eq!(seen["key_overlaps"], 0, "one key in two engines at once: {seen}");

    // Every record is exactly one call (one id), succeeded on one engine or another: a call
    // that moved keeps its id.
    let mut ids_by_record = std::collections::HashMap::<(i32, i64), HashSet<String>>::new();
    for member in &members {
        for (record, id) in succeeded(&member.db()) {
            ids_by_record.entry(record).or_default().insert(id);
        }
    }
    assert_eq!(ids_by_record.len() as u64, total, "records with a succeeded call");
    let split: Vec<_> = ids_by_record.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(split.is_empty(), "records that became two calls: {split:?}");
    // What the killed engine left open moved: each record finished on a survivor, and a
    // call it had already tried finished there as the same call (it was in the changelog).
    let survivors: std::collections::HashMap<(i32, i64), String> = [&members[0], &members[2]]
        .iter()
        .flat_map(|m| succeeded(&m.db()))
        .collect();
    let left_behind = open_calls(&members[1].db());
    let tried = left_behind.iter().filter(|(_, _, attempts)| *attempts > 0).count();
    assert!(tried > 0, "the kill left no tried call open, so nothing was shown: {left_behind:?}");
    for (record, id, attempts) in &left_behind {
        let finished = survivors.get(record);
        assert!(finished.is_some(), "{record:?} left open on the killed engine never finished");
        if *attempts > 0 {
            assert_eq!(finished, Some(id), "{record:?} was tried as {id} and finished as another call");
        }
    }
}
