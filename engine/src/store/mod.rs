//! The durable call store: one SQLite file, one writer thread with group commit, and a small
//! pool of read connections.
//!
//! - [`schema`]: versioned migrations.
//! - `writer`: the group-commit thread; every change goes through it.
//! - `read`: the queries the scheduler and the admin API run.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a transaction is on disk when its
//! commit returns. See `docs/durability.md`.

pub mod changelog;
mod outbox;
mod read;
pub mod schema;
mod workflow;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use tokio::sync::{oneshot, watch};

pub use changelog::{CallSnapshot, Change};
pub use outbox::Unpublished;
pub use read::{CallFilter, CallSummary, DeadCall, StatusCounts};
pub use workflow::{Signalled, Wake};
use writer::Command;
pub use writer::{Committed, Purged, WriterOptions, WriterStats};

use crate::model::{
    now_millis, Affected, AttemptRecord, CallStatus, CallView, DueCall, Inserted, Millis, NewCall, Operation,
    Transition,
};
use std::collections::BTreeMap;

/// Everything that can go wrong with the store, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} is read-only: the engine needs to write to it and to its directory (for the -wal and -shm files)")]
    ReadOnly { path: PathBuf },
    #[error("database {path} is in use by another engine process (it holds the lock on {lock}); stop that process or use another database file")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("database schema version {found} is newer than this engine supports ({supported}); upgrade the engine")]
    NewerSchema { found: i64, supported: i64 },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store write failed: {0}")]
    Write(String),
    #[error("the store is shut down")]
    Closed,
}

/// What [`Store::follow_targets`] did for one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retargeted {
    pub subscription: String,
    /// Calls not started as workflows, now sent to the current target.
    pub moved: usize,
    /// Open workflows pinned to another target (the deployment they started on), by target.
    pub pinned: Vec<(String, u64)>,
}

/// Options for [`Store::open`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    pub writer: WriterOptions,
    /// Cluster mode: note every change of a Kafka record's call for the changelog (see
    /// [`Store::take_changes`]).
    pub changelog: bool,
}

/// A cheap, cloneable handle to the store.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: Mutex<Option<Sender<Command>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    committed_seq: watch::Receiver<i64>,
    stats: Arc<WriterStats>,
    /// Workflows to wake, from the writer; taken once by the engine.
    wakes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Wake>>>,
    /// What each commit changed, in cluster mode; taken once by the changelog publisher.
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Committed>>>,
    /// Held for the life of the store: a second engine on the same file refuses to start.
    _lock: File,
}

impl Store {
    /// Open (or create) the database, migrate it, and recover calls left `running` by a
    /// previous process.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock = lock_file(&path)?;
        let mut conn = open_connection(&path, false)?;
        schema::migrate(&mut conn).map_err(|e| classify_open_error(&path, e))?;
        let recovered = recover_interrupted(&mut conn).map_err(|e| classify_open_error(&path, e.into()))?;
        if recovered > 0 {
            tracing::warn!(
                calls = recovered,
                "rescheduled calls that were running when the engine stopped"
            );
        }
        let max_seq: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM calls", [], |r| r.get(0))?;
        let (seq_tx, seq_rx) = watch::channel(max_seq);
        let (tx, rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(WriterStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer_options = options.writer;
        let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let changes_tx = options.changelog.then_some(changes_tx);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer::run(
                    conn,
                    &rx,
                    writer_options,
                    &seq_tx,
                    &writer_stats,
                    &wake_tx,
                    changes_tx.as_ref(),
                );
            })
            .map_err(|e| StoreError::Write(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(thread)),
                readers: Mutex::new(Vec::new()),
                committed_seq: seq_rx,
                stats,
                wakes: Mutex::new(Some(wake_rx)),
                changes: Mutex::new(options.changelog.then_some(changes_rx)),
                _lock: lock,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Point calls of each `(subscription, target)` that have not started a workflow at
    /// the subscription's current target, and count the workflows that stay pinned to the
    /// target they started on. Run at start, before any subscription.
    pub async fn follow_targets(&self, targets: Vec<(String, String)>) -> Result<Vec<Retargeted>, StoreError> {
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = open_connection(&path, false)?;
            let tx = conn.transaction()?;
            let mut report = Vec::new();
            for (subscription, target) in targets {
                let moved = tx.execute(
                    "UPDATE calls SET target = ?2
                     WHERE subscription = ?1 AND status IN ('pending', 'running', 'dead', 'paused')
                       AND journal_len = 0 AND target <> ?2",
                    params![subscription, target],
                )?;
                let pinned: Vec<(String, u64)> = tx
                    .prepare(
                        "SELECT target, count(*) FROM calls
                         WHERE subscription = ?1 AND status IN ('pending', 'running', 'dead', 'paused')
                           AND journal_len > 0 AND target <> ?2
                         GROUP BY target ORDER BY target",
                    )?
                    .query_map(params![subscription, target], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                report.push(Retargeted {
                    subscription,
                    moved,
                    pinned,
                });
            }
            tx.commit()?;
            Ok(report)
        })
        .await
        .map_err(|e| StoreError::Write(format!("retarget task failed: {e}")))?
    }

    /// Group-commit figures.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    /// The highest call sequence number known to be durable. Changes when calls are created.
    pub fn committed_seq(&self) -> watch::Receiver<i64> {
        self.inner.committed_seq.clone()
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        let writer = self.inner.writer.lock().expect("writer lock");
        writer
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(command)
            .map_err(|_| StoreError::Closed)
    }

    /// Create calls; returns once they are durable. A call whose (subscription, topic,
    /// partition, offset) is already stored is reported as [`Inserted::Duplicate`].
    pub async fn insert(&self, calls: Vec<NewCall>) -> Result<Vec<Inserted>, StoreError> {
        self.insert_queued(calls)?.await
    }

    /// Queue calls for creation now, and return a future that resolves once they are
    /// durable. Calls queued earlier get lower sequence numbers, so a caller that must keep
    /// batches in order queues them in order and may await them in any order.
    pub fn insert_queued(
        &self,
        calls: Vec<NewCall>,
    ) -> Result<impl std::future::Future<Output = Result<Vec<Inserted>, StoreError>> + Send + use<>, StoreError> {
        let (reply, wait) = oneshot::channel();
        if calls.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
        } else {
            self.send(Command::Insert { calls, reply })?;
        }
        Ok(async move { wait.await.map_err(|_| StoreError::Closed)? })
    }

    /// Record that an attempt started. Not awaited (see `docs/durability.md`).
    pub fn start_attempt(&self, seq: i64, attempt: u32, at: Millis) -> Result<(), StoreError> {
        self.send(Command::Start { seq, attempt, at })
    }

    /// Record an attempt's outcome and the call's next state. Not awaited. With
    /// `block_group`, a dead call also blocks its ordering group until an operator acts;
    /// with `output_topic`, a success's output goes to the outbox in the same transaction.
    pub fn finish_attempt(
        &self,
        seq: i64,
        attempt: AttemptRecord,
        transition: Transition,
        block_group: bool,
        output_topic: Option<Arc<str>>,
    ) -> Result<(), StoreError> {
        self.send(Command::Finish {
            seq,
            attempt,
            transition,
            block_group,
            output_topic,
        })
    }

    /// One purge chunk, a few milliseconds of one commit: delete up to `limit` succeeded and
    /// cancelled calls last changed before `before`, or, once none is left, give free pages
    /// back to the file system. Call again while it says there is more to do.
    pub async fn purge(&self, before: Millis, limit: usize) -> Result<Purged, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Purge { before, limit, reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Apply an operator's action once it is durable; returns the calls it changed.
    pub async fn operate(&self, operation: Operation) -> Result<Vec<Affected>, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Operate { operation, reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Record that these dead calls are on their dead-letter topic.
    pub async fn dead_lettered(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::DeadLettered { seqs, reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Dead calls of `subscription` not yet on its dead-letter topic, oldest first.
    pub async fn dead_unpublished(
        &self,
        subscription: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<DeadCall>, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| read::dead_unpublished(c, &subscription, limit, max_bytes))
            .await
    }

    /// Wait until every change sent so far is durable. Returns the clock of the commit
    /// that made them so; any later commit records a later time.
    pub async fn flush(&self) -> Result<Millis, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Barrier { reply })?;
        wait.await.map_err(|_| StoreError::Closed)
    }

    /// Wait until every change sent so far is durable; returns the clock of the commit that
    /// made them so, exactly as [`Committed::clock`] gives it to the changelog publisher.
    pub async fn commit_clock(&self) -> Result<Millis, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Committed { reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// The workflows to wake as their waits end (child calls ending, signals). Taken once,
    /// by whoever routes them to the schedulers.
    pub fn take_wakes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Wake>> {
        self.inner.wakes.lock().expect("wakes lock").take()
    }

    /// What each commit changed (cluster mode only), in commit order. Taken once, by the
    /// changelog publisher.
    pub fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Committed>> {
        self.inner.changes.lock().expect("changes lock").take()
    }

    /// Remove the open calls of `subscription` that came from `partitions` (every partition
    /// if `None`), which left this engine, without tombstones.
    pub async fn release(
        &self,
        subscription: &str,
        partitions: Option<Vec<(String, i32)>>,
    ) -> Result<changelog::Released, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Release {
            subscription: subscription.to_string(),
            partitions,
            reply,
        })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether workflow child calls would move with the calls of `subscription` from
    /// `partitions` (cluster mode: their schedulers must be still while they do).
    pub async fn has_descendants_to_move(
        &self,
        subscription: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<bool, StoreError> {
        let subscription = subscription.to_string();
        self.read(move |conn| changelog::has_descendants_to_move(conn, &subscription, &partitions))
            .await
    }

    /// Insert calls restored from the changelog, replacing local copies.
    pub async fn restore(&self, calls: Vec<CallSnapshot>) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Restore { calls, reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Send signal `name` with `payload` (JSON) to the workflow call `id`: it ends the
    /// workflow's wait for it, or waits in the call's inbox until the workflow asks.
    pub async fn signal(&self, id: uuid::Uuid, name: &str, payload: String) -> Result<Signalled, StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Signal {
            call_id: id.to_string(),
            name: name.to_string(),
            payload,
            reply,
        })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Outbox records of `subscription` not yet published, oldest first.
    pub async fn outbox_unpublished(&self, subscription: &str, limit: usize) -> Result<Vec<Unpublished>, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| outbox::unpublished(c, &subscription, limit)).await
    }

    /// Mark outbox records handed to the producer (`published: false`) or acknowledged.
    pub async fn outbox_mark(&self, seqs: Vec<i64>, published: bool) -> Result<(), StoreError> {
        let (reply, wait) = oneshot::channel();
        self.send(Command::Outbox { seqs, published, reply })?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Stop the writer after it has made every queued change durable.
    pub fn close(&self) {
        self.inner.writer.lock().expect("writer lock").take();
        if let Some(thread) = self.inner.writer_thread.lock().expect("thread lock").take() {
            if thread.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }

    /// Run a read-only query on a pooled connection, off the async runtime.
    pub async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().expect("readers lock").pop() {
                Some(conn) => conn,
                None => open_connection(&inner.path, true)?,
            };
            let result = query(&conn);
            inner.readers.lock().expect("readers lock").push(conn);
            Ok(result?)
        })
        .await
        .map_err(|e| StoreError::Write(format!("read task failed: {e}")))?
    }
}

/// Queries.
impl Store {
    /// Pending calls of `subscription` created after `after_seq`, in creation order.
    pub async fn pending_after(
        &self,
        subscription: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<DueCall>, StoreError> {
        self.pending_page(subscription, after_seq, limit, usize::MAX).await
    }

    /// These calls, those of them still pending.
    pub async fn pending_calls(&self, seqs: Vec<i64>) -> Result<Vec<DueCall>, StoreError> {
        self.read(move |c| read::pending_calls(c, &seqs)).await
    }

    /// Like [`Store::pending_after`], stopping once the payloads reach `max_bytes` (the
    /// first call is always returned).
    pub async fn pending_page(
        &self,
        subscription: &str,
        after_seq: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<DueCall>, StoreError> {
        self.pending_between(subscription, (after_seq, i64::MAX), limit, max_bytes)
            .await
    }

    /// Like [`Store::pending_page`], only calls with `seq` in `(after, up_to]`.
    pub async fn pending_between(
        &self,
        subscription: &str,
        (after_seq, up_to_seq): (i64, i64),
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<DueCall>, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| read::pending_after(c, &subscription, (after_seq, up_to_seq), limit, max_bytes))
            .await
    }

    /// The next pending calls of an ordering group in `(after_seq, up_to_seq]`.
    pub async fn next_in_group(
        &self,
        subscription: &str,
        ordering_key: Vec<u8>,
        after_seq: i64,
        up_to_seq: i64,
        limit: usize,
    ) -> Result<Vec<DueCall>, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| read::next_in_group(c, &subscription, &ordering_key, after_seq, up_to_seq, limit))
            .await
    }

    /// The ordering keys of `subscription` held by a dead call (`on_dead = block`).
    pub async fn blocked_groups(&self, subscription: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| read::blocked_groups(c, &subscription)).await
    }

    /// Calls matching `filter` after the cursor `after`, in creation order.
    pub async fn list_calls(
        &self,
        filter: CallFilter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CallSummary>, StoreError> {
        self.read(move |c| read::list_calls(c, &filter, after, limit)).await
    }

    /// A workflow's journal as its next request carries it: a JSON array of the entries,
    /// the clock it was read at (the request's `engine-now`) and its pinned deployment. Made durable first, so
    /// the entries of the answer just received are in it; anything recorded after it
    /// (a child ending, a signal) is stamped later than that clock.
    pub async fn journal(&self, seq: i64) -> Result<crate::workflow::Resume, StoreError> {
        let now = self.flush().await?;
        let (entries, pinned) = self
            .read(move |c| Ok((read::journal_entries(c, seq)?, read::deployment(c, seq)?)))
            .await?;
        let mut json = Vec::with_capacity(2 + entries.iter().map(|e| e.len() + 1).sum::<usize>());
        json.push(b'[');
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(entry.as_bytes());
        }
        json.push(b']');
        Ok(crate::workflow::Resume {
            journal: json,
            now,
            pinned,
        })
    }

    /// One call with its attempts.
    pub async fn call(&self, id: uuid::Uuid) -> Result<Option<CallView>, StoreError> {
        self.read(move |c| read::call_by_id(c, &id)).await
    }

    /// The call enqueued in `subscription` with this idempotency key, and its status.
    pub async fn call_by_idempotency_key(
        &self,
        subscription: &str,
        key: &str,
    ) -> Result<Option<(uuid::Uuid, CallStatus)>, StoreError> {
        let (subscription, key) = (subscription.to_owned(), key.to_owned());
        self.read(move |c| read::call_by_idempotency_key(c, &subscription, &key))
            .await
    }

    /// Counts by status, per subscription.
    pub async fn counts(&self) -> Result<BTreeMap<String, StatusCounts>, StoreError> {
        self.read(read::counts).await
    }

    /// Calls of one subscription that are pending or running.
    pub async fn open_calls(&self, subscription: &str) -> Result<u64, StoreError> {
        let subscription = subscription.to_owned();
        self.read(move |c| read::open_calls(c, &subscription)).await
    }
}

fn lock_file(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                StoreError::ReadOnly {
                    path: path.to_path_buf(),
                }
            } else {
                StoreError::Write(format!("cannot create lock file {}: {e}", lock_path.display()))
            }
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock: lock_path,
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Write(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if !read_only {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| classify_open_error(path, e.into()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Write(format!(
                "{} cannot use WAL journaling (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Index pages of a large backlog stay in memory: 64 MiB, the writer's only cache.
        conn.pragma_update(None, "cache_size", -65_536)?;
        // The WAL is reset after each checkpoint; this truncates it back, so a burst (a
        // large purge) does not leave a large -wal file behind.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    }
    Ok(conn)
}

fn classify_open_error(path: &Path, error: StoreError) -> StoreError {
    match error {
        StoreError::Sqlite(e) if e.sqlite_error_code() == Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            path: path.to_path_buf(),
        },
        StoreError::Sqlite(source) => StoreError::Open {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    }
}

/// Calls found `running` were interrupted by a crash: record the interrupted attempt and
/// make them due now.
fn recover_interrupted(conn: &mut Connection) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let now = now_millis();
    let running: Vec<(i64, u32, Millis)> = tx
        .prepare("SELECT seq, attempts, updated_at FROM calls WHERE status = 'running'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, attempt, started_at) in &running {
        writer::record_attempt(
            &tx,
            *seq,
            &AttemptRecord {
                attempt: *attempt,
                started_at: *started_at,
                duration_ms: (now - started_at).max(0),
                outcome: "interrupted",
                http_status: None,
                error: Some("the engine stopped during this attempt".into()),
            },
        )?;
    }
    tx.execute(
        "UPDATE calls SET status = 'pending', next_attempt_at = ?1, updated_at = ?1 WHERE status = 'running'",
        [now],
    )?;
    tx.commit()?;
    Ok(running.len())
}

impl From<Inserted> for Option<uuid::Uuid> {
    fn from(value: Inserted) -> Self {
        match value {
            Inserted::New(id) => Some(id),
            Inserted::Duplicate => None,
        }
    }
}
