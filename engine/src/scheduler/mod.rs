//! Scheduling: which call runs next, and what happens after each attempt.
//!
//! - [`window`]: the pure in-memory window with ordering groups.
//! - [`decide`]: the pure decision after an attempt (retry, succeed, dead).
//! - [`react`]: the pure reactions to an ended attempt or an operator's action, returned as
//!   effects.
//! - this module: the executor, one task per subscription, doing the I/O the pure parts ask
//!   for: loading from the store, delivering over HTTP, recording outcomes.

pub mod decide;
pub mod react;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use decide::decide;
pub use react::Control;
use react::{AttemptEnded, Count, Effect, Reactor};
use window::{GroupLoad, Window};

use crate::config::SubscriptionConfig;
use crate::delivery::{Deliverer, DeliveryLimits};
use crate::endpoints::{Endpoint, Wait};
use crate::figures::Figures;
use crate::limiter::Sent;
use crate::model::{now_millis, DueCall, Millis};
use crate::rate::RateLimit;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};

/// Calls waiting behind each group's head in memory.
const GROUP_QUEUE: usize = 8;
/// Most calls read from the store at once.
const LOAD_BATCH: usize = 1000;
/// How often a scheduler held by its lease looks again (ms).
const LEASE_RECHECK_MS: i64 = 100;

/// Runs the calls of one subscription until shutdown.
pub struct Scheduler {
    subscription: Arc<SubscriptionConfig>,
    store: Store,
    deliverer: Deliverer,
    reactor: Reactor,
    /// Every pending call with `seq <= cursor` has been offered to the window.
    cursor: i64,
    ended_tx: mpsc::UnboundedSender<AttemptEnded>,
    ended_rx: mpsc::UnboundedReceiver<AttemptEnded>,
    figures: Arc<Figures>,
    retry_count_at: Instant,
    /// Where calls go: its concurrency limit and rate limit apply on top of ours.
    endpoint: Arc<Endpoint>,
    /// This subscription's own rate limit.
    rate: Option<Arc<RateLimit>>,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    /// Every subscription of the engine: where a workflow's child calls run.
    directory: Arc<SubscriptionDirectory>,
    /// Where the outputs of successful calls are published, if anywhere.
    output_topic: Option<Arc<str>>,
    handover_tx: mpsc::UnboundedSender<Handover>,
    handover_rx: mpsc::UnboundedReceiver<Handover>,
    /// Calls up to this seq may be delivered (cluster mode: those in the changelog).
    ready_seq: Option<tokio::sync::watch::Receiver<i64>>,
    /// Cluster mode: after a freeze, no attempt starts until the group has spoken.
    lease: Option<crate::lease::Lease>,
}

/// Cluster mode: calls are leaving this engine (a revoked partition's, and the workflow
/// child calls that go with them). The scheduler lets its attempts in flight end, makes
/// their outcomes durable and says so (`still`); it then waits until the calls are gone
/// (`resume` sent or dropped) and starts over from the store: its window may hold calls
/// that left.
#[derive(Debug)]
pub struct Handover {
    pub still: tokio::sync::oneshot::Sender<()>,
    pub resume: tokio::sync::oneshot::Receiver<()>,
}

fn fresh_reactor(subscription: &SubscriptionConfig) -> Reactor {
    Reactor::new(
        Window::new(subscription.window, GROUP_QUEUE).with_byte_capacity(subscription.window_bytes),
        subscription.retry.clone(),
        subscription.on_dead,
    )
}

/// The engine's subscriptions, as a workflow of one of them sees them.
#[derive(Debug)]
pub struct SubscriptionDirectory {
    pub all: Arc<HashMap<String, Arc<SubscriptionConfig>>>,
    /// This subscription has a Kafka connection to publish workflows' records with.
    pub can_produce: bool,
}

impl crate::workflow::Directory for SubscriptionDirectory {
    fn has_subscription(&self, name: &str) -> bool {
        self.all.contains_key(name)
    }
    fn can_produce(&self) -> bool {
        self.can_produce
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("subscription", &self.subscription.name)
            .field("cursor", &self.cursor)
            .field("in_flight", &self.reactor.in_flight())
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(
        subscription: Arc<SubscriptionConfig>,
        store: Store,
        deliverer: Deliverer,
        endpoint: Arc<Endpoint>,
        figures: Arc<Figures>,
        all: Arc<HashMap<String, Arc<SubscriptionConfig>>>,
    ) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (handover_tx, handover_rx) = mpsc::unbounded_channel();
        let output_topic = subscription.output_topic.as_deref().map(Arc::from);
        let directory = Arc::new(SubscriptionDirectory {
            all,
            can_produce: subscription.kafka.is_some(),
        });
        Self {
            directory,
            control_tx,
            control_rx,
            rate: subscription
                .rate_limit
                .and_then(|r| RateLimit::new(r, subscription.rate_burst))
                .map(Arc::new),
            endpoint,
            reactor: fresh_reactor(&subscription),
            subscription,
            store,
            deliverer,
            cursor: 0,
            ended_tx,
            ended_rx,
            figures,
            retry_count_at: Instant::now(),
            output_topic,
            handover_tx,
            handover_rx,
            ready_seq: None,
            lease: None,
        }
    }

    /// Deliver only calls up to the seq this watch says (cluster mode: in the changelog).
    pub fn deliver_up_to(&mut self, ready_seq: tokio::sync::watch::Receiver<i64>) {
        self.ready_seq = Some(ready_seq);
    }

    /// Start no attempt while `lease` does not allow it (cluster mode).
    pub fn hold_after_freeze(&mut self, lease: crate::lease::Lease) {
        self.lease = Some(lease);
    }

    /// The static rate limits this subscription's attempts take from: its own and its
    /// endpoint's (cluster mode splits them by the partitions held).
    pub fn rate_limits(&self) -> Vec<Arc<RateLimit>> {
        self.rate.iter().chain(self.endpoint.rate()).cloned().collect()
    }

    /// Where revoked partitions are handed over (cluster mode).
    pub fn handovers(&self) -> mpsc::UnboundedSender<Handover> {
        self.handover_tx.clone()
    }

    /// Let attempts in flight end, stay still while calls leave, and start over from the
    /// store.
    async fn hand_over(&mut self, handover: Handover) -> Result<(), StoreError> {
        // No attempt outlives the subscription's timeout.
        let deadline = Instant::now() + self.subscription.timeout + Duration::from_secs(1);
        while self.reactor.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.ended_rx.recv()).await {
                Ok(Some(ended)) => self.on_attempt_ended(&ended).await?,
                _ => break,
            }
        }
        // Outcomes first, in a commit of their own: the release must not take them along.
        self.store.flush().await?;
        let _ = handover.still.send(());
        drop(handover.resume.await);
        self.reactor = fresh_reactor(&self.subscription);
        self.cursor = 0;
        for key in self.store.blocked_groups(&self.subscription.name).await? {
            self.reactor.window.block(key);
        }
        Ok(())
    }

    /// Where operators' actions are sent.
    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control_tx.clone()
    }

    /// The main loop. On shutdown, attempts in flight get up to `grace` to finish; any still
    /// running after that are left to crash recovery at the next start.
    pub async fn run(mut self, mut shutdown: Shutdown, grace: Duration) -> Result<(), StoreError> {
        // Keys held by a dead call are few and change only through this task or an
        // operator (who tells it): read them once, not per call.
        for key in self.store.blocked_groups(&self.subscription.name).await? {
            self.reactor.window.block(key);
        }
        // In cluster mode, a call is delivered only once the changelog has it: a record is
        // never two calls, whichever engine dies.
        let mut committed = self.ready_seq.take().unwrap_or_else(|| self.store.committed_seq());
        let mut releases = self.endpoint.releases();
        // Gauges (parked calls, due timers, retries) stay fresh while nothing happens.
        let mut figures_tick = tokio::time::interval(Duration::from_secs(1));
        figures_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.unpark_due().await?;
            self.fill(&committed).await?;
            let blocked = self.dispatch();
            self.publish_figures();
            let now = now_millis();
            // Wake for the next due call, unless capacity is what is missing.
            let wake_at = match blocked {
                Some(Wait::Until(at)) => Some(at),
                None if self.reactor.in_flight() < self.subscription.max_concurrency => self.reactor.window.next_due(),
                Some(Wait::Slot) | None => None,
            };
            // Parked calls are read back when due, whatever the capacity.
            let wake_at = match (wake_at, self.reactor.window.next_unpark()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|at| instant_at(at, now));
            let wait_for_slot = blocked == Some(Wait::Slot);
            let may_load = self.reactor.window.has_room();
            releases.borrow_and_update();
            tokio::select! {
                () = shutdown.recv() => break,
                Some(ended) = self.ended_rx.recv() => self.on_attempt_ended(&ended).await?,
                Some(handover) = self.handover_rx.recv() => self.hand_over(handover).await?,
                Some(control) = self.control_rx.recv() => {
                    let now = now_millis();
                    let effects = self.reactor.control(control, now);
                    self.apply(effects, now).await?;
                }
                Ok(()) = committed.changed(), if may_load => {}
                Ok(()) = releases.changed(), if wait_for_slot => {}
                () = sleep_until_opt(wake_at), if wake_at.is_some() => {}
                _ = figures_tick.tick() => {}
            }
        }
        let deadline = Instant::now() + grace;
        while self.reactor.in_flight() > 0 {
            match tokio::time::timeout_at(deadline, self.ended_rx.recv()).await {
                Ok(Some(ended)) => self.on_attempt_ended(&ended).await?,
                _ => break,
            }
        }
        if self.reactor.in_flight() > 0 {
            tracing::warn!(subscription = %self.subscription.name, calls = self.reactor.in_flight(), "left attempts in flight at shutdown; they run again at the next start");
        }
        self.publish_figures();
        Ok(())
    }

    /// Read back the parked calls whose retry is due.
    async fn unpark_due(&mut self) -> Result<(), StoreError> {
        let due = self.reactor.window.parked_due(now_millis());
        if due.is_empty() {
            return Ok(());
        }
        let mut calls = self.store.pending_calls(due.clone()).await?;
        // Not pending, or pending with fewer attempts than made: the outcome may still be
        // on its way to the disk. Make it durable and read those again.
        calls.retain(|c| !self.reactor.window.is_stale(c));
        let found: HashSet<i64> = calls.iter().map(|c| c.seq).collect();
        let again: Vec<i64> = due.iter().copied().filter(|seq| !found.contains(seq)).collect();
        if !again.is_empty() {
            self.store.flush().await?;
            calls.extend(self.store.pending_calls(again).await?);
        }
        let found: HashSet<i64> = calls.iter().map(|c| c.seq).collect();
        for call in calls {
            self.reactor.window.unpark(call);
        }
        for seq in due.into_iter().filter(|seq| !found.contains(seq)) {
            // No longer pending (an operator cancelled it): its key moves on.
            if let Some(load) = self.reactor.window.unpark_missing(seq) {
                self.load_group(load).await?;
            }
        }
        Ok(())
    }

    /// Offer new pending calls from the store while the window has room.
    async fn fill(&mut self, committed: &tokio::sync::watch::Receiver<i64>) -> Result<(), StoreError> {
        while self.reactor.window.has_room() {
            let committed_now = *committed.borrow();
            if self.cursor >= committed_now {
                return Ok(());
            }
            let room = self
                .subscription
                .window
                .saturating_sub(self.reactor.window.len())
                .clamp(1, LOAD_BATCH);
            let max_bytes = self.reactor.window.free_bytes();
            let calls = self
                .store
                .pending_between(&self.subscription.name, (self.cursor, committed_now), room, max_bytes)
                .await?;
            let bytes: usize = calls.iter().map(|c| c.payload.len()).sum();
            let exhausted = calls.len() < room && bytes < max_bytes;
            let now = now_millis();
            for call in calls {
                self.cursor = call.seq;
                self.reactor.window.offer_at(call, now);
            }
            if exhausted {
                self.cursor = self.cursor.max(committed_now);
            }
        }
        Ok(())
    }

    /// Start attempts for due calls, up to the limits. Returns what stopped it, when it was
    /// a limit of the endpoint or a rate limit (a call waiting for capacity makes no attempt
    /// and gets no backoff).
    fn dispatch(&mut self) -> Option<Wait> {
        if self.subscription.paused {
            return None;
        }
        if self.lease.as_ref().is_some_and(|lease| !lease.allows()) {
            return Some(Wait::Until(now_millis() + LEASE_RECHECK_MS));
        }
        while self.reactor.in_flight() < self.subscription.max_concurrency {
            let now = now_millis();
            if self.reactor.window.next_due().is_none_or(|at| at > now) {
                return None;
            }
            let sent_in_flight = match self.endpoint.try_acquire(now) {
                Ok(in_flight) => in_flight,
                Err(wait) => return Some(wait),
            };
            if let Some(rate) = &self.rate {
                if let Err(at) = rate.check(now) {
                    self.endpoint.release_unused();
                    return Some(Wait::Until(at));
                }
            }
            let (call, attempt, due) = self.reactor.window.pop_due_at(now).expect("a call is due");
            // A workflow that has a journal (stored, or just answered) resumes.
            let resumes = call.journal_len > 0 || self.reactor.made_progress(call.seq);
            if resumes {
                self.figures.workflow_resumed((now - due).max(0) as f64 / 1000.0);
            }
            if let Err(error) = self.store.start_attempt(call.seq, attempt, now) {
                tracing::error!(%error, "cannot record an attempt start");
            }
            self.reactor.attempt_started(call.seq);
            self.spawn_attempt(
                call,
                attempt,
                Sent {
                    at: now,
                    in_flight: sent_in_flight,
                },
                resumes,
            );
        }
        None
    }

    fn spawn_attempt(&self, call: Arc<DueCall>, attempt: u32, sent: Sent, with_journal: bool) {
        // A workflow's journal is read as the attempt starts, after the entries of its
        // last answer are durable.
        let journal_of = with_journal.then(|| self.store.clone());
        let deliverer = self.deliverer.clone();
        let ended = self.ended_tx.clone();
        let subscription = Arc::clone(&self.subscription);
        let figures = Arc::clone(&self.figures);
        let directory = Arc::clone(&self.directory);
        tokio::spawn(async move {
            let limits = DeliveryLimits {
                timeout: subscription.timeout,
                max_output_bytes: subscription.max_output_bytes,
            };
            let clock = std::time::Instant::now();
            let journal = match journal_of {
                Some(store) => match store.journal(call.seq).await {
                    Ok(journal) => Some(journal),
                    Err(error) => {
                        let _ = ended.send(AttemptEnded {
                            outcome: crate::delivery::AttemptOutcome::not_sent(format!(
                                "cannot read the workflow's journal: {error}"
                            )),
                            call,
                            attempt,
                            sent,
                        });
                        return;
                    }
                },
                None => None,
            };
            let outcome = deliverer
                .deliver(&call, attempt, &subscription.name, limits, journal, &*directory)
                .await;
            figures.attempt_took(clock.elapsed().as_secs_f64());
            let _ = ended.send(AttemptEnded {
                call,
                attempt,
                sent,
                outcome,
            });
        });
    }

    async fn on_attempt_ended(&mut self, ended: &AttemptEnded) -> Result<(), StoreError> {
        let random = rand::rng().random::<f64>();
        let now = now_millis();
        let effects = self.reactor.attempt_ended(ended, now, random);
        if let Some(error) = &ended.outcome.error {
            tracing::debug!(call = %ended.call.id, attempt = ended.attempt, %error, "attempt failed");
        }
        self.apply(effects, now).await
    }

    /// Carry out the reactor's effects, in order; `now` is when the reaction happened.
    async fn apply(&mut self, effects: Vec<Effect>, now: Millis) -> Result<(), StoreError> {
        for effect in effects {
            match effect {
                Effect::ReleaseEndpoint {
                    signal,
                    retry_after,
                    sent,
                } => self.endpoint.release(signal, retry_after, sent, now),
                Effect::Count(count) => self.count(count),
                Effect::FinishAttempt {
                    seq,
                    record,
                    transition,
                    block_group,
                } => {
                    match &transition {
                        crate::model::Transition::Dead { error } if !error.is_empty() => {
                            tracing::info!(call = seq, %error, "call is dead");
                        }
                        crate::model::Transition::Paused { error } => {
                            tracing::warn!(call = seq, %error, "workflow paused: an operator must act (redrive resumes it)");
                        }
                        _ => {}
                    }
                    let transition = self.with_children(transition);
                    let output_topic = match &transition {
                        crate::model::Transition::Succeeded { .. } => self.output_topic.clone(),
                        _ => None,
                    };
                    let publishes = output_topic.is_some();
                    self.store
                        .finish_attempt(seq, record, transition, block_group, output_topic)?;
                    if publishes {
                        self.figures.output_stored();
                    }
                }
                Effect::LoadGroup(load) => self.load_group(load).await?,
                Effect::OfferOutOfOrder { seq } => {
                    let mut calls = self.store.pending_after(&self.subscription.name, seq - 1, 1).await?;
                    if let Some(mut call) = calls.pop().filter(|c| c.seq == seq) {
                        call.ordering_key = None;
                        self.reactor.window.offer(call);
                    }
                }
            }
        }
        Ok(())
    }

    /// A suspension's children as calls of their subscriptions, ready to store.
    fn with_children(&mut self, transition: crate::model::Transition) -> crate::model::Transition {
        let crate::model::Transition::Suspended(mut suspended) = transition else {
            return transition;
        };
        suspended.calls = suspended
            .children
            .iter()
            .filter_map(|child| {
                let config = self.directory.all.get(&child.subscription)?;
                Some(crate::ingest::new_call(
                    config,
                    crate::ingest::Record {
                        value: Some(child.input.clone()),
                        key: child.key.clone().map(String::into_bytes),
                        headers: None,
                        source: None,
                    },
                ))
            })
            .collect();
        crate::model::Transition::Suspended(suspended)
    }

    fn count(&self, count: Count) {
        match count {
            Count::Succeeded => self.figures.call_succeeded(),
            Count::WillRetry => self.figures.attempt_will_retry(),
            Count::WentDead => self.figures.call_went_dead(),
            Count::Cancelled => self.figures.call_cancelled(),
            Count::Redriven => self.figures.call_redriven(),
            Count::Suspended => self.figures.workflow_suspended(),
            Count::Paused => self.figures.workflow_paused(),
        }
    }

    async fn load_group(&mut self, load: GroupLoad) -> Result<(), StoreError> {
        let limit = GROUP_QUEUE + 1;
        let calls = self
            .store
            .next_in_group(
                &self.subscription.name,
                load.ordering_key.clone(),
                load.after_seq,
                self.cursor,
                limit,
            )
            .await?;
        let complete = calls.len() < limit;
        self.reactor.window.group_loaded(&load.ordering_key, calls, complete);
        Ok(())
    }

    fn publish_figures(&mut self) {
        self.figures
            .scheduler_holds(self.reactor.in_flight(), self.reactor.window.len());
        // Counting retries walks the window: do it a few times a second, not per event.
        if self.retry_count_at.elapsed() >= Duration::from_millis(250) {
            self.retry_count_at = Instant::now();
            self.figures.waiting_retry(self.reactor.window.retrying());
            let window = &self.reactor.window;
            self.figures
                .parked(window.parked(), window.parked_overdue(now_millis()));
        }
    }
}

fn instant_at(at: Millis, now: Millis) -> Instant {
    // At most a day ahead: a wait only an event ends is parked at a time far in the future.
    Instant::now() + Duration::from_millis((at - now).clamp(0, 86_400_000) as u64)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
