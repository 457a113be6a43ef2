//! Adaptive concurrency per endpoint. Pure: signals and time go in, a limit and the reason
//! for each change come out.
//!
//! The limit reacts only to real overload, and keeps a healthy endpoint busy:
//!
//! - **Growth.** Each good answer (a success, or an error once the endpoint's usual errors
//!   are known to be its application's) that arrives while the endpoint is busy (at least
//!   half the limit in flight) raises the limit: by 0.3 in *slow start* (×1.3 per round
//!   trip, until the first cut, paused while a round's latency is over its threshold; ×2
//!   from a limit of 32 while a round's median stays within 15% of the reference), by
//!   `1 / limit` afterwards (one slot per round trip).
//!   Slow start also ends at the *knee* ([`knee`]): once latency rises with concurrency,
//!   the line through the reference and the first answers of a round says where it will
//!   cross the threshold; two such estimates in a row that agree stop slow start there,
//!   not a round trip past it. Within one of the level where the endpoint last overflowed
//!   (the *ceiling*) it holds almost still, then probes faster and faster (as TCP CUBIC
//!   does). Once well past the ceiling with no complaint, the ceiling is forgotten and slow
//!   start resumes, so a recovered endpoint is used fully within seconds.
//! - **Explicit overload** ([`signal`]: 429, 503 with `Retry-After`, an SDK's declared
//!   overload, a timeout, a refused or reset connection) cuts the limit by
//!   `decrease_factor`, at most once per round trip.
//! - **Unexplained errors** (a 500, or a 503 without `Retry-After`) may be a saturated server
//!   or a bug. When their share of a round rises above what is usual for the endpoint, the
//!   limit is cut *as a trial*: if the errors fall in the next round, they were overload and
//!   the cut stays; if not, they are application errors, the limit is restored, and their
//!   rate becomes the endpoint's usual rate. A cut that did not help is not repeated.
//!   Errors already seen in the probe at low concurrency (below) are the application's at
//!   once: no cut could make them fall.
//! - **Latency rising with concurrency.** The median latency of a round is compared with the
//!   median measured at low concurrency (2 in flight), like with like: a jittery
//!   service has the same median at any concurrency; a saturating one does not. A rise
//!   counts only beyond three standard errors of the two medians (from their quartiles),
//!   so a reference that a jittery service let be measured low does not cut. Each answer
//!   counts at the concurrency it was sent at. Two rounds in a row above
//!   `latency_tolerance` times the reference cut the limit in proportion
//!   (by 5% to 15%: a deeper cut on a reading a round trip old undershoots, and a CPU-bound
//!   service then idles). The limit does not grow again until a round is back under the
//!   threshold.
//!   The reference is measured first and again every `probe_interval`, by holding
//!   concurrency at 2 for one short round. When cuts in a row have taken a fifth off the
//!   limit and latency did not fall at all, the reference is measured again before the
//!   next cut. If it moved, the ceiling those cuts set is forgotten. If it did not, the
//!   latency they could not lower is a *plateau* (a CPU-bound service sharing its host is
//!   slower under any load, not queueing for ours): the limit goes back to where the cuts
//!   began, and from then on only a round above 1.25 times the plateau is slow, until a
//!   probe measures another reference or `probe_interval` has passed.
//!
//! A *round* is the answers to `max(32, limit)` attempts started since the last change
//! (the limit when its first answer came), so decisions never mix attempts sent under
//! different limits.

mod change;
mod knee;
mod round;
pub mod signal;

use std::time::Duration;

use serde::Deserialize;

use crate::model::Millis;
pub use change::{ChangeReason, Knee, LimitChange};
use round::{Round, RoundSummary};
pub use signal::{signal_of, OverloadCause, Signal};

/// Answers in a round, at least (more when the limit is higher).
const MIN_ROUND: usize = 32;
/// Answers in a round, at most: decisions stay quick at high limits.
const MAX_ROUND: usize = 128;
/// Answers in a probe round at low concurrency.
const PROBE_ROUND: usize = 20;
/// Answers in the round that judges an error trial: enough to tell 20% from 0%.
const TRIAL_ROUND: usize = 100;
/// With no usual error rate learned yet, a round with more errors than this starts a trial.
const ERROR_ONSET: f64 = 0.1;
/// Rounds in a row over the latency threshold before a cut.
const SLOW_ROUNDS_TO_CUT: u32 = 2;
/// Growth per good answer in slow start: x1.3 per round trip. Latency answers a round
/// trip late, so a faster start overshoots a saturating service by twice or more.
const SLOW_START_STEP: f64 = 0.3;
/// Growth per good answer in slow start while a round's median stays within
/// [`FLAT_RATIO`] of the reference: x2 per round trip.
const FLAT_START_STEP: f64 = 1.0;
/// A round's median within this multiple of the reference is "flat": no queue yet.
const FLAT_RATIO: f64 = 1.15;
/// Growth per round trip on reaching the ceiling; it doubles every two round trips.
const PLATEAU_STEP: f64 = 0.01;
/// Attempts in flight (at most) when the reference latency is measured.
const REFERENCE_CONCURRENCY: usize = 2;
/// Gentlest cut for latency: it is a gradual signal, not a wall.
const LATENCY_CUT_MAX_FACTOR: f64 = 0.95;
/// Deepest cut for latency: latency answers a round trip late, so a deep cut on an old
/// reading undershoots, and a CPU-bound service then idles.
const LATENCY_CUT_MIN_FACTOR: f64 = 0.85;

/// A rise of latency over the reference counts beyond this many standard errors.
const SIGNIFICANCE: f64 = 3.0;
/// Once latency cuts are found futile (a [`Plateau`]), a round is slow only above this
/// multiple of the latency they could not lower.
const PLATEAU_TOLERANCE: f64 = 1.25;

/// Settings of the adaptive limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimdConfig {
    /// Adapt the limit; when false the limit stays at `max` (a fixed limit).
    pub adaptive: bool,
    /// The limit never goes below this. Default 1.
    pub min: usize,
    /// The limit never goes above this. Default 256.
    pub max: usize,
    /// Where the limit starts. Default 4. The reference latency is measured at 2 in flight
    /// (or this, if lower).
    pub initial: usize,
    /// Factor applied on overload, in (0, 1). Default 0.9.
    pub decrease_factor: f64,
    /// A round's median latency above this multiple of the latency at low concurrency
    /// counts as overload. Default 1.8.
    pub latency_tolerance: f64,
    /// ... but only when it is also this much above it (tiny latencies are noisy).
    /// Default 2 ms.
    #[serde(with = "humantime_serde")]
    pub latency_floor: Duration,
    /// How often the latency at low concurrency is measured again while the endpoint is
    /// kept busy above it. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            adaptive: true,
            min: 1,
            max: 256,
            initial: 4,
            decrease_factor: 0.9,
            latency_tolerance: 1.8,
            latency_floor: Duration::from_millis(2),
            probe_interval: Duration::from_secs(30),
        }
    }
}

impl AimdConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min == 0 || self.min > self.max {
            return Err(format!(
                "concurrency needs 1 <= min <= max, got min {} and max {}",
                self.min, self.max
            ));
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return Err(format!(
                "decrease_factor must be within (0, 1), got {}",
                self.decrease_factor
            ));
        }
        if self.latency_tolerance.is_nan() || self.latency_tolerance <= 1.0 {
            return Err(format!(
                "latency_tolerance must be above 1, got {}",
                self.latency_tolerance
            ));
        }
        if self.probe_interval < Duration::from_secs(1) {
            return Err(format!(
                "probe_interval must be at least 1s, got {}",
                humantime::format_duration(self.probe_interval)
            ));
        }
        Ok(())
    }

    /// The limit it starts at.
    fn start(&self) -> usize {
        self.initial.clamp(self.min, self.max)
    }

    /// The low concurrency where the reference latency is measured.
    fn low(&self) -> usize {
        self.initial.min(REFERENCE_CONCURRENCY).clamp(self.min, self.max)
    }
}

/// When an attempt was sent, and how many were in flight with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub at: Millis,
    /// Attempts in flight toward the endpoint once this one was sent (itself included):
    /// the concurrency its latency answers for.
    pub in_flight: usize,
}

#[derive(Debug, Clone, Copy)]
struct Reference {
    ms: f64,
    /// Its standard error.
    error_ms: f64,
    /// The mean concurrency it was measured at.
    in_flight: f64,
    at: Millis,
}

/// What a round's median means against the reference.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// The median over which a round is slow.
    threshold_ms: f64,
    /// Within a few percent of the reference: no queue yet.
    flat: bool,
    /// Above the reference by more than chance explains.
    significant: bool,
}

/// Latency that cuts of a fifth did not lower, while the latency at low concurrency stayed
/// the same: the endpoint's latency under any load (its host's CPU shared with others, a
/// garbage collector), not a queue that less concurrency would drain. Cutting for it again
/// would only idle the endpoint, so the threshold rises above it.
#[derive(Debug, Clone, Copy)]
struct Plateau {
    median_ms: f64,
    /// The reference it was found against; a probe that measures another forgets it.
    reference: Reference,
    /// When it was found: the first probe a `probe_interval` later forgets it, so a
    /// service whose neighbour left is judged against its own latency again.
    at: Millis,
}

/// A latency descent: the median and the limit before its first cut.
#[derive(Debug, Clone, Copy)]
struct Descent {
    median_ms: f64,
    limit: f64,
}

impl Reference {
    /// Read `summary`'s median against this reference (and a plateau, if one was found).
    fn read(&self, config: &AimdConfig, plateau: Option<Plateau>, summary: &RoundSummary) -> Reading {
        let floor_ms = config.latency_floor.as_secs_f64() * 1000.0;
        let above_plateau = plateau.map_or(0.0, |p| p.median_ms * PLATEAU_TOLERANCE);
        Reading {
            threshold_ms: (self.ms * config.latency_tolerance)
                .max(self.ms + floor_ms)
                .max(above_plateau),
            flat: summary.median_ms <= (self.ms * FLAT_RATIO).max(self.ms + floor_ms / 5.0),
            // A jittery service's median of few answers, or a reference measured a little
            // low, is off by chance alone.
            significant: self.differs(summary),
        }
    }

    /// Whether `summary`'s median is above this one by more than chance explains.
    fn differs(&self, summary: &RoundSummary) -> bool {
        summary.median_ms - self.ms > SIGNIFICANCE * summary.median_error_ms.hypot(self.error_ms)
    }

    /// Whether `summary`'s median is above or below this one by more than chance explains.
    fn changed(&self, summary: &RoundSummary) -> bool {
        (summary.median_ms - self.ms).abs() > SIGNIFICANCE * summary.median_error_ms.hypot(self.error_ms)
    }
}

/// A trial cut for errors, with the state before it (to restore) and what was seen.
#[derive(Debug, Clone, Copy)]
struct Trial {
    limit: f64,
    ceiling: Option<f64>,
    slow_start: bool,
    rate_before: f64,
    samples_before: usize,
}

/// The limiter of one endpoint.
#[derive(Debug, Clone)]
pub struct Aimd {
    config: AimdConfig,
    limit: f64,
    slow_start: bool,
    /// The limit just before the last cut: where the endpoint overflowed.
    ceiling: Option<f64>,
    last_cut: Option<Millis>,
    /// Good answers since the limit came within one of the ceiling.
    probing_answers: f64,
    round: Round,
    /// Median latency at low concurrency.
    reference: Option<Reference>,
    slow_rounds: u32,
    /// Whether the last round's median was close to the reference (latency flat so far).
    flat: bool,
    /// Set by a latency cut, until a round is back under the threshold: no growth meanwhile.
    latency_cut: bool,
    /// The median and the limit before the first latency cut of a descent, to check that
    /// the cuts lowered latency. A descent lasts until the limit is back above where it
    /// began (or a probe): a jittery round under the threshold between two cuts does not
    /// end it, or cuts against a reference measured too low would go on for ever.
    descent_from: Option<Descent>,
    /// The endpoint's usual share of unexplained errors, once learned.
    usual_error_rate: Option<f64>,
    trial: Option<Trial>,
    /// Probing (concurrency held low) since this moment.
    probe_since: Option<Millis>,
    /// The probe runs because the cuts of this descent did not lower latency.
    futile_descent: Option<Descent>,
    /// Latency that cuts were found unable to lower.
    plateau: Option<Plateau>,
    /// In slow start, where the last round's latency said the threshold will be crossed.
    knee_estimate: Option<Knee>,
    /// Where slow start ends: two rounds in a row agreed that latency rises toward the
    /// threshold there.
    knee: Option<Knee>,
}

impl Aimd {
    pub fn new(config: AimdConfig) -> Self {
        let start = if config.adaptive { config.start() } else { config.max };
        Self {
            limit: start as f64,
            config,
            slow_start: true,
            ceiling: None,
            last_cut: None,
            probing_answers: 0.0,
            round: Round::new(0),
            reference: None,
            slow_rounds: 0,
            flat: false,
            latency_cut: false,
            descent_from: None,
            usual_error_rate: None,
            trial: None,
            probe_since: None,
            futile_descent: None,
            plateau: None,
            knee_estimate: None,
            knee: None,
        }
    }

    /// The current limit of attempts in flight (lower while a probe holds it down).
    pub fn limit(&self) -> usize {
        let limit = self.limit.floor() as usize;
        if self.probe_since.is_some() {
            limit.min(self.config.low())
        } else {
            limit
        }
    }

    /// The share of 5xx errors found to be the endpoint's application's, once known.
    pub fn usual_error_rate(&self) -> Option<f64> {
        self.usual_error_rate
    }

    /// Feed the outcome of an attempt that started at `started`. `in_flight` is the number
    /// of attempts in flight when it arrived (including this one). Returns a change of the
    /// whole-number limit, or a verdict, with its reason.
    ///
    /// `sent` tells when the attempt was sent and at what concurrency: its latency answers
    /// for that concurrency, not the one when it came back (in slow start, a third higher).
    pub fn on_signal(&mut self, signal: Signal, sent: Sent, in_flight: usize, now: Millis) -> Option<LimitChange> {
        if !self.config.adaptive {
            return None;
        }
        let before = self.limit();
        let reason = match signal {
            Signal::Overload(cause) => {
                // Attempts sent before the last cut were sent under the old limit.
                let fresh = self.last_cut.is_none_or(|at| sent.at >= at);
                fresh.then(|| {
                    self.trial = None;
                    self.cut(self.config.decrease_factor, now, true);
                    ChangeReason::Overload(cause)
                })
            }
            Signal::Answered { latency } | Signal::Error { latency } => {
                let error = matches!(signal, Signal::Error { .. });
                if sent.at >= self.round.since {
                    let limit = self.limit.floor() as usize;
                    self.round
                        .add(latency.as_secs_f64() * 1000.0, sent.in_flight, error, limit);
                }
                let verdict = self.look_for_knee(now).or_else(|| self.close_round(now));
                // An error grows the limit only once the endpoint's usual errors are known (a
                // trial showed that fewer requests did not mean fewer errors): then it is
                // the application's, and the endpoint served it like a success. Unknown
                // errors are no reason to grow, whatever they turn out to be.
                let served = !error || self.usual_error_rate.is_some();
                if verdict.is_none() && served && self.may_grow() && in_flight * 2 >= self.limit.floor() as usize {
                    Some(self.grow())
                } else {
                    verdict
                }
            }
        };
        let after = self.limit();
        match reason {
            Some(ChangeReason::Raise) if after == before => None,
            Some(reason) => Some(LimitChange {
                at: now,
                from: before,
                to: after,
                reason,
            }),
            None => None,
        }
    }

    fn may_grow(&self) -> bool {
        // After a latency cut, no growth until a round is back under the threshold: growing
        // between cuts (one slot per round trip) slowed the descent from an overshoot by a
        // third, and the queue it kept showed in the p99.
        self.reference.is_some() && self.trial.is_none() && self.probe_since.is_none() && !self.latency_cut
    }

    fn grow(&mut self) -> ChangeReason {
        // A round over the latency threshold pauses slow start: grow by one per round trip
        // while a second round confirms it, so the limit does not overshoot by half again.
        let step = if self.slow_start && self.slow_rounds == 0 && self.flat && self.limit >= MIN_ROUND as f64 {
            // Latency has not moved at all yet: double per round trip (as TCP slow start
            // does), the slower step takes over as soon as it rises. Only from a limit
            // where a round is one round trip: below, a round spans several and the
            // doubling would compound before latency could answer.
            FLAT_START_STEP
        } else if self.slow_start && self.slow_rounds == 0 {
            SLOW_START_STEP
        } else if self.ceiling.is_some_and(|c| self.limit + 1.0 >= c) {
            // Stay near where it overflowed, then probe faster and faster (as TCP CUBIC
            // does): a steady endpoint is refused rarely, a grown one is found in seconds.
            let rounds = self.probing_answers / self.limit;
            self.probing_answers += 1.0;
            (PLATEAU_STEP * (rounds / 2.0).exp2() / self.limit).min(SLOW_START_STEP)
        } else {
            1.0 / self.limit
        };
        let grown = (self.limit + step).min(self.config.max as f64);
        if let Some(knee) = self.knee.filter(|k| self.slow_start && grown >= k.at) {
            // Latency will cross the threshold about here: go on one slot per round trip.
            self.limit = self.limit.max(knee.at);
            self.end_slow_start();
            // Hold still near it; if latency stays low well past it, slow start resumes.
            self.ceiling = Some(knee.at);
            return ChangeReason::Knee {
                estimate: knee,
                cut: false,
            };
        }
        self.limit = grown;
        if self.descent_from.is_some_and(|d| self.limit > d.limit) {
            self.descent_from = None;
        }
        if self.ceiling.is_some_and(|c| self.limit >= c * 1.25 + 2.0) {
            // Well past where it overflowed, with no complaint: it has more room now.
            self.ceiling = None;
            self.slow_start = true;
        }
        ChangeReason::Raise
    }

    fn end_slow_start(&mut self) {
        self.slow_start = false;
        self.knee = None;
        self.knee_estimate = None;
    }

    /// Multiply the limit by `factor`; `overflowed` marks the old limit as the ceiling.
    fn cut(&mut self, factor: f64, now: Millis, overflowed: bool) {
        if overflowed {
            self.ceiling = Some(self.limit);
        }
        self.limit = (self.limit * factor).max(self.config.min as f64);
        self.last_cut = Some(now);
        self.probing_answers = 0.0;
        self.end_slow_start();
        self.slow_rounds = 0;
        self.flat = false;
        self.round = Round::new(now);
    }

    /// When the round has enough answers, judge it.
    fn close_round(&mut self, now: Millis) -> Option<ChangeReason> {
        let limit = self.round.limit;
        let needed = if self.probe_since.is_some() || self.reference.is_none() {
            PROBE_ROUND
        } else if self.trial.is_some() {
            // Enough to tell 20% from none, without holding a small limit down for long.
            (4 * limit).clamp(MIN_ROUND, TRIAL_ROUND)
        } else {
            limit.clamp(MIN_ROUND, MAX_ROUND)
        };
        if self.round.len() < needed {
            return None;
        }
        let summary = self.round.summary();
        self.round = Round::new(now);
        let low = summary.mean_in_flight <= self.config.low() as f64 + 0.5;
        if self.reference.is_none() && self.probe_since.is_none() && !low {
            // Busy from the start: measure the reference before growing.
            self.probe_since = Some(now);
            return Some(ChangeReason::Probe {
                after_futile_cut: false,
            });
        }
        let probed = self.probe_since.take().is_some();
        if probed || self.reference.is_none() {
            let before = self.reference;
            // A short round is a noisy median: blend it with the last one, if any.
            let (ms, error_ms) = self
                .reference
                .map_or((summary.median_ms, summary.median_error_ms), |r| {
                    (
                        f64::midpoint(r.ms, summary.median_ms),
                        r.error_ms.hypot(summary.median_error_ms) / 2.0,
                    )
                });
            self.reference = Some(Reference {
                ms,
                error_ms,
                in_flight: summary.mean_in_flight,
                at: now,
            });
            let errors = self.learn_errors_at_low_concurrency(&summary);
            self.slow_rounds = 0;
            self.latency_cut = false;
            self.descent_from = None;
            let plateau_ms = self.after_probe(before, &summary, now);
            return probed.then_some(ChangeReason::Probed {
                reference_ms: ms,
                usual_errors: errors,
                plateau_ms,
            });
        }
        if low {
            let (ms, error_ms) = match self.reference {
                Some(r) if now - r.at < self.probe_interval_ms() => (
                    r.ms * 0.7 + summary.median_ms * 0.3,
                    (r.error_ms * 0.7).hypot(summary.median_error_ms * 0.3),
                ),
                _ => (summary.median_ms, summary.median_error_ms),
            };
            self.reference = Some(Reference {
                ms,
                error_ms,
                in_flight: summary.mean_in_flight,
                at: now,
            });
        }
        if summary.samples >= MIN_ROUND {
            if let Some(reason) = self.judge_errors(&summary, now) {
                return Some(reason);
            }
        }
        if let Some(reason) = self.judge_latency(&summary, now) {
            return Some(reason);
        }
        let stale = self.reference.is_none_or(|r| now - r.at >= self.probe_interval_ms());
        (stale && self.limit.floor() as usize > self.config.low()).then(|| {
            self.probe_since = Some(now);
            ChangeReason::Probe {
                after_futile_cut: false,
            }
        })
    }

    /// After a probe measured `summary` at low concurrency (against the reference `before`):
    /// forget a plateau found against another reference or a `probe_interval` ago (if it
    /// still holds, the next futile descent finds it again), and judge a futile descent. If the
    /// reference moved, the cuts were made against a wrong one: where they put the ceiling
    /// says nothing about the endpoint, and slow start resumes. If it did not, latency under
    /// load is simply higher than at low concurrency and no cut lowers it: that latency is
    /// a plateau, the limit goes back to where the descent began, and holds there.
    /// Returns a plateau newly found.
    fn after_probe(&mut self, before: Option<Reference>, summary: &RoundSummary, now: Millis) -> Option<f64> {
        let interval = self.probe_interval_ms();
        if self
            .plateau
            .is_some_and(|p| p.reference.changed(summary) || now - p.at >= interval)
        {
            self.plateau = None;
        }
        let descent = self.futile_descent.take()?;
        match before.filter(|r| !r.changed(summary)) {
            // A plateau found already stays while the reference does: a later descent that
            // did not lower latency neither raises it (a jittery median that did not fall
            // by chance would ratchet the threshold up for ever) nor is undone (it may have
            // begun far past where the endpoint has room, in a slow start).
            Some(_) if self.plateau.is_some() => None,
            Some(reference) => {
                self.plateau = Some(Plateau {
                    median_ms: descent.median_ms,
                    reference,
                    at: now,
                });
                self.limit = self.limit.max(descent.limit);
                self.ceiling = Some(self.limit);
                self.end_slow_start();
                Some(descent.median_ms)
            }
            None => {
                self.ceiling = None;
                self.slow_start = true;
                None
            }
        }
    }

    /// Errors at the lowest concurrency are not overload: nothing would fall by cutting
    /// further, so a trial cut would only hold the limit down for a long round (about 15
    /// round trips). Their rate becomes the endpoint's usual rate at once (from 2 errors in
    /// the probe's 20 answers: a 20% rate shows so in 93% of probes). A rise above it later
    /// still starts a trial, and a rate that falls takes the usual one down with it.
    fn learn_errors_at_low_concurrency(&mut self, summary: &RoundSummary) -> Option<f64> {
        let low = summary.mean_in_flight <= self.config.low() as f64 + 0.5;
        let learned = self.usual_error_rate.is_none()
            && low
            && summary.samples >= PROBE_ROUND
            && summary.error_rate >= ERROR_ONSET;
        learned.then(|| {
            self.usual_error_rate = Some(summary.error_rate);
            summary.error_rate
        })
    }

    fn probe_interval_ms(&self) -> Millis {
        self.config.probe_interval.as_millis() as Millis
    }

    fn judge_errors(&mut self, summary: &RoundSummary, now: Millis) -> Option<ChangeReason> {
        let rate = summary.error_rate;
        if let Some(trial) = self.trial.take() {
            let (before, after) = (trial.rate_before, rate);
            if self.trial_helped(&trial, summary) {
                self.ceiling = Some(trial.limit);
                return Some(ChangeReason::ErrorsWereOverload { before, after });
            }
            self.limit = self.limit.max(trial.limit);
            self.ceiling = trial.ceiling;
            self.slow_start = trial.slow_start;
            // Both rounds saw the application's errors (the first one picked for being high).
            let (n1, n2) = (trial.samples_before as f64, summary.samples as f64);
            let pooled = (before * n1 + after * n2) / (n1 + n2);
            self.usual_error_rate = Some(self.usual_error_rate.map_or(pooled, |u| u.max(pooled)));
            return Some(ChangeReason::ErrorsNotOverload { before, after });
        }
        let usual = self.usual_error_rate;
        let threshold = usual.map_or(ERROR_ONSET, |u| u + (4.0 * binomial_sd(u, summary.samples)).max(0.1));
        if rate > threshold {
            self.trial = Some(Trial {
                limit: self.limit,
                ceiling: self.ceiling,
                slow_start: self.slow_start,
                rate_before: rate,
                samples_before: summary.samples,
            });
            // If the errors are the excess over a capacity, the capacity is about this.
            let factor = (1.0 - rate).clamp(0.5, self.config.decrease_factor);
            self.cut(factor, now, false);
            return Some(ChangeReason::ErrorTrial { rate, usual });
        }
        if let Some(u) = usual.filter(|&u| rate < u - 3.0 * binomial_sd(u, summary.samples)) {
            // An application that got better: its usual rate follows it down. It goes up
            // only through a trial, so errors that creep up with concurrency are not
            // mistaken for the application's own.
            self.usual_error_rate = Some(u * 0.9 + rate * 0.1);
        }
        None
    }

    /// Whether the errors fell to the usual rate (none, if none is known) after a trial
    /// cut, by more than chance would explain.
    fn trial_helped(&self, trial: &Trial, after: &RoundSummary) -> bool {
        let expected = self.usual_error_rate.unwrap_or(0.0);
        let at_usual = after.error_rate <= expected + 2.0 * binomial_sd(expected.max(0.02), after.samples) + 0.02;
        let halved = after.error_rate <= trial.rate_before * 0.5;
        let (n1, n2) = (trial.samples_before as f64, after.samples as f64);
        let pooled = (trial.rate_before * n1 + after.error_rate * n2) / (n1 + n2);
        let sd = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
        (at_usual || halved) && trial.rate_before - after.error_rate > 3.0 * sd
    }

    fn judge_latency(&mut self, summary: &RoundSummary, now: Millis) -> Option<ChangeReason> {
        let reference = self.reference?;
        if summary.mean_in_flight <= self.config.low() as f64 {
            self.slow_rounds = 0;
            self.latency_cut = false;
            return None;
        }
        let reading = reference.read(&self.config, self.plateau, summary);
        let threshold = reading.threshold_ms;
        self.flat = reading.flat;
        // Over the threshold by chance alone is not over it.
        if summary.median_ms <= threshold || !reading.significant {
            self.slow_rounds = 0;
            self.latency_cut = false;
            return None;
        }
        self.slow_rounds += 1;
        if self.slow_rounds < SLOW_ROUNDS_TO_CUT {
            return None;
        }
        if let Some(descent) = self.descent_from {
            if self.limit <= descent.limit * 0.8 && summary.median_ms >= descent.median_ms {
                // Latency that grows with concurrency falls when the limit is cut by a
                // fifth; it did not fall at all, so the reference may be stale (the service
                // got slower at any concurrency) or was measured too low: measure it
                // before cutting again.
                self.slow_rounds = 0;
                self.latency_cut = false;
                self.descent_from = None;
                self.probe_since = Some(now);
                self.futile_descent = Some(descent);
                return Some(ChangeReason::Probe { after_futile_cut: true });
            }
        }
        let factor = (threshold / summary.median_ms).clamp(LATENCY_CUT_MIN_FACTOR, LATENCY_CUT_MAX_FACTOR);
        self.latency_cut = true;
        self.descent_from.get_or_insert(Descent {
            median_ms: summary.median_ms,
            limit: self.limit,
        });
        self.cut(factor, now, true);
        Some(ChangeReason::Latency {
            median_ms: summary.median_ms,
            reference_ms: reference.ms,
            in_flight: summary.mean_in_flight,
        })
    }
}

/// Standard deviation of an observed rate over `n` samples when the true rate is `p`.
fn binomial_sd(p: f64, n: usize) -> f64 {
    (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests;
