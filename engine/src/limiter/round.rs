//! One measurement round: the answers to attempts started since a moment (the last change
//! of the limit), summed up when enough have arrived. Pure.

use crate::model::Millis;

/// Answers gathered since `since`.
#[derive(Debug, Clone)]
pub struct Round {
    /// Only attempts started at or after this moment belong to the round.
    pub since: Millis,
    /// The limit when its first answer arrived: its size follows from it, not from a limit
    /// that grows as its answers arrive (the round would never close).
    pub limit: usize,
    latencies_ms: Vec<f64>,
    in_flights: Vec<usize>,
    errors: u32,
}

/// What a closed round saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundSummary {
    pub samples: usize,
    /// Median latency: robust to the tail of a jittery service.
    pub median_ms: f64,
    /// How far that median may be off by chance: its standard error, from the spread
    /// between the quartiles.
    pub median_error_ms: f64,
    /// Mean attempts in flight when the answers arrived.
    pub mean_in_flight: f64,
    /// Share of answers that were unexplained errors.
    pub error_rate: f64,
}

impl Round {
    pub fn new(since: Millis) -> Self {
        Self {
            since,
            limit: 0,
            latencies_ms: Vec::new(),
            in_flights: Vec::new(),
            errors: 0,
        }
    }

    /// An answer, with the attempts in flight when it was sent and the current limit.
    pub fn add(&mut self, latency_ms: f64, in_flight: usize, error: bool, limit: usize) {
        if self.latencies_ms.is_empty() {
            self.limit = limit;
        }
        self.latencies_ms.push(latency_ms);
        self.in_flights.push(in_flight);
        self.errors += u32::from(error);
    }

    pub fn len(&self) -> usize {
        self.latencies_ms.len()
    }

    pub fn summary(&mut self) -> RoundSummary {
        let samples = self.latencies_ms.len().max(1);
        self.latencies_ms.sort_by(f64::total_cmp);
        RoundSummary {
            samples: self.latencies_ms.len(),
            median_ms: median_of_sorted(&self.latencies_ms),
            median_error_ms: median_error(&self.latencies_ms),
            mean_in_flight: mean(&self.in_flights),
            error_rate: f64::from(self.errors) / samples as f64,
        }
    }

    /// Answers `range` of the round so far, without closing it: errors are not counted.
    pub fn peek(&self, range: std::ops::Range<usize>) -> RoundSummary {
        let mut sorted = self.latencies_ms[range.clone()].to_vec();
        sorted.sort_by(f64::total_cmp);
        RoundSummary {
            samples: sorted.len(),
            median_ms: median_of_sorted(&sorted),
            median_error_ms: median_error(&sorted),
            mean_in_flight: mean(&self.in_flights[range]),
            error_rate: 0.0,
        }
    }
}

/// The standard error of the median of these sorted samples: 1.25 σ / √n, with σ taken
/// from the interquartile range (robust to a tail).
fn median_error(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n < 4 {
        return f64::INFINITY;
    }
    let sigma = (sorted[n * 3 / 4] - sorted[n / 4]) / 1.349;
    1.253 * sigma / (n as f64).sqrt()
}

fn mean(in_flights: &[usize]) -> f64 {
    in_flights.iter().sum::<usize>() as f64 / in_flights.len().max(1) as f64
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => f64::midpoint(sorted[n / 2 - 1], sorted[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_mean_and_error_rate() {
        let mut round = Round::new(0);
        for (ms, in_flight, error) in [(5.0, 2, false), (1.0, 4, true), (900.0, 6, false), (3.0, 8, false)] {
            round.add(ms, in_flight, error, 4);
        }
        let s = round.summary();
        assert_eq!(
            (s.samples, s.median_ms, s.mean_in_flight, s.error_rate),
            (4, 4.0, 5.0, 0.25)
        );
        // Quartiles 3 and 900: σ = 897 / 1.349, over √4.
        assert!((s.median_error_ms - 1.253 * 897.0 / 1.349 / 2.0).abs() < 1e-9);
    }
}
