//! The delivery lease of cluster mode: an engine that was frozen (a long GC-like pause, a
//! stopped or migrated VM, `SIGSTOP`) may have lost its partitions while it could not
//! heartbeat, and another engine may be delivering their calls already. So after a freeze
//! it starts no attempt until the group has spoken (its next rebalance: the partitions
//! are revoked, or assigned again) or, if no rebalance comes, until a session timeout has
//! passed awake (the group kept it: a member it had dropped would have been told by then).
//!
//! A watchdog thread ticks on the monotonic clock; a gap between ticks longer than
//! `freeze_after` is a freeze. [`Hold`] is the pure decision; [`Lease`] runs it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
const TICK: Duration = Duration::from_millis(100);

/// Whether deliveries may start, given the ticks seen (pure; times are durations since
/// a common origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    freeze_after: Duration,
    /// How long a hold lasts awake without a rebalance: the session timeout.
    session: Duration,
    last_tick: Duration,
    /// Since when deliveries wait, after a freeze.
    held_since: Option<Duration>,
}

impl Hold {
    pub fn new(freeze_after: Duration, session: Duration, now: Duration) -> Self {
        Self {
            freeze_after,
            session,
            last_tick: now,
            held_since: None,
        }
    }

    /// A watchdog tick at `now`. Returns the gap if it was a freeze.
    pub fn tick(&mut self, now: Duration) -> Option<Duration> {
        let gap = now.saturating_sub(self.last_tick);
        self.last_tick = now;
        if gap > self.freeze_after {
            self.held_since = Some(now);
            return Some(gap);
        }
        if self
            .held_since
            .is_some_and(|since| now.saturating_sub(since) >= self.session)
        {
            self.held_since = None;
        }
        None
    }

    /// The group rebalanced: it has decided who owns what since the freeze.
    pub fn rebalanced(&mut self) {
        self.held_since = None;
    }

    /// May attempts start at `now`? Not while held, nor when the watchdog has not ticked for
    /// longer than a freeze (the process just woke, and the watchdog has not run yet).
    pub fn allows(&self, now: Duration) -> bool {
        self.held_since.is_none() && now.saturating_sub(self.last_tick) <= self.freeze_after
    }
}

/// A [`Hold`] kept by a watchdog thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Lease {
    origin: Instant,
    hold: Arc<Mutex<Hold>>,
}

impl Lease {
    /// Start the watchdog of one subscription's source. `session_timeout` is its
    /// `session.timeout.ms`: a freeze of a third of it may have cost the session.
    pub fn start(name: &str, session_timeout: Duration) -> Self {
        let origin = Instant::now();
        let lease = Self {
            origin,
            hold: Arc::new(Mutex::new(Hold::new(
                session_timeout / 3,
                session_timeout,
                Duration::ZERO,
            ))),
        };
        let weak = Arc::downgrade(&lease.hold);
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name("lease-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let Some(hold) = weak.upgrade() else { return };
                let frozen = hold.lock().expect("lease lock").tick(origin.elapsed());
                if let Some(gap) = frozen {
                    tracing::warn!(subscription = %name, frozen_ms = gap.as_millis() as u64, "the engine was frozen for longer than a third of its Kafka session; no attempt starts until the group confirms or moves its partitions");
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the lease watchdog; deliveries do not wait after a freeze");
        }
        lease
    }

    pub fn allows(&self) -> bool {
        self.hold.lock().expect("lease lock").allows(self.origin.elapsed())
    }

    pub fn rebalanced(&self) {
        self.hold.lock().expect("lease lock").rebalanced();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn regular_ticks_allow_deliveries() {
        let mut hold = Hold::new(2000 * MS, 6000 * MS, Duration::ZERO);
        for t in (100..=5000).step_by(100) {
            assert_eq!(hold.tick(t * MS), None);
            assert!(hold.allows(t * MS + 50 * MS));
        }
    }

    #[test]
    fn a_process_that_just_woke_waits_even_before_the_watchdog_runs() {
        let hold = Hold::new(2000 * MS, 6000 * MS, Duration::ZERO);
        assert!(hold.allows(1900 * MS));
        assert!(!hold.allows(9000 * MS), "frozen for 9 s, not ticked yet");
    }

    #[test]
    fn after_a_freeze_deliveries_wait_for_a_rebalance() {
        let mut hold = Hold::new(2000 * MS, 6000 * MS, Duration::ZERO);
        assert_eq!(hold.tick(9000 * MS), Some(9000 * MS));
        assert!(!hold.allows(9100 * MS));
        hold.tick(9100 * MS);
        assert!(!hold.allows(9150 * MS), "a tick does not end the hold");
        hold.rebalanced();
        assert!(hold.allows(9150 * MS));
    }

    #[test]
    fn without_a_rebalance_the_hold_ends_after_a_session_awake() {
        let mut hold = Hold::new(2000 * MS, 6000 * MS, Duration::ZERO);
        hold.tick(9000 * MS);
        let mut t = 9000;
        while t < 14_900 {
            t += 100;
            hold.tick(t * MS);
            assert!(!hold.allows(t * MS), "still held at {t} ms");
        }
        hold.tick(15_000 * MS);
        assert!(hold.allows(15_000 * MS));
    }
}
