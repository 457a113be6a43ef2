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
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "applied schema migration");
    }
    Ok(())
}
