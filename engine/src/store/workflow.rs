//! The writer's side of workflows: storing a suspension (entries, children, outbox, wait)
//! fenced by the journal's length, recording a child's end and a signal into the waiting
//! workflow's journal, and waking a workflow whose wait is over.
//!
//! Every function runs inside the writer's transaction; wakes are sent to the schedulers
//! only after it commits.

use rusqlite::{params, OptionalExtension, Transaction};
use sdk::workflow::{Entry, Wait};
use serde_json::Value;

use crate::model::Millis;
use crate::workflow::{Suspended, NEVER};

/// A workflow whose wait is over (or ends sooner than its scheduler knows): the scheduler
/// of `subscription` makes call `seq` due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wake {
    pub subscription: String,
    pub seq: i64,
}

/// How a child call ended, for its parent's journal.
pub(crate) enum ChildEnd<'a> {
    Succeeded(Option<&'a [u8]>),
    Failed(&'a str),
}

/// Store a workflow's suspension, fenced: only if the journal still has `from` entries (a
/// late or duplicate answer changes nothing). Creates the children and the outbox rows in
/// the same transaction, and wakes the call at once if its wait is already over. Returns
/// the highest child seq created.
pub(crate) fn append(
    tx: &Transaction<'_>,
    seq: i64,
    attempt: u32,
    suspended: &Suspended,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<Option<i64>> {
    let len = u32::try_from(suspended.entries.len()).unwrap_or(u32::MAX);
    let resume_at = suspended.resume_at.unwrap_or(NEVER);
    let fenced = tx
        .prepare_cached(
            "UPDATE calls SET status = 'pending', next_attempt_at = ?3, last_error = NULL,
                    attempts = max(attempts, ?4), attempts_before_redrive = max(attempts, ?4),
                    redriven_at = ?5, journal_len = journal_len + ?6, updated_at = ?5, wait = ?7,
                    deployment = coalesce(deployment, ?8)
             WHERE seq = ?1 AND journal_len = ?2 AND status IN ('running', 'pending')",
        )?
        .execute(params![
            seq,
            suspended.from,
            resume_at,
            attempt,
            now,
            len,
            suspended.wait,
            suspended.deployment
        ])?;
    if fenced == 0 {
        tracing::warn!(
            call = seq,
            from = suspended.from,
            "dropped a workflow answer that does not follow the stored journal (late or duplicate)"
        );
        return Ok(None);
    }
    let mut insert = tx.prepare_cached("INSERT INTO journal (call_seq, position, entry) VALUES (?1, ?2, ?3)")?;
    for (position, entry) in (suspended.from..).zip(&suspended.entries) {
        insert.execute(params![seq, position, entry])?;
    }
    let mut max_child = None;
    for (child, call) in suspended.children.iter().zip(&suspended.calls) {
        let child_seq: i64 = tx
            .prepare_cached(
                "INSERT INTO calls (id, subscription, target, ordering_key, payload, kafka_key, status,
                     attempts, next_attempt_at, created_at, updated_at, parent_seq, parent_position, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7, ?7, ?8, ?9,
                         (SELECT max(f.n, coalesce((SELECT max(seq) FROM main.calls), 0)) + 1 FROM temp.seq_floor f))
                 RETURNING seq",
            )?
            .query_row(
                params![
                    child.id.to_string(),
                    call.subscription,
                    call.target,
                    call.ordering_key,
                    call.payload,
                    call.key,
                    now,
                    seq,
                    child.position
                ],
                |r| r.get(0),
            )?;
        max_child = Some(max_child.map_or(child_seq, |m: i64| m.max(child_seq)));
    }
    for record in &suspended.outbox {
        tx.prepare_cached(
            "INSERT INTO outbox (subscription, call_seq, position, topic, key, value)
             SELECT subscription, seq, ?2, ?3, ?4, ?5 FROM calls WHERE seq = ?1",
        )?
        .execute(params![seq, record.position, record.topic, record.key, record.value])?;
    }
    settle(tx, seq, Some(resume_at), now, wakes)?;
    Ok(max_child)
}

/// The workflow (seq) and entry position of a child call; `None` for other calls.
pub(crate) fn parent_of(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<Option<(i64, u32)>> {
    let parent: Option<(Option<i64>, Option<u32>)> = tx
        .prepare_cached("SELECT parent_seq, parent_position FROM calls WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match parent {
        Some((Some(parent), Some(position))) => Some((parent, position)),
        _ => None,
    })
}

/// A child call ended for good: record its end in the parent's entry at `position` (once,
/// and only if that entry is still this child's: a restarted parent has new ones) and wake
/// the parent if that ends its wait.
pub(crate) fn child_ended(
    tx: &Transaction<'_>,
    (parent, position): (i64, u32),
    child_id: &str,
    end: &ChildEnd<'_>,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<()> {
    let Some(Entry::Call {
        target,
        input,
        key,
        id,
        at: None,
        ..
    }) = entry_at(tx, parent, position)?
    else {
        return Ok(());
    };
    if id.as_deref() != Some(child_id) {
        return Ok(());
    }
    let (ok, error) = match end {
        ChildEnd::Succeeded(output) => (Some(output_value(output.unwrap_or_default())), None),
        ChildEnd::Failed(reason) => (None, Some((*reason).to_string())),
    };
    let ended = Entry::Call {
        target,
        input,
        key,
        id,
        ok,
        error,
        at: Some(now),
    };
    put_entry(tx, parent, position, &ended)?;
    settle(tx, parent, None, now, wakes)
}

/// A child's output as its parent's journal holds it: JSON if it is, else a string.
fn output_value(output: &[u8]) -> Value {
    serde_json::from_slice(output).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(output).into_owned()))
}

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// Kept for the workflow (in its inbox, or already in its journal).
    Kept,
    /// No call has this id.
    NoCall,
    /// The call has ended; nothing will read the signal.
    Ended,
}

/// Keep a signal for call `id` and, if the call waits for it, end that wait.
pub(crate) fn signal(
    tx: &Transaction<'_>,
    id: &str,
    name: &str,
    payload: &str,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<Signalled> {
    let call: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, status FROM calls WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((seq, status)) = call else {
        return Ok(Signalled::NoCall);
    };
    if matches!(status.as_str(), "succeeded" | "dead" | "cancelled") {
        return Ok(Signalled::Ended);
    }
    tx.prepare_cached("INSERT INTO signals (call_seq, name, payload, received_at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![seq, name, payload, now])?;
    settle(tx, seq, None, now, wakes)?;
    Ok(Signalled::Kept)
}

/// Bring a waiting workflow up to date: hand it the signals its wait asks for (from the
/// inbox, oldest first, while the wait is not over), then, if its wait is over or ends
/// sooner than `known` (the time its scheduler has), make it due and wake it.
fn settle(
    tx: &Transaction<'_>,
    seq: i64,
    known: Option<Millis>,
    now: Millis,
    wakes: &mut Vec<Wake>,
) -> rusqlite::Result<()> {
    let row: Option<(String, String, Option<String>, Millis)> = tx
        .prepare_cached("SELECT subscription, status, wait, next_attempt_at FROM calls WHERE seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((subscription, status, Some(wait), next_attempt_at)) = row else {
        return Ok(());
    };
    if status != "pending" && status != "running" {
        return Ok(());
    }
    let Ok(wait) = serde_json::from_str::<Wait>(&wait) else {
        return Ok(());
    };
    let positions = wait.positions();
    let mut entries: Vec<(u32, Entry)> = Vec::with_capacity(positions.len());
    for position in positions {
        if let Some(entry) = entry_at(tx, seq, position)? {
            entries.push((position, entry));
        }
    }
    let ends_at =
        |entries: &[(u32, Entry)]| wait.ends_at(|p| entries.iter().find(|(q, _)| *q == p).map(|(_, e)| e), now);
    if ends_at(&entries).is_none_or(|at| at > now) {
        for i in 0..entries.len() {
            let (position, Entry::Signal { name, at: None, .. }) = &entries[i] else {
                continue;
            };
            let (position, name) = (*position, name.clone());
            let inbox: Option<(i64, String)> = tx
                .prepare_cached(
                    "SELECT seq, payload FROM signals WHERE call_seq = ?1 AND name = ?2 AND position IS NULL
                     ORDER BY seq LIMIT 1",
                )?
                .query_row(params![seq, name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((signal_seq, payload)) = inbox else {
                continue;
            };
            let payload = serde_json::from_str(&payload).unwrap_or(Value::Null);
            let bound = Entry::Signal {
                name,
                ok: Some(payload),
                at: Some(now),
            };
            put_entry(tx, seq, position, &bound)?;
            tx.prepare_cached("UPDATE signals SET position = ?2 WHERE seq = ?1")?
                .execute(params![signal_seq, position])?;
            entries[i].1 = bound;
            if ends_at(&entries).is_some_and(|at| at <= now) {
                break;
            }
        }
    }
    let due = ends_at(&entries).map_or(NEVER, |at| at.max(now));
    let known = known.unwrap_or(next_attempt_at);
    if due < known && status == "pending" {
        tx.prepare_cached("UPDATE calls SET next_attempt_at = ?2 WHERE seq = ?1")?
            .execute(params![seq, due])?;
        wakes.push(Wake { subscription, seq });
    }
    Ok(())
}

fn entry_at(tx: &Transaction<'_>, seq: i64, position: u32) -> rusqlite::Result<Option<Entry>> {
    let json: Option<String> = tx
        .prepare_cached("SELECT entry FROM journal WHERE call_seq = ?1 AND position = ?2")?
        .query_row(params![seq, position], |r| r.get(0))
        .optional()?;
    Ok(json.and_then(|json| serde_json::from_str(&json).ok()))
}

fn put_entry(tx: &Transaction<'_>, seq: i64, position: u32, entry: &Entry) -> rusqlite::Result<()> {
    let json = serde_json::to_string(entry).unwrap_or_default();
    tx.prepare_cached("UPDATE journal SET entry = ?3 WHERE call_seq = ?1 AND position = ?2")?
        .execute(params![seq, position, json])?;
    Ok(())
}

/// Make an ended workflow pending again with the first `from` entries of its journal:
/// later entries, the records they produced (published or not: they are produced again) and
/// their children's links go; signals they consumed go back to the inbox. `false` if the
/// journal is shorter than `from`.
pub(crate) fn restart(tx: &Transaction<'_>, seq: i64, from: u32, now: Millis) -> rusqlite::Result<bool> {
    let restarted = tx
        .prepare_cached(
            "UPDATE calls SET status = 'pending', next_attempt_at = ?3, updated_at = ?3, last_error = NULL,
                 output = NULL, wait = NULL, journal_len = ?2, attempts_before_redrive = attempts, deployment = NULL,
                 redriven_at = ?3, dead_letter_published_at = NULL
             WHERE seq = ?1 AND journal_len >= ?2",
        )?
        .execute(params![seq, from, now])?;
    if restarted == 0 {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM journal WHERE call_seq = ?1 AND position >= ?2")?
        .execute(params![seq, from])?;
    tx.prepare_cached("UPDATE signals SET position = NULL WHERE call_seq = ?1 AND position >= ?2")?
        .execute(params![seq, from])?;
    // Position -1, the call's output (`output_topic`), stays: once per call.
    tx.prepare_cached("DELETE FROM outbox WHERE call_seq = ?1 AND position >= ?2")?
        .execute(params![seq, from])?;
    Ok(true)
}

/// The children of `seq` still open, to cancel with it.
pub(crate) fn open_children(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<Vec<String>> {
    tx.prepare_cached(
        "SELECT id FROM calls WHERE parent_seq = ?1 AND status IN ('pending', 'running', 'dead', 'paused')",
    )?
    .query_map([seq], |r| r.get(0))?
    .collect()
}
