//! Versioned schema migrations, tracked in SQLite's `user_version`.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only: never edit a
/// migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: calls and their attempts.
    r#"
    CREATE TABLE calls (
        seq             INTEGER PRIMARY KEY,   -- creation order; offset order within a partition
        id              TEXT    NOT NULL,      -- UUID v7, stable across attempts
        subscription    TEXT    NOT NULL,
        target          TEXT    NOT NULL,
        ordering_key    BLOB,                  -- NULL: no ordering constraint
        payload         BLOB    NOT NULL,
        tombstone       INTEGER NOT NULL DEFAULT 0,  -- the record value was null
        kafka_key       BLOB,
        headers         TEXT,                  -- protocol text encoding of the record headers
        topic           TEXT,
        partition       INTEGER,
        "offset"        INTEGER,
        timestamp_ms    INTEGER,
        status          TEXT    NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error      TEXT,
        output          BLOB,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX calls_id ON calls (id);
    -- One call per record: NULLs are distinct, so direct calls (no offset) never collide.
    CREATE UNIQUE INDEX calls_source ON calls (subscription, topic, partition, "offset");
    CREATE INDEX calls_pending ON calls (subscription, seq) WHERE status = 'pending';
    CREATE INDEX calls_status ON calls (status, updated_at);

    -- Ordering groups held back by a dead call under `on_dead = block`. A table of its own,
    -- not an index on calls: an index on (subscription, ordering_key) costs every insert a
    -- random b-tree write, and only blocked groups need the lookup.
    CREATE TABLE blocked_groups (
        subscription TEXT    NOT NULL,
        ordering_key BLOB    NOT NULL,
        dead_seq     INTEGER NOT NULL,
        PRIMARY KEY (subscription, ordering_key)
    ) WITHOUT ROWID;

    CREATE TABLE attempts (
        call_seq    INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        outcome     TEXT    NOT NULL,
        http_status INTEGER,
        error       TEXT,
        PRIMARY KEY (call_seq, attempt)
    ) WITHOUT ROWID;
    "#,
    // 2: redrive restarts the attempt budget and the age of a call.
    "
    ALTER TABLE calls ADD COLUMN attempts_before_redrive INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN redriven_at INTEGER;
    ",
    // 3: dead calls produced to a dead-letter topic.
    "
    ALTER TABLE calls ADD COLUMN dead_letter_published_at INTEGER;
    CREATE INDEX calls_dead_unpublished ON calls (subscription, seq)
        WHERE status = 'dead' AND dead_letter_published_at IS NULL;
    ",
    // 4: a group's next pending calls by a seek, not a walk of every pending call in
    // between (the walk was most of the engine's CPU with a keyed backlog of many keys).
    "
    CREATE INDEX calls_pending_group ON calls (subscription, ordering_key, seq)
        WHERE status = 'pending' AND ordering_key IS NOT NULL;
    ",
    // 5: offsets can be reused (a recreated topic, another cluster behind the same name, a
    // fresh dev broker): a record whose bytes differ from the one stored at its offset is a
    // new call of the next generation of that offset, never a duplicate.
    r#"
    ALTER TABLE calls ADD COLUMN source_generation INTEGER NOT NULL DEFAULT 0;
    DROP INDEX calls_source;
    CREATE UNIQUE INDEX calls_source ON calls (subscription, topic, partition, "offset", source_generation);
    "#,
    // 6: counts by subscription and status kept as calls change, so stats read a handful of
    // rows instead of counting millions. Pending and running share one count (`pending`):
    // the two moves of every attempt fire no trigger, and running calls, a few, are counted
    // through the status index when asked.
    "
    CREATE TABLE call_counts (
        subscription TEXT    NOT NULL,
        status       TEXT    NOT NULL,
        n            INTEGER NOT NULL,
        PRIMARY KEY (subscription, status)
    ) WITHOUT ROWID;
    INSERT INTO call_counts (subscription, status, n)
        SELECT subscription, iif(status = 'running', 'pending', status), count(*) FROM calls GROUP BY 1, 2;
    CREATE TRIGGER calls_counted_on_insert AFTER INSERT ON calls BEGIN
        INSERT INTO call_counts (subscription, status, n)
            VALUES (new.subscription, iif(new.status = 'running', 'pending', new.status), 1)
            ON CONFLICT (subscription, status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER calls_counted_on_delete AFTER DELETE ON calls BEGIN
        UPDATE call_counts SET n = n - 1
            WHERE subscription = old.subscription AND status = iif(old.status = 'running', 'pending', old.status);
    END;
    CREATE TRIGGER calls_counted_on_update AFTER UPDATE OF status ON calls
        WHEN iif(old.status = 'running', 'pending', old.status) IS NOT iif(new.status = 'running', 'pending', new.status)
    BEGIN
        UPDATE call_counts SET n = n - 1
            WHERE subscription = old.subscription AND status = iif(old.status = 'running', 'pending', old.status);
        INSERT INTO call_counts (subscription, status, n)
            VALUES (new.subscription, iif(new.status = 'running', 'pending', new.status), 1)
            ON CONFLICT (subscription, status) DO UPDATE SET n = n + 1;
    END;
    ",
    // 7: a client's idempotency key on calls enqueued through the API.
    "
    ALTER TABLE calls ADD COLUMN idempotency_key TEXT;
    CREATE UNIQUE INDEX calls_idempotency ON calls (subscription, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    ",
    // 8: workflow journals, one row per entry; `journal_len` on the call fences appends.
    "
    ALTER TABLE calls ADD COLUMN journal_len INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE journal (
        call_seq INTEGER NOT NULL,
        position INTEGER NOT NULL,
        entry    TEXT    NOT NULL,   -- JSON, as in docs/protocol.md
        PRIMARY KEY (call_seq, position)
    ) WITHOUT ROWID;
    ",
    // 9: child calls, signals, and records workflows produce (protocol 5).
    "
    ALTER TABLE calls ADD COLUMN parent_seq INTEGER;       -- a child call's workflow
    ALTER TABLE calls ADD COLUMN parent_position INTEGER;  -- and its entry there
    ALTER TABLE calls ADD COLUMN wait TEXT;                -- what a suspended workflow waits for (JSON)
    CREATE INDEX calls_children ON calls (parent_seq) WHERE parent_seq IS NOT NULL;
    CREATE TABLE signals (
        seq         INTEGER PRIMARY KEY,
        call_seq    INTEGER NOT NULL,
        name        TEXT    NOT NULL,
        payload     TEXT    NOT NULL,   -- JSON
        received_at INTEGER NOT NULL,
        position    INTEGER             -- the journal entry it ended; NULL while in the inbox
    );
    CREATE INDEX signals_inbox ON signals (call_seq, name, seq) WHERE position IS NULL;
    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY,
        subscription TEXT    NOT NULL,
        call_seq     INTEGER NOT NULL,
        position     INTEGER NOT NULL,
        topic        TEXT    NOT NULL,
        key          BLOB,
        value        BLOB    NOT NULL,
        attempted_at INTEGER,           -- first handed to the producer
        published_at INTEGER,           -- acknowledged by the broker (or found there)
        UNIQUE (call_seq, position)
    );
    CREATE INDEX outbox_unpublished ON outbox (subscription, seq) WHERE published_at IS NULL;
    ",
    // 10: the deployment a workflow is pinned to (protocol 7).
    "
    ALTER TABLE calls ADD COLUMN deployment TEXT;
    ",
    // 11: open child calls found without a walk of every open call (cluster mode moves
    // them with their workflow's partition).
    "
    CREATE INDEX calls_open_children ON calls (parent_seq)
        WHERE parent_seq IS NOT NULL AND status IN ('pending', 'running', 'dead', 'paused');
    ",
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Bring the database to [`LATEST`], refusing a database written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > LATEST {
        return Err(StoreError::NewerSchema {
            found: current,
            supported: LATEST,
        });
    }
    reclaim_free_pages(conn, current == 0)?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "applied schema migration");
    }
    Ok(())
}

/// Pages freed by deleting calls are given back to the file system (`PRAGMA
/// incremental_vacuum`, after each purge chunk), so the file shrinks after a purge. That
/// needs `auto_vacuum = INCREMENTAL`; a database made by an older version is rewritten once
/// (`VACUUM`), which takes a while on a large file.
fn reclaim_free_pages(conn: &mut Connection, new: bool) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    conn.pragma_update(None, "auto_vacuum", INCREMENTAL)?;
    if !new {
        tracing::info!("rewriting the database once so that purged space is given back (VACUUM); this takes a while on a large file");
    }
    // Takes effect only through VACUUM once the file has a header (WAL mode writes one);
    // on a new, empty database that is instant.
    conn.execute_batch("VACUUM")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(conn: &Connection, subscription: &str, status: &str) {
        conn.execute(
            "INSERT INTO calls (id, subscription, target, payload, status, next_attempt_at, created_at, updated_at)
             VALUES (lower(hex(randomblob(16))), ?1, 't', x'', ?2, 0, 0, 0)",
            [subscription, status],
        )
        .unwrap();
    }

    fn counts(conn: &Connection) -> Vec<(String, String, i64)> {
        conn.prepare("SELECT subscription, status, n FROM call_counts WHERE n > 0 ORDER BY 1, 2")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn a_version_5_database_gets_its_counts_and_gives_back_freed_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("old.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        for (version, sql) in MIGRATIONS.iter().enumerate().take(5) {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", version as i64 + 1).unwrap();
        }
        for status in ["pending", "pending", "succeeded", "dead"] {
            insert(&conn, "a", status);
        }
        insert(&conn, "b", "running");
        let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).unwrap();
        assert_eq!(mode, 0, "an old database has no incremental vacuum");

        migrate(&mut conn).unwrap();
        let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0)).unwrap();
        assert_eq!(mode, 2, "rewritten with incremental vacuum");
        let row = |s: &str, st: &str, n| (s.to_string(), st.to_string(), n);
        assert_eq!(
            counts(&conn),
            [
                row("a", "dead", 1),
                row("a", "pending", 2),
                row("a", "succeeded", 1),
                row("b", "pending", 1)
            ]
        );

        let stats = crate::store::read::counts(&conn).unwrap();
        assert_eq!(
            (stats["b"].pending, stats["b"].running),
            (0, 1),
            "running calls are told apart from pending ones when read"
        );

        // The triggers keep the counts as calls are created, change status and go.
        insert(&conn, "b", "pending");
        conn.execute(
            "UPDATE calls SET status = 'succeeded' WHERE subscription = 'b' AND status = 'running'",
            [],
        )
        .unwrap();
        conn.execute("UPDATE calls SET attempts = 3 WHERE subscription = 'a'", [])
            .unwrap();
        conn.execute("DELETE FROM calls WHERE status = 'dead'", []).unwrap();
        assert_eq!(
            counts(&conn),
            [
                row("a", "pending", 2),
                row("a", "succeeded", 1),
                row("b", "pending", 1),
                row("b", "succeeded", 1)
            ]
        );
    }
}
