//! The admin API's contract: every response body of `/v1`, as types. The admin API
//! serializes them, the command line deserializes them, and the dashboard reads the same
//! shapes. README.md ("Admin API") lists the routes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::model::{AttemptView, CallStatus, CallView, KafkaSource, Millis};
pub use crate::store::{CallSummary, StatusCounts};
pub use connectors::kafka::PartitionLag;

/// Bytes as JSON: text when they are UTF-8, else percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "lowercase")]
pub enum Bytes {
    Utf8(String),
    Percent(String),
}

impl Bytes {
    pub fn of(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Self::Utf8(text.to_string()),
            Err(_) => Self::Percent(sdk::protocol::encode_bytes(bytes)),
        }
    }

    /// As shown to a person: the text, or its percent encoding.
    pub fn as_text(&self) -> &str {
        match self {
            Self::Utf8(text) | Self::Percent(text) => text,
        }
    }
}

/// `GET /v1/calls/{id}`, and the call after an operator's action on it: the stored view,
/// with its bytes shown as [`Bytes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(flatten)]
    pub call: CallView,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub output: Option<Bytes>,
    /// Cluster mode: the member that holds the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl From<CallView> for Call {
    fn from(call: CallView) -> Self {
        Self {
            key: call.key.as_deref().map(Bytes::of),
            payload: Bytes::of(&call.payload),
            output: call.output.as_deref().map(Bytes::of),
            call,
            member: None,
        }
    }
}

/// One line of `GET /v1/calls` and `GET /v1/dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallLine {
    #[serde(flatten)]
    pub call: CallSummary,
    pub key: Option<Bytes>,
    /// Cluster mode: the member that holds the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

impl From<CallSummary> for CallLine {
    fn from(call: CallSummary) -> Self {
        Self {
            key: call.key.as_deref().map(Bytes::of),
            call,
            member: None,
        }
    }
}

/// `GET /v1/calls` and `GET /v1/dead`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallList {
    pub calls: Vec<CallLine>,
    /// Pass as `after` for the next page; `None` on the last page (and with
    /// `scope=group`, where each member has its own cursor in `members`).
    pub next: Option<i64>,
    /// `scope=group`: what each member answered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, MemberPart>,
}

/// `POST /v1/subscriptions/{name}/calls` (201).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    pub id: uuid::Uuid,
    /// `pending`, or `dead` when the payload is above the subscription's limit.
    pub status: CallStatus,
}

/// `POST /v1/calls/{id}/signals/{name}` (202): the signal is kept for the workflow, in
/// its journal if it was waiting for it, else in its inbox until it asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signalled {
    pub id: uuid::Uuid,
    pub signal: String,
}

/// `POST /v1/dead/redrive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: usize,
    pub ids: Vec<uuid::Uuid>,
    /// `scope=group`: members that did not answer, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// `POST /v1/dead/purge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: usize,
    pub ids: Vec<uuid::Uuid>,
    /// `scope=group`: members that did not answer, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// Every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /v1/stats`: calls by status over every subscription, then each subscription and
/// each endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    #[serde(flatten)]
    pub calls: StatusCounts,
    pub subscriptions: BTreeMap<String, SubscriptionStats>,
    pub endpoints: BTreeMap<String, EndpointStats>,
}

/// One subscription in [`Stats`]: its calls by status, and its live figures when it is
/// configured (a subscription removed from the config keeps only its stored calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionStats {
    #[serde(flatten)]
    pub calls: StatusCounts,
    #[serde(flatten)]
    pub live: Option<LiveFigures>,
}

/// What a running subscription reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveFigures {
    pub in_flight: u64,
    pub waiting_retry: u64,
    pub in_memory: u64,
    pub throughput: Throughput,
    /// With a dead-letter topic: dead calls produced to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
    /// With a dead-letter topic: whether producing to it fails at the moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters_failing: Option<bool>,
    /// With a Kafka source: records read (before deduplication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed: Option<u64>,
    /// With a Kafka source: whether every broker is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_down: Option<bool>,
    /// With a Kafka source: the last error librdkafka reported (TLS, authentication,
    /// connection), until a broker is up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_error: Option<String>,
    /// With a Kafka source: lag per assigned partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<Vec<PartitionLag>>,
    /// With a Kafka source: the partitions this engine holds now (`topic/partition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Vec<String>>,
    /// With a Kafka source: rebalance events seen since start (assignments and revocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalances: Option<u64>,
}

/// Calls created and finished per second over the last `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub window_seconds: u64,
    pub created_per_second: f64,
    pub finished_per_second: f64,
}

/// One endpoint in [`Stats`]: its adaptive limit and why it moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub limit: usize,
    pub in_flight: usize,
    /// Times the limit went up / was cut for overload since start.
    pub raises: u64,
    pub cuts: u64,
    /// Every change and verdict since start, by reason code (`raise`, `overload`,
    /// `latency`, `knee`, `error_trial`, `errors_were_overload`, `errors_not_overload`, `probe`,
    /// `probed`).
    pub changes_by_reason: BTreeMap<String, u64>,
    /// The share of answers that are 5xx errors the limiter has found to be the
    /// application's (not overload: they did not fall with concurrency, or were there at
    /// low concurrency); absent until it has. Errors above it start a trial cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usual_error_rate: Option<f64>,
    pub paused_until: Option<Millis>,
    pub recent_changes: Vec<ChangeView>,
    /// With a static rate limit: requests per second configured, and allowed to this
    /// engine now (in cluster mode, its share of partitions of the configured rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_allowed: Option<u32>,
}

/// One limit change or verdict: what the limiter saw and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeView {
    pub at: Millis,
    pub from: usize,
    pub to: usize,
    /// A stable code ([`crate::limiter::ChangeReason::code`]).
    pub reason: String,
    /// The same, in a sentence with the figures behind it.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_or_percent_encoded() {
        let text = serde_json::to_value(Bytes::of(b"hi")).unwrap();
        assert_eq!(text, serde_json::json!({"encoding": "utf8", "data": "hi"}));
        let binary = Bytes::of(&[0xff, b'a']);
        assert!(matches!(&binary, Bytes::Percent(data) if data.contains("%FF") || data.contains("%ff")));
        let back: Bytes = serde_json::from_value(serde_json::to_value(&binary).unwrap()).unwrap();
        assert_eq!(back, binary);
    }

    #[test]
    fn a_subscription_without_live_figures_reads_back_as_such() {
        let stored_only = SubscriptionStats {
            calls: StatusCounts {
                pending: 1,
                ..StatusCounts::default()
            },
            live: None,
        };
        let json = serde_json::to_string(&stored_only).unwrap();
        let back: SubscriptionStats = serde_json::from_str(&json).unwrap();
        assert_eq!(back, stored_only);
        let running = SubscriptionStats {
            live: Some(LiveFigures {
                in_flight: 2,
                waiting_retry: 0,
                in_memory: 5,
                throughput: Throughput {
                    window_seconds: 60,
                    created_per_second: 1.5,
                    finished_per_second: 1.0,
                },
                dead_lettered: None,
                dead_letters_failing: None,
                consumed: Some(9),
                kafka_down: Some(false),
                kafka_error: None,
                lag: Some(Vec::new()),
                assigned: Some(vec!["orders/0".into()]),
                rebalances: Some(1),
            }),
            ..stored_only
        };
        let back: SubscriptionStats = serde_json::from_str(&serde_json::to_string(&running).unwrap()).unwrap();
        assert_eq!(back, running);
    }
}

/// How one engine of a cluster announces itself in the members topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// `[cluster] instance`, or an id drawn at the engine's start.
    pub id: String,
    /// Where its admin API answers (`[admin] public_url`, or the address it listens on).
    pub admin_url: String,
    pub instance: Option<String>,
    pub started_at: Millis,
    pub heartbeat_at: Millis,
    /// Per Kafka subscription, the source partitions it holds (`topic/partition`).
    pub assigned: BTreeMap<String, Vec<String>>,
}

/// One member in [`ClusterView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(flatten)]
    pub record: MemberRecord,
    /// The engine that answered.
    pub me: bool,
    /// Not heard of for 20 s: listed, not asked by group-wide requests.
    pub stale: bool,
    pub heard_ms_ago: i64,
}

/// `GET /v1/cluster`: the members of the cluster this engine knows of. Outside cluster
/// mode, `enabled` is false and there are no members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub enabled: bool,
    /// This engine's member id.
    pub me: Option<String>,
    /// The members topic.
    pub topic: Option<String>,
    pub members: Vec<Member>,
}

/// What one member answered to a group-wide request (`scope=group`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberPart {
    /// Calls it returned.
    pub calls: usize,
    /// Its own cursor: page on with `member=<id>&after=<next>`.
    pub next: Option<i64>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// `GET /v1/stats?scope=group`: calls by status over every member, then each member's stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    #[serde(flatten)]
    pub calls: StatusCounts,
    pub members: BTreeMap<String, MemberStats>,
}

/// One member in [`GroupStats`]: its stats, or why it did not answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStats {
    pub stats: Option<Stats>,
    pub error: Option<String>,
}
