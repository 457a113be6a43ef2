//! The store's side of scale-out (docs/scaling.md): what changed in a commit, as snapshots
//! of whole calls for the changelog topic; and the two moves of a partition's calls,
//! released when the partition leaves this engine and restored when it arrives.
//!
//! A finished call stays in the changelog until it is purged (then a tombstone): its next
//! owner must know the record already became a call, or a record read again (its offset
//! not yet committed when its owner died) would become a second call.
//!
//! Changes are noticed by temporary triggers on the writer's connection (installed only in
//! cluster mode), so no write path has to remember to report them. Only calls made from a
//! Kafka record (`topic IS NOT NULL`) follow their partition; an attempt's start is not a
//! change (a restored running call is pending again anyway). An outbox record's
//! publication is a change of its call: its next snapshot no longer carries the record.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

/// The triggers that note changed calls in `temp.changed` and deleted ones in `temp.gone`.
pub(crate) const INSTALL: &str = "
    CREATE TEMP TABLE IF NOT EXISTS changed (seq INTEGER PRIMARY KEY);
    CREATE TEMP TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY, subscription TEXT NOT NULL, partition INTEGER NOT NULL);
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_insert AFTER INSERT ON main.calls
        WHEN new.topic IS NOT NULL
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_update AFTER UPDATE ON main.calls
        WHEN new.topic IS NOT NULL AND new.status IS NOT 'running'
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_delete AFTER DELETE ON main.calls
        WHEN old.topic IS NOT NULL
    BEGIN INSERT OR REPLACE INTO gone VALUES (old.id, old.subscription, old.partition); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_journal_insert AFTER INSERT ON main.journal
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.call_seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_journal_update AFTER UPDATE ON main.journal
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.call_seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_journal_delete AFTER DELETE ON main.journal
    BEGIN INSERT OR IGNORE INTO changed VALUES (old.call_seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_signal_insert AFTER INSERT ON main.signals
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.call_seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_signal_update AFTER UPDATE ON main.signals
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.call_seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_outbox_published AFTER UPDATE OF published_at ON main.outbox
        WHEN new.published_at IS NOT NULL AND old.published_at IS NULL
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.call_seq); END;
";

/// One change for the changelog, keyed by call id.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The call as it is now: it moves with its partition.
    Call(Box<CallSnapshot>),
    /// The call was purged: a tombstone.
    Purged {
        id: String,
        subscription: String,
        partition: i32,
    },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Self::Call(call) => &call.id,
            Self::Purged { id, .. } => id,
        }
    }

    pub fn subscription(&self) -> &str {
        match self {
            Self::Call(call) => &call.subscription,
            Self::Purged { subscription, .. } => subscription,
        }
    }

    pub fn partition(&self) -> i32 {
        match self {
            Self::Call(call) => call.partition,
            Self::Purged { partition, .. } => *partition,
        }
    }
}

/// A whole call as the changelog carries it: its row (without the local `seq`), its journal,
/// its inbox and its unpublished outbox records. Bytes are base64 in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSnapshot {
    pub id: String,
    pub subscription: String,
    pub target: String,
    #[serde(with = "b64_opt")]
    pub ordering_key: Option<Vec<u8>>,
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    pub tombstone: bool,
    #[serde(with = "b64_opt")]
    pub kafka_key: Option<Vec<u8>>,
    pub headers: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub source_generation: i64,
    pub timestamp_ms: Option<i64>,
    pub status: String,
    pub attempts: i64,
    pub attempts_before_redrive: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    #[serde(with = "b64_opt")]
    pub output: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    pub redriven_at: Option<i64>,
    pub dead_letter_published_at: Option<i64>,
    pub idempotency_key: Option<String>,
    pub journal_len: i64,
    pub wait: Option<String>,
    pub deployment: Option<String>,
    /// (position, entry) of every journal entry.
    pub journal: Vec<(i64, String)>,
    /// Signals received and not yet taken: (name, payload, received_at).
    pub inbox: Vec<(String, String, i64)>,
    /// A dead call that holds its ordering group (`on_dead = block`).
    pub blocks_group: bool,
    /// Its outbox records not acknowledged by the broker when the snapshot was taken
    /// (`wf.produce`, an `output_topic`): whoever holds the partition publishes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxSnapshot>,
}

/// An outbox record that moves with its call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxSnapshot {
    /// The journal entry it came from (`-1`: the call's output).
    pub position: i64,
    pub topic: String,
    #[serde(with = "b64_opt")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "b64")]
    pub value: Vec<u8>,
    /// From when it may be in its topic (the old owner may have produced it since): when it
    /// was first handed to the producer, or else when the snapshot was taken. Its next owner
    /// reads the topic back from shortly before, and produces only what is not there.
    pub maybe_since: i64,
}

/// Statuses whose calls follow their partition; the others are finished.
const OPEN: &str = "('pending', 'running', 'dead', 'paused')";

/// What changed since the last call, and forget it.
pub(crate) fn take(tx: &Transaction<'_>) -> rusqlite::Result<Vec<Change>> {
    let seqs: Vec<i64> = tx
        .prepare_cached("SELECT seq FROM temp.changed ORDER BY seq")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut changes = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(change) = change_of(tx, seq)? {
            changes.push(change);
        }
    }
    let mut gone = tx.prepare_cached("SELECT id, subscription, partition FROM temp.gone")?;
    let ended = gone.query_map([], |r| {
        Ok(Change::Purged {
            id: r.get(0)?,
            subscription: r.get(1)?,
            partition: r.get(2)?,
        })
    })?;
    for change in ended {
        changes.push(change?);
    }
    tx.execute_batch("DELETE FROM temp.changed; DELETE FROM temp.gone;")?;
    Ok(changes)
}

fn change_of(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<Option<Change>> {
    let row = tx
        .prepare_cached(
            r#"SELECT id, subscription, target, ordering_key, payload, tombstone, kafka_key, headers,
                      topic, partition, "offset", source_generation, timestamp_ms, status, attempts,
                      attempts_before_redrive, next_attempt_at, last_error, output, created_at,
                      updated_at, redriven_at, dead_letter_published_at, idempotency_key,
                      journal_len, wait, deployment,
                      EXISTS (SELECT 1 FROM blocked_groups b WHERE b.dead_seq = calls.seq)
               FROM calls WHERE seq = ?1 AND topic IS NOT NULL"#,
        )?
        .query_row([seq], |r| {
            Ok(CallSnapshot {
                id: r.get(0)?,
                subscription: r.get(1)?,
                target: r.get(2)?,
                ordering_key: r.get(3)?,
                payload: r.get(4)?,
                tombstone: r.get(5)?,
                kafka_key: r.get(6)?,
                headers: r.get(7)?,
                topic: r.get(8)?,
                partition: r.get(9)?,
                offset: r.get(10)?,
                source_generation: r.get(11)?,
                timestamp_ms: r.get(12)?,
                status: r.get(13)?,
                attempts: r.get(14)?,
                attempts_before_redrive: r.get(15)?,
                next_attempt_at: r.get(16)?,
                last_error: r.get(17)?,
                output: r.get(18)?,
                created_at: r.get(19)?,
                updated_at: r.get(20)?,
                redriven_at: r.get(21)?,
                dead_letter_published_at: r.get(22)?,
                idempotency_key: r.get(23)?,
                journal_len: r.get(24)?,
                wait: r.get(25)?,
                deployment: r.get(26)?,
                journal: Vec::new(),
                inbox: Vec::new(),
                blocks_group: r.get(27)?,
                outbox: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut call) = row else {
        return Ok(None);
    };
    call.journal = tx
        .prepare_cached("SELECT position, entry FROM journal WHERE call_seq = ?1 ORDER BY position")?
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    call.inbox = tx
        .prepare_cached(
            "SELECT name, payload, received_at FROM signals WHERE call_seq = ?1 AND position IS NULL ORDER BY seq",
        )?
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let now = crate::model::now_millis();
    call.outbox = tx
        .prepare_cached(
            "SELECT position, topic, key, value, coalesce(attempted_at, ?2) FROM outbox
             WHERE call_seq = ?1 AND published_at IS NULL ORDER BY position",
        )?
        .query_map(params![seq, now], |r| {
            Ok(OutboxSnapshot {
                position: r.get(0)?,
                topic: r.get(1)?,
                key: r.get(2)?,
                value: r.get(3)?,
                maybe_since: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(Change::Call(Box::new(call))))
}

/// Delete a call and what belongs to it, without a tombstone: it moved, it did not end.
/// The caller raises the seq floor first.
fn remove(tx: &Transaction<'_>, seq: i64, id: &str) -> rusqlite::Result<()> {
    for sql in [
        "DELETE FROM journal WHERE call_seq = ?1",
        "DELETE FROM signals WHERE call_seq = ?1",
        "DELETE FROM outbox WHERE call_seq = ?1",
        "DELETE FROM attempts WHERE call_seq = ?1",
        "DELETE FROM blocked_groups WHERE dead_seq = ?1",
        "DELETE FROM calls WHERE seq = ?1",
        "DELETE FROM temp.changed WHERE seq = ?1",
    ] {
        tx.prepare_cached(sql)?.execute([seq])?;
    }
    tx.prepare_cached("DELETE FROM temp.gone WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// How many calls a release removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub calls: u64,
    /// Of which pending or running (the subscription's backlog).
    pub backlog: u64,
}

/// Remove the open calls of `subscription` that came from `partitions` (every partition if
/// `None`): they left this engine, and their next owner restores them from the changelog.
/// The unpublished outbox records of its finished calls go too: the next owner restores
/// them with their calls and publishes them (reading their topic back first), so they are
/// produced by whoever holds the partition, once.
pub(crate) fn release(
    tx: &Transaction<'_>,
    subscription: &str,
    partitions: Option<&[(String, i32)]>,
) -> rusqlite::Result<Released> {
    // The partition's open calls, and the unpublished outbox records of its finished ones
    // (an open call's go with it in `remove`).
    let take = |filter: &str, params: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<Vec<(i64, String, String)>> {
        tx.prepare_cached(&format!(
            "DELETE FROM outbox WHERE published_at IS NULL AND call_seq IN
             (SELECT seq FROM calls WHERE subscription = ?1 AND topic IS NOT NULL {filter})"
        ))?
        .execute(params)?;
        tx.prepare_cached(&format!(
            "SELECT seq, id, status FROM calls
             WHERE subscription = ?1 AND topic IS NOT NULL AND status IN {OPEN} {filter}"
        ))?
        .query_map(params, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
    };
    // By partition through the source index, not a walk of every open call.
    let calls = match partitions {
        None => take("", params![subscription])?,
        Some(list) => {
            let mut calls = Vec::new();
            for (topic, partition) in list {
                calls.extend(take(
                    "AND topic = ?2 AND partition = ?3",
                    params![subscription, topic, partition],
                )?);
            }
            calls
        }
    };
    super::writer::raise_seq_floor(tx)?;
    let mut released = Released::default();
    for (seq, id, status) in calls {
        remove(tx, seq, &id)?;
        released.calls += 1;
        released.backlog += u64::from(matches!(status.as_str(), "pending" | "running"));
    }
    Ok(released)
}

/// Insert `calls` as they were on their last owner, finished ones too, replacing any local
/// copy (by id or by record). A call that was running is pending: its attempt ended with
/// the old owner.
/// Returns the largest new seq.
pub(crate) fn restore(tx: &Transaction<'_>, calls: &[CallSnapshot]) -> rusqlite::Result<Option<i64>> {
    super::writer::raise_seq_floor(tx)?;
    let mut max_seq = None;
    for call in calls {
        let local: Vec<(i64, String)> = tx
            .prepare_cached(
                r#"SELECT seq, id FROM calls WHERE id = ?1
                   UNION SELECT seq, id FROM calls WHERE subscription = ?2 AND topic = ?3 AND partition = ?4
                                               AND "offset" = ?5 AND source_generation = ?6"#,
            )?
            .query_map(
                params![
                    call.id,
                    call.subscription,
                    call.topic,
                    call.partition,
                    call.offset,
                    call.source_generation
                ],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .collect::<Result<_, _>>()?;
        for (seq, id) in &local {
            remove(tx, *seq, id)?;
        }
        let status = if call.status == "running" {
            "pending"
        } else {
            call.status.as_str()
        };
        tx.prepare_cached(
            r#"INSERT INTO calls (id, subscription, target, ordering_key, payload, tombstone, kafka_key,
                   headers, topic, partition, "offset", source_generation, timestamp_ms, status,
                   attempts, attempts_before_redrive, next_attempt_at, last_error, output, created_at,
                   updated_at, redriven_at, dead_letter_published_at, idempotency_key, journal_len,
                   wait, deployment, seq)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                       ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27,
                       (SELECT max(f.n, coalesce((SELECT max(seq) FROM main.calls), 0)) + 1 FROM temp.seq_floor f))"#,
        )?
        .execute(params![
            call.id,
            call.subscription,
            call.target,
            call.ordering_key,
            call.payload,
            call.tombstone,
            call.kafka_key,
            call.headers,
            call.topic,
            call.partition,
            call.offset,
            call.source_generation,
            call.timestamp_ms,
            status,
            call.attempts,
            call.attempts_before_redrive,
            call.next_attempt_at,
            call.last_error,
            call.output,
            call.created_at,
            call.updated_at,
            call.redriven_at,
            call.dead_letter_published_at,
            call.idempotency_key,
            call.journal_len,
            call.wait,
            call.deployment,
        ])?;
        let seq = tx.last_insert_rowid();
        for (position, entry) in &call.journal {
            tx.prepare_cached("INSERT INTO journal (call_seq, position, entry) VALUES (?1, ?2, ?3)")?
                .execute(params![seq, position, entry])?;
        }
        for (name, payload, received_at) in &call.inbox {
            tx.prepare_cached("INSERT INTO signals (call_seq, name, payload, received_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![seq, name, payload, received_at])?;
        }
        for record in &call.outbox {
            // Marked attempted: the publisher reads the topic back before producing it.
            tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (subscription, call_seq, position, topic, key, value, attempted_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                call.subscription,
                seq,
                record.position,
                record.topic,
                record.key,
                record.value,
                record.maybe_since
            ])?;
        }
        if call.blocks_group {
            if let Some(key) = &call.ordering_key {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO blocked_groups (subscription, ordering_key, dead_seq) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![call.subscription, key, seq])?;
            }
        }
        // What it already was on its last owner is in the changelog: no echo.
        tx.prepare_cached("DELETE FROM temp.changed WHERE seq = ?1")?
            .execute([seq])?;
        max_seq = Some(seq);
    }
    Ok(max_seq)
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::b64::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttemptRecord, Inserted, KafkaSource, NewCall, Transition};
    use crate::store::{Committed, Store, StoreOptions};
    use std::collections::BTreeMap;

    fn record(partition: i32, offset: i64, key: &str) -> NewCall {
        NewCall {
            subscription: "orders".into(),
            target: "http://127.0.0.1:1/".into(),
            payload: format!("{key}:{offset}").into_bytes(),
            tombstone: false,
            key: Some(key.as_bytes().to_vec()),
            headers: None,
            source: Some(KafkaSource {
                topic: "orders".into(),
                partition,
                offset,
                timestamp: None,
            }),
            ordering_key: Some(format!("k{key}").into_bytes()),
            dead_reason: None,
            block_group_if_dead: false,
            idempotency_key: None,
        }
    }

    fn store(dir: &tempfile::TempDir, name: &str) -> Store {
        let options = StoreOptions {
            changelog: true,
            ..StoreOptions::default()
        };
        Store::open(dir.path().join(name), options).unwrap()
    }

    async fn seq_of(store: &Store, inserted: Inserted) -> i64 {
        let Inserted::New(id) = inserted else {
            panic!("not new: {inserted:?}")
        };
        let id = id.to_string();
        store
            .read(move |conn| conn.query_row("SELECT seq FROM calls WHERE id = ?1", [&id], |r| r.get(0)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn changes_follow_a_partition_from_one_store_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let old = store(&dir, "old.db");
        let mut changes = old.take_changes().unwrap();
        let inserted = old
            .insert(vec![record(0, 0, "a"), record(0, 1, "a"), record(1, 0, "b")])
            .await
            .unwrap();
        let mut seqs = Vec::new();
        for inserted in inserted {
            seqs.push(seq_of(&old, inserted).await);
        }
        // The first attempt of the first call succeeds; the second call's fails once.
        let attempt = |n| AttemptRecord {
            attempt: n,
            started_at: 1,
            duration_ms: 1,
            outcome: "temporary",
            http_status: Some(503),
            error: None,
        };
        old.start_attempt(seqs[0], 1, 1).unwrap();
        old.finish_attempt(seqs[0], attempt(1), Transition::Succeeded { output: None }, false, None)
            .unwrap();
        old.finish_attempt(
            seqs[1],
            attempt(1),
            Transition::Retry {
                at: 5,
                error: "busy".into(),
            },
            false,
            None,
        )
        .unwrap();
        old.flush().await.unwrap();

        // The changelog as a compacted topic would keep it: the last change per id.
        let mut latest: BTreeMap<String, Change> = BTreeMap::new();
        while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
            for change in batch {
                latest.insert(change.id().to_string(), change);
            }
        }
        let open: Vec<CallSnapshot> = latest
            .values()
            .filter_map(|c| match c {
                Change::Call(call) => Some(call.as_ref().clone()),
                Change::Purged { .. } => None,
            })
            .collect();
        assert_eq!(latest.len(), 3, "{latest:?}");
        assert_eq!(open.len(), 3, "a finished call stays until purged: {latest:?}");
        let done = open.iter().find(|c| c.offset == 0 && c.partition == 0).unwrap();
        assert_eq!(done.status, "succeeded");
        let retried = open.iter().find(|c| c.offset == 1).unwrap();
        assert_eq!(
            (retried.status.as_str(), retried.attempts, retried.last_error.as_deref()),
            ("pending", 1, Some("busy"))
        );
        // Through JSON, as on the topic.
        let open: Vec<CallSnapshot> = open
            .iter()
            .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
            .collect();

        // Partition 0 leaves: its open call goes without a tombstone; partition 1 stays.
        let released = old.release("orders", Some(vec![("orders".into(), 0)])).await.unwrap();
        assert_eq!(released, Released { calls: 1, backlog: 1 });
        old.flush().await.unwrap();
        let mut after_release = Vec::new();
        while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
            after_release.extend(batch);
        }
        assert!(after_release.is_empty(), "a release is not an end: {after_release:?}");
        assert_eq!(old.open_calls("orders").await.unwrap(), 1);

        // The next owner restores partition 0 (the finished call too): same id, same
        // attempts, pending, no echo.
        let new = store(&dir, "new.db");
        let mut echoes = new.take_changes().unwrap();
        let partition0: Vec<CallSnapshot> = open.into_iter().filter(|c| c.partition == 0).collect();
        let id = partition0.iter().find(|c| c.offset == 1).unwrap().id.clone();
        new.restore(partition0.clone()).await.unwrap();
        new.restore(partition0).await.unwrap(); // twice: replaced, not doubled
        new.flush().await.unwrap();
        assert_eq!(new.open_calls("orders").await.unwrap(), 1);
        let view = new.call(id.parse().unwrap()).await.unwrap().unwrap();
        assert_eq!((view.attempts, view.status.as_str()), (1, "pending"));
        let mut echoed = Vec::new();
        while let Ok(Committed { changes: batch, .. }) = echoes.try_recv() {
            echoed.extend(batch);
        }
        assert!(echoed.is_empty(), "restoring writes nothing back: {echoed:?}");
        // Records read again (their offsets not committed by the old owner) are the same
        // calls, finished or not, never second ones.
        let again = new.insert(vec![record(0, 0, "a"), record(0, 1, "a")]).await.unwrap();
        assert_eq!(again, vec![Inserted::Duplicate, Inserted::Duplicate]);
    }

    #[tokio::test]
    async fn unpublished_outbox_records_move_with_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        let old = store(&dir, "old.db");
        let mut changes = old.take_changes().unwrap();
        let inserted = old.insert(vec![record(0, 0, "a"), record(1, 0, "b")]).await.unwrap();
        let mut seqs = Vec::new();
        for inserted in inserted {
            seqs.push(seq_of(&old, inserted).await);
        }
        // Both succeed with an output for the subscription's `output_topic`.
        for &seq in &seqs {
            old.finish_attempt(
                seq,
                AttemptRecord {
                    attempt: 1,
                    started_at: 1,
                    duration_ms: 1,
                    outcome: "success",
                    http_status: Some(200),
                    error: None,
                },
                Transition::Succeeded {
                    output: Some(b"done".to_vec()),
                },
                false,
                Some("out".into()),
            )
            .unwrap();
        }
        old.flush().await.unwrap();
        let mut latest: BTreeMap<String, CallSnapshot> = BTreeMap::new();
        while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
            for change in batch {
                if let Change::Call(call) = change {
                    latest.insert(call.id.clone(), *call);
                }
            }
        }
        let moved = latest.values().find(|c| c.partition == 0).unwrap().clone();
        assert_eq!(moved.outbox.len(), 1, "{moved:?}");
        let record = &moved.outbox[0];
        assert_eq!(
            (
                record.position,
                record.topic.as_str(),
                record.key.as_deref(),
                record.value.as_slice()
            ),
            (-1, "out", Some(&b"a"[..]), &b"done"[..])
        );
        assert!(record.maybe_since > 0);
        assert_eq!(old.outbox_unpublished("orders", 10).await.unwrap().len(), 2);

        // Partition 0 leaves: its finished call stays as history, but its record is the
        // next owner's to publish; partition 1's stays here.
        old.release("orders", Some(vec![("orders".into(), 0)])).await.unwrap();
        let left = old.outbox_unpublished("orders", 10).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_ne!(left[0].call_id, moved.id);

        // The next owner restores it marked attempted, so its publisher reads the topic
        // back before producing it.
        let new = store(&dir, "new.db");
        let through_json: CallSnapshot = serde_json::from_slice(&serde_json::to_vec(&moved).unwrap()).unwrap();
        new.restore(vec![through_json]).await.unwrap();
        let restored = new.outbox_unpublished("orders", 10).await.unwrap();
        assert_eq!(restored.len(), 1);
        assert_eq!(
            (
                restored[0].call_id.as_str(),
                restored[0].position,
                restored[0].topic.as_str(),
                restored[0].value.as_slice(),
                restored[0].attempted_at
            ),
            (moved.id.as_str(), None, "out", &b"done"[..], Some(record.maybe_since))
        );

        // Once published, the call's next snapshot no longer carries it: a later move does
        // not bring it back.
        let mut published = new.take_changes().unwrap();
        new.outbox_mark(vec![restored[0].seq], true).await.unwrap();
        new.flush().await.unwrap();
        let mut after: Vec<Change> = Vec::new();
        while let Ok(Committed { changes: batch, .. }) = published.try_recv() {
            after.extend(batch);
        }
        match after.as_slice() {
            [Change::Call(call)] => assert!(call.id == moved.id && call.outbox.is_empty(), "{call:?}"),
            other => panic!("one snapshot of the call, without the record: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_seq_is_never_reused_after_the_newest_calls_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("seq.db"), StoreOptions::default()).unwrap();
        let first = store.insert(vec![record(0, 0, "a")]).await.unwrap();
        let newest = seq_of(&store, first[0]).await;
        store
            .finish_attempt(
                newest,
                AttemptRecord {
                    attempt: 1,
                    started_at: 1,
                    duration_ms: 1,
                    outcome: "success",
                    http_status: Some(200),
                    error: None,
                },
                Transition::Succeeded { output: None },
                false,
                None,
            )
            .unwrap();
        // Purged (retention over): the table is empty, the scheduler's cursor is past it.
        let purged = store.purge(i64::MAX, 100).await.unwrap();
        assert_eq!(purged.deleted, 1);
        let next = store.insert(vec![record(0, 1, "a")]).await.unwrap();
        assert!(
            seq_of(&store, next[0]).await > newest,
            "a new call took a seq already read past"
        );
    }
}
