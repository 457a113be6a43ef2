//! What a running source reports: records consumed, whether every broker is down, and the
//! consumer lag per partition (from librdkafka's statistics).

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Live figures of a source.
#[derive(Debug, Default)]
pub struct SourceStatus {
    pub consumed: AtomicU64,
    pub paused: AtomicBool,
    /// Set when librdkafka reports every broker down, cleared once one is up again.
    pub brokers_down: AtomicBool,
    /// The last error librdkafka reported (a refused TLS certificate, failed authentication,
    /// an unreachable broker), cleared once its statistics show a broker up.
    pub error: std::sync::Mutex<Option<String>>,
    /// Lag per assigned partition, from librdkafka's statistics (every
    /// `statistics.interval.ms`, 5 s unless configured).
    pub partitions: std::sync::Mutex<Vec<PartitionLag>>,
    /// The partitions assigned to this consumer now, as `topic/partition`.
    pub assigned: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Rebalance events seen: each assignment and each revocation.
    pub rebalances: AtomicU64,
}

impl SourceStatus {
    /// The error to show an operator, if no broker has been up since it happened.
    pub fn last_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn set_error(&self, error: Option<String>) {
        if let Ok(mut slot) = self.error.lock() {
            *slot = error;
        }
    }

    /// The partitions assigned now, sorted.
    pub fn assigned(&self) -> Vec<String> {
        self.assigned
            .lock()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// A rebalance assigned (`true`) or revoked these partitions.
    pub(crate) fn rebalanced(&self, assigned: bool, partitions: &[(String, i32)]) {
        self.rebalances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut set) = self.assigned.lock() {
            for (topic, partition) in partitions {
                let name = format!("{topic}/{partition}");
                if assigned {
                    set.insert(name);
                } else {
                    set.remove(&name);
                }
            }
        }
    }

    /// The last lag figures, sorted by topic and partition.
    pub fn lag(&self) -> Vec<PartitionLag> {
        self.partitions.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Consumer lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The partition's high watermark: the offset the next produced record gets.
    pub high_watermark: i64,
    /// The group's committed offset, if any.
    pub committed: Option<i64>,
    /// Records not yet committed: `high_watermark - committed` (from the log start when
    /// nothing is committed yet).
    pub lag: i64,
}

impl PartitionLag {
    /// Figures from librdkafka's per-partition statistics, `None` for a partition that is
    /// not assigned to us or whose watermark is not known yet.
    pub fn from_statistics(topic: &str, p: &rdkafka::statistics::Partition) -> Option<Self> {
        if p.partition < 0 || p.hi_offset < 0 || p.fetch_state == "none" || !p.desired {
            return None;
        }
        let committed = (p.committed_offset >= 0).then_some(p.committed_offset);
        let from = committed.unwrap_or(p.lo_offset.max(0));
        Some(Self {
            topic: topic.to_string(),
            partition: p.partition,
            high_watermark: p.hi_offset,
            committed,
            lag: (p.hi_offset - from).max(0),
        })
    }
}
