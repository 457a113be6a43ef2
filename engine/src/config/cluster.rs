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
    /// This engine's static membership id in its groups (`group.instance.id`): restarted
    /// within `session.timeout.ms`, it gets its partitions back without a rebalance. Unique
    /// per engine, stable across its restarts (a StatefulSet pod name, `${HOSTNAME}`).
    pub instance: Option<String>,
    /// The compacted topic where engines announce their admin URLs, so that any engine's
    /// admin API answers for the whole group. Default `<group id>.members`, with the group
    /// id of the first Kafka subscription.
    pub members_topic: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            restore_timeout: Duration::from_secs(30),
            instance: None,
            members_topic: None,
        }
    }
}

impl ClusterConfig {
    /// What is wrong with these settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if self.instance.is_some() && !self.enabled {
            return Err("[cluster] instance needs [cluster] enabled = true".into());
        }
        if let Some(instance) = &self.instance {
            if instance.is_empty()
                || instance.len() > 249
                || instance.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "[cluster] instance `{instance}` must be 1 to 249 characters without spaces"
                ));
            }
        }
        Ok(())
    }
}

/// The members topic of a cluster whose first Kafka subscription has this group id.
pub fn members_topic(group_id: &str) -> String {
    format!("{group_id}.members")
}

/// The changelog topic of a consumer group.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}.calls")
}
