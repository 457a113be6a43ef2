//! Read queries, run on pooled read-only connections.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use crate::model::{AttemptView, CallStatus, CallView, DueCall, KafkaSource, ParentEntry};

const DUE_COLUMNS: &str = r#"seq, id, target, payload, kafka_key, headers, topic, partition, "offset",
    timestamp_ms, ordering_key, attempts, next_attempt_at, created_at, tombstone,
    attempts_before_redrive, redriven_at, journal_len"#;

// Rows are read by column name, so a query's column order is free to change.

fn source_from(row: &Row<'_>) -> rusqlite::Result<Option<KafkaSource>> {
    let topic: Option<String> = row.get("topic")?;
    Ok(match topic {
        Some(topic) => Some(KafkaSource {
            topic,
            partition: row.get("partition")?,
            offset: row.get("offset")?,
            timestamp: row.get("timestamp_ms")?,
        }),
        None => None,
    })
}

/// A text column parsed into `T`, with the column named in the error.
fn parsed<T: std::str::FromStr>(row: &Row<'_>, column: &str) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    parsed_at(row, row.as_ref().column_index(column)?)
}

/// [`parsed`], for a column already found.
fn parsed_at<T: std::str::FromStr>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.get(index)?;
    text.parse().map_err(|e: T::Err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.to_string().into())
    })
}

/// Where each of [`DUE_COLUMNS`] is in a statement: looked up by name once per query, not
/// per row (a lookup by name scans the columns, and due calls are read by the thousand).
struct DueIndex {
    seq: usize,
    id: usize,
    target: usize,
    payload: usize,
    key: usize,
    headers: usize,
    topic: usize,
    partition: usize,
    offset: usize,
    timestamp: usize,
    ordering_key: usize,
    attempts: usize,
    next_attempt_at: usize,
    created_at: usize,
    tombstone: usize,
    attempts_before_redrive: usize,
    redriven_at: usize,
    journal_len: usize,
}

impl DueIndex {
    fn of(statement: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        let at = |name: &str| statement.column_index(name);
        Ok(Self {
            seq: at("seq")?,
            id: at("id")?,
            target: at("target")?,
            payload: at("payload")?,
            key: at("kafka_key")?,
            headers: at("headers")?,
            topic: at("topic")?,
            partition: at("partition")?,
            offset: at("offset")?,
            timestamp: at("timestamp_ms")?,
            ordering_key: at("ordering_key")?,
            attempts: at("attempts")?,
            next_attempt_at: at("next_attempt_at")?,
            created_at: at("created_at")?,
            tombstone: at("tombstone")?,
            attempts_before_redrive: at("attempts_before_redrive")?,
            redriven_at: at("redriven_at")?,
            journal_len: at("journal_len")?,
        })
    }
}

fn due_call(row: &Row<'_>, at: &DueIndex) -> rusqlite::Result<DueCall> {
    let topic: Option<String> = row.get(at.topic)?;
    let source = match topic {
        Some(topic) => Some(KafkaSource {
            topic,
            partition: row.get(at.partition)?,
            offset: row.get(at.offset)?,
            timestamp: row.get(at.timestamp)?,
        }),
        None => None,
    };
    Ok(DueCall {
        seq: row.get(at.seq)?,
        id: parsed_at(row, at.id)?,
        target: row.get(at.target)?,
        payload: row.get(at.payload)?,
        key: row.get(at.key)?,
        headers: row.get(at.headers)?,
        source,
        ordering_key: row.get(at.ordering_key)?,
        attempts: row.get(at.attempts)?,
        next_attempt_at: row.get(at.next_attempt_at)?,
        created_at: row.get(at.created_at)?,
        tombstone: row.get(at.tombstone)?,
        attempts_before_redrive: row.get(at.attempts_before_redrive)?,
        redriven_at: row.get(at.redriven_at)?,
        journal_len: row.get(at.journal_len)?,
    })
}

/// A dead call as its dead-letter record needs it.
#[derive(Debug, Clone)]
pub struct DeadCall {
    pub call: DueCall,
    pub subscription: String,
    pub last_error: Option<String>,
    /// When it went dead (ms since the epoch).
    pub dead_at: i64,
}

/// Dead calls of `subscription` not yet on its dead-letter topic, oldest first: at most
/// `limit`, and no more once their payloads reach `max_bytes` (the first is always taken).
pub(crate) fn dead_unpublished(
    conn: &Connection,
    subscription: &str,
    limit: usize,
    max_bytes: usize,
) -> rusqlite::Result<Vec<DeadCall>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DUE_COLUMNS}, last_error, updated_at, subscription FROM calls
         WHERE subscription = ?1 AND status = 'dead' AND dead_letter_published_at IS NULL
         ORDER BY seq LIMIT ?2"
    ))?;
    let at = DueIndex::of(&statement)?;
    let rows = statement.query(params![subscription, limit as i64])?;
    up_to_bytes(
        rows,
        max_bytes,
        |dead: &DeadCall| dead.call.payload.len(),
        |row| {
            Ok(DeadCall {
                call: due_call(row, &at)?,
                last_error: row.get("last_error")?,
                dead_at: row.get("updated_at")?,
                subscription: row.get("subscription")?,
            })
        },
    )
}

/// Rows mapped by `map` until their payloads (`bytes` of each) reach `max_bytes`; the
/// first row is always taken. Rows are read one at a time, so a page of large payloads
/// stops at the bound instead of being read whole.
fn up_to_bytes<T>(
    mut rows: rusqlite::Rows<'_>,
    max_bytes: usize,
    bytes: impl Fn(&T) -> usize,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let (mut out, mut total) = (Vec::new(), 0);
    while total < max_bytes {
        let Some(row) = rows.next()? else { break };
        let item = map(row)?;
        total += bytes(&item);
        out.push(item);
    }
    Ok(out)
}

/// Pending calls of `subscription` created after `after_seq`, in creation order: at most
/// `limit`, and no more once their payloads reach `max_bytes` (the first is always taken).
pub(crate) fn pending_after(
    conn: &Connection,
    subscription: &str,
    (after_seq, up_to_seq): (i64, i64),
    limit: usize,
    max_bytes: usize,
) -> rusqlite::Result<Vec<DueCall>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DUE_COLUMNS} FROM calls
         WHERE subscription = ?1 AND status = 'pending' AND seq > ?2 AND seq <= ?4
         ORDER BY seq LIMIT ?3"
    ))?;
    let at = DueIndex::of(&statement)?;
    let rows = statement.query(params![subscription, after_seq, limit as i64, up_to_seq])?;
    up_to_bytes(
        rows,
        max_bytes,
        |call: &DueCall| call.payload.len(),
        |row| due_call(row, &at),
    )
}

/// Those of `seqs` that are pending, in the order given.
pub(crate) fn pending_calls(conn: &Connection, seqs: &[i64]) -> rusqlite::Result<Vec<DueCall>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DUE_COLUMNS} FROM calls WHERE seq = ?1 AND status = 'pending'"
    ))?;
    let at = DueIndex::of(&statement)?;
    let mut calls = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if let Some(call) = statement.query_row([seq], |row| due_call(row, &at)).optional()? {
            calls.push(call);
        }
    }
    Ok(calls)
}

/// The next pending calls of an ordering group in `(after_seq, up_to_seq]`, in order: a
/// seek in the group index.
pub(crate) fn next_in_group(
    conn: &Connection,
    subscription: &str,
    ordering_key: &[u8],
    after_seq: i64,
    up_to_seq: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DueCall>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {DUE_COLUMNS} FROM calls INDEXED BY calls_pending_group
         WHERE subscription = ?1 AND status = 'pending' AND ordering_key = ?2 AND seq > ?3 AND seq <= ?4
         ORDER BY seq LIMIT ?5"
    ))?;
    let at = DueIndex::of(&statement)?;
    let rows: rusqlite::Result<Vec<_>> = statement
        .query_map(
            params![subscription, ordering_key, after_seq, up_to_seq, limit as i64],
            |row| due_call(row, &at),
        )?
        .collect();
    rows
}

/// The ordering keys of `subscription` held by a dead call under `on_dead = block`.
pub(crate) fn blocked_groups(conn: &Connection, subscription: &str) -> rusqlite::Result<Vec<Vec<u8>>> {
    conn.prepare_cached("SELECT ordering_key FROM blocked_groups WHERE subscription = ?1")?
        .query_map([subscription], |r| r.get(0))?
        .collect()
}

/// One call with its attempt history.
pub(crate) fn call_by_id(conn: &Connection, id: &uuid::Uuid) -> rusqlite::Result<Option<CallView>> {
    let found = conn
        .prepare_cached(
            r#"SELECT seq, id, subscription, target, status, attempts, next_attempt_at, last_error,
                      created_at, updated_at, kafka_key, payload, output, headers,
                      topic, partition, "offset", timestamp_ms, attempts_before_redrive, redriven_at,
                      wait, parent_position, deployment,
                      (SELECT p.id FROM calls p WHERE p.seq = calls.parent_seq) AS parent_id
               FROM calls WHERE id = ?1"#,
        )?
        .query_row([id.to_string()], |row| {
            let status: CallStatus = parsed(row, "status")?;
            let seq: i64 = row.get("seq")?;
            Ok((
                seq,
                CallView {
                    id: parsed(row, "id")?,
                    subscription: row.get("subscription")?,
                    target: row.get("target")?,
                    next_attempt_at: (status == CallStatus::Pending)
                        .then(|| row.get("next_attempt_at"))
                        .transpose()?,
                    status,
                    attempts: row.get("attempts")?,
                    last_error: row.get("last_error")?,
                    created_at: row.get("created_at")?,
                    updated_at: row.get("updated_at")?,
                    key: row.get("kafka_key")?,
                    payload: row.get("payload")?,
                    output: row.get("output")?,
                    headers: row.get("headers")?,
                    source: source_from(row)?,
                    attempts_before_redrive: row.get("attempts_before_redrive")?,
                    redriven_at: row.get("redriven_at")?,
                    history: Vec::new(),
                    journal: Vec::new(),
                    deployment: row.get("deployment")?,
                    waiting_for: row
                        .get::<_, Option<String>>("wait")?
                        .filter(|_| status == CallStatus::Pending)
                        .map(|wait| serde_json::from_str(&wait).unwrap_or(serde_json::Value::String(wait))),
                    parent: match row.get::<_, Option<u32>>("parent_position")? {
                        // A purged parent leaves no id to show.
                        Some(position) if row.get::<_, Option<String>>("parent_id")?.is_some() => Some(ParentEntry {
                            id: parsed(row, "parent_id")?,
                            position,
                        }),
                        _ => None,
                    },
                },
            ))
        })
        .optional()?;
    let Some((seq, mut call)) = found else {
        return Ok(None);
    };
    call.history = conn
        .prepare_cached(
            "SELECT attempt, started_at, duration_ms, outcome, http_status, error
             FROM attempts WHERE call_seq = ?1 ORDER BY attempt",
        )?
        .query_map([seq], |r| {
            Ok(AttemptView {
                attempt: r.get("attempt")?,
                started_at: r.get("started_at")?,
                duration_ms: r.get("duration_ms")?,
                outcome: r.get("outcome")?,
                http_status: r.get("http_status")?,
                error: r.get("error")?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    call.journal = journal_entries(conn, seq)?
        .iter()
        .map(|entry| serde_json::from_str(entry).unwrap_or_else(|_| serde_json::Value::String(entry.clone())))
        .collect();
    Ok(Some(call))
}

/// A call's workflow journal, entry by entry (JSON text), in position order.
pub(crate) fn journal_entries(conn: &Connection, seq: i64) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT entry FROM journal WHERE call_seq = ?1 ORDER BY position")?
        .query_map([seq], |r| r.get(0))?
        .collect()
}

/// The deployment a workflow is pinned to, if any.
pub(crate) fn deployment(conn: &Connection, seq: i64) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT deployment FROM calls WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()
        .map(Option::flatten)
}

/// Number of calls in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
    #[serde(default)]
    pub paused: u64,
}

impl std::ops::AddAssign for StatusCounts {
    fn add_assign(&mut self, other: Self) {
        self.pending += other.pending;
        self.running += other.running;
        self.succeeded += other.succeeded;
        self.dead += other.dead;
        self.cancelled += other.cancelled;
        self.paused += other.paused;
    }
}

impl StatusCounts {
    fn add(&mut self, status: CallStatus, n: u64) {
        match status {
            CallStatus::Pending => self.pending += n,
            CallStatus::Running => self.running += n,
            CallStatus::Succeeded => self.succeeded += n,
            CallStatus::Dead => self.dead += n,
            CallStatus::Cancelled => self.cancelled += n,
            CallStatus::Paused => self.paused += n,
        }
    }

    /// Calls not yet in a terminal state.
    pub fn open(&self) -> u64 {
        self.pending + self.running
    }
}

/// The call of `subscription` enqueued with idempotency key `key`, and its status.
pub(crate) fn call_by_idempotency_key(
    conn: &Connection,
    subscription: &str,
    key: &str,
) -> rusqlite::Result<Option<(uuid::Uuid, CallStatus)>> {
    conn.prepare_cached("SELECT id, status FROM calls WHERE subscription = ?1 AND idempotency_key = ?2")?
        .query_row([subscription, key], |row| {
            Ok((parsed(row, "id")?, parsed(row, "status")?))
        })
        .optional()
}

/// Counts by status for each subscription that has calls.
pub(crate) fn counts(conn: &Connection) -> rusqlite::Result<BTreeMap<String, StatusCounts>> {
    let mut out: BTreeMap<String, StatusCounts> = BTreeMap::new();
    let mut stmt = conn.prepare_cached("SELECT subscription, status, n FROM call_counts WHERE n > 0")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (subscription, status, n) = row?;
        if let Ok(status) = status.parse() {
            out.entry(subscription).or_default().add(status, n as u64);
        }
    }
    // `pending` counted pending and running together; running calls (at most those in
    // flight) are counted through the status index.
    let mut running = conn.prepare_cached(
        "SELECT subscription, count(*) FROM calls INDEXED BY calls_status WHERE status = 'running' GROUP BY subscription",
    )?;
    let rows = running.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (subscription, n) = row?;
        let counts = out.entry(subscription).or_default();
        counts.running = n as u64;
        counts.pending = counts.pending.saturating_sub(n as u64);
    }
    Ok(out)
}

/// A filter for listing calls.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    pub subscription: Option<String>,
    pub status: Option<CallStatus>,
    /// The call's key, as bytes.
    pub key: Option<Vec<u8>>,
    /// Created at or after this time.
    pub since: Option<i64>,
    /// Created before this time.
    pub until: Option<i64>,
}

/// One line of a call listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CallSummary {
    pub id: uuid::Uuid,
    pub subscription: String,
    pub status: CallStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Where to continue a listing after this call.
    pub cursor: i64,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
}

/// Calls matching `filter` after the cursor `after` (0 to start), in creation order.
pub(crate) fn list_calls(
    conn: &Connection,
    filter: &CallFilter,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<CallSummary>> {
    conn.prepare_cached(
        "SELECT id, subscription, status, attempts, last_error, created_at, updated_at, seq, kafka_key FROM calls
         WHERE seq > ?1 AND (?2 IS NULL OR subscription = ?2) AND (?3 IS NULL OR status = ?3)
           AND (?4 IS NULL OR kafka_key = ?4) AND (?5 IS NULL OR created_at >= ?5) AND (?6 IS NULL OR created_at < ?6)
         ORDER BY seq LIMIT ?7",
    )?
    .query_map(
        params![
            after,
            filter.subscription,
            filter.status.map(CallStatus::as_str),
            filter.key,
            filter.since,
            filter.until,
            limit as i64
        ],
        |r| {
            Ok(CallSummary {
                id: parsed(r, "id")?,
                subscription: r.get("subscription")?,
                status: parsed(r, "status")?,
                attempts: r.get("attempts")?,
                last_error: r.get("last_error")?,
                created_at: r.get("created_at")?,
                updated_at: r.get("updated_at")?,
                cursor: r.get("seq")?,
                key: r.get("kafka_key")?,
            })
        },
    )?
    .collect()
}

/// Number of calls of one subscription that are not terminal.
pub(crate) fn open_calls(conn: &Connection, subscription: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        // Pending and running share one count (schema v6).
        "SELECT coalesce(sum(n), 0) FROM call_counts WHERE subscription = ?1 AND status = 'pending'",
    )?
    .query_row([subscription], |r| r.get::<_, i64>(0))
    .map(|n| n as u64)
}
