//! Durable workflows: a function whose steps and sleeps are journaled by the engine, so that
//! after a crash, a retry or a long sleep it resumes where it was instead of starting over.
//!
//! The engine keeps the journal and sends it with every request (protocol 4). The SDK
//! replays it: a step already in the journal returns its stored result without running, a
//! sleep already over returns at once. When the function needs something the journal does
//! not have yet (a new step's result stored, a sleep to wait out), the SDK stops running it
//! and answers *suspended* with the new entries; the engine stores them and calls again when
//! the wait is over. Suspension is not an error: the function's future is simply dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use sdk::{Endpoint, Error, Workflow};
//!
//! async fn checkout(wf: Workflow, order: u64) -> Result<String, Error> {
//!     let receipt: String = wf.step("charge", move || async move { Ok(format!("paid {order}")) }).await?;
//!     wf.sleep(Duration::from_secs(3600)).await;
//!     wf.step("email", || async { Ok(()) }).await?;
//!     Ok(receipt)
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! Endpoint::new().workflow("checkout", checkout).serve("127.0.0.1:9080".parse().unwrap()).await
//! # }
//! ```
//!
//! Rules that keep replay deterministic:
//! - entries are matched by position, kind and name: the function must ask for the same
//!   steps and sleeps in the same order on every run. A mismatch answers *nondeterminism*
//!   and the engine pauses the call for an operator; it is not retried;
//! - positions are taken when [`Workflow::step`] or [`Workflow::sleep`] is *called*, not
//!   when the future is first polled, so `join!` of several steps is deterministic;
//! - time, random numbers and ids come from [`Workflow::now`], [`Workflow::random_u64`] and
//!   [`Workflow::uuid`], never from the system;
//! - a step's result is stored before the next step runs; a step that fails temporarily
//!   fails the whole attempt (the engine retries it with backoff, replaying the journal),
//!   while a permanent failure is journaled and returned to the function like a result.

mod durable;
#[cfg(test)]
mod durable_tests;
mod journal;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::error::{Error, ErrorKind};
pub use durable::{Durable, AWAKEABLE_PREFIX};
pub use journal::{Entry, Suspension, Wait};

/// The protocol version that carries journals.
pub const WORKFLOW_PROTOCOL: u32 = 5;

/// The protocol version that added patch points ([`Workflow::patched`]).
pub const PATCH_PROTOCOL: u32 = 6;

/// How a workflow run ended, short of completing.
#[derive(Debug)]
pub(crate) enum Stop {
    Suspended(Suspension),
    Nondeterminism(String),
    Failed(Error),
}

#[derive(Debug, Default)]
struct State {
    journal: Vec<Entry>,
    next: u32,
    counter: u64,
    new: BTreeMap<u32, Entry>,
    stop: Option<Stop>,
    wait: Option<Wait>,
}

impl State {
    fn has_new_step(&self) -> bool {
        self.new.values().any(|e| matches!(e, Entry::Step { .. }))
    }
}

/// The context of a workflow run: the call's metadata and the journaled operations.
#[derive(Clone)]
pub struct Workflow {
    context: Arc<Context>,
    now_ms: i64,
    state: Arc<Mutex<State>>,
    stopped: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Workflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().expect("workflow state");
        f.debug_struct("Workflow")
            .field("call_id", &self.context.call_id)
            .field("journal", &state.journal.len())
            .field("next", &state.next)
            .finish_non_exhaustive()
    }
}

impl Workflow {
    pub(crate) fn new(context: Context, journal: Vec<Entry>, now_ms: i64) -> Self {
        Self {
            context: Arc::new(context),
            now_ms,
            state: Arc::new(Mutex::new(State {
                journal,
                ..State::default()
            })),
            stopped: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The call's metadata (call id, attempt, Kafka record).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Whether this run follows the code patched under `id`: true for a run that reaches
    /// this point with this code (the answer is journaled), false for a run that had
    /// already gone past it under the old code, so it keeps the old code's path and its
    /// journal still matches. Put the new code under `if wf.patched("id") { .. } else { ..
    /// }`; once no run of the old code is left, remove the old branch, and later the call
    /// itself (journals that hold the patch point pass over it). Needs an engine of protocol
    /// 6: with an older one the run fails with a permanent 501.
    pub fn patched(&self, id: &str) -> bool {
        let mut state = self.lock();
        let position = state.next;
        match state.journal.get(position as usize) {
            Some(Entry::Patch { id: stored }) if stored == id => {
                state.next += 1;
                true
            }
            // The run went past this point before the patch existed.
            Some(_) => false,
            None => {
                state.next += 1;
                if self.context.protocol < PATCH_PROTOCOL {
                    if state.stop.is_none() {
                        state.stop = Some(Stop::Failed(
                            Error::permanent(format!(
                                "wf.patched(\"{id}\") needs an engine of protocol {PATCH_PROTOCOL}; this engine speaks protocol {}: upgrade the engine",
                                self.context.protocol
                            ))
                            .with_status(501),
                        ));
                    }
                    drop(state);
                    self.stopped.notify_one();
                    return true;
                }
                state.new.insert(position, Entry::Patch { id: id.to_string() });
                true
            }
        }
    }

    /// Whether the run is still retracing what the journal already holds: the next
    /// journaled operation will return its stored result rather than run. Every request
    /// replays the workflow from the start; check this to print or log a line once, not on
    /// every replay.
    pub fn is_replaying(&self) -> bool {
        let state = self.lock();
        (state.next as usize) < state.journal.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workflow state")
    }

    /// Take the next position, and the journal's entry there if it has one. Patch points
    /// the code no longer asks about are passed over.
    fn take_position(&self) -> (u32, Option<Entry>) {
        let mut state = self.lock();
        while matches!(state.journal.get(state.next as usize), Some(Entry::Patch { .. })) {
            state.next += 1;
        }
        let position = state.next;
        state.next += 1;
        (position, state.journal.get(position as usize).cloned())
    }

    /// Stop the run (the first reason wins) and never return.
    async fn stop(&self, stop: Stop) -> ! {
        {
            let mut state = self.lock();
            if state.stop.is_none() {
                state.stop = Some(stop);
            }
        }
        self.stopped.notify_one();
        std::future::pending::<()>().await;
        unreachable!("a stopped workflow is never polled to completion")
    }

    async fn mismatch(&self, position: u32, found: &Entry, asked: &str) -> ! {
        self.stop(Stop::Nondeterminism(mismatch_text(position, found, asked)))
            .await
    }

    /// Record a mismatch found outside an await point: the run stops at its next one, and
    /// no new step runs meanwhile.
    fn mismatch_later(&self, position: u32, found: &Entry, asked: &str) {
        let mut state = self.lock();
        if state.stop.is_none() {
            state.stop = Some(Stop::Nondeterminism(mismatch_text(position, found, asked)));
        }
        drop(state);
        self.stopped.notify_one();
    }

    /// Run `f` as a journaled step named `name`, or return its stored result on replay.
    ///
    /// A new step runs only once the previous new step's result is stored (the SDK
    /// suspends to have it stored first). `Ok` is journaled; so is a permanent error, which
    /// is returned as such on replay. A temporary (or overloaded) error fails the attempt:
    /// the engine retries the workflow with backoff and the step runs again.
    pub fn step<T, F, Fut>(&self, name: &str, f: F) -> impl Future<Output = Result<T, Error>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (position, journaled) = self.take_position();
        let name = name.to_string();
        let wf = self.clone();
        async move {
            if let Some(entry) = journaled {
                let Entry::Step {
                    name: stored,
                    ok,
                    error,
                } = &entry
                else {
                    wf.mismatch(position, &entry, &format!("step `{name}`")).await
                };
                if *stored != name {
                    wf.mismatch(position, &entry, &format!("step `{name}`")).await;
                }
                if let Some(message) = error {
                    return Err(Error::permanent(message.clone()));
                }
                let value = ok.clone().unwrap_or(Value::Null);
                return match serde_json::from_value(value) {
                    Ok(result) => Ok(result),
                    Err(e) => {
                        wf.stop(Stop::Nondeterminism(format!(
                            "journal entry {position} (step `{name}`) does not decode as the code's result type: {e}"
                        )))
                        .await
                    }
                };
            }
            // A new step after another new one: have that one stored first.
            if wf.lock().has_new_step() {
                wf.suspend(None).await;
            }
            // The run is stopping (a mismatch found outside an await): run nothing new.
            if wf.lock().stop.is_some() {
                std::future::pending::<()>().await;
            }
            match f().await {
                Ok(result) => {
                    let ok = match serde_json::to_value(&result) {
                        Ok(ok) => ok,
                        Err(e) => {
                            wf.stop(Stop::Failed(Error::permanent(format!(
                                "step `{name}`: cannot encode its result: {e}"
                            ))))
                            .await
                        }
                    };
                    wf.record(
                        position,
                        Entry::Step {
                            name,
                            ok: Some(ok),
                            error: None,
                        },
                    );
                    Ok(result)
                }
                Err(error) if error.kind() == ErrorKind::Permanent => {
                    wf.record(
                        position,
                        Entry::Step {
                            name,
                            ok: None,
                            error: Some(error.message().to_string()),
                        },
                    );
                    Err(error)
                }
                Err(error) => wf.stop(Stop::Failed(error)).await,
            }
        }
    }

    /// Sleep durably for `duration`, measured on the engine's clock. The handler is not
    /// called (and holds nothing) while the workflow sleeps; a restart of the engine or the
    /// handler does not shorten or restart it.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send + 'static {
        let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.sleep_entry(Entry::Sleep {
            wake_at: None,
            duration_ms: Some(duration_ms),
        })
    }

    /// Sleep durably until `at` on the engine's clock.
    pub fn sleep_until(&self, at: SystemTime) -> impl Future<Output = ()> + Send + 'static {
        let wake_at = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.sleep_entry(Entry::Sleep {
            wake_at: Some(wake_at),
            duration_ms: None,
        })
    }

    fn sleep_entry(&self, new: Entry) -> impl Future<Output = ()> + Send + 'static {
        let (position, journaled) = self.take_position();
        let wf = self.clone();
        async move {
            match journaled {
                Some(Entry::Sleep {
                    wake_at: Some(wake_at), ..
                }) => {
                    if wf.now_ms >= wake_at {
                        return;
                    }
                    wf.suspend(Some(Wait::AnyOf(vec![vec![position]]))).await;
                }
                Some(other) => wf.mismatch(position, &other, "sleep").await,
                None => {
                    // A sleep already over on the engine's clock (a zero duration, a time
                    // past) costs no request: noted with its wake time, stored with the
                    // run's next suspension (or never, if the run completes first).
                    let due = match new {
                        Entry::Sleep {
                            duration_ms: Some(ms), ..
                        } if ms <= 0 => Some(wf.now_ms),
                        Entry::Sleep { wake_at: Some(at), .. } if at <= wf.now_ms => Some(at),
                        _ => None,
                    };
                    if let Some(wake_at) = due {
                        wf.record(
                            position,
                            Entry::Sleep {
                                wake_at: Some(wake_at),
                                duration_ms: None,
                            },
                        );
                        return;
                    }
                    wf.record(position, new);
                    wf.suspend(Some(Wait::AnyOf(vec![vec![position]]))).await;
                }
            }
        }
    }

    /// The time, from the engine's clock at the first run that asked, the same on replay.
    pub fn now(&self) -> SystemTime {
        let (position, journaled) = self.take_position();
        let value = match journaled {
            Some(Entry::Now { value }) => value,
            Some(other) => {
                self.mismatch_later(position, &other, "now");
                self.now_ms
            }
            None => {
                self.record(position, Entry::Now { value: self.now_ms });
                self.now_ms
            }
        };
        UNIX_EPOCH + Duration::from_millis(u64::try_from(value).unwrap_or(0))
    }

    /// A random number, the same on every replay of this call (derived from the call id
    /// and how many were drawn before).
    pub fn random_u64(&self) -> u64 {
        let bytes = self.derive("random");
        u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))
    }

    /// A UUID (version 8, derived like [`Workflow::random_u64`]), the same on every replay.
    pub fn uuid(&self) -> String {
        let mut b = self.derive("uuid");
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        format!(
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }

    fn derive(&self, what: &str) -> [u8; 32] {
        let counter = {
            let mut state = self.lock();
            state.counter += 1;
            state.counter
        };
        Sha256::new()
            .chain_update(self.context.call_id.as_bytes())
            .chain_update(what.as_bytes())
            .chain_update(counter.to_be_bytes())
            .finalize()
            .into()
    }

    fn record(&self, position: u32, entry: Entry) {
        self.lock().new.insert(position, entry);
    }

    async fn suspend(&self, wait: Option<Wait>) -> ! {
        self.lock().wait = wait;
        let suspension = self.suspension();
        self.stop(Stop::Suspended(suspension)).await
    }

    /// The new entries that follow the journal without a gap (a later one whose
    /// predecessor is still running is left out; it runs again next time).
    fn suspension(&self) -> Suspension {
        let state = self.lock();
        let from = u32::try_from(state.journal.len()).unwrap_or(u32::MAX);
        let mut entries = Vec::new();
        for (expected, (position, entry)) in (from..).zip(state.new.range(from..)) {
            if *position != expected {
                break;
            }
            entries.push(entry.clone());
        }
        let end = from + u32::try_from(entries.len()).unwrap_or(0);
        // A wait for an entry left out (its predecessor still running) is no wait: the
        // engine calls again at once and the run gets there.
        let wait = state
            .wait
            .clone()
            .filter(|wait| wait.positions().iter().all(|p| *p < end));
        Suspension { from, entries, wait }
    }

    /// Wait until the run stops short of completing, and say why.
    pub(crate) async fn stopped(&self) -> Stop {
        loop {
            if let Some(stop) = self.lock().stop.take() {
                return stop;
            }
            self.stopped.notified().await;
        }
    }

    /// After the function returned: a stop recorded without an await point (a `now`
    /// mismatch) still wins; entries the engine must act on (a child call, a record to
    /// produce) are stored before the run may complete.
    pub(crate) fn take_stop(&self) -> Option<Stop> {
        let mut state = self.lock();
        if let Some(stop) = state.stop.take() {
            return Some(stop);
        }
        if state.new.values().any(Entry::acts) {
            state.wait = None;
            drop(state);
            return Some(Stop::Suspended(self.suspension()));
        }
        None
    }
}

/// What a nondeterminism answer says: the entry found and what the code asked for.
fn mismatch_text(position: u32, found: &Entry, asked: &str) -> String {
    format!(
        "journal entry {position} is {}, but the code asks for {asked}",
        found.describe()
    )
}

/// Split a protocol-4 request body into the journal and the input.
pub(crate) fn split_body(body: &[u8], journal_bytes: usize) -> Result<(Vec<Entry>, &[u8]), String> {
    if journal_bytes == 0 {
        return Ok((Vec::new(), body));
    }
    if journal_bytes > body.len() {
        return Err(format!(
            "engine-journal-bytes is {journal_bytes} but the body has {} bytes",
            body.len()
        ));
    }
    let (journal, input) = body.split_at(journal_bytes);
    let entries = serde_json::from_slice(journal).map_err(|e| format!("the journal does not decode: {e}"))?;
    Ok((entries, input))
}

#[cfg(test)]
mod tests;
