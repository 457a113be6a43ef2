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

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::Context;
use crate::error::{Error, ErrorKind};

/// The protocol version that carries journals.
pub const WORKFLOW_PROTOCOL: u32 = 4;

/// One entry of a journal, as the engine stores and sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A step and its result: `ok` (JSON), or the message of a permanent error.
    Step {
        /// The step's name, checked on replay.
        name: String,
        /// The result, when the step succeeded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// The permanent error's message, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A durable sleep. The SDK sends `duration_ms` (or `wake_at`); the engine stores
    /// `wake_at`, in milliseconds since the Unix epoch on the engine's clock.
    Sleep {
        /// When the sleep is over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wake_at: Option<i64>,
        /// How long to sleep, from the engine's clock when it stores the entry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<i64>,
    },
    /// The engine's clock when the workflow first asked for the time.
    Now {
        /// Milliseconds since the Unix epoch.
        value: i64,
    },
}

impl Entry {
    fn describe(&self) -> String {
        match self {
            Self::Step { name, .. } => format!("step `{name}`"),
            Self::Sleep { .. } => "sleep".into(),
            Self::Now { .. } => "now".into(),
        }
    }
}

/// What the function waits for when it suspends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// The sleep at this position.
    Sleep(u32),
}

/// The body of a *suspended* answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspension {
    /// The journal length the SDK was sent: the new entries take positions from here. The
    /// engine drops an answer whose `from` is not its journal's length (a late duplicate).
    pub from: u32,
    /// New entries, in position order.
    pub entries: Vec<Entry>,
    /// What to wait for before calling again; `None`: call again at once.
    #[serde(default)]
    pub wait: Option<Wait>,
}

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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workflow state")
    }

    /// Take the next position, and the journal's entry there if it has one.
    fn take_position(&self) -> (u32, Option<Entry>) {
        let mut state = self.lock();
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
        self.stop(Stop::Nondeterminism(format!(
            "journal entry {position} is {}, but the code asks for {asked}",
            found.describe()
        )))
        .await
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
                    wf.suspend(Some(Wait::Sleep(position))).await;
                }
                Some(other) => wf.mismatch(position, &other, "sleep").await,
                None => {
                    wf.record(position, new);
                    wf.suspend(Some(Wait::Sleep(position))).await;
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
                // Not async: record the mismatch; the next await point stops the run.
                let mut state = self.lock();
                if state.stop.is_none() {
                    state.stop = Some(Stop::Nondeterminism(format!(
                        "journal entry {position} is {}, but the code asks for now",
                        other.describe()
                    )));
                }
                drop(state);
                self.stopped.notify_one();
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
        let wait = state
            .wait
            .filter(|Wait::Sleep(p)| *p < end || (*p as usize) < state.journal.len());
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
    /// mismatch) still wins.
    pub(crate) fn take_stop(&self) -> Option<Stop> {
        self.lock().stop.take()
    }
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
mod tests {
    use super::*;

    fn wf(journal: Vec<Entry>, now_ms: i64) -> Workflow {
        Workflow::new(
            Context {
                call_id: "call-1".into(),
                ..Context::default()
            },
            journal,
            now_ms,
        )
    }

    async fn run<F, Fut>(wf: &Workflow, f: F) -> Result<Result<u32, Error>, Stop>
    where
        F: FnOnce(Workflow) -> Fut,
        Fut: Future<Output = Result<u32, Error>>,
    {
        let body = f(wf.clone());
        tokio::select! {
            biased;
            stop = wf.stopped() => Err(stop),
            done = body => match wf.take_stop() { Some(stop) => Err(stop), None => Ok(done) },
        }
    }

    fn step(name: &str, ok: u32) -> Entry {
        Entry::Step {
            name: name.into(),
            ok: Some(ok.into()),
            error: None,
        }
    }

    async fn two_steps_and_a_sleep(wf: Workflow, runs: Arc<Mutex<Vec<&'static str>>>) -> Result<u32, Error> {
        let r = Arc::clone(&runs);
        let a: u32 = wf
            .step("a", move || async move {
                r.lock().unwrap().push("a");
                Ok(1)
            })
            .await?;
        wf.sleep(Duration::from_secs(10)).await;
        let r = Arc::clone(&runs);
        let b: u32 = wf
            .step("b", move || async move {
                r.lock().unwrap().push("b");
                Ok(2)
            })
            .await?;
        Ok(a + b)
    }

    #[tokio::test]
    async fn a_new_step_and_sleep_suspend_together_then_replay_to_completion() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let first = wf(Vec::new(), 1_000);
        let stop = run(&first, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
        let Err(Stop::Suspended(s)) = stop else {
            panic!("{stop:?}")
        };
        assert_eq!(s.from, 0);
        assert_eq!(
            s.entries,
            [
                step("a", 1),
                Entry::Sleep {
                    wake_at: None,
                    duration_ms: Some(10_000)
                }
            ]
        );
        assert_eq!(s.wait, Some(Wait::Sleep(1)));

        // Too early (the engine's clock before the wake time): suspend again, nothing new.
        let journal = vec![
            step("a", 1),
            Entry::Sleep {
                wake_at: Some(11_000),
                duration_ms: None,
            },
        ];
        let early = wf(journal.clone(), 5_000);
        let stop = run(&early, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
        let Err(Stop::Suspended(s)) = stop else {
            panic!("{stop:?}")
        };
        assert_eq!((s.from, s.entries.len(), s.wait), (2, 0, Some(Wait::Sleep(1))));

        let awake = wf(journal, 11_000);
        let done = run(&awake, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
        assert_eq!(done.unwrap().unwrap(), 3);
        assert_eq!(*runs.lock().unwrap(), ["a", "b"], "each step ran once");
    }

    #[tokio::test]
    async fn a_second_new_step_waits_for_the_first_to_be_stored() {
        let w = wf(Vec::new(), 0);
        let stop = run(&w, |w| async move {
            let a: u32 = w.step("a", || async { Ok(1) }).await?;
            let b: u32 = w
                .step("b", || async { panic!("must not run before a is stored") })
                .await?;
            Ok(a + b)
        })
        .await;
        let Err(Stop::Suspended(s)) = stop else {
            panic!("{stop:?}")
        };
        assert_eq!((s.entries, s.wait), (vec![step("a", 1)], None));
    }

    #[tokio::test]
    async fn a_different_step_at_a_position_is_nondeterminism() {
        let w = wf(vec![step("charge", 1)], 0);
        let stop = run(&w, |w| async move { w.step("refund", || async { Ok(1) }).await }).await;
        let Err(Stop::Nondeterminism(text)) = stop else {
            panic!("{stop:?}")
        };
        assert_eq!(
            text,
            "journal entry 0 is step `charge`, but the code asks for step `refund`"
        );
    }

    #[tokio::test]
    async fn permanent_step_errors_are_journaled_and_temporary_ones_fail_the_attempt() {
        async fn body(w: Workflow) -> Result<u32, Error> {
            let failed = w
                .step("a", || async { Err::<u32, _>(Error::permanent("card declined")) })
                .await;
            assert_eq!(failed.unwrap_err().message(), "card declined");
            w.step("b", || async { Err(Error::temporary("timeout")) }).await
        }
        let stop = run(&wf(Vec::new(), 0), body).await;
        let Err(Stop::Suspended(s)) = stop else {
            panic!("{stop:?}")
        };
        let declined = Entry::Step {
            name: "a".into(),
            ok: None,
            error: Some("card declined".into()),
        };
        assert_eq!(
            s.entries,
            std::slice::from_ref(&declined),
            "the permanent error is stored before b runs"
        );

        let stop = run(&wf(vec![declined], 0), body).await;
        let Err(Stop::Failed(error)) = stop else {
            panic!("{stop:?}")
        };
        assert_eq!(error.message(), "timeout", "the temporary error fails the attempt");
    }

    #[tokio::test]
    async fn time_and_ids_are_the_same_on_replay() {
        let first = wf(Vec::new(), 42_000);
        let (now, id, n) = (first.now(), first.uuid(), first.random_u64());
        assert_eq!(now, UNIX_EPOCH + Duration::from_secs(42));
        let Stop::Suspended(s) = first.suspension_stop() else {
            unreachable!()
        };
        let replay = wf(s.entries, 99_000);
        assert_eq!((replay.now(), replay.uuid(), replay.random_u64()), (now, id.clone(), n));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8", "a version 8 UUID");
    }

    impl Workflow {
        fn suspension_stop(&self) -> Stop {
            Stop::Suspended(self.suspension())
        }
    }

    #[test]
    fn the_body_splits_into_journal_and_input() {
        let body = br#"[{"kind":"now","value":5}]{"order":1}"#;
        let (journal, input) = split_body(body, 26).unwrap();
        assert_eq!(journal, [Entry::Now { value: 5 }]);
        assert_eq!(input, br#"{"order":1}"#);
        assert!(split_body(body, 500).unwrap_err().contains("engine-journal-bytes"));
        assert!(split_body(body, 3).unwrap_err().contains("does not decode"));
    }
}
