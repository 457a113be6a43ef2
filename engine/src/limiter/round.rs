//! One measurement round: the answers to attempts started since a moment (the last change
//! of the limit), summed up when enough have arrived. Pure.

use crate::model::Millis;

/// Answers gathered since `since`.
#[derive(Debug, Clone)]
pub struct Round {
    /// Only attempts started at or after this moment belong to the round.
    pub since: Millis,
    latencies_ms: Vec<f64>,
    in_flight_sum: u64,
    errors: u32,
}

/// What a closed round saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundSummary {
    pub samples: usize,
    /// Median latency: robust to the tail of a jittery service.
    pub median_ms: f64,
    /// Mean attempts in flight when the answers arrived.
    pub mean_in_flight: f64,
    /// Share of answers that were unexplained errors.
    pub error_rate: f64,
}

impl Round {
    pub fn new(since: Millis) -> Self {
        Self {
            since,
            latencies_ms: Vec::new(),
            in_flight_sum: 0,
            errors: 0,
        }
    }

    pub fn add(&mut self, latency_ms: f64, in_flight: usize, error: bool) {
        self.latencies_ms.push(latency_ms);
        self.in_flight_sum += in_flight as u64;
        self.errors += u32::from(error);
    }

    pub fn len(&self) -> usize {
        self.latencies_ms.len()
    }

    pub fn summary(&mut self) -> RoundSummary {
        let samples = self.latencies_ms.len().max(1);
        self.latencies_ms.sort_by(f64::total_cmp);
        let median_ms = match self.latencies_ms.len() {
            0 => 0.0,
            n if n % 2 == 1 => self.latencies_ms[n / 2],
            n => f64::midpoint(self.latencies_ms[n / 2 - 1], self.latencies_ms[n / 2]),
        };
        RoundSummary {
            samples: self.latencies_ms.len(),
            median_ms,
            mean_in_flight: self.in_flight_sum as f64 / samples as f64,
            error_rate: f64::from(self.errors) / samples as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_mean_and_error_rate() {
        let mut round = Round::new(0);
        for (ms, in_flight, error) in [(5.0, 2, false), (1.0, 4, true), (900.0, 6, false), (3.0, 8, false)] {
            round.add(ms, in_flight, error);
        }
        let s = round.summary();
        assert_eq!(
            (s.samples, s.median_ms, s.mean_in_flight, s.error_rate),
            (4, 4.0, 5.0, 0.25)
        );
    }
}
