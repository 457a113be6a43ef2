//! Static rate limits (`rate_limit` on a subscription or an endpoint), and in cluster mode
//! their split across the engines of a group: each engine allows the configured rate times
//! its share of the subscription's partitions, so the group as a whole keeps to it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::model::Millis;

/// This engine's part of a subscription's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub held: usize,
    pub total: usize,
}

impl Share {
    fn fraction(self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.held.min(self.total) as f64 / self.total as f64
        }
    }
}

/// The rate this engine allows of `per_second`: all of it without a share; else its share,
/// rounded up, and at least 1 (calls enqueued through the API need no partition).
pub fn split(per_second: u32, share: Option<Share>) -> u32 {
    match share {
        None => per_second,
        Some(share) => ((f64::from(per_second) * share.fraction()).ceil() as u32).clamp(1, per_second),
    }
}

/// A rate limit whose allowance follows this engine's share of partitions.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    burst: Option<u32>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The share of each subscription using this limit (an endpoint's serves several).
    shares: BTreeMap<String, Share>,
    allowed: u32,
    limiter: DefaultDirectRateLimiter,
}

/// A governor limiter of `per_second` with `burst` (default: one second's worth).
fn limiter(per_second: NonZeroU32, burst: Option<u32>) -> DefaultDirectRateLimiter {
    let burst = burst.and_then(NonZeroU32::new).unwrap_or(per_second);
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
}

impl RateLimit {
    /// `None` for a rate of 0 (config validation refuses it).
    pub fn new(per_second: u32, burst: Option<u32>) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(Self {
            per_second,
            burst,
            inner: Mutex::new(Inner {
                shares: BTreeMap::new(),
                allowed: per_second,
                limiter: limiter(rate, burst),
            }),
        })
    }

    /// Take one request, or say when (in [`Millis`] from `now`) the next is allowed.
    pub fn check(&self, now: Millis) -> Result<(), Millis> {
        let inner = self.inner.lock().expect("rate lock");
        inner.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            now + (wait.as_millis() as Millis).max(1)
        })
    }

    /// The configured rate per second.
    pub fn configured(&self) -> u32 {
        self.per_second
    }

    /// The rate per second this engine allows now.
    pub fn allowed(&self) -> u32 {
        self.inner.lock().expect("rate lock").allowed
    }

    /// Cluster mode: `subscription` now holds `share` of its partitions. With several
    /// subscriptions on one limit, the largest share counts. Returns the rate allowed now.
    pub fn set_share(&self, subscription: &str, share: Share) -> u32 {
        let mut inner = self.inner.lock().expect("rate lock");
        inner.shares.insert(subscription.to_string(), share);
        let largest = inner
            .shares
            .values()
            .copied()
            .max_by(|a, b| a.fraction().total_cmp(&b.fraction()));
        let allowed = split(self.per_second, largest);
        if allowed != inner.allowed {
            let burst = self.burst.map(|b| split(b, largest));
            inner.limiter = limiter(NonZeroU32::new(allowed).unwrap_or(NonZeroU32::MIN), burst);
            inner.allowed = allowed;
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(held: usize, total: usize) -> Share {
        Share { held, total }
    }

    #[test]
    fn an_engine_allows_its_share_of_the_rate_rounded_up() {
        assert_eq!(split(100, None), 100);
        assert_eq!(split(100, Some(share(2, 6))), 34);
        assert_eq!(split(100, Some(share(6, 6))), 100);
        assert_eq!(split(10, Some(share(1, 3))), 4);
    }

    #[test]
    fn an_engine_without_partitions_still_allows_one_request_a_second() {
        assert_eq!(split(100, Some(share(0, 6))), 1);
        assert_eq!(split(100, Some(share(0, 0))), 100);
    }

    #[test]
    fn a_new_share_changes_what_the_limiter_lets_through() {
        let rate = RateLimit::new(10, None).unwrap();
        assert_eq!(rate.set_share("orders", Share { held: 1, total: 2 }), 5);
        let allowed_at_once = (0..10).take_while(|_| rate.check(0).is_ok()).count();
        assert_eq!(allowed_at_once, 5, "a burst of half the rate");
        assert!(rate.check(0).unwrap_err() >= 1);
    }

    #[test]
    fn with_several_subscriptions_the_largest_share_counts() {
        let rate = RateLimit::new(60, None).unwrap();
        rate.set_share("orders", Share { held: 1, total: 6 });
        assert_eq!(rate.set_share("payments", Share { held: 2, total: 3 }), 40);
        assert_eq!(rate.set_share("orders", Share { held: 0, total: 6 }), 40);
        assert_eq!(rate.allowed(), 40);
        assert_eq!(rate.configured(), 60);
    }
}
