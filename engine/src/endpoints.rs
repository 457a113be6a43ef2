//! Endpoints: where calls go, keyed by target origin (or a name), each with an adaptive
//! concurrency limit ([`crate::limiter`]), an optional static rate limit, and a pause asked
//! for by `Retry-After`. Shared by every subscription that delivers to the endpoint.
//!
//! A call waiting here for capacity is not failing: it makes no attempt and gets no backoff.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{ChangeView, EndpointStats};
use crate::config::{Config, EndpointConfig, SubscriptionConfig};
use crate::limiter::{Aimd, AimdConfig, ChangeReason, LimitChange, Sent, Signal};

use crate::model::Millis;
use crate::rate::RateLimit;

/// Longest pause a `Retry-After` may impose on a whole endpoint.
const MAX_ENDPOINT_PAUSE: Duration = Duration::from_secs(60);
/// An endpoint that answered within this window is still serving: its `Retry-After` on an
/// overload refuses the excess, and does not pause it.
const SERVING_WINDOW_MS: Millis = 1000;
/// Limit changes kept for stats.
const RECENT_CHANGES: usize = 20;

/// Why a call cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Every slot is taken: try again when one is released.
    Slot,
    /// Try again at this time (rate limit or `Retry-After`).
    Until(Millis),
}

#[derive(Debug)]
struct State {
    aimd: Aimd,
    in_flight: usize,
    paused_until: Millis,
    /// When the last answer that was not overload arrived.
    last_served: Millis,
    changes: VecDeque<LimitChange>,
    raises: u64,
    cuts: u64,
    /// Changes and verdicts by [`ChangeReason::code`].
    by_reason: BTreeMap<&'static str, u64>,
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub key: String,
    state: Mutex<State>,
    rate: Option<Arc<RateLimit>>,
    releases: watch::Sender<u64>,
}

impl Endpoint {
    fn new(key: String, concurrency: AimdConfig, rate: Option<RateLimit>) -> Self {
        Self {
            key,
            state: Mutex::new(State {
                aimd: Aimd::new(concurrency),
                in_flight: 0,
                paused_until: 0,
                last_served: 0,
                changes: VecDeque::new(),
                raises: 0,
                cuts: 0,
                by_reason: BTreeMap::new(),
            }),
            rate: rate.map(Arc::new),
            releases: watch::channel(0).0,
        }
    }

    /// The endpoint's static rate limit, if it has one.
    pub fn rate(&self) -> Option<&Arc<RateLimit>> {
        self.rate.as_ref()
    }

    /// Take a slot for one attempt, or say when to try again. Returns the attempts in
    /// flight with this one.
    pub fn try_acquire(&self, now: Millis) -> Result<usize, Wait> {
        let mut state = self.state.lock().expect("endpoint lock");
        if state.paused_until > now {
            return Err(Wait::Until(state.paused_until));
        }
        if state.in_flight >= state.aimd.limit() {
            return Err(Wait::Slot);
        }
        if let Some(rate) = &self.rate {
            rate.check(now).map_err(Wait::Until)?;
        }
        state.in_flight += 1;
        Ok(state.in_flight)
    }

    /// Give back a slot taken by [`Endpoint::try_acquire`] that was not used.
    pub fn release_unused(&self) {
        self.state.lock().expect("endpoint lock").in_flight -= 1;
        self.releases.send_modify(|n| *n += 1);
    }

    /// An attempt finished: feed the limiter and free the slot.
    ///
    /// A `retry_after` on an overload pauses the whole endpoint (up to a minute), unless
    /// the endpoint served another attempt within the last second: then it refused only
    /// the excess over its capacity, the limit is cut, and the delay applies to this call
    /// alone. On any other failure a `retry_after` only delays its own call.
    pub fn release(&self, signal: Signal, retry_after: Option<Duration>, sent: Sent, now: Millis) {
        let mut state = self.state.lock().expect("endpoint lock");
        let in_flight = state.in_flight;
        state.in_flight -= 1;
        match (signal, retry_after) {
            (Signal::Overload(_), Some(delay)) if state.last_served + SERVING_WINDOW_MS < now => {
                let until = now + delay.min(MAX_ENDPOINT_PAUSE).as_millis() as Millis;
                state.paused_until = state.paused_until.max(until);
            }
            (Signal::Overload(_), _) => {}
            _ => state.last_served = now,
        }
        if let Some(change) = state.aimd.on_signal(signal, sent, in_flight, now) {
            let reason = change.reason;
            match reason {
                ChangeReason::ErrorsWereOverload { .. } | ChangeReason::ErrorsNotOverload { .. } => {
                    tracing::info!(endpoint = %self.key, from = change.from, to = change.to, "{}", reason.explain());
                }
                _ => {
                    tracing::debug!(endpoint = %self.key, from = change.from, to = change.to, "{}", reason.explain());
                }
            }
            if reason == ChangeReason::Raise {
                state.raises += 1;
            } else if reason.is_cut() {
                state.cuts += 1;
            }
            *state.by_reason.entry(reason.code()).or_default() += 1;
            if state.changes.len() == RECENT_CHANGES {
                state.changes.pop_front();
            }
            state.changes.push_back(change);
        }
        drop(state);
        self.releases.send_modify(|n| *n += 1);
    }

    /// Changes whenever a slot is released: wait on it after [`Wait::Slot`].
    pub fn releases(&self) -> watch::Receiver<u64> {
        self.releases.subscribe()
    }

    /// The current figures.
    pub fn snapshot(&self) -> EndpointStats {
        let state = self.state.lock().expect("endpoint lock");
        EndpointStats {
            limit: state.aimd.limit(),
            in_flight: state.in_flight,
            raises: state.raises,
            cuts: state.cuts,
            changes_by_reason: state
                .by_reason
                .iter()
                .map(|(reason, n)| ((*reason).to_string(), *n))
                .collect(),
            usual_error_rate: state.aimd.usual_error_rate(),
            paused_until: (state.paused_until > 0).then_some(state.paused_until),
            recent_changes: state
                .changes
                .iter()
                .map(|c| ChangeView {
                    at: c.at,
                    from: c.from,
                    to: c.to,
                    reason: c.reason.code().to_string(),
                    detail: c.reason.explain(),
                })
                .collect(),
            rate_limit: self.rate.as_ref().map(|r| r.configured()),
            rate_allowed: self.rate.as_ref().map(|r| r.allowed()),
        }
    }
}

/// The origin (`scheme://host:port`) of a URL, the default endpoint key.
pub fn origin_of(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(|_| url.to_string(), |u| u.origin().ascii_serialization())
}

/// Every endpoint of a config, and which one each subscription uses.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_key: HashMap<String, Arc<Endpoint>>,
}

impl Endpoints {
    /// Build the endpoints: those configured under `[[endpoint]]`, and one per other origin.
    pub fn from_config(config: &Config) -> Self {
        let mut endpoints = Self::default();
        for sub in &config.subscriptions {
            let (key, endpoint_config) = resolve(config, sub);
            endpoints.by_key.entry(key.clone()).or_insert_with(|| {
                let settings = endpoint_config.cloned().unwrap_or_default();
                let rate = settings.rate_limit.and_then(|r| RateLimit::new(r, settings.rate_burst));
                Arc::new(Endpoint::new(key, settings.concurrency, rate))
            });
        }
        endpoints
    }

    /// The endpoint a subscription delivers to.
    pub fn for_subscription(&self, config: &Config, sub: &SubscriptionConfig) -> Arc<Endpoint> {
        let (key, _) = resolve(config, sub);
        Arc::clone(&self.by_key[&key])
    }

    /// All endpoints, by key.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Arc<Endpoint>)> {
        self.by_key.iter()
    }
}

/// A subscription's endpoint: the one it names, else the one configured for its target's
/// origin, else its origin with default settings.
fn resolve<'c>(config: &'c Config, sub: &SubscriptionConfig) -> (String, Option<&'c EndpointConfig>) {
    if let Some(name) = &sub.endpoint {
        let found = config
            .endpoints
            .iter()
            .find(|e| e.name.as_deref() == Some(name.as_str()));
        return (name.clone(), found);
    }
    let origin = origin_of(&sub.target);
    let found = config
        .endpoints
        .iter()
        .find(|e| e.origin.as_deref().map(origin_of).as_deref() == Some(origin.as_str()));
    match found {
        Some(e) => (e.name.clone().unwrap_or(origin), Some(e)),
        None => (origin, None),
    }
}
