//! The live figures of one subscription: what its source, scheduler and dead-letter
//! publisher report, changed only through methods that say what happened.
//!
//! Readers (the admin API, `/metrics`, the status line, tests) take a [`FiguresSnapshot`].
//! The backlog (calls pending or running) is what backpressure bounds; the source waits on
//! [`Figures::backlog_fell`] rather than polling it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use connectors::kafka::SourceStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::telemetry::{self, now_secs, Histogram, HistogramSnapshot, RateWindow};

/// Live figures of one subscription.
#[derive(Debug)]
pub struct Figures {
    ingested: AtomicU64,
    backlog: AtomicI64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    suspended: AtomicU64,
    paused: AtomicU64,
    dead: AtomicU64,
    in_flight: AtomicU64,
    in_memory: AtomicU64,
    waiting_retry: AtomicU64,
    parked: AtomicU64,
    timers_due: AtomicU64,
    attempt_seconds: Histogram,
    wake_lag_seconds: Histogram,
    created_rate: RateWindow,
    finished_rate: RateWindow,
    source: OnceLock<Arc<SourceStatus>>,
    went_dead: Notify,
    outbox_grew: Notify,
    backlog_fell: Notify,
    dead_lettered: AtomicU64,
    dead_letters_failing: AtomicBool,
    restores: AtomicU64,
    restored_calls: AtomicU64,
    restore_micros: AtomicU64,
}

/// Cluster mode's restores since start: how many, the calls they stored, their time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Restores {
    pub restores: u64,
    pub calls: u64,
    pub seconds: f64,
}

impl Default for Figures {
    fn default() -> Self {
        Self {
            ingested: AtomicU64::default(),
            backlog: AtomicI64::default(),
            succeeded: AtomicU64::default(),
            retried: AtomicU64::default(),
            suspended: AtomicU64::default(),
            paused: AtomicU64::default(),
            dead: AtomicU64::default(),
            in_flight: AtomicU64::default(),
            in_memory: AtomicU64::default(),
            waiting_retry: AtomicU64::default(),
            parked: AtomicU64::default(),
            timers_due: AtomicU64::default(),
            attempt_seconds: Histogram::new(telemetry::LATENCY_BOUNDS),
            wake_lag_seconds: Histogram::new(telemetry::LATENCY_BOUNDS),
            created_rate: RateWindow::default(),
            finished_rate: RateWindow::default(),
            source: OnceLock::new(),
            went_dead: Notify::new(),
            outbox_grew: Notify::new(),
            backlog_fell: Notify::new(),
            dead_lettered: AtomicU64::default(),
            dead_letters_failing: AtomicBool::default(),
            restores: AtomicU64::default(),
            restored_calls: AtomicU64::default(),
            restore_micros: AtomicU64::default(),
        }
    }
}

/// The figures at one moment, as the admin API shows them per subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FiguresSnapshot {
    /// Calls created (not counting duplicates of records already stored).
    pub ingested: u64,
    /// Calls pending or running.
    pub backlog: i64,
    pub succeeded: u64,
    /// Attempts that failed temporarily.
    pub retried: u64,
    /// Workflow answers that stored journal entries and suspended (protocol 4).
    #[serde(default)]
    pub suspended: u64,
    /// Workflows paused for an operator (their code no longer matches their journal).
    #[serde(default)]
    pub paused: u64,
    pub dead: u64,
    pub in_flight: u64,
    /// Calls held in the scheduler's memory window.
    pub in_memory: u64,
    /// Calls waiting for a retry.
    pub waiting_retry: u64,
    /// Calls waiting outside memory for a time or an event: sleeping and waiting
    /// workflows, retries far off.
    #[serde(default)]
    pub parked: u64,
    /// Parked calls past their time and not read back yet: timers due.
    #[serde(default)]
    pub timers_due: u64,
    /// Dead calls produced to the dead-letter topic.
    pub dead_lettered: u64,
    /// Whether producing dead letters fails at the moment.
    pub dead_letters_failing: bool,
}

impl Figures {
    /// The backlog found in the store at start.
    pub fn start_with_backlog(&self, calls: u64) {
        self.backlog.store(calls as i64, Relaxed);
    }

    /// Scale-out: calls of a partition arrived (positive) or left (negative).
    pub fn calls_moved(&self, backlog: i64) {
        self.backlog.fetch_add(backlog, Relaxed);
        if backlog < 0 {
            self.backlog_fell.notify_one();
        }
    }

    /// Cluster mode: newly assigned partitions were restored from the changelog.
    pub fn restored(&self, calls: u64, took: std::time::Duration) {
        self.restores.fetch_add(1, Relaxed);
        self.restored_calls.fetch_add(calls, Relaxed);
        self.restore_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn restores(&self) -> Restores {
        Restores {
            restores: self.restores.load(Relaxed),
            calls: self.restored_calls.load(Relaxed),
            seconds: self.restore_micros.load(Relaxed) as f64 / 1e6,
        }
    }

    /// Calls became durable: `created` new ones, of which `born_dead` were dead at once (a
    /// payload above the limit). Duplicates of stored records are not counted.
    pub fn calls_created(&self, created: u64, born_dead: u64) {
        self.ingested.fetch_add(created, Relaxed);
        self.created_rate.add(now_secs(), created);
        self.backlog
            .fetch_add((created - born_dead.min(created)) as i64, Relaxed);
        if born_dead > 0 {
            self.went_dead.notify_one();
        }
    }

    /// An attempt took `seconds` from sending to its outcome.
    pub fn attempt_took(&self, seconds: f64) {
        self.attempt_seconds.observe(seconds);
    }

    pub fn call_succeeded(&self) {
        self.succeeded.fetch_add(1, Relaxed);
        self.finished_rate.add(now_secs(), 1);
        self.backlog_down();
    }

    pub fn attempt_will_retry(&self) {
        self.retried.fetch_add(1, Relaxed);
    }

    pub fn call_went_dead(&self) {
        self.dead.fetch_add(1, Relaxed);
        self.finished_rate.add(now_secs(), 1);
        self.went_dead.notify_one();
        self.backlog_down();
    }

    /// A workflow's next attempt started `seconds` after it was due (a sleep's wake time,
    /// the end of what it waited for, or a retry's time).
    pub fn workflow_resumed(&self, seconds: f64) {
        self.wake_lag_seconds.observe(seconds);
    }

    pub fn wake_lag_seconds(&self) -> HistogramSnapshot {
        self.wake_lag_seconds.snapshot()
    }

    /// A workflow stored entries and waits to be called again.
    pub fn workflow_suspended(&self) {
        self.suspended.fetch_add(1, Relaxed);
        self.outbox_grew.notify_one();
    }

    /// Resolves after the next suspension or published output (either may have added
    /// records to the outbox).
    pub async fn outbox_grew(&self) {
        self.outbox_grew.notified().await;
    }

    /// A call's output went to the outbox.
    pub fn output_stored(&self) {
        self.outbox_grew.notify_one();
    }

    /// A workflow was paused for an operator: no longer in the backlog.
    pub fn workflow_paused(&self) {
        self.paused.fetch_add(1, Relaxed);
        self.backlog_down();
    }

    /// An operator cancelled a pending or running call.
    pub fn call_cancelled(&self) {
        self.backlog_down();
    }

    /// An operator made a dead call pending again.
    pub fn call_redriven(&self) {
        self.backlog.fetch_add(1, Relaxed);
    }

    /// What the scheduler holds now.
    pub fn scheduler_holds(&self, in_flight: usize, in_memory: usize) {
        self.in_flight.store(in_flight as u64, Relaxed);
        self.in_memory.store(in_memory as u64, Relaxed);
    }

    pub fn waiting_retry(&self, calls: usize) {
        self.waiting_retry.store(calls as u64, Relaxed);
    }

    /// Calls parked by the scheduler, and how many of them are past their time.
    pub fn parked(&self, parked: usize, due: usize) {
        self.parked.store(parked as u64, Relaxed);
        self.timers_due.store(due as u64, Relaxed);
    }

    /// The Kafka source started; its own figures are read through it.
    pub fn source_started(&self, status: Arc<SourceStatus>) {
        let _ = self.source.set(status);
    }

    /// Dead letters were produced (and acknowledged by the broker).
    pub fn dead_letters_published(&self, calls: usize) {
        self.dead_lettered.fetch_add(calls as u64, Relaxed);
    }

    /// Producing dead letters fails (or works again). Returns whether it failed before.
    pub fn dead_letters_failing(&self, failing: bool) -> bool {
        self.dead_letters_failing.swap(failing, Relaxed)
    }

    /// Calls pending or running.
    pub fn backlog(&self) -> i64 {
        self.backlog.load(Relaxed)
    }

    /// Completes after the backlog fell (at once if it fell since the last wait).
    pub async fn backlog_fell(&self) {
        self.backlog_fell.notified().await;
    }

    /// Completes after a call went dead (at once if one did since the last wait).
    pub async fn went_dead(&self) {
        self.went_dead.notified().await;
    }

    pub fn source(&self) -> Option<&Arc<SourceStatus>> {
        self.source.get()
    }

    pub fn attempt_seconds(&self) -> HistogramSnapshot {
        self.attempt_seconds.snapshot()
    }

    /// Calls created and finished per second, over the rate window.
    pub fn rates(&self) -> (f64, f64) {
        let now = now_secs();
        (self.created_rate.per_second(now), self.finished_rate.per_second(now))
    }

    pub fn snapshot(&self) -> FiguresSnapshot {
        FiguresSnapshot {
            ingested: self.ingested.load(Relaxed),
            backlog: self.backlog.load(Relaxed),
            succeeded: self.succeeded.load(Relaxed),
            retried: self.retried.load(Relaxed),
            suspended: self.suspended.load(Relaxed),
            paused: self.paused.load(Relaxed),
            dead: self.dead.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            in_memory: self.in_memory.load(Relaxed),
            waiting_retry: self.waiting_retry.load(Relaxed),
            parked: self.parked.load(Relaxed),
            timers_due: self.timers_due.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            dead_letters_failing: self.dead_letters_failing.load(Relaxed),
        }
    }

    fn backlog_down(&self) {
        self.backlog.fetch_sub(1, Relaxed);
        // One waiter (the source): a stored permit wakes it even if it was not waiting yet.
        self.backlog_fell.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_follows_what_happened_to_calls() {
        let figures = Figures::default();
        figures.start_with_backlog(2);
        figures.calls_created(5, 1);
        assert_eq!(figures.backlog(), 6);
        figures.call_succeeded();
        figures.call_went_dead();
        figures.call_cancelled();
        figures.call_redriven();
        let snapshot = figures.snapshot();
        assert_eq!(snapshot.backlog, 4);
        assert_eq!((snapshot.ingested, snapshot.succeeded, snapshot.dead), (5, 1, 1));
    }

    #[tokio::test]
    async fn a_fall_of_the_backlog_before_the_wait_is_not_lost() {
        let figures = Figures::default();
        figures.calls_created(1, 0);
        figures.call_succeeded();
        tokio::time::timeout(std::time::Duration::from_secs(1), figures.backlog_fell())
            .await
            .expect("the stored wake-up");
    }
}
