//! What a workflow waits for besides time: child calls, signals and timers, as
//! [`Durable`] handles that can be awaited alone, all together ([`Workflow::join_all`], one
//! suspension and one wake for any number) or first-of ([`Workflow::select`]); and records
//! produced to Kafka through the engine's outbox.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{Entry, Wait, Workflow};
use crate::error::Error;

/// The signal name of an awakeable starts with this; the rest is the part of its id after
/// the call id.
pub const AWAKEABLE_PREFIX: &str = "awakeable.";

/// Something a workflow can wait for: a child call, a signal or a timer, at a journal
/// position. Await it alone, or pass several to [`Workflow::join_all`] or
/// [`Workflow::select`]. Dropping it without awaiting does not undo it (a child call still
/// runs).
#[must_use = "a durable handle does nothing until awaited (a child call still runs)"]
pub struct Durable<T> {
    wf: Workflow,
    position: u32,
    _result: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Durable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned + Send + 'static> IntoFuture for Durable<T> {
    type Output = Result<T, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let wf = self.wf.clone();
        Box::pin(async move { wf.join_all(vec![self]).await.remove(0) })
    }
}

impl Workflow {
    /// Start a child call of subscription `target` with `input` (as JSON): an ordinary call
    /// with its own retries, created by the engine in the same transaction that stores this
    /// entry, so a crash never makes it twice. Await the handle for its output, or pass
    /// several to [`Workflow::join_all`]. A child that goes dead or is cancelled gives a
    /// permanent error with the reason.
    pub fn call<I: Serialize, O>(&self, target: &str, input: &I) -> Durable<O> {
        self.call_keyed(target, None, input)
    }

    /// Like [`Workflow::call`], with a key: children with the same key in an ordered
    /// subscription run one at a time, like records with the same Kafka key.
    pub fn call_keyed<I: Serialize, O>(&self, target: &str, key: Option<&str>, input: &I) -> Durable<O> {
        let input = serde_json::to_value(input).unwrap_or(Value::Null);
        self.durable(
            Entry::Call {
                target: target.to_string(),
                input,
                key: key.map(str::to_string),
                id: None,
                ok: None,
                error: None,
                at: None,
            },
            |found| matches!(found, Entry::Call { target: t, .. } if t == target),
        )
    }

    /// Wait for signal `name` (sent with `POST /v1/calls/{id}/signals/{name}`, the body its
    /// JSON payload). A signal sent before the workflow waits is kept for it; signals of one
    /// name are handed out oldest first, one per wait. With a timeout, pass it to
    /// [`Workflow::select`] with a [`Workflow::timer`], or use [`Workflow::signal_within`].
    pub fn signal<T>(&self, name: &str) -> Durable<T> {
        self.durable(
            Entry::Signal {
                name: name.to_string(),
                ok: None,
                at: None,
            },
            |found| matches!(found, Entry::Signal { name: n, .. } if n == name),
        )
    }

    /// An awakeable: an id to hand to another system, and a handle that completes when that
    /// system posts a JSON payload to `POST /v1/awakeables/{id}` (or `engine calls resolve
    /// <id> '<json>'`). It is a signal with a generated name (`awakeable.` and a UUID of
    /// this workflow's, the same on every replay), so a payload that arrives before the
    /// workflow waits is kept for it, and it combines with timers in [`Workflow::select`].
    pub fn awakeable<T>(&self) -> (String, Durable<T>) {
        let token = self.uuid();
        let handle = self.signal(&format!("{AWAKEABLE_PREFIX}{token}"));
        (format!("{}.{token}", self.context().call_id), handle)
    }

    /// A durable timer: like [`Workflow::sleep`], as a handle for [`Workflow::select`].
    pub fn timer(&self, duration: Duration) -> Durable<()> {
        let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        self.durable(
            Entry::Sleep {
                wake_at: None,
                duration_ms: Some(duration_ms),
            },
            |found| matches!(found, Entry::Sleep { .. }),
        )
    }

    /// Wait for signal `name` at most `timeout`: `Ok(None)` if it did not come in time.
    pub fn signal_within<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<T>, Error>> + Send + 'static {
        let signal = self.signal::<Value>(name);
        let timer = self.timer(timeout).map_to::<Value>();
        let wf = self.clone();
        let name = name.to_string();
        async move {
            match wf.select(vec![signal, timer]).await {
                (0, payload) => serde_json::from_value(payload?)
                    .map(Some)
                    .map_err(|e| Error::permanent(format!("signal `{name}`: its payload does not decode: {e}"))),
                _ => Ok(None),
            }
        }
    }

    /// Publish a record to Kafka `topic` (the value as JSON) once this entry is stored:
    /// exactly once per entry, with headers `engine-call-id` and `engine-entry`. Nothing
    /// to await; a run that ends right after it makes one more request to store it.
    pub fn produce<V: Serialize>(&self, topic: &str, key: Option<&str>, value: &V) {
        let (position, journaled) = self.take_position();
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        match journaled {
            Some(Entry::Produce { topic: t, .. }) if t == topic => {}
            Some(other) => self.mismatch_later(position, &other, &format!("produce to `{topic}`")),
            None => self.record(
                position,
                Entry::Produce {
                    topic: topic.to_string(),
                    key: key.map(str::to_string),
                    value,
                },
            ),
        }
    }

    /// Wait for every handle; the results in the handles' order. One suspension and one
    /// wake however many there are.
    pub fn join_all<T: DeserializeOwned + Send + 'static>(
        &self,
        handles: Vec<Durable<T>>,
    ) -> impl Future<Output = Vec<Result<T, Error>>> + Send + 'static {
        let wf = self.clone();
        async move {
            let positions: Vec<u32> = handles.iter().map(|h| h.position).collect();
            let entries = wf.journaled(&positions);
            let pending: Vec<u32> = positions
                .iter()
                .zip(&entries)
                .filter(|(_, e)| e.as_ref().is_none_or(|e| e.done_at(wf.now_ms).is_none()))
                .map(|(p, _)| *p)
                .collect();
            if !pending.is_empty() {
                wf.suspend(Some(Wait::AnyOf(vec![pending]))).await;
            }
            positions
                .iter()
                .zip(entries)
                .map(|(p, e)| outcome(*p, e.as_ref().expect("done")))
                .collect()
        }
    }

    /// Wait for the first handle to complete: its index and result. "First" is by the
    /// engine's clock (a child's end, a signal's arrival, a timer's wake time), so replay
    /// picks the same one even when more have completed since.
    pub fn select<T: DeserializeOwned + Send + 'static>(
        &self,
        handles: Vec<Durable<T>>,
    ) -> impl Future<Output = (usize, Result<T, Error>)> + Send + 'static {
        let wf = self.clone();
        async move {
            let positions: Vec<u32> = handles.iter().map(|h| h.position).collect();
            let entries = wf.journaled(&positions);
            let first = entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    e.as_ref()
                        .and_then(|e| e.done_at(wf.now_ms))
                        .map(|at| (at, positions[i], i))
                })
                .min();
            match first {
                Some((_, position, index)) => (index, outcome(position, entries[index].as_ref().expect("done"))),
                None => {
                    wf.suspend(Some(Wait::AnyOf(positions.iter().map(|p| vec![*p]).collect())))
                        .await
                }
            }
        }
    }

    fn durable<T>(&self, new: Entry, matches: impl Fn(&Entry) -> bool) -> Durable<T> {
        let (position, journaled) = self.take_position();
        match journaled {
            Some(found) if matches(&found) => {}
            Some(found) => self.mismatch_later(position, &found, &new.describe()),
            None => self.record(position, new),
        }
        Durable {
            wf: self.clone(),
            position,
            _result: PhantomData,
        }
    }

    /// The journal's entries at `positions` (the run's view: fixed for the whole run).
    fn journaled(&self, positions: &[u32]) -> Vec<Option<Entry>> {
        let state = self.lock();
        positions
            .iter()
            .map(|p| state.journal.get(*p as usize).cloned())
            .collect()
    }
}

impl<T> Durable<T> {
    /// The same handle, read as another type (for [`Workflow::select`] over handles of
    /// different types, as [`serde_json::Value`]).
    pub fn map_to<U>(self) -> Durable<U> {
        Durable {
            wf: self.wf,
            position: self.position,
            _result: PhantomData,
        }
    }
}

/// A completed entry's result, as the code sees it.
fn outcome<T: DeserializeOwned>(position: u32, entry: &Entry) -> Result<T, Error> {
    let value = match entry {
        Entry::Call { error: Some(error), .. } => return Err(Error::permanent(error.clone())),
        Entry::Call { ok, .. } | Entry::Signal { ok, .. } => ok.clone().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    serde_json::from_value(value)
        .map_err(|e| Error::permanent(format!("entry {position} ({}): does not decode: {e}", entry.describe())))
}
