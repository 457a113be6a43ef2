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

use rusqlite::{params, Connection, OptionalExtension, Transaction};

mod tree;
use serde::{Deserialize, Serialize};

/// The triggers that note changed calls in `temp.changed` and deleted ones in `temp.gone`.
pub(crate) const INSTALL: &str = "
    CREATE TEMP TABLE IF NOT EXISTS changed (seq INTEGER PRIMARY KEY);
    CREATE TEMP TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY, subscription TEXT NOT NULL, partition INTEGER NOT NULL);
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_insert AFTER INSERT ON main.calls
        WHEN new.topic IS NOT NULL OR new.parent_seq IS NOT NULL
    BEGIN INSERT OR IGNORE INTO changed VALUES (new.seq); END;
    CREATE TEMP TRIGGER IF NOT EXISTS changelog_update AFTER UPDATE ON main.calls
        WHEN (new.topic IS NOT NULL OR new.parent_seq IS NOT NULL) AND new.status IS NOT 'running'
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
    /// A child call: the workflow call it is a child of (by id), and its entry there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_position: Option<i64>,
    /// A root's descendants that move with it (see [`tree`]), parents before children. A
    /// descendant's `topic`, `partition`, `offset` and `source_generation` are its root's;
    /// it has no source record of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<CallSnapshot>,
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

/// What changed since the last call, and forget it. A changed child call is a change of
/// its root: the root's snapshot carries it.
pub(crate) fn take(tx: &Transaction<'_>) -> rusqlite::Result<Vec<Change>> {
    let noted: Vec<(i64, bool, bool)> = tx
        .prepare_cached(
            // CROSS JOIN keeps this order: the noted seqs, each looked up (the planner
            // otherwise scans every call).
            "SELECT c.seq, c.topic IS NOT NULL, c.parent_seq IS NOT NULL
             FROM temp.changed t CROSS JOIN main.calls c ON c.seq = t.seq ORDER BY t.seq",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut roots = std::collections::BTreeSet::new();
    for (seq, from_kafka, child) in noted {
        if from_kafka {
            roots.insert(seq);
        } else if child {
            roots.extend(tree::root_of(tx, seq)?);
        }
    }
    let mut changes = Vec::with_capacity(roots.len());
    for seq in roots {
        if let Some(call) = root_snapshot(tx, seq)? {
            changes.push(Change::Call(Box::new(call)));
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

/// The snapshot of a call made from a Kafka record, with the descendants that move with it.
fn root_snapshot(conn: &Connection, seq: i64) -> rusqlite::Result<Option<CallSnapshot>> {
    let Some(mut root) = snapshot(conn, seq)? else {
        return Ok(None);
    };
    if root.topic.is_empty() {
        return Ok(None);
    }
    for descendant in tree::carried(conn, seq)? {
        if let Some(mut call) = snapshot(conn, descendant.seq)? {
            call.topic.clone_from(&root.topic);
            call.partition = root.partition;
            call.offset = root.offset;
            call.source_generation = root.source_generation;
            root.descendants.push(call);
        }
    }
    Ok(Some(root))
}

/// Call `seq` as it is now, with its journal, inbox and unpublished outbox records. A call
/// without a source record has an empty `topic`.
fn snapshot(conn: &Connection, seq: i64) -> rusqlite::Result<Option<CallSnapshot>> {
    let row = conn
        .prepare_cached(
            r#"SELECT id, subscription, target, ordering_key, payload, tombstone, kafka_key, headers,
                      coalesce(topic, ''), coalesce(partition, -1), coalesce("offset", -1),
                      source_generation, timestamp_ms, status, attempts,
                      attempts_before_redrive, next_attempt_at, last_error, output, created_at,
                      updated_at, redriven_at, dead_letter_published_at, idempotency_key,
                      journal_len, wait, deployment,
                      EXISTS (SELECT 1 FROM blocked_groups b WHERE b.dead_seq = calls.seq),
                      (SELECT p.id FROM calls p WHERE p.seq = calls.parent_seq), parent_position
               FROM calls WHERE seq = ?1"#,
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
                parent: r.get(28)?,
                parent_position: r.get(29)?,
                descendants: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut call) = row else {
        return Ok(None);
    };
    call.journal = conn
        .prepare_cached("SELECT position, entry FROM journal WHERE call_seq = ?1 ORDER BY position")?
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    call.inbox = conn
        .prepare_cached(
            "SELECT name, payload, received_at FROM signals WHERE call_seq = ?1 AND position IS NULL ORDER BY seq",
        )?
        .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let now = crate::model::now_millis();
    call.outbox = conn
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
    Ok(Some(call))
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    pub calls: u64,
    /// Of which pending or running (the subscription's backlog).
    pub backlog: u64,
    /// Child calls that went with their roots, by their own subscription: how many, and of
    /// which pending or running.
    pub children: std::collections::BTreeMap<String, (u64, u64)>,
}

/// Remove the open calls of `subscription` that came from `partitions` (every partition if
/// `None`), and the descendants that move with each of the partitions' calls, finished
/// ones included (a workflow may end without awaiting its children): they left this
/// engine, and their next owner restores them from the changelog. The unpublished outbox
/// records of its finished calls go too: the next owner restores them with their calls and
/// publishes them (reading their topic back first), so they are produced by whoever holds
/// the partition, once.
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
    // Descendants first: the roots' rows are still there to tell their partitions.
    let mut children = Vec::new();
    for root in tree::roots_moving_descendants(tx, subscription, partitions)? {
        children.extend(tree::carried(tx, root)?);
    }
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
    for child in children.into_iter().rev() {
        remove(tx, child.seq, &child.id)?;
        let backlog = u64::from(child.is_backlog());
        let counts = released.children.entry(child.subscription).or_default();
        counts.0 += 1;
        counts.1 += backlog;
    }
    for (seq, id, status) in calls {
        remove(tx, seq, &id)?;
        released.calls += 1;
        released.backlog += u64::from(matches!(status.as_str(), "pending" | "running"));
    }
    Ok(released)
}

/// Whether any descendant of the open or finished calls of `subscription` from
/// `partitions` would move with them (its scheduler must be still while they do).
pub(crate) fn has_descendants_to_move(
    conn: &Connection,
    subscription: &str,
    partitions: &[(String, i32)],
) -> rusqlite::Result<bool> {
    Ok(!tree::roots_moving_descendants(conn, subscription, Some(partitions))?.is_empty())
}

/// Insert `calls` as they were on their last owner, finished ones too, with the
/// descendants each carries, replacing any local copy (by id, or a root by its record). A
/// call that was running is pending: its attempt ended with the old owner.
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
        let seq = replace(tx, call, &local, Place::Root)?;
        for descendant in &call.descendants {
            let local: Vec<(i64, String)> = tx
                .prepare_cached("SELECT seq, id FROM calls WHERE id = ?1")?
                .query_map([&descendant.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            // Parents come first: the parent is this root or a descendant stored above.
            let parent_seq: Option<i64> = match &descendant.parent {
                Some(parent) => tx
                    .prepare_cached("SELECT seq FROM calls WHERE id = ?1")?
                    .query_row([parent], |r| r.get(0))
                    .optional()?,
                None => None,
            };
            max_seq = max_seq.max(Some(replace(tx, descendant, &local, Place::Child { parent_seq })?));
        }
        max_seq = max_seq.max(Some(seq));
    }
    Ok(max_seq)
}

/// Where a restored call goes in its tree.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Made from a Kafka record: stored with its source.
    Root,
    /// A descendant, stored without a source, under its parent (if the parent is here).
    Child { parent_seq: Option<i64> },
}

/// Store `call` in place of its `local` copies. Returns its new seq.
fn replace(tx: &Transaction<'_>, call: &CallSnapshot, local: &[(i64, String)], place: Place) -> rusqlite::Result<i64> {
    for (seq, id) in local {
        remove(tx, *seq, id)?;
    }
    let status = if call.status == "running" {
        "pending"
    } else {
        call.status.as_str()
    };
    let (source, parent_seq) = match place {
        Place::Root => (true, None),
        Place::Child { parent_seq } => (false, parent_seq),
    };
    tx.prepare_cached(
        r#"INSERT INTO calls (id, subscription, target, ordering_key, payload, tombstone, kafka_key,
               headers, topic, partition, "offset", source_generation, timestamp_ms, status,
               attempts, attempts_before_redrive, next_attempt_at, last_error, output, created_at,
               updated_at, redriven_at, dead_letter_published_at, idempotency_key, journal_len,
               wait, deployment, parent_seq, parent_position, seq)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, iif(?28, ?9, NULL), iif(?28, ?10, NULL),
                   iif(?28, ?11, NULL), iif(?28, ?12, 0), ?13, ?14, ?15, ?16, ?17,
                   ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?29, ?30,
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
        source,
        parent_seq,
        call.parent_position,
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
    // Local children of a replaced copy (history kept here) now hang from the new one.
    let mut echoes = vec![seq];
    for (old, _) in local {
        let moved: Vec<i64> = tx
            .prepare_cached("UPDATE calls SET parent_seq = ?2 WHERE parent_seq = ?1 RETURNING seq")?
            .query_map(params![old, seq], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        echoes.extend(moved);
    }
    // What it already was on its last owner is in the changelog: no echo.
    for echo in echoes {
        tx.prepare_cached("DELETE FROM temp.changed WHERE seq = ?1")?
            .execute([echo])?;
    }
    Ok(seq)
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
mod tests;
