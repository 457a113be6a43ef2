//! The scheduler's reactions, as a state machine: each event (an attempt ended, an operator
//! acted) changes the in-memory state and returns the [`Effect`]s the executor must carry
//! out, in order. No I/O happens here, so every rule is tested without a store, a clock or
//! a network.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::decide::decide;
use super::window::{Completion, GroupLoad, Window};
use crate::config::OnDead;
use crate::delivery::AttemptOutcome;
use crate::limiter::{signal_of, Sent, Signal};
use crate::model::{Affected, AttemptRecord, CallStatus, DueCall, Millis, Operation, Transition};
use crate::retry::RetryPolicy;

/// An attempt that ended.
#[derive(Debug)]
pub struct AttemptEnded {
    pub call: Arc<DueCall>,
    pub attempt: u32,
    /// When it started, and at what concurrency toward its endpoint.
    pub sent: Sent,
    pub outcome: AttemptOutcome,
}

/// What an operator did, as the scheduler of the call's subscription must know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Run this pending call now.
    RetryNow { seq: i64 },
    /// The call was cancelled; `was` is its status before.
    Cancelled {
        seq: i64,
        was: CallStatus,
        ordering_key: Option<Vec<u8>>,
    },
    /// The dead call is pending again.
    Redriven { seq: i64, ordering_key: Option<Vec<u8>> },
    /// The dead call was deleted.
    Purged { ordering_key: Option<Vec<u8>> },
}

impl Control {
    /// What the scheduler must hear after `operation` changed `call` in the store.
    pub fn after(operation: &Operation, call: &Affected) -> Self {
        let ordering_key = call.ordering_key.clone();
        match operation {
            Operation::RetryNow(_) => Self::RetryNow { seq: call.seq },
            Operation::Cancel(_) => Self::Cancelled {
                seq: call.seq,
                was: call.was,
                ordering_key,
            },
            // Pending again, like a redriven call.
            Operation::Redrive(_) | Operation::Restart { .. } => Self::Redriven {
                seq: call.seq,
                ordering_key,
            },
            Operation::PurgeDead(_) => Self::Purged { ordering_key },
        }
    }
}

/// A change of the subscription's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Succeeded,
    WillRetry,
    WentDead,
    Cancelled,
    Redriven,
    Suspended,
    Paused,
}

/// What the executor does after a reaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Tell the endpoint's limiter how the attempt went and free its slot.
    ReleaseEndpoint {
        signal: Signal,
        retry_after: Option<Duration>,
        sent: Sent,
    },
    /// Count what happened into the subscription's figures.
    Count(Count),
    /// Record the attempt and the call's next state in the store.
    FinishAttempt {
        seq: i64,
        record: AttemptRecord,
        transition: Transition,
        block_group: bool,
    },
    /// Read a group's next calls from the store into the window.
    LoadGroup(GroupLoad),
    /// Read this redriven call and offer it outside its key's order.
    OfferOutOfOrder { seq: i64 },
}

/// The scheduler's in-memory state and rules.
#[derive(Debug)]
pub struct Reactor {
    pub window: Window,
    policy: RetryPolicy,
    on_dead: OnDead,
    /// Calls with an attempt in flight.
    in_flight: HashSet<i64>,
    /// Calls cancelled while their attempt was in flight.
    cancelled: HashSet<i64>,
    /// Workflows that made progress since they were loaded: the attempt their retry
    /// budget counts from, and when their age starts (the loaded call knows older ones).
    progress: HashMap<i64, (u32, Millis)>,
}

impl Reactor {
    pub fn new(window: Window, policy: RetryPolicy, on_dead: OnDead) -> Self {
        Self {
            window,
            policy,
            on_dead,
            in_flight: HashSet::new(),
            cancelled: HashSet::new(),
            progress: HashMap::new(),
        }
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `seq` is a workflow that stored journal entries since it was loaded (its
    /// loaded copy's `journal_len` is then out of date).
    pub fn made_progress(&self, seq: i64) -> bool {
        self.progress.contains_key(&seq)
    }

    /// An attempt of `seq` was sent.
    pub fn attempt_started(&mut self, seq: i64) {
        self.in_flight.insert(seq);
    }

    fn blocks(&self) -> bool {
        self.on_dead == OnDead::Block
    }

    /// An attempt ended at `now`; `random` in [0, 1) draws the backoff's jitter.
    pub fn attempt_ended(&mut self, ended: &AttemptEnded, now: Millis, random: f64) -> Vec<Effect> {
        let AttemptEnded {
            call,
            attempt,
            sent,
            outcome,
        } = ended;
        self.in_flight.remove(&call.seq);
        let mut effects = vec![Effect::ReleaseEndpoint {
            signal: signal_of(outcome),
            retry_after: outcome.retry_after,
            sent: *sent,
        }];
        let record = attempt_record(*attempt, sent.at, outcome);
        if self.cancelled.remove(&call.seq) {
            // An operator cancelled it while in flight: record the attempt, nothing more.
            self.progress.remove(&call.seq);
            effects.push(Effect::FinishAttempt {
                seq: call.seq,
                record,
                transition: Transition::Dead { error: String::new() },
                block_group: false,
            });
            effects.extend(self.window.complete(call.seq, Completion::Done).map(Effect::LoadGroup));
            return effects;
        }
        let (mut budget_from, mut age_from) = (
            call.attempts_before_redrive,
            call.redriven_at.unwrap_or(call.created_at),
        );
        if let Some(&(attempt, at)) = self.progress.get(&call.seq) {
            budget_from = budget_from.max(attempt);
            age_from = age_from.max(at);
        }
        let budget_attempt = attempt.saturating_sub(budget_from);
        let transition = decide(&self.policy, outcome, budget_attempt, age_from, now, random);
        let load = match &transition {
            Transition::Succeeded { .. } => {
                effects.push(Effect::Count(Count::Succeeded));
                self.progress.remove(&call.seq);
                self.window.complete(call.seq, Completion::Done)
            }
            Transition::Retry { at, .. } => {
                effects.push(Effect::Count(Count::WillRetry));
                self.window.retry(call.seq, *at, now);
                None
            }
            Transition::Suspended(suspended) => {
                effects.push(Effect::Count(Count::Suspended));
                self.progress.insert(call.seq, (*attempt, now));
                // Waiting for an event: parked until the store wakes it (a retry-now).
                let at = suspended.resume_at.unwrap_or(crate::workflow::NEVER);
                self.window.resume(call.seq, at, now);
                None
            }
            Transition::Dead { .. } | Transition::Paused { .. } => {
                effects.push(Effect::Count(if matches!(transition, Transition::Paused { .. }) {
                    Count::Paused
                } else {
                    Count::WentDead
                }));
                self.progress.remove(&call.seq);
                let how = if self.blocks() {
                    Completion::BlocksGroup
                } else {
                    Completion::Done
                };
                self.window.complete(call.seq, how)
            }
        };
        effects.push(Effect::FinishAttempt {
            seq: call.seq,
            record,
            transition,
            block_group: self.blocks(),
        });
        effects.extend(load.map(Effect::LoadGroup));
        effects
    }

    /// An operator acted on a call of this subscription.
    pub fn control(&mut self, control: Control, now: Millis) -> Vec<Effect> {
        match control {
            Control::RetryNow { seq } => {
                self.window.retry_now(seq, now);
                Vec::new()
            }
            Control::Cancelled {
                was: CallStatus::Dead | CallStatus::Paused,
                ordering_key,
                ..
            }
            | Control::Purged { ordering_key } => self.unblock(ordering_key),
            Control::Cancelled { seq, .. } => {
                let mut effects = vec![Effect::Count(Count::Cancelled)];
                if self.in_flight.contains(&seq) {
                    self.cancelled.insert(seq);
                } else {
                    self.progress.remove(&seq);
                    effects.extend(self.window.complete(seq, Completion::Done).map(Effect::LoadGroup));
                }
                effects
            }
            Control::Redriven { seq, ordering_key } => {
                let mut effects = vec![Effect::Count(Count::Redriven)];
                // With `on_dead = block` the key was held for this call: it runs first, then
                // the rest in order. Otherwise it runs as soon as possible, outside its key's
                // order (its successors may well have run already).
                let load = ordering_key
                    .as_deref()
                    .filter(|_| self.blocks())
                    .and_then(|key| self.window.unblock(key));
                effects.push(match load {
                    Some(load) => Effect::LoadGroup(load),
                    None => Effect::OfferOutOfOrder { seq },
                });
                effects
            }
        }
    }

    /// A dead call no longer blocks its key: let the key run again.
    fn unblock(&mut self, ordering_key: Option<Vec<u8>>) -> Vec<Effect> {
        ordering_key
            .and_then(|key| self.window.unblock(&key))
            .map(Effect::LoadGroup)
            .into_iter()
            .collect()
    }
}

fn attempt_record(attempt: u32, started_at: Millis, outcome: &AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        attempt,
        started_at,
        duration_ms: outcome.duration.as_millis() as i64,
        outcome: match outcome.workflow {
            Some(crate::workflow::WorkflowStep::Suspended(_)) => "suspended",
            Some(crate::workflow::WorkflowStep::Paused(_)) => "paused",
            None => outcome.class.as_str(),
        },
        http_status: outcome.http_status,
        error: outcome.error.clone(),
    }
}

#[cfg(test)]
#[path = "react_tests.rs"]
mod tests;
