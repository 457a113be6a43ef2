//! The single writer thread: every change to the database goes through here, and many
//! changes share one transaction (group commit).
//!
//! A batch is closed when it holds `max_batch` rows or when `commit_interval` has passed
//! since its first command. Replies are sent only after the batch is durable, so a caller
//! that awaits its reply knows its rows survive a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::sync::{oneshot, watch};

use super::changelog::{self, CallSnapshot, Change};
use super::outbox::OUTPUT_POSITION;
use super::workflow::{self, ChildEnd, Signalled, Wake};
use super::StoreError;
use crate::model::{now_millis, Affected, AttemptRecord, Inserted, Millis, NewCall, Operation, Transition};
use crate::telemetry::{self, Histogram};

/// A change for the writer to make.
#[derive(Debug)]
pub(crate) enum Command {
    Insert {
        calls: Vec<NewCall>,
        reply: oneshot::Sender<Result<Vec<Inserted>, StoreError>>,
    },
    /// An attempt has started. Not awaited: if it is lost in a crash, the call is simply
    /// still `pending` on restart.
    Start { seq: i64, attempt: u32, at: Millis },
    Finish {
        seq: i64,
        attempt: AttemptRecord,
        transition: Transition,
        block_group: bool,
        /// On success, the output goes to the outbox for this topic.
        output_topic: Option<Arc<str>>,
    },
    /// Delete at most `limit` finished calls, so that one commit stays short.
    Purge {
        before: Millis,
        limit: usize,
        reply: oneshot::Sender<Result<Purged, StoreError>>,
    },
    /// An operator's action; replies with the calls it changed.
    Operate {
        operation: Operation,
        reply: oneshot::Sender<Result<Vec<Affected>, StoreError>>,
    },
    /// Dead calls now on their dead-letter topic.
    DeadLettered {
        seqs: Vec<i64>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A signal for a workflow.
    Signal {
        call_id: String,
        name: String,
        payload: String,
        reply: oneshot::Sender<Result<Signalled, StoreError>>,
    },
    /// Records of the outbox handed to the producer, or acknowledged by the broker.
    Outbox {
        seqs: Vec<i64>,
        published: bool,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Replies once every command sent before it is durable, with the clock of the commit
    /// that made them so: a later commit's clock is later.
    Barrier { reply: oneshot::Sender<Millis> },
    /// Replies once every command sent before it is durable, with the clock of that commit
    /// exactly (what [`Committed::clock`] says of it), or an error.
    Committed {
        reply: oneshot::Sender<Result<Millis, StoreError>>,
    },
    /// Scale-out: the open calls of partitions that left this engine; replies how many.
    Release {
        subscription: String,
        /// `None`: every partition.
        partitions: Option<Vec<(String, i32)>>,
        reply: oneshot::Sender<Result<changelog::Released, StoreError>>,
    },
    /// Scale-out: the calls of a partition that arrived, as its last owner left them.
    Restore {
        calls: Vec<CallSnapshot>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Command {
    fn rows(&self) -> usize {
        match self {
            Self::Insert { calls, .. } => calls.len(),
            Self::DeadLettered { seqs, .. } | Self::Outbox { seqs, .. } => seqs.len(),
            Self::Purge { limit, .. } => *limit,
            Self::Restore { calls, .. } => calls.len(),
            _ => 1,
        }
    }
}

/// Tuning of the group commit (`[store] max_batch` and `commit_interval`).
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub max_batch: usize,
    pub commit_interval: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_batch: 16_384,
            commit_interval: Duration::from_millis(1),
        }
    }
}

/// Figures about the writer, for stats and metrics.
#[derive(Debug)]
pub struct WriterStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub rows: std::sync::atomic::AtomicU64,
    pub commit_micros: std::sync::atomic::AtomicU64,
    /// Set while the last commit failed (for example a full disk).
    pub failing: std::sync::atomic::AtomicBool,
    /// Commits that failed and are retried (each retry of a held batch counts).
    pub failed_writes: std::sync::atomic::AtomicU64,
    /// Records stored as new calls because their offset was reused by a different record.
    pub reused_offsets: std::sync::atomic::AtomicU64,
    /// Rows per commit.
    pub batch_rows: Histogram,
    /// Seconds per commit.
    pub commit_seconds: Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        Self {
            commits: std::sync::atomic::AtomicU64::default(),
            rows: std::sync::atomic::AtomicU64::default(),
            commit_micros: std::sync::atomic::AtomicU64::default(),
            failing: std::sync::atomic::AtomicBool::default(),
            failed_writes: std::sync::atomic::AtomicU64::default(),
            reused_offsets: std::sync::atomic::AtomicU64::default(),
            batch_rows: Histogram::new(telemetry::BATCH_BOUNDS),
            commit_seconds: Histogram::new(telemetry::COMMIT_BOUNDS),
        }
    }
}

/// A new call's seq is above every seq this process has seen, even once the newest calls
/// were deleted (purged, or moved to another engine): the schedulers read new calls past a
/// cursor, and a reused seq behind it would never be read.
const SEQ_FLOOR: &str = "
    CREATE TEMP TABLE IF NOT EXISTS seq_floor (n INTEGER NOT NULL);
    INSERT INTO seq_floor SELECT coalesce((SELECT max(seq) FROM main.calls), 0)
        WHERE NOT EXISTS (SELECT 1 FROM seq_floor);
";

/// Before deleting calls: no later call may take the seq of the newest.
pub(crate) fn raise_seq_floor(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE temp.seq_floor SET n = max(n, coalesce((SELECT max(seq) FROM main.calls), 0))")?
        .execute([])?;
    Ok(())
}

/// What a commit changed, for the changelog (cluster mode). Sent after every commit, empty
/// or not, before any reply of that commit.
#[derive(Debug)]
pub struct Committed {
    /// The commit's clock (as [`super::Store::flush`] returns it).
    pub clock: Millis,
    /// The largest call seq committed so far.
    pub max_seq: i64,
    pub changes: Vec<Change>,
}

pub(crate) fn run(
    mut conn: Connection,
    commands: &Receiver<Command>,
    options: WriterOptions,
    committed_seq: &watch::Sender<i64>,
    stats: &WriterStats,
    wakes: &tokio::sync::mpsc::UnboundedSender<Wake>,
    changes: Option<&tokio::sync::mpsc::UnboundedSender<Committed>>,
) {
    use std::sync::atomic::Ordering::Relaxed;

    if let Err(error) = conn.execute_batch(SEQ_FLOOR) {
        tracing::error!(%error, "cannot prepare the writer's connection; the store stops");
        return;
    }
    if changes.is_some() {
        if let Err(error) = conn.execute_batch(changelog::INSTALL) {
            tracing::error!(%error, "cannot install the changelog triggers; the store stops");
            return;
        }
    }

    let mut clock: Millis = 0;

    // One warning per 10 s about reused offsets, not one per record of a recreated topic.
    let mut reuse_warned: Option<Instant> = None;
    while let Ok(first) = commands.recv() {
        let mut rows = first.rows();
        let mut batch = vec![first];
        let deadline = Instant::now() + options.commit_interval;
        while rows < options.max_batch {
            match commands.recv_deadline(deadline) {
                Ok(command) => {
                    rows += command.rows();
                    batch.push(command);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }

        let mut delay = Duration::from_millis(50);
        let outcome = loop {
            let started = Instant::now();
            match apply(&mut conn, &batch, &mut clock, changes.is_some()) {
                Ok(mut outcome) => {
                    stats.commits.fetch_add(1, Relaxed);
                    stats.rows.fetch_add(rows as u64, Relaxed);
                    let took = started.elapsed();
                    stats.commit_micros.fetch_add(took.as_micros() as u64, Relaxed);
                    stats.batch_rows.observe(rows as f64);
                    stats.commit_seconds.observe(took.as_secs_f64());
                    if stats.failing.swap(false, Relaxed) {
                        tracing::warn!("store writes succeed again");
                    }
                    if let Some(call) = &outcome.first_reused {
                        let total =
                            stats.reused_offsets.fetch_add(outcome.reused_offsets, Relaxed) + outcome.reused_offsets;
                        if reuse_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            reuse_warned = Some(Instant::now());
                            warn_reused_offsets(call, total);
                        }
                    }
                    if let Some(changes) = changes {
                        // No receiver: the engine is stopping; nothing more is acknowledged.
                        let _ = changes.send(Committed {
                            clock: outcome.now,
                            max_seq: outcome.max_seq.unwrap_or(0).max(*committed_seq.borrow()),
                            changes: std::mem::take(&mut outcome.changes),
                        });
                    }
                    for wake in outcome.wakes.drain(..) {
                        // No receiver: the engine is stopping; the wake is in the store.
                        let _ = wakes.send(wake);
                    }
                    break Ok(outcome);
                }
                Err(error) if is_transient(&error) => {
                    // Keep the batch and its callers waiting: nothing is acknowledged that is
                    // not durable, so ingestion stops until the disk recovers.
                    stats.failed_writes.fetch_add(1, Relaxed);
                    if !stats.failing.swap(true, Relaxed) || delay >= Duration::from_secs(5) {
                        tracing::error!(%error, retry_in = ?delay, "store write failed; holding {} commands until it succeeds", batch.len());
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(%error, "store write failed permanently; failing {} commands", batch.len());
                    break Err(error);
                }
            }
        };
        reply(batch, outcome, committed_seq);
    }
}

fn warn_reused_offsets(call: &NewCall, total: u64) {
    let source = call.source.as_ref();
    tracing::warn!(
        subscription = %call.subscription,
        topic = source.map_or("", |s| s.topic.as_str()),
        partition = source.map(|s| s.partition),
        offset = source.map(|s| s.offset),
        records_since_start = total,
        "a record differs from the one stored at its offset: the offsets were reused (a recreated topic, another cluster, a new dev broker); it becomes a new call, nothing is dropped"
    );
}

/// Errors that may heal by themselves: a full disk, I/O trouble, a lock held for a while.
fn is_transient(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    )
}

/// What a successful batch produced, indexed like the batch.
struct Applied {
    inserted: Vec<Vec<Inserted>>,
    purged: Vec<Purged>,
    operated: Vec<Vec<Affected>>,
    max_seq: Option<i64>,
    /// Records stored as new calls at reused offsets, and the first of them.
    reused_offsets: u64,
    first_reused: Option<NewCall>,
    signalled: Vec<Signalled>,
    wakes: Vec<Wake>,
    now: Millis,
    released: Vec<changelog::Released>,
    changes: Vec<Change>,
}

fn apply(conn: &mut Connection, batch: &[Command], clock: &mut Millis, capture: bool) -> rusqlite::Result<Applied> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut applied = Applied {
        inserted: Vec::new(),
        purged: Vec::new(),
        operated: Vec::new(),
        max_seq: None,
        reused_offsets: 0,
        first_reused: None,
        signalled: Vec::new(),
        wakes: Vec::new(),
        now: 0,
        released: Vec::new(),
        changes: Vec::new(),
    };
    // Strictly later than the last commit's: a workflow's request is stamped with the
    // commit it read, and what a later commit records must be later (docs/workflows.md).
    let now = now_millis().max(*clock + 1);
    *clock = now;
    applied.now = now;
    for command in batch {
        match command {
            Command::Insert { calls, .. } => {
                let mut results = Vec::with_capacity(calls.len());
                for call in calls {
                    let ((inserted, seq), reused) = insert_call(&tx, call, now)?;
                    if reused {
                        applied.reused_offsets += 1;
                        applied.first_reused.get_or_insert_with(|| call.clone());
                    }
                    if let Some(seq) = seq {
                        applied.max_seq = Some(applied.max_seq.map_or(seq, |m| m.max(seq)));
                    }
                    results.push(inserted);
                }
                applied.inserted.push(results);
            }
            Command::Start { seq, attempt, at } => {
                tx.prepare_cached(
                    "UPDATE calls SET status = 'running', attempts = ?2, updated_at = ?3
                     WHERE seq = ?1 AND status = 'pending'",
                )?
                .execute(params![seq, attempt, at])?;
            }
            Command::Finish {
                seq,
                attempt,
                transition,
                block_group,
                output_topic,
            } => {
                let ending = Ending {
                    attempt,
                    transition,
                    output_topic: output_topic.as_deref(),
                };
                if let Some(child) = finish_call(&tx, *seq, &ending, now, &mut applied.wakes)? {
                    applied.max_seq = Some(applied.max_seq.map_or(child, |m| m.max(child)));
                }
                if *block_group && matches!(transition, Transition::Dead { .. } | Transition::Paused { .. }) {
                    block_group_of(&tx, *seq)?;
                }
            }
            Command::Purge { before, limit, .. } => applied.purged.push(purge(&tx, *before, *limit)?),
            Command::Operate { operation, .. } => {
                applied.operated.push(operate(&tx, operation, now, &mut applied.wakes)?);
            }
            Command::Signal {
                call_id, name, payload, ..
            } => {
                let signalled = workflow::signal(&tx, call_id, name, payload, now, &mut applied.wakes)?;
                applied.signalled.push(signalled);
            }
            Command::Outbox { seqs, published, .. } => {
                let sql = if *published {
                    "UPDATE outbox SET published_at = ?2 WHERE seq = ?1"
                } else {
                    "UPDATE outbox SET attempted_at = coalesce(attempted_at, ?2) WHERE seq = ?1"
                };
                let mut update = tx.prepare_cached(sql)?;
                for seq in seqs {
                    update.execute(params![seq, now])?;
                }
            }
            Command::DeadLettered { seqs, .. } => {
                for seq in seqs {
                    tx.prepare_cached(
                        "UPDATE calls SET dead_letter_published_at = ?2 WHERE seq = ?1 AND status = 'dead'",
                    )?
                    .execute(params![seq, now])?;
                }
            }
            Command::Release {
                subscription,
                partitions,
                ..
            } => applied
                .released
                .push(changelog::release(&tx, subscription, partitions.as_deref())?),
            Command::Restore { calls, .. } => {
                if let Some(seq) = changelog::restore(&tx, calls)? {
                    applied.max_seq = Some(applied.max_seq.map_or(seq, |m| m.max(seq)));
                }
            }
            Command::Barrier { .. } | Command::Committed { .. } => {}
        }
    }
    if capture {
        applied.changes = changelog::take(&tx)?;
    }
    tx.commit()?;
    Ok(applied)
}

/// Insert `call`; the flag says it was a different record at a reused offset.
fn insert_call(
    tx: &rusqlite::Transaction<'_>,
    call: &NewCall,
    now: Millis,
) -> rusqlite::Result<((Inserted, Option<i64>), bool)> {
    let mut generation = 0;
    loop {
        if let Some(inserted) = try_insert(tx, call, now, generation)? {
            return Ok((inserted, generation > 0));
        }
        // A call exists for this record's position: the same record read again (a crash
        // or a rebalance before its offset was stored), or a different record at a reused
        // offset, which must not be lost.
        if call.source.is_none() {
            return Ok(((Inserted::Duplicate, None), false));
        }
        match stored_generations(tx, call)? {
            Stored::Same => return Ok(((Inserted::Duplicate, None), false)),
            Stored::Differ { next_generation } => generation = next_generation.max(generation + 1),
        }
    }
}

/// Insert `call` as `generation` of its source position; `None` if that position is taken.
fn try_insert(
    tx: &rusqlite::Transaction<'_>,
    call: &NewCall,
    now: Millis,
    generation: i64,
) -> rusqlite::Result<Option<(Inserted, Option<i64>)>> {
    let id = uuid::Uuid::now_v7();
    let (status, last_error) = match &call.dead_reason {
        Some(reason) => ("dead", Some(reason.as_str())),
        None => ("pending", None),
    };
    let source = call.source.as_ref();
    let seq: Option<i64> = tx
        .prepare_cached(
            r#"INSERT INTO calls (id, subscription, target, ordering_key, payload, kafka_key, headers,
                   topic, partition, "offset", timestamp_ms, status, attempts, next_attempt_at,
                   last_error, created_at, updated_at, tombstone, source_generation, idempotency_key, seq)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13, ?14, ?13, ?13, ?15, ?16, ?17,
                       (SELECT max(f.n, coalesce((SELECT max(seq) FROM main.calls), 0)) + 1 FROM temp.seq_floor f))
               ON CONFLICT DO NOTHING
               RETURNING seq"#,
        )?
        .query_row(
            params![
                id.to_string(),
                call.subscription,
                call.target,
                call.ordering_key,
                call.payload,
                call.key,
                call.headers,
                source.map(|s| &s.topic),
                source.map(|s| s.partition),
                source.map(|s| s.offset),
                source.and_then(|s| s.timestamp),
                status,
                now,
                last_error,
                call.tombstone,
                generation,
                call.idempotency_key,
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(seq) = seq else {
        return Ok(None);
    };
    if call.dead_reason.is_some() && call.block_group_if_dead {
        block_group_of(tx, seq)?;
    }
    Ok(Some((Inserted::New(id), Some(seq))))
}

/// What is stored at a record's source position.
enum Stored {
    /// A call of the same record (same key, value, headers and timestamp).
    Same,
    /// Only calls of other records; the next free generation.
    Differ { next_generation: i64 },
}

fn stored_generations(tx: &rusqlite::Transaction<'_>, call: &NewCall) -> rusqlite::Result<Stored> {
    let source = call.source.as_ref();
    let mut statement = tx.prepare_cached(
        r#"SELECT payload, kafka_key, headers, timestamp_ms, tombstone, source_generation FROM calls
           WHERE subscription = ?1 AND topic = ?2 AND partition = ?3 AND "offset" = ?4"#,
    )?;
    let mut rows = statement.query(params![
        call.subscription,
        source.map(|s| &s.topic),
        source.map(|s| s.partition),
        source.map(|s| s.offset),
    ])?;
    let mut next_generation = 0;
    while let Some(row) = rows.next()? {
        let same = row.get::<_, Vec<u8>>("payload")? == call.payload
            && row.get::<_, Option<Vec<u8>>>("kafka_key")? == call.key
            && row.get::<_, Option<String>>("headers")? == call.headers
            && row.get::<_, Option<i64>>("timestamp_ms")? == source.and_then(|s| s.timestamp)
            && row.get::<_, bool>("tombstone")? == call.tombstone;
        if same {
            return Ok(Stored::Same);
        }
        next_generation = next_generation.max(row.get::<_, i64>("source_generation")? + 1);
    }
    Ok(Stored::Differ { next_generation })
}

/// Mark the ordering group of call `seq` blocked by it (a no-op for unordered calls).
fn block_group_of(tx: &rusqlite::Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO blocked_groups (subscription, ordering_key, dead_seq)
         SELECT subscription, ordering_key, seq FROM calls WHERE seq = ?1 AND ordering_key IS NOT NULL",
    )?
    .execute([seq])?;
    Ok(())
}

/// How an attempt ended, and where a success's output is published.
struct Ending<'a> {
    attempt: &'a AttemptRecord,
    transition: &'a Transition,
    output_topic: Option<&'a str>,
}

/// Record an attempt and the call's next state; a child's end goes to its parent. Returns
/// the highest seq of the child calls a workflow started.
fn finish_call(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    ending: &Ending<'_>,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<Option<i64>> {
    let Ending {
        attempt,
        transition,
        output_topic,
    } = *ending;
    record_attempt(tx, seq, attempt)?;
    let (status, next_attempt_at, error, output) = match transition {
        Transition::Succeeded { output } => ("succeeded", now, None, output.as_deref()),
        Transition::Retry { at, error } => ("pending", *at, Some(error.as_str()), None),
        Transition::Dead { error } => ("dead", now, Some(error.as_str()), None),
        Transition::Paused { error } => ("paused", now, Some(error.as_str()), None),
        Transition::Suspended(suspended) => {
            return workflow::append(tx, seq, attempt.attempt, suspended, now, wakes);
        }
    };
    // Only a running call moves on: an operator may have cancelled it meanwhile. A child's
    // parent comes back with the update, so ending a plain call costs no extra read.
    let parent: Option<(Option<i64>, Option<u32>, String)> = tx
        .prepare_cached(
            "UPDATE calls SET status = ?2, next_attempt_at = ?3, last_error = ?4,
                    output = coalesce(?5, output), attempts = max(attempts, ?6), updated_at = ?7
             WHERE seq = ?1 AND status IN ('running', 'pending')
             RETURNING parent_seq, parent_position, iif(parent_seq IS NULL, '', id)",
        )?
        .query_row(
            params![seq, status, next_attempt_at, error, output, attempt.attempt, now],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let (Some((None, _, _)), Some(topic), Transition::Succeeded { output }) = (&parent, output_topic, transition) {
        // Once per call: a call that succeeds again (redriven, restarted) is not published twice.
        tx.prepare_cached(
            "INSERT OR IGNORE INTO outbox (subscription, call_seq, position, topic, key, value)
             SELECT subscription, seq, ?2, ?3, kafka_key, ?4 FROM calls WHERE seq = ?1",
        )?
        .execute(params![
            seq,
            OUTPUT_POSITION,
            topic,
            output.as_deref().unwrap_or_default()
        ])?;
    }
    if let Some((Some(parent), Some(position), id)) = parent {
        let reason;
        let end = match transition {
            Transition::Succeeded { output } => ChildEnd::Succeeded(output.as_deref()),
            Transition::Dead { error } => {
                reason = format!("the child call is dead: {error}");
                ChildEnd::Failed(&reason)
            }
            _ => return Ok(None),
        };
        workflow::child_ended(tx, (parent, position), &id, &end, now, wakes)?;
    }
    Ok(None)
}

pub(crate) fn record_attempt(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    attempt: &AttemptRecord,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO attempts (call_seq, attempt, started_at, duration_ms, outcome, http_status, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq,
        attempt.attempt,
        attempt.started_at,
        attempt.duration_ms,
        attempt.outcome,
        attempt.http_status,
        attempt.error,
    ])?;
    Ok(())
}

/// Apply an operator's action. A call in a state the action does not apply to is left
/// alone (and not reported).
fn operate(
    tx: &rusqlite::Transaction<'_>,
    operation: &Operation,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<Vec<Affected>> {
    let allowed = operation.applies_to();
    let mut affected = Vec::new();
    // A cancelled workflow's open children are cancelled with it.
    let mut ids: Vec<uuid::Uuid> = operation.ids().to_vec();
    let mut next = 0;
    while let Some(id) = ids.get(next).copied() {
        next += 1;
        let id = &id;
        let row = tx
            .prepare_cached("SELECT seq, subscription, ordering_key, status FROM calls WHERE id = ?1")?
            .query_row([id.to_string()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((seq, subscription, ordering_key, status)) = row else {
            continue;
        };
        let Ok(was) = status.parse::<crate::model::CallStatus>() else {
            continue;
        };
        if !allowed.contains(&was) {
            continue;
        }
        match operation {
            Operation::RetryNow(_) => {
                tx.prepare_cached("UPDATE calls SET next_attempt_at = ?2, updated_at = ?2 WHERE seq = ?1")?
                    .execute(params![seq, now])?;
            }
            Operation::Cancel(_) => {
                tx.prepare_cached("UPDATE calls SET status = 'cancelled', updated_at = ?2 WHERE seq = ?1")?
                    .execute(params![seq, now])?;
                if let Some(parent) = workflow::parent_of(tx, seq)? {
                    workflow::child_ended(
                        tx,
                        parent,
                        &id.to_string(),
                        &ChildEnd::Failed("the child call was cancelled"),
                        now,
                        wakes,
                    )?;
                }
                ids.extend(
                    workflow::open_children(tx, seq)?
                        .iter()
                        .filter_map(|id| uuid::Uuid::parse_str(id).ok()),
                );
            }
            Operation::Redrive(_) => {
                tx.prepare_cached(
                    "UPDATE calls SET status = 'pending', next_attempt_at = ?2, updated_at = ?2,
                         attempts_before_redrive = attempts, redriven_at = ?2,
                         dead_letter_published_at = NULL
                     WHERE seq = ?1",
                )?
                .execute(params![seq, now])?;
            }
            Operation::Restart { from, .. } => {
                if !workflow::restart(tx, seq, *from, now)? {
                    continue;
                }
            }
            Operation::PurgeDead(_) => {
                raise_seq_floor(tx)?;
                tx.prepare_cached("DELETE FROM attempts WHERE call_seq = ?1")?
                    .execute([seq])?;
                delete_workflow_rows(tx, seq)?;
                tx.prepare_cached("DELETE FROM calls WHERE seq = ?1")?.execute([seq])?;
            }
        }
        // A dead call that is no longer dead no longer blocks its key.
        tx.prepare_cached("DELETE FROM blocked_groups WHERE dead_seq = ?1")?
            .execute([seq])?;
        affected.push(Affected {
            id: *id,
            seq,
            subscription,
            ordering_key,
            was,
        });
    }
    Ok(affected)
}

/// Work one purge chunk may add to a commit: deleting, then giving pages back.
const PURGE_BUDGET: Duration = Duration::from_millis(15);
/// Pages given back to the file system per step (512 KiB of 4 KiB pages).
const VACUUM_STEP: u32 = 128;

/// What one purge chunk did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Calls deleted, with their attempts.
    pub deleted: usize,
    /// More calls are past retention.
    pub more: bool,
    /// Free pages left in the file (given back by later chunks).
    pub free_pages: u64,
}

/// Delete up to `limit` succeeded and cancelled calls last changed before `before`, with
/// their attempts, within [`PURGE_BUDGET`]; once none is left, give free pages back to the
/// file system within the same budget.
fn purge(tx: &rusqlite::Transaction<'_>, before: Millis, limit: usize) -> rusqlite::Result<Purged> {
    let started = Instant::now();
    raise_seq_floor(tx)?;
    let seqs: Vec<i64> = tx
        .prepare_cached(
            // A workflow that ended without awaiting its children stays while one is open:
            // the child's end is recorded in it, and in cluster mode the child moves with it.
            "SELECT seq FROM calls WHERE status IN ('succeeded', 'cancelled') AND updated_at < ?1
               AND NOT EXISTS (SELECT 1 FROM calls c INDEXED BY calls_open_children WHERE c.parent_seq = calls.seq
                               AND c.status IN ('pending', 'running', 'dead', 'paused'))
             LIMIT ?2",
        )?
        .query_map(params![before, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete_attempts = tx.prepare_cached("DELETE FROM attempts WHERE call_seq = ?1")?;
    let mut delete_call = tx.prepare_cached("DELETE FROM calls WHERE seq = ?1")?;
    let mut deleted = 0;
    for seq in &seqs {
        if started.elapsed() >= PURGE_BUDGET {
            break;
        }
        delete_attempts.execute([seq])?;
        delete_workflow_rows(tx, *seq)?;
        delete_call.execute([seq])?;
        deleted += 1;
    }
    let more = deleted < seqs.len() || seqs.len() == limit;
    let free_pages = |tx: &rusqlite::Transaction<'_>| tx.query_row("PRAGMA freelist_count", [], |r| r.get::<_, u64>(0));
    let mut free = free_pages(tx)?;
    while !more && free > 0 && started.elapsed() < PURGE_BUDGET {
        let mut vacuum = tx.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_STEP})"))?;
        let mut rows = vacuum.query([])?;
        while rows.next()?.is_some() {}
        free = free_pages(tx)?;
    }
    Ok(Purged {
        deleted,
        more,
        free_pages: free,
    })
}

/// A workflow's journal, signals and published records go with it.
fn delete_workflow_rows(tx: &rusqlite::Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM journal WHERE call_seq = ?1")?
        .execute([seq])?;
    tx.prepare_cached("DELETE FROM signals WHERE call_seq = ?1")?
        .execute([seq])?;
    tx.prepare_cached("DELETE FROM outbox WHERE call_seq = ?1 AND published_at IS NOT NULL")?
        .execute([seq])?;
    Ok(())
}

fn reply(batch: Vec<Command>, outcome: rusqlite::Result<Applied>, committed_seq: &watch::Sender<i64>) {
    let mut signalled = Vec::new().into_iter();
    let mut released = Vec::new().into_iter();
    let mut commit_now = 0;
    let (mut inserted, mut purged, mut operated, failure) = match outcome {
        Ok(applied) => {
            if let Some(seq) = applied.max_seq {
                committed_seq.send_if_modified(|current| {
                    let grew = seq > *current;
                    *current = (*current).max(seq);
                    grew
                });
            }
            signalled = applied.signalled.into_iter();
            released = applied.released.into_iter();
            commit_now = applied.now;
            (
                applied.inserted.into_iter(),
                applied.purged.into_iter(),
                applied.operated.into_iter(),
                None,
            )
        }
        Err(error) => (
            Vec::new().into_iter(),
            Vec::new().into_iter(),
            Vec::new().into_iter(),
            Some(error.to_string()),
        ),
    };
    let result = |value| match &failure {
        None => Ok(value),
        Some(message) => Err(StoreError::Write(message.clone())),
    };
    for command in batch {
        // A caller that stopped waiting is not an error.
        match command {
            Command::Insert { reply, .. } => {
                drop(reply.send(result(()).map(|()| inserted.next().unwrap_or_default())));
            }
            Command::Purge { reply, .. } => {
                drop(reply.send(result(()).map(|()| purged.next().unwrap_or_default())));
            }
            Command::Operate { reply, .. } => {
                drop(reply.send(result(()).map(|()| operated.next().unwrap_or_default())));
            }
            Command::DeadLettered { reply, .. } | Command::Outbox { reply, .. } | Command::Restore { reply, .. } => {
                drop(reply.send(result(())));
            }
            Command::Signal { reply, .. } => {
                drop(reply.send(result(()).map(|()| signalled.next().unwrap_or(Signalled::NoCall))));
            }
            Command::Barrier { reply } => drop(reply.send(commit_now.max(now_millis()))),
            Command::Committed { reply } => drop(reply.send(result(()).map(|()| commit_now))),
            Command::Release { reply, .. } => {
                drop(reply.send(result(()).map(|()| released.next().unwrap_or_default())));
            }
            Command::Start { .. } | Command::Finish { .. } => {}
        }
    }
}
