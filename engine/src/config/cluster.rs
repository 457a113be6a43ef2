//! `[cluster]`: several engines in one consumer group, each partition's calls following
//! the partition from engine to engine through a changelog topic (docs/scaling.md).

use std::time::Duration;

use serde::Deserialize;

/// Settings of cluster mode. Off by default: one engine per group, no changelog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Write every change of a Kafka record's call to the changelog topic
    /// `<group id>.calls`, restore a partition's calls when it is assigned, and release
    /// them when it is revoked.
    pub enabled: bool,
    /// Restoring a partition fails when its changelog yields no record for this long.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            restore_timeout: Duration::from_secs(30),
        }
    }
}

/// The changelog topic of a consumer group.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}.calls")
}
