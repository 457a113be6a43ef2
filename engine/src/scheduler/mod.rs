//! Scheduling: which call runs next, and what happens after each attempt.
//!
//! - [`window`]: the pure in-memory window with ordering groups.
//! - [`decide`]: the pure decision after an attempt (retry, succeed, dead).
//! - this module: the executor, one task per subscription, doing the I/O the pure parts ask
//!   for: loading from the store, delivering over HTTP, recording outcomes.

pub mod decide;
pub mod window;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

pub use decide::decide;
use window::{Completion, GroupLoad, Window};

use crate::config::{OnDead, SubscriptionConfig};
use crate::delivery::{AttemptOutcome, Deliverer, DeliveryLimits};
use crate::endpoints::{check_rate, rate_limiter, Endpoint, Wait};
use crate::limiter::signal_of;
use crate::model::{now_millis, AttemptRecord, CallStatus, DueCall, Millis, Transition};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, now_secs, Histogram, RateWindow};
use connectors::kafka::SourceStatus;

/// Calls waiting behind each group's head in memory.
const GROUP_QUEUE: usize = 8;
/// Most calls read from the store at once.
const LOAD_BATCH: usize = 1000;

/// Live figures of one subscription's scheduler, read by stats and the status line.
#[derive(Debug)]
pub struct SchedulerStats {
    /// Calls created (not counting duplicates of records already stored).
    pub ingested: AtomicU64,
    /// Calls pending or running: the backlog that backpressure bounds.
    pub open: AtomicI64,
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub in_flight: AtomicU64,
    pub in_memory: AtomicU64,
    pub waiting_retry: AtomicU64,
    /// Seconds from sending an attempt to its outcome.
    pub attempt_seconds: Histogram,
    /// Calls created per second, over the last minute.
    pub created_rate: RateWindow,
    /// Calls finished (succeeded or dead) per second, over the last minute.
    pub finished_rate: RateWindow,
    /// The Kafka source's figures, once it runs.
    pub source: OnceLock<Arc<SourceStatus>>,
    /// Woken when a call goes dead, for the dead-letter publisher.
    pub went_dead: Notify,
    /// Dead calls produced to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Set while producing dead letters fails.
    pub dead_letter_failing: AtomicBool,
}

impl Default for SchedulerStats {
    fn default() -> Self {
        Self {
            ingested: AtomicU64::default(),
            open: AtomicI64::default(),
            succeeded: AtomicU64::default(),
            retried: AtomicU64::default(),
            dead: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            in_memory: AtomicU64::default(),
            waiting_retry: AtomicU64::default(),
            attempt_seconds: Histogram::new(telemetry::LATENCY_BOUNDS),
            created_rate: RateWindow::default(),
            finished_rate: RateWindow::default(),
            source: OnceLock::new(),
            went_dead: Notify::new(),
            dead_lettered: AtomicU64::default(),
            dead_letter_failing: AtomicBool::default(),
        }
    }
}

struct Finished {
    call: Arc<DueCall>,
    attempt: u32,
    started_at: Millis,
    outcome: AttemptOutcome,
}

/// Runs the calls of one subscription until `shutdown` turns true.
pub struct Scheduler {
    subscription: Arc<SubscriptionConfig>,
    store: Store,
    deliverer: Deliverer,
    window: Window,
    /// Every pending call with `seq <= cursor` has been offered to the window.
    cursor: i64,
    in_flight: usize,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    stats: Arc<SchedulerStats>,
    retry_count_at: Instant,
    /// Where calls go: its concurrency limit and rate limit apply on top of ours.
    endpoint: Arc<Endpoint>,
    /// This subscription's own rate limit.
    rate: Option<governor::DefaultDirectRateLimiter>,
    control_tx: mpsc::UnboundedSender<Control>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    /// Calls with an attempt in flight.
    in_flight_calls: HashSet<i64>,
    /// Calls cancelled while their attempt was in flight.
    cancelled: HashSet<i64>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("subscription", &self.subscription.name)
            .field("cursor", &self.cursor)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    pub fn new(
        subscription: Arc<SubscriptionConfig>,
        store: Store,
        deliverer: Deliverer,
        endpoint: Arc<Endpoint>,
    ) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        Self {
            control_tx,
            control_rx,
            in_flight_calls: HashSet::new(),
            cancelled: HashSet::new(),
            rate: subscription
                .rate_limit
                .and_then(|r| rate_limiter(r, subscription.rate_burst)),
            endpoint,
            window: Window::new(subscription.window, GROUP_QUEUE),
            subscription,
            store,
            deliverer,
            cursor: 0,
            in_flight: 0,
            finished_tx,
            finished_rx,
            stats: Arc::default(),
            retry_count_at: Instant::now(),
        }
    }

    /// Where operators' actions are sent.
    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control_tx.clone()
    }

    pub fn stats(&self) -> Arc<SchedulerStats> {
        Arc::clone(&self.stats)
    }

    /// The main loop. On shutdown, attempts in flight get up to `grace` to finish; any still
    /// running after that are left to crash recovery at the next start.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, grace: Duration) -> Result<(), StoreError> {
        // Keys held by a dead call are few and change only through this task or an
        // operator (who tells it): read them once, not per call.
        for key in self.store.blocked_groups(&self.subscription.name).await? {
            self.window.block(key);
        }
        let mut committed = self.store.committed_seq();
        let mut releases = self.endpoint.releases();
        loop {
            self.fill(&committed).await?;
            let blocked = self.dispatch();
            self.publish_stats();
            let now = now_millis();
            // Wake for the next due call, unless capacity is what is missing.
            let wake_at = match blocked {
                Some(Wait::Until(at)) => Some(at),
                None if self.in_flight < self.subscription.max_concurrency => self.window.next_due(),
                Some(Wait::Slot) | None => None,
            }
            .map(|at| instant_at(at, now));
            let wait_for_slot = blocked == Some(Wait::Slot);
            let may_load = self.window.has_room();
            releases.borrow_and_update();
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(finished) = self.finished_rx.recv() => self.on_finished(finished).await?,
                Some(control) = self.control_rx.recv() => self.on_control(control).await?,
                Ok(()) = committed.changed(), if may_load => {}
                Ok(()) = releases.changed(), if wait_for_slot => {}
                () = sleep_until_opt(wake_at), if wake_at.is_some() => {}
            }
        }
        let deadline = Instant::now() + grace;
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.finished_rx.recv()).await {
                Ok(Some(finished)) => self.on_finished(finished).await?,
                _ => break,
            }
        }
        if self.in_flight > 0 {
            tracing::warn!(subscription = %self.subscription.name, calls = self.in_flight, "left attempts in flight at shutdown; they run again at the next start");
        }
        self.publish_stats();
        Ok(())
    }

    /// Offer new pending calls from the store while the window has room.
    async fn fill(&mut self, committed: &watch::Receiver<i64>) -> Result<(), StoreError> {
        while self.window.has_room() {
            let committed_now = *committed.borrow();
            if self.cursor >= committed_now {
                return Ok(());
            }
            let room = self
                .subscription
                .window
                .saturating_sub(self.window.len())
                .clamp(1, LOAD_BATCH);
            let calls = self
                .store
                .pending_after(&self.subscription.name, self.cursor, room)
                .await?;
            let exhausted = calls.len() < room;
            for call in calls {
                self.cursor = call.seq;
                self.window.offer(call);
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
        while self.in_flight < self.subscription.max_concurrency {
            let now = now_millis();
            if self.window.next_due().is_none_or(|at| at > now) {
                return None;
            }
            if let Err(wait) = self.endpoint.try_acquire(now) {
                return Some(wait);
            }
            if let Some(rate) = &self.rate {
                if let Err(at) = check_rate(rate, now) {
                    self.endpoint.release_unused();
                    return Some(Wait::Until(at));
                }
            }
            let (call, attempt) = self.window.pop_due(now).expect("a call is due");
            if let Err(error) = self.store.start_attempt(call.seq, attempt, now) {
                tracing::error!(%error, "cannot record an attempt start");
            }
            self.in_flight += 1;
            self.in_flight_calls.insert(call.seq);
            let deliverer = self.deliverer.clone();
            let finished = self.finished_tx.clone();
            let subscription = Arc::clone(&self.subscription);
            let stats = Arc::clone(&self.stats);
            tokio::spawn(async move {
                let limits = DeliveryLimits {
                    timeout: subscription.timeout,
                    max_output_bytes: subscription.max_output_bytes,
                };
                let sent = std::time::Instant::now();
                let outcome = deliverer.deliver(&call, attempt, &subscription.name, limits).await;
                stats.attempt_seconds.observe(sent.elapsed().as_secs_f64());
                let _ = finished.send(Finished {
                    call,
                    attempt,
                    started_at: now,
                    outcome,
                });
            });
        }
        None
    }

    async fn on_control(&mut self, control: Control) -> Result<(), StoreError> {
        let block = self.subscription.on_dead == OnDead::Block;
        match control {
            Control::RetryNow { seq } => {
                self.window.retry_now(seq, now_millis());
            }
            Control::Cancelled { seq, was, ordering_key } => {
                if was == CallStatus::Dead {
                    return self.unblock(ordering_key).await;
                }
                self.stats.open.fetch_sub(1, Relaxed);
                if self.in_flight_calls.contains(&seq) {
                    self.cancelled.insert(seq);
                } else if let Some(load) = self.window.complete(seq, Completion::Done) {
                    self.load_group(load).await?;
                }
            }
            Control::Redriven { seq, ordering_key } => {
                self.stats.open.fetch_add(1, Relaxed);
                if block {
                    // The key was held for this call: it runs first, then the rest in order.
                    if let Some(load) = ordering_key.as_deref().and_then(|k| self.window.unblock(k)) {
                        return self.load_group(load).await;
                    }
                }
                // Otherwise it runs as soon as possible, outside its key's order (its
                // successors may well have run already).
                let mut calls = self.store.pending_after(&self.subscription.name, seq - 1, 1).await?;
                if let Some(mut call) = calls.pop().filter(|c| c.seq == seq) {
                    call.ordering_key = None;
                    self.window.offer(call);
                }
            }
            Control::Purged { ordering_key } => return self.unblock(ordering_key).await,
        }
        Ok(())
    }

    /// A dead call no longer blocks its key: let the key run again.
    async fn unblock(&mut self, ordering_key: Option<Vec<u8>>) -> Result<(), StoreError> {
        if let Some(load) = ordering_key.and_then(|key| self.window.unblock(&key)) {
            self.load_group(load).await?;
        }
        Ok(())
    }

    async fn on_finished(&mut self, finished: Finished) -> Result<(), StoreError> {
        self.in_flight -= 1;
        self.in_flight_calls.remove(&finished.call.seq);
        let Finished {
            call,
            attempt,
            started_at,
            outcome,
        } = finished;
        let now = now_millis();
        self.endpoint
            .release(signal_of(&outcome), outcome.retry_after, started_at, now);
        let random = rand::rng().random::<f64>();
        let budget_attempt = attempt.saturating_sub(call.attempts_before_redrive);
        let age_from = call.redriven_at.unwrap_or(call.created_at);
        if self.cancelled.remove(&call.seq) {
            // An operator cancelled it while in flight: record the attempt, nothing more.
            let record = attempt_record(attempt, started_at, &outcome);
            self.store
                .finish_attempt(call.seq, record, Transition::Dead { error: String::new() }, false)?;
            if let Some(load) = self.window.complete(call.seq, Completion::Done) {
                self.load_group(load).await?;
            }
            return Ok(());
        }
        let transition = decide(
            &self.subscription.retry,
            &outcome,
            budget_attempt,
            age_from,
            now,
            random,
        );
        let record = attempt_record(attempt, started_at, &outcome);
        let load = match &transition {
            Transition::Succeeded { .. } => {
                self.stats.succeeded.fetch_add(1, Relaxed);
                self.stats.finished_rate.add(now_secs(), 1);
                self.stats.open.fetch_sub(1, Relaxed);
                self.window.complete(call.seq, Completion::Done)
            }
            Transition::Retry { at, error } => {
                self.stats.retried.fetch_add(1, Relaxed);
                tracing::debug!(call = %call.id, attempt, %error, retry_in_ms = at - now, "attempt failed; will retry");
                self.window.retry(call.seq, *at);
                None
            }
            Transition::Dead { error } => {
                self.stats.dead.fetch_add(1, Relaxed);
                self.stats.finished_rate.add(now_secs(), 1);
                self.stats.went_dead.notify_one();
                self.stats.open.fetch_sub(1, Relaxed);
                tracing::info!(call = %call.id, attempt, %error, "call is dead");
                let how = if self.subscription.on_dead == OnDead::Block {
                    Completion::BlocksGroup
                } else {
                    Completion::Done
                };
                self.window.complete(call.seq, how)
            }
        };
        let block_group = self.subscription.on_dead == OnDead::Block;
        self.store.finish_attempt(call.seq, record, transition, block_group)?;
        if let Some(load) = load {
            self.load_group(load).await?;
        }
        Ok(())
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
        self.window.group_loaded(&load.ordering_key, calls, complete);
        Ok(())
    }

    fn publish_stats(&mut self) {
        self.stats.in_flight.store(self.in_flight as u64, Relaxed);
        self.stats.in_memory.store(self.window.len() as u64, Relaxed);
        // Counting retries walks the window: do it a few times a second, not per event.
        if self.retry_count_at.elapsed() >= Duration::from_millis(250) {
            self.retry_count_at = Instant::now();
            self.stats.waiting_retry.store(self.window.retrying() as u64, Relaxed);
        }
    }
}

fn attempt_record(attempt: u32, started_at: Millis, outcome: &AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        attempt,
        started_at,
        duration_ms: outcome.duration.as_millis() as i64,
        outcome: outcome.class.as_str(),
        http_status: outcome.http_status,
        error: outcome.error.clone(),
    }
}

/// What an operator did, as the scheduler of the call's subscription must know it.
#[derive(Debug, Clone)]
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

fn instant_at(at: Millis, now: Millis) -> Instant {
    Instant::now() + Duration::from_millis((at - now).max(0) as u64)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
