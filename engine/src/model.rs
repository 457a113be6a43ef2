//! The call and attempt records shared by the store, the scheduler and the admin API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the engine's one time unit on disk.
pub type Millis = i64;

/// The current wall-clock time in [`Millis`].
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Lifecycle of a call. `succeeded`, `dead` and `cancelled` are terminal, though an operator
/// may redrive a dead call back to `pending`. `paused` is a workflow whose code no longer
/// matches its journal: it waits for an operator (a redrive resumes it) and is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Pending,
    Running,
    Succeeded,
    Dead,
    Cancelled,
    Paused,
}

impl CallStatus {
    pub const ALL: [CallStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
        Self::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
            Self::Paused => "paused",
        }
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CallStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status `{s}` (expected pending, running, succeeded, dead, cancelled or paused)")
            })
    }
}

/// Where a record came from in Kafka. Calls enqueued directly have none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Record timestamp, if the record had one.
    pub timestamp: Option<Millis>,
}

/// A call about to be created, from a Kafka record or a direct enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub subscription: String,
    pub target: String,
    pub payload: Vec<u8>,
    /// The record value was null (a tombstone); `payload` is then empty.
    pub tombstone: bool,
    /// The record key; `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// The record's headers in the protocol's text encoding, `None` when there are none.
    pub headers: Option<String>,
    pub source: Option<KafkaSource>,
    /// Calls with the same ordering key in one subscription run one at a time, in order.
    pub ordering_key: Option<Vec<u8>>,
    /// When set, the call is created already dead with this reason (for example a payload
    /// above the configured maximum): recorded, visible and redrivable, never dropped.
    pub dead_reason: Option<String>,
    /// A call created dead blocks its ordering group (`on_dead = block`).
    pub block_group_if_dead: bool,
    /// A client's key for a call enqueued through the API: a second call with the same key
    /// in the same subscription is a duplicate of the first (while the first is kept).
    pub idempotency_key: Option<String>,
}

/// What the store did with one [`NewCall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new call with this id.
    New(uuid::Uuid),
    /// The same (subscription, topic, partition, offset), or the same idempotency key, was
    /// already stored.
    Duplicate,
}

/// A call as loaded for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCall {
    pub seq: i64,
    pub id: uuid::Uuid,
    pub target: String,
    pub payload: Vec<u8>,
    pub tombstone: bool,
    pub key: Option<Vec<u8>>,
    pub headers: Option<String>,
    pub source: Option<KafkaSource>,
    pub ordering_key: Option<Vec<u8>>,
    /// Attempts made so far, including an interrupted one.
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub created_at: Millis,
    /// Attempts made before the last redrive: the retry budget counts from here.
    pub attempts_before_redrive: u32,
    /// When the call was last redriven: its age for `max_age` counts from here.
    pub redriven_at: Option<Millis>,
    /// Entries in the call's workflow journal (0 for plain calls).
    pub journal_len: u32,
}

/// An operator's action on calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// Make a pending call due now.
    RetryNow(uuid::Uuid),
    /// Stop a pending, running or dead call for good.
    Cancel(uuid::Uuid),
    /// Give dead calls new attempts (the history is kept).
    Redrive(Vec<uuid::Uuid>),
    /// Delete dead calls and their history.
    PurgeDead(Vec<uuid::Uuid>),
    /// Run an ended call again, keeping the first `from` entries of its journal (0: from
    /// the start); later entries are dropped and run again.
    Restart { id: uuid::Uuid, from: u32 },
}

impl Operation {
    /// The statuses a call must have for this operation to apply to it.
    pub fn applies_to(&self) -> &'static [CallStatus] {
        use CallStatus::{Cancelled, Dead, Paused, Pending, Running, Succeeded};
        match self {
            Self::RetryNow(_) => &[Pending],
            Self::Cancel(_) => &[Pending, Running, Dead, Paused],
            // A paused workflow resumes by a redrive, once its code is fixed.
            Self::Redrive(_) => &[Dead, Paused],
            Self::PurgeDead(_) => &[Dead],
            // Not a call that may be running: its attempt would end on the dropped journal.
            Self::Restart { .. } => &[Succeeded, Dead, Paused, Cancelled],
        }
    }

    /// The calls it names.
    pub fn ids(&self) -> &[uuid::Uuid] {
        match self {
            Self::RetryNow(id) | Self::Cancel(id) | Self::Restart { id, .. } => std::slice::from_ref(id),
            Self::Redrive(ids) | Self::PurgeDead(ids) => ids,
        }
    }

    /// [`Self::applies_to`] in words: "pending, running or dead".
    pub fn applies_to_text(&self) -> String {
        let names: Vec<&str> = self.applies_to().iter().map(|s| s.as_str()).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// A call an [`Operation`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affected {
    pub id: uuid::Uuid,
    pub seq: i64,
    pub subscription: String,
    pub ordering_key: Option<Vec<u8>>,
    /// Its status before the operation.
    pub was: CallStatus,
}

/// The result of one delivery attempt, ready to be recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at: Millis,
    pub duration_ms: i64,
    /// `success`, `temporary`, `permanent` or `interrupted`.
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// The state a call moves to after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Succeeded {
        output: Option<Vec<u8>>,
    },
    Retry {
        at: Millis,
        error: String,
    },
    Dead {
        error: String,
    },
    /// A workflow stores new journal entries, child calls and records to publish, and
    /// waits. Progress: its retry budget and age start again.
    Suspended(Box<crate::workflow::Suspended>),
    /// A workflow's code no longer matches its journal: an operator must act.
    Paused {
        error: String,
    },
}

/// A stored call, as shown to operators (the admin API shows its bytes through
/// [`crate::api::Call`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallView {
    pub id: uuid::Uuid,
    pub subscription: String,
    pub target: String,
    pub status: CallStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    #[serde(skip)]
    pub output: Option<Vec<u8>>,
    pub headers: Option<String>,
    pub source: Option<KafkaSource>,
    /// Attempts made before the last redrive (0 if never redriven): the eras of the history.
    pub attempts_before_redrive: u32,
    /// When the call was last redriven.
    pub redriven_at: Option<Millis>,
    pub history: Vec<AttemptView>,
    /// A workflow's journal, entry by entry (empty for plain calls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub journal: Vec<serde_json::Value>,
    /// What a suspended workflow waits for: `{"any_of": [[positions], ...]}`, over when
    /// every entry of one group has completed (see docs/protocol.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<serde_json::Value>,
    /// The workflow a child call belongs to, and its entry there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentEntry>,
    /// The deployment a workflow is pinned to (declared by its SDK, protocol 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// The workflow entry a child call reports to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentEntry {
    pub id: uuid::Uuid,
    pub position: u32,
}

/// One attempt of a call, as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}
