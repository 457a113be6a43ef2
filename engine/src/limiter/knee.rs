//! Where slow start ends: the knee that latency rising with concurrency points to, found
//! on the first answers of each round. Pure.

use super::{Aimd, ChangeReason, Knee};
use crate::model::Millis;

/// Deepest cut back to a knee found after slow start went past it.
const KNEE_CUT_MIN_FACTOR: f64 = 0.5;
/// Answers at the start of a round that look for the knee in slow start.
const KNEE_SAMPLES: usize = 16;
/// Two estimates of the knee agree when the farther is within this multiple of the nearer.
const KNEE_AGREEMENT: f64 = 1.25;

impl Aimd {
    /// In slow start, latency that has begun to rise with concurrency tells where it will
    /// cross the threshold: slow start stops there instead of overshooting it. Judged on
    /// the first answers of each round, in two halves (as TCP's HyStart does): a whole
    /// round answers a round trip late, by when slow start has gone a third to twice past.
    /// Cuts the limit back to the knee when it is past it already.
    pub(super) fn look_for_knee(&mut self, now: Millis) -> Option<ChangeReason> {
        let len = self.round.len();
        if !self.slow_start || !(len == KNEE_SAMPLES || len == 2 * KNEE_SAMPLES) || !self.may_grow() {
            return None;
        }
        let reference = self.reference?;
        let early = self.round.peek(len - KNEE_SAMPLES..len);
        let rise = early.median_ms - reference.ms;
        let above = early.mean_in_flight - reference.in_flight;
        let reading = reference.read(&self.config, self.plateau, &early);
        let (flat, significant) = (reading.flat, reading.significant);
        // No doubling once latency has moved beyond chance, without waiting for the round's
        // end (a median of 16 answers of a jittery service is often 15% off by chance).
        self.flat &= flat || !significant;
        // Straight through the reference and these answers: latency = base + k x in flight.
        let estimate = (!flat && significant && above >= 1.0).then(|| Knee {
            at: reference.in_flight + (reading.threshold_ms - reference.ms) * above / rise,
            median_ms: early.median_ms,
            reference_ms: reference.ms,
            in_flight: early.mean_in_flight,
        });
        let previous = std::mem::replace(&mut self.knee_estimate, estimate);
        // Two rounds in a row must agree, as points on one line do: the rise of a jittery
        // service over a reference measured a little low is the same at any concurrency,
        // so its estimates grow with the limit.
        let (Some(previous), Some(estimate)) = (previous, estimate) else {
            return None;
        };
        let (near, far) = if previous.at > estimate.at {
            (estimate, previous)
        } else {
            (previous, estimate)
        };
        if far.at > near.at * KNEE_AGREEMENT || far.at >= self.config.max as f64 {
            return None;
        }
        // The farther of the two, so noise does not stop it short.
        if self.limit <= far.at {
            self.knee = Some(far);
            return None;
        }
        // Like a latency cut: no growth until latency is back under the threshold, and if
        // the cut did not lower it, the reference is stale (the service got slower at any
        // concurrency) and is measured again before the next cut.
        self.latency_cut = true;
        self.descent_from.get_or_insert(super::Descent {
            median_ms: early.median_ms,
            limit: self.limit,
        });
        let factor = (far.at / self.limit).clamp(KNEE_CUT_MIN_FACTOR, 1.0);
        self.cut(factor, now, false);
        self.ceiling = Some(self.limit.max(far.at));
        Some(ChangeReason::Knee {
            estimate: far,
            cut: true,
        })
    }
}
