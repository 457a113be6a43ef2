//! Workflow trees in cluster mode. A workflow's child calls have no Kafka record of their
//! own: they follow the partition of their *root*, the call made from the Kafka record at
//! the top of their tree, inside the root's snapshot.
//!
//! A root carries the descendants that must move: the open ones and those with outbox
//! records not yet published, with every call between them and the root (a parent must be
//! where its child lands: the child's end goes into its journal). A finished child's result
//! is already in its parent's journal, so the other finished ones stay as local history.

use std::collections::{BTreeSet, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::OPEN;

/// The deepest tree walked: a guard against a cycle, which the engine never makes.
const MAX_DEPTH: i64 = 64;

/// The root of call `seq`: the call itself if it was made from a Kafka record, else the
/// Kafka call at the top of its workflow tree. `None` for calls enqueued through the API
/// and their children: they stay on the engine that took them.
pub(super) fn root_of(conn: &Connection, seq: i64) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "WITH RECURSIVE up(seq, parent, topic, depth) AS (
             SELECT seq, parent_seq, topic, 0 FROM calls WHERE seq = ?1
             UNION ALL
             SELECT c.seq, c.parent_seq, c.topic, up.depth + 1 FROM calls c JOIN up ON c.seq = up.parent
             WHERE up.topic IS NULL AND up.depth < ?2)
         SELECT seq FROM up WHERE topic IS NOT NULL",
    )?
    .query_row(params![seq, MAX_DEPTH], |r| r.get(0))
    .optional()
}

/// A descendant that moves with its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Carried {
    pub seq: i64,
    pub id: String,
    pub subscription: String,
    pub status: String,
}

impl Carried {
    /// Pending or running: part of its subscription's backlog.
    pub fn is_backlog(&self) -> bool {
        matches!(self.status.as_str(), "pending" | "running")
    }
}

/// The descendants of `root` that move with it, parents before children.
pub(super) fn carried(conn: &Connection, root: i64) -> rusqlite::Result<Vec<Carried>> {
    // Most calls have no children: one index probe instead of the walk below.
    let has_children = conn
        .prepare_cached("SELECT 1 FROM calls INDEXED BY calls_children WHERE parent_seq = ?1 LIMIT 1")?
        .exists([root])?;
    if !has_children {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, i64, bool, Carried)> = conn
        .prepare_cached(&format!(
            // CROSS JOIN and INDEXED BY fix the plan: SQLite 3.50 chose to scan every call
            // for the outer join, which made each commit take seconds on a large store.
            "WITH RECURSIVE down(seq, depth) AS (
                 SELECT seq, 1 FROM calls INDEXED BY calls_children WHERE parent_seq = ?1
                 UNION ALL
                 SELECT c.seq, down.depth + 1 FROM down CROSS JOIN calls c INDEXED BY calls_children
                 WHERE c.parent_seq = down.seq AND down.depth < ?2)
             SELECT c.seq, c.parent_seq, c.id, c.subscription, c.status,
                    c.status IN {OPEN}
                    OR EXISTS (SELECT 1 FROM outbox o WHERE o.call_seq = c.seq AND o.published_at IS NULL)
             FROM down CROSS JOIN calls c ON c.seq = down.seq
             ORDER BY down.depth, c.seq"
        ))?
        .query_map(params![root, MAX_DEPTH], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(5)?,
                Carried {
                    seq: r.get(0)?,
                    id: r.get(2)?,
                    subscription: r.get(3)?,
                    status: r.get(4)?,
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    // Deepest first: a call that moves takes its parent along.
    let mut moving: HashSet<i64> = rows.iter().filter(|row| row.2).map(|row| row.0).collect();
    for (seq, parent, _, _) in rows.iter().rev() {
        if moving.contains(seq) {
            moving.insert(*parent);
        }
    }
    Ok(rows
        .into_iter()
        .filter(|row| moving.contains(&row.0))
        .map(|row| row.3)
        .collect())
}

/// The calls of `subscription` from `partitions` (every partition if `None`) with
/// descendants to move: found from the open child calls and those with unpublished outbox
/// records (few; both through partial indexes), not from a walk of every root.
pub(super) fn roots_moving_descendants(
    conn: &Connection,
    subscription: &str,
    partitions: Option<&[(String, i32)]>,
) -> rusqlite::Result<BTreeSet<i64>> {
    let seqs: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT seq FROM calls INDEXED BY calls_open_children
             WHERE parent_seq IS NOT NULL AND status IN {OPEN}
             UNION
             SELECT o.call_seq FROM outbox o JOIN calls c ON c.seq = o.call_seq
             WHERE o.published_at IS NULL AND c.parent_seq IS NOT NULL"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut roots = BTreeSet::new();
    for seq in seqs {
        let Some(root) = root_of(conn, seq)? else { continue };
        let (root_subscription, topic, partition): (String, String, i32) = conn
            .prepare_cached("SELECT subscription, topic, partition FROM calls WHERE seq = ?1")?
            .query_row([root], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let ours = root_subscription == subscription
            && partitions.is_none_or(|list| list.iter().any(|(t, p)| *t == topic && *p == partition));
        if ours {
            roots.insert(root);
        }
    }
    Ok(roots)
}
