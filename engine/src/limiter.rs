//! Adaptive concurrency per endpoint: AIMD with a latency signal. Pure: outcomes and time
//! go in, a limit comes out.
//!
//! - **Additive increase**: each success that arrives while the endpoint is busy (at least
//!   half the limit in flight) adds `1 / limit`, so the limit grows by about one per round
//!   of `limit` successes. Above the level of the last cut (where the endpoint was seen to
//!   overflow) it probes five times slower, so a small endpoint is not overrun every few
//!   round trips.
//! - **Multiplicative decrease**: an overload signal multiplies the limit by
//!   `decrease_factor`. Overload is a 429, a 503, a timeout, a refused connection, or a
//!   latency well above the endpoint's baseline (a Vegas-style gradient: the recent average
//!   over the lowest latency seen).
//! - After a cut, overload signals from attempts that started before it are ignored: they
//!   were sent under the old limit and would otherwise cut it again and again. So the limit
//!   is cut at most once per round trip, whatever the latency (as TCP does).

use std::time::Duration;

use serde::Deserialize;

use crate::model::Millis;

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
    /// Where the limit starts. Default 4.
    pub initial: usize,
    /// Factor applied on overload, in (0, 1). Default 0.7.
    pub decrease_factor: f64,
    /// Recent latency above this multiple of the baseline counts as overload. Default 3.
    pub latency_tolerance: f64,
    /// ... but only when it is also this much above the baseline (small latencies are
    /// noisy). Default 20 ms.
    #[serde(with = "humantime_serde")]
    pub latency_floor: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            adaptive: true,
            min: 1,
            max: 256,
            initial: 4,
            decrease_factor: 0.7,
            latency_tolerance: 3.0,
            latency_floor: Duration::from_millis(20),
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
        Ok(())
    }
}

/// What one attempt tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The endpoint answered (any class but overload) after this latency.
    Answered { latency: Duration },
    /// 429, 503, a timeout or a refused connection: the endpoint is saturated or down.
    Overload,
}

/// A change of the limit, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitChange {
    pub at: Millis,
    pub from: usize,
    pub to: usize,
    pub reason: ChangeReason,
}

/// Why the limit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    Raise,
    CutOverload,
    CutLatency,
}

/// The limiter of one endpoint.
#[derive(Debug, Clone)]
pub struct Aimd {
    config: AimdConfig,
    limit: f64,
    /// Lowest latency seen (ms), slowly forgotten so the baseline can move up.
    baseline_ms: Option<f64>,
    /// Exponential average of recent latency (ms).
    recent_ms: Option<f64>,
    last_cut: Option<Millis>,
    /// The limit just before the last cut: where the endpoint overflowed.
    ceiling: Option<f64>,
}

impl Aimd {
    pub fn new(config: AimdConfig) -> Self {
        let start = if config.adaptive {
            config.initial.clamp(config.min, config.max)
        } else {
            config.max
        };
        Self {
            limit: start as f64,
            config,
            baseline_ms: None,
            recent_ms: None,
            last_cut: None,
            ceiling: None,
        }
    }

    /// The current limit of attempts in flight.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    /// Feed the outcome of an attempt that started at `started`. `in_flight` is the number
    /// of attempts in flight when it arrived (including this one). Returns the change, if the
    /// whole-number limit changed.
    pub fn on_signal(&mut self, signal: Signal, in_flight: usize, started: Millis, now: Millis) -> Option<LimitChange> {
        if !self.config.adaptive {
            return None;
        }
        let before = self.limit();
        let reason = match signal {
            Signal::Overload => self.cut(started, now).then_some(ChangeReason::CutOverload),
            Signal::Answered { latency } => {
                let ms = latency.as_secs_f64() * 1000.0;
                let baseline = self.baseline_ms.map_or(ms, |b| (b * 1.0005).min(ms));
                self.baseline_ms = Some(baseline);
                let recent = self.recent_ms.map_or(ms, |r| r * 0.9 + ms * 0.1);
                self.recent_ms = Some(recent);
                let slow = recent > baseline * self.config.latency_tolerance
                    && recent - baseline > self.config.latency_floor.as_secs_f64() * 1000.0;
                if slow {
                    self.cut(started, now).then_some(ChangeReason::CutLatency)
                } else {
                    if in_flight * 2 >= self.limit() {
                        let probing = self.ceiling.is_some_and(|c| self.limit + 1.0 >= c);
                        let step = if probing { 0.2 } else { 1.0 };
                        self.limit = (self.limit + step / self.limit).min(self.config.max as f64);
                    }
                    Some(ChangeReason::Raise)
                }
            }
        };
        let after = self.limit();
        (after != before).then(|| LimitChange {
            at: now,
            from: before,
            to: after,
            reason: reason.unwrap_or(ChangeReason::Raise),
        })
    }

    fn cut(&mut self, started: Millis, now: Millis) -> bool {
        if self.last_cut.is_some_and(|at| started < at) {
            return false; // sent under the limit before the last cut
        }
        self.last_cut = Some(now);
        self.ceiling = Some(self.limit);
        self.limit = (self.limit * self.config.decrease_factor).max(self.config.min as f64);
        // The latency average restarts from the baseline so one slow spell cuts once.
        self.recent_ms = self.baseline_ms;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Signal {
        Signal::Answered {
            latency: Duration::from_millis(5),
        }
    }

    fn config() -> AimdConfig {
        AimdConfig {
            max: 64,
            initial: 4,
            ..AimdConfig::default()
        }
    }

    /// Drive `n` successes with the endpoint kept full.
    fn succeed(aimd: &mut Aimd, n: usize, now: &mut Millis) {
        for _ in 0..n {
            *now += 1;
            let full = aimd.limit();
            aimd.on_signal(fast(), full, *now - 1, *now);
        }
    }

    #[test]
    fn steady_success_grows_to_the_max_and_stops_there() {
        let mut aimd = Aimd::new(config());
        let mut now = 0;
        succeed(&mut aimd, 100, &mut now);
        assert!(
            aimd.limit() > 4 && aimd.limit() < 64,
            "grows additively: {}",
            aimd.limit()
        );
        succeed(&mut aimd, 10_000, &mut now);
        assert_eq!(aimd.limit(), 64);
    }

    #[test]
    fn an_idle_endpoint_does_not_inflate_its_limit() {
        let mut aimd = Aimd::new(config());
        for now in 0..1000 {
            aimd.on_signal(fast(), 1, now, now);
        }
        assert_eq!(aimd.limit(), 4, "one call at a time proves nothing about capacity");
    }

    #[test]
    fn a_burst_of_429_cuts_once_per_round_trip() {
        let mut aimd = Aimd::new(config());
        let mut now = 100;
        succeed(&mut aimd, 10_000, &mut now);
        let sent = now - 10;
        let change = aimd.on_signal(Signal::Overload, 64, sent, now).unwrap();
        assert_eq!(
            (change.from, change.to, change.reason),
            (64, 44, ChangeReason::CutOverload)
        );
        for _ in 0..50 {
            now += 1;
            assert_eq!(
                aimd.on_signal(Signal::Overload, 44, sent, now),
                None,
                "sent before the cut"
            );
        }
        let change = aimd.on_signal(Signal::Overload, 44, now, now + 10).unwrap();
        assert_eq!(change.to, 31, "44.8 * 0.7, from an attempt sent after the cut");
    }

    #[test]
    fn it_recovers_after_the_overload_ends() {
        let mut aimd = Aimd::new(config());
        let mut now = 0;
        succeed(&mut aimd, 10_000, &mut now);
        for _ in 0..8 {
            now += 10;
            aimd.on_signal(Signal::Overload, 10, now, now + 5);
        }
        assert_eq!(aimd.limit(), 3, "cut to the floor of repeated 0.7 factors");
        succeed(&mut aimd, 20_000, &mut now);
        assert_eq!(aimd.limit(), 64);
    }

    #[test]
    fn above_the_last_overflow_it_probes_slowly() {
        let mut aimd = Aimd::new(config());
        let mut now = 0;
        succeed(&mut aimd, 150, &mut now);
        let overflowed = aimd.limit();
        now += 1;
        aimd.on_signal(Signal::Overload, overflowed, now - 1, now);
        while aimd.limit() < overflowed - 1 {
            succeed(&mut aimd, 1, &mut now);
        }
        let mut past = 0;
        while aimd.limit() < overflowed + 1 {
            succeed(&mut aimd, 1, &mut now);
            past += 1;
        }
        // Plain additive increase needs about `limit` successes per step: two steps here.
        let plain = 2 * overflowed;
        assert!(
            past >= 2 * plain,
            "{past} successes to pass the overflow level, plain would take {plain}"
        );
    }

    #[test]
    fn never_below_min() {
        let mut aimd = Aimd::new(AimdConfig { min: 2, ..config() });
        for n in 0..100 {
            aimd.on_signal(Signal::Overload, 1, n * 10, n * 10 + 5);
        }
        assert_eq!(aimd.limit(), 2);
    }

    #[test]
    fn rising_latency_cuts_before_errors_do() {
        let mut aimd = Aimd::new(config());
        let mut now = 0;
        succeed(&mut aimd, 3_000, &mut now);
        let before = aimd.limit();
        let mut cut = None;
        for _ in 0..100 {
            now += 1;
            let slow = Signal::Answered {
                latency: Duration::from_millis(80),
            };
            if let Some(change) = aimd.on_signal(slow, before, now - 80, now) {
                if change.reason == ChangeReason::CutLatency {
                    cut = Some(change);
                    break;
                }
            }
        }
        let cut = cut.expect("a 16x latency rise must cut the limit");
        assert!(cut.to < before);
    }

    #[test]
    fn small_latency_noise_does_not_cut() {
        let mut aimd = Aimd::new(config());
        let mut now = 0;
        for n in 0..5_000 {
            now += 1;
            let ms = if n % 2 == 0 { 1 } else { 6 };
            let full = aimd.limit();
            let latency = Duration::from_millis(ms);
            let change = aimd.on_signal(Signal::Answered { latency }, full, now - 1, now);
            assert!(change.is_none_or(|c| c.reason == ChangeReason::Raise), "{change:?}");
        }
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let mut aimd = Aimd::new(AimdConfig {
            adaptive: false,
            max: 256,
            ..config()
        });
        assert_eq!(aimd.limit(), 256);
        assert_eq!(aimd.on_signal(Signal::Overload, 256, 0, 0), None);
        assert_eq!(aimd.limit(), 256);
    }
}
