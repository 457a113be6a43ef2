//! Retry policy and backoff: pure functions of the attempt number and a random draw.

use std::time::Duration;

use serde::Deserialize;

/// When and how often a call is retried after a temporary failure.
///
/// The delay before attempt `n + 1` is `initial_delay * multiplier^(n - 1)`, capped at
/// `max_delay`, then reduced by a random fraction of up to `jitter` so that calls that failed
/// together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use engine::retry::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .with_initial_delay(Duration::from_millis(100))
///     .with_multiplier(2.0)
///     .with_max_delay(Duration::from_secs(1))
///     .with_jitter(0.0);
/// assert_eq!(policy.backoff(1, 0.5), Duration::from_millis(100));
/// assert_eq!(policy.backoff(3, 0.5), Duration::from_millis(400));
/// assert_eq!(policy.backoff(10, 0.5), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt. Default 200ms.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Growth factor per attempt, at least 1. Default 2.
    pub multiplier: f64,
    /// Upper bound of any delay, including one asked for by `Retry-After`. Default 5 minutes.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Fraction of the delay that is randomised away, in `[0, 1]`. Default 0.5.
    pub jitter: f64,
    /// Attempts before a call goes dead; 0 means no limit. Default 20.
    pub max_attempts: u32,
    /// Age after which a failing call goes dead instead of retrying. Default 24 hours.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(200),
            multiplier: 2.0,
            max_delay: Duration::from_secs(300),
            jitter: 0.5,
            max_attempts: 20,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// Set the delay after the first failure.
    #[must_use]
    pub fn with_initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Set the growth factor per attempt.
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Set the cap on any delay.
    #[must_use]
    pub fn with_max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Set the randomised fraction of each delay.
    #[must_use]
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Set the number of attempts before a call goes dead (0: unlimited).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Set the age after which a failing call goes dead.
    #[must_use]
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Check the policy's numbers, naming the first that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(format!("retry.multiplier must be at least 1, got {}", self.multiplier));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!("retry.jitter must be within [0, 1], got {}", self.jitter));
        }
        if self.max_delay < self.initial_delay {
            return Err("retry.max_delay must not be below retry.initial_delay".into());
        }
        Ok(())
    }

    /// The delay after failed attempt `attempt` (1-based). `random` is a draw from `[0, 1)`.
    pub fn backoff(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1000) as i32;
        let raw = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = raw.min(self.max_delay.as_secs_f64());
        let jittered = capped * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::from_secs_f64(jittered.max(0.0))
    }

    /// The delay to use when the target asked for `retry_after`: honoured, but never above
    /// `max_delay`.
    pub fn clamp_retry_after(&self, retry_after: Duration) -> Duration {
        retry_after.min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .with_initial_delay(Duration::from_millis(100))
            .with_multiplier(3.0)
            .with_max_delay(Duration::from_secs(10))
            .with_jitter(0.5)
    }

    #[test]
    fn backoff_grows_then_caps() {
        let p = policy().with_jitter(0.0);
        let delays: Vec<_> = (1..=8).map(|n| p.backoff(n, 0.3)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(300));
        assert_eq!(delays[2], Duration::from_millis(900));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays[7], Duration::from_secs(10));
        assert_eq!(p.backoff(u32::MAX, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_its_range() {
        let p = policy();
        for attempt in 1..=12 {
            let full = p.clone().with_jitter(0.0).backoff(attempt, 0.0);
            for step in 0..=100 {
                let random = f64::from(step) / 100.0;
                let d = p.backoff(attempt, random);
                assert!(d <= full, "attempt {attempt}: {d:?} above {full:?}");
                assert!(d >= full / 2, "attempt {attempt}: {d:?} below half of {full:?}");
            }
        }
        assert!(p.backoff(4, 0.0) > p.backoff(4, 0.99));
    }

    #[test]
    fn retry_after_is_bounded_by_max_delay() {
        let p = policy();
        assert_eq!(p.clamp_retry_after(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(p.clamp_retry_after(Duration::from_secs(3600)), Duration::from_secs(10));
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert!(policy().validate().is_ok());
        assert!(policy()
            .with_multiplier(0.5)
            .validate()
            .unwrap_err()
            .contains("multiplier"));
        assert!(policy().with_jitter(2.0).validate().unwrap_err().contains("jitter"));
        let err = policy()
            .with_max_delay(Duration::from_millis(1))
            .validate()
            .unwrap_err();
        assert!(err.contains("max_delay"));
    }
}
