//! Lock-free figures for metrics and stats: a cumulative histogram with fixed bounds, and a
//! per-second counter over the last minute. Both are plain data; the clock is passed in.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Bounds (seconds) of the attempt latency histogram: 1 ms to 60 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Bounds of the store's commit batch-size histogram (rows per commit).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// Bounds (seconds) of the store's commit latency histogram.
pub const COMMIT_BOUNDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A Prometheus-style histogram: counts per upper bound, a sum and a count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One slot per bound plus one for `+Inf`; not cumulative (summed on read).
    buckets: Vec<AtomicU64>,
    /// The sum, in millionths of the unit, to stay an integer.
    sum_micros: AtomicU64,
}

/// A histogram's figures at one moment, cumulative per bound as Prometheus expects.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (slot, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            buckets.push((self.bounds.get(slot).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// Counts per second over the last [`RATE_WINDOW_SECS`] seconds.
#[derive(Debug)]
pub struct RateWindow {
    /// (second, count) per slot, indexed by `second % SLOTS`: the last minute plus the
    /// current second.
    slots: Mutex<[(u64, u64); SLOTS as usize]>,
}

impl Default for RateWindow {
    fn default() -> Self {
        Self {
            slots: Mutex::new([(0, 0); SLOTS as usize]),
        }
    }
}

pub const RATE_WINDOW_SECS: u64 = 60;
const SLOTS: u64 = RATE_WINDOW_SECS + 1;

impl RateWindow {
    /// Count `n` events at `second` (any monotonic or wall-clock second).
    pub fn add(&self, second: u64, n: u64) {
        let mut slots = self.slots.lock().expect("rate window lock");
        let slot = &mut slots[(second % SLOTS) as usize];
        if slot.0 == second {
            slot.1 += n;
        } else {
            *slot = (second, n);
        }
    }

    /// Events per second over the last minute before `now` (the current, partial second is
    /// left out so the figure does not dip at every second's start).
    pub fn per_second(&self, now: u64) -> f64 {
        let slots = self.slots.lock().expect("rate window lock");
        let oldest = now.saturating_sub(RATE_WINDOW_SECS);
        let total: u64 = slots
            .iter()
            .filter(|(second, _)| *second >= oldest && *second < now)
            .map(|(_, n)| n)
            .sum();
        total as f64 / RATE_WINDOW_SECS as f64
    }
}

/// Seconds since the Unix epoch, for [`RateWindow`].
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_cumulatively_with_an_inf_bucket() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        for v in [0.005, 0.01, 0.05, 0.5, 2.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.01, 2), (0.1, 3), (1.0, 4), (f64::INFINITY, 5)]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 2.565).abs() < 1e-6, "{}", s.sum);
    }

    #[test]
    fn rate_window_averages_the_last_minute_and_forgets_older_seconds() {
        let w = RateWindow::default();
        for second in 1000..1060 {
            w.add(second, 10);
        }
        assert!((w.per_second(1060) - 10.0).abs() < 1e-9);
        // The current second is not counted yet.
        w.add(1060, 600);
        assert!((w.per_second(1060) - 10.0).abs() < 1e-9);
        // 30 s later, only the last 30 old seconds and the burst remain.
        assert!((w.per_second(1090) - (30.0 * 10.0 + 600.0) / 60.0).abs() < 1e-9);
        // A slot reused by a later second starts again from zero.
        w.add(1120, 1);
        assert!((w.per_second(1121) - 1.0 / 60.0).abs() < 1e-9);
        assert!(w.per_second(5000).abs() < 1e-9);
    }
}
