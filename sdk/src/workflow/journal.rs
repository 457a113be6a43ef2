//! The journal's data, shared by the SDK and the engine: its entries, what a suspended run
//! waits for, and the one rule both sides use to decide whether an entry is done.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// A child call (protocol 5): an ordinary call of subscription `target`, created by the
    /// engine in the same transaction that stores this entry. The engine fills in `id`, and
    /// the outcome (`ok` or `error`, with `at`) when the child ends.
    Call {
        /// The subscription the child runs in.
        target: String,
        /// The child's input (its payload, as JSON).
        input: Value,
        /// The child's key (ordering, like a record's key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The child's call id, once stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The child's output, when it succeeded (JSON; a body that is not JSON is a string).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// Why the child failed for good (dead or cancelled).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// When the child ended, on the engine's clock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
    },
    /// A wait for a signal (protocol 5): the engine fills in the payload (`ok`) and when it
    /// arrived (`at`) from `POST /v1/calls/{id}/signals/{name}`. A signal sent before the
    /// workflow waits for it is kept until it does.
    Signal {
        /// The signal's name.
        name: String,
        /// The signal's payload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<Value>,
        /// When the signal arrived, on the engine's clock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<i64>,
    },
    /// A record for a Kafka topic (protocol 5), published by the engine once this entry is
    /// stored, exactly once per entry.
    Produce {
        /// The topic.
        topic: String,
        /// The record's key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        /// The record's value, published as JSON.
        value: Value,
    },
    /// A patch point (protocol 6): [`crate::Workflow::patched`] returned true here, so this
    /// run follows the patched code. Code that asks for something else at this position
    /// skips it (the patch call was removed once no run needed the old path).
    Patch {
        /// The patch's id.
        id: String,
    },
}

impl Entry {
    /// What the entry is, in words, for nondeterminism messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Step { name, .. } => format!("step `{name}`"),
            Self::Sleep { .. } => "sleep".into(),
            Self::Now { .. } => "now".into(),
            Self::Call { target, .. } => format!("call to `{target}`"),
            Self::Signal { name, .. } => format!("signal `{name}`"),
            Self::Produce { topic, .. } => format!("produce to `{topic}`"),
            Self::Patch { id } => format!("patch `{id}`"),
        }
    }

    /// When the entry completed, on the engine's clock, if it has by `now`: a sleep at its
    /// wake time, a child or a signal when the engine recorded its outcome. Steps, `now`
    /// and produce entries are never waited for.
    pub fn done_at(&self, now: i64) -> Option<i64> {
        match self {
            Self::Sleep {
                wake_at: Some(wake_at), ..
            } if *wake_at <= now => Some(*wake_at),
            Self::Call { at, .. } | Self::Signal { at, .. } => *at,
            _ => None,
        }
    }

    /// Whether the engine must act on the entry once stored (create a child, publish a
    /// record): a run that ends with such an entry unstored suspends to store it first.
    pub fn acts(&self) -> bool {
        matches!(self, Self::Call { .. } | Self::Produce { .. })
    }
}

/// What a suspended run waits for before the engine calls again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    /// The sleep at this position (protocol 4; the same as `any_of: [[p]]`).
    Sleep(u32),
    /// Any one group of positions all done (protocol 5): `[[a, b, c]]` waits for all three
    /// (`join_all`), `[[a], [b]]` for the first of two (`select`).
    AnyOf(Vec<Vec<u32>>),
}

impl Wait {
    /// The groups of positions, any of which, all done, ends the wait.
    pub fn groups(&self) -> Vec<Vec<u32>> {
        match self {
            Self::Sleep(position) => vec![vec![*position]],
            Self::AnyOf(groups) => groups.clone(),
        }
    }

    /// Every position it names.
    pub fn positions(&self) -> Vec<u32> {
        let mut all: Vec<u32> = self.groups().into_iter().flatten().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// When the wait ends: `Some(now)` (or earlier) if a group is done, `Some(t)` if only
    /// sleeps stand between a group and done (the latest of them), `None` if only an event
    /// (a child ending, a signal) can end it. `entry` finds a journal entry by position;
    /// a position with no entry never completes.
    pub fn ends_at<'a>(&self, entry: impl Fn(u32) -> Option<&'a Entry>, now: i64) -> Option<i64> {
        self.groups()
            .iter()
            .filter_map(|group| {
                let mut latest = i64::MIN;
                for position in group {
                    let entry = entry(*position)?;
                    let at = match entry.done_at(now) {
                        Some(at) => at,
                        None => match entry {
                            Entry::Sleep { wake_at: Some(w), .. } => *w,
                            _ => return None,
                        },
                    };
                    latest = latest.max(at);
                }
                Some(latest)
            })
            .min()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep(wake_at: i64) -> Entry {
        Entry::Sleep {
            wake_at: Some(wake_at),
            duration_ms: None,
        }
    }

    fn child(at: Option<i64>) -> Entry {
        Entry::Call {
            target: "t".into(),
            input: Value::Null,
            key: None,
            id: Some("c".into()),
            ok: at.map(|_| Value::Null),
            error: None,
            at,
        }
    }

    #[test]
    fn a_wait_ends_when_any_group_is_all_done() {
        let journal = [child(None), child(Some(50)), sleep(300), child(Some(70))];
        let at = |p: u32| journal.get(p as usize);
        // join_all over 1 and 3: both done.
        assert_eq!(Wait::AnyOf(vec![vec![1, 3]]).ends_at(at, 100), Some(70));
        // join_all over 0 and 1: 0 is still running, only an event ends it.
        assert_eq!(Wait::AnyOf(vec![vec![0, 1]]).ends_at(at, 100), None);
        // select over 0 and the sleep: the sleep's time.
        assert_eq!(Wait::AnyOf(vec![vec![0], vec![2]]).ends_at(at, 100), Some(300));
        assert_eq!(Wait::Sleep(2).ends_at(at, 400), Some(300));
        // A position past the journal never completes.
        assert_eq!(Wait::AnyOf(vec![vec![9]]).ends_at(at, 100), None);
    }

    #[test]
    fn the_protocol_4_wait_still_decodes() {
        let wait: Wait = serde_json::from_str(r#"{"sleep":1}"#).unwrap();
        assert_eq!(wait.groups(), [[1]]);
        let wait: Wait = serde_json::from_str(r#"{"any_of":[[1,2],[3]]}"#).unwrap();
        assert_eq!(wait.positions(), [1, 2, 3]);
    }
}
