//! Who is in the cluster, and where their admin APIs are: each engine announces itself in
//! the members topic (compacted, keyed by member id) every few seconds and follows the
//! topic to know the others. The admin API uses it to answer for the whole group
//! (`admin::group`). A member that stops cleanly removes its record (a tombstone); one that
//! was killed goes stale, then out of the view.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connectors::kafka::changelog::follow_partition;
use connectors::kafka::sink::{Sink, SinkConfig, SinkRecord};

use crate::api::{ClusterView, Member, MemberRecord};
use crate::error::EngineError;
use crate::figures::Figures;
use crate::model::{now_millis, Millis};
use crate::shutdown::Shutdown;

/// How often a member announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A member not heard of for this long is stale: listed, not asked.
pub const STALE_AFTER_MS: Millis = 20_000;
/// A member not heard of for this long is out of the view (a killed engine that never
/// came back; its record stays in the topic until someone removes it).
pub const FORGET_AFTER_MS: Millis = 600_000;
/// How long a stopping engine tries to remove its record.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Members announce themselves in this partition.
const PARTITION: i32 = 0;

/// What this engine knows of the cluster's members.
#[derive(Debug, Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    me: String,
    topic: String,
    members: Mutex<BTreeMap<String, MemberRecord>>,
    stop: AtomicBool,
}

impl Directory {
    fn new(me: String, topic: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                me,
                topic,
                members: Mutex::new(BTreeMap::new()),
                stop: AtomicBool::new(false),
            }),
        }
    }

    /// This engine's member id.
    pub fn me(&self) -> &str {
        &self.inner.me
    }

    /// A record read from the members topic (`None`: a tombstone).
    fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut members = self.inner.members.lock().expect("members lock");
        match value.map(serde_json::from_slice::<MemberRecord>) {
            None => {
                members.remove(&key);
            }
            Some(Ok(record)) => {
                members.insert(key, record);
            }
            Some(Err(error)) => {
                tracing::warn!(topic = %self.inner.topic, member = %key, %error, "a members record that is not one; ignored");
            }
        }
    }

    /// Every member heard of within [`FORGET_AFTER_MS`], this one first.
    pub fn view(&self, now: Millis) -> ClusterView {
        let members = self.inner.members.lock().expect("members lock");
        let mut members: Vec<Member> = members
            .values()
            .filter(|m| now - m.heartbeat_at < FORGET_AFTER_MS)
            .map(|record| Member {
                me: record.id == self.inner.me,
                stale: now - record.heartbeat_at >= STALE_AFTER_MS,
                heard_ms_ago: (now - record.heartbeat_at).max(0),
                record: record.clone(),
            })
            .collect();
        members.sort_by_key(|m| (!m.me, m.record.id.clone()));
        ClusterView {
            enabled: true,
            me: Some(self.inner.me.clone()),
            topic: Some(self.inner.topic.clone()),
            members,
        }
    }

    /// The other members that are not stale: the ones a group-wide answer asks.
    pub fn peers(&self, now: Millis) -> Vec<MemberRecord> {
        self.view(now)
            .members
            .into_iter()
            .filter(|m| !m.me && !m.stale)
            .map(|m| m.record)
            .collect()
    }
}

/// Settings of the directory of one engine.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub brokers: String,
    pub options: BTreeMap<String, String>,
    pub topic: String,
    /// `[cluster] instance`, or a fresh id for this run.
    pub me: String,
    pub instance: Option<String>,
    pub admin_url: String,
}

/// Check the members topic, start following it, and return the directory with the task
/// that announces this engine until shutdown (then removes its record).
pub async fn start(
    config: DirectoryConfig,
    figures: Arc<HashMap<String, Arc<Figures>>>,
    shutdown: Shutdown,
) -> Result<(Directory, impl std::future::Future<Output = Result<(), EngineError>>), EngineError> {
    check_topic(&config).await?;
    let sink = Sink::new(&SinkConfig {
        name: "cluster members".into(),
        brokers: config.brokers.clone(),
        topic: config.topic.clone(),
        options: config.options.clone(),
    })?;
    let directory = Directory::new(config.me.clone(), config.topic.clone());
    let follower = directory.clone();
    let (brokers, options, topic) = (config.brokers.clone(), config.options.clone(), config.topic.clone());
    std::thread::Builder::new()
        .name("cluster-members".into())
        .spawn(move || {
            let stop = &follower.inner.stop;
            if let Err(error) =
                follow_partition(&brokers, &options, &topic, PARTITION, stop, |k, v| follower.apply(k, v))
            {
                tracing::error!(%error, "cannot follow the members topic; the group view shows this engine only");
            }
        })
        .map_err(|e| EngineError::Cluster(format!("cannot start the members follower: {e}")))?;
    let announcer = announce(config, sink, directory.clone(), figures, shutdown);
    Ok((directory, announcer))
}

async fn check_topic(config: &DirectoryConfig) -> Result<(), EngineError> {
    let (brokers, options, topic) = (config.brokers.clone(), config.options.clone(), config.topic.clone());
    let count = tokio::task::spawn_blocking(move || {
        connectors::kafka::changelog::partition_count(&brokers, &options, &topic, Duration::from_secs(10))
    })
    .await
    .map_err(|e| EngineError::task("checking the members topic", e))??;
    if count.is_none() {
        let topic = &config.topic;
        return Err(EngineError::Cluster(format!(
            "the members topic `{topic}` does not exist; create it with 1 partition and cleanup.policy=compact, for example: kafka-topics.sh --create --topic {topic} --partitions 1 --config cleanup.policy=compact"
        )));
    }
    Ok(())
}

/// Announce this engine every [`HEARTBEAT`] until shutdown, then remove its record and stop
/// following the topic.
async fn announce(
    config: DirectoryConfig,
    sink: Sink,
    directory: Directory,
    figures: Arc<HashMap<String, Arc<Figures>>>,
    mut shutdown: Shutdown,
) -> Result<(), EngineError> {
    let started_at = now_millis();
    let key = config.me.clone().into_bytes();
    loop {
        let record = MemberRecord {
            id: config.me.clone(),
            admin_url: config.admin_url.clone(),
            instance: config.instance.clone(),
            started_at,
            heartbeat_at: now_millis(),
            assigned: figures
                .iter()
                .filter_map(|(name, f)| f.source().map(|s| (name.clone(), s.assigned())))
                .collect(),
        };
        let value = serde_json::to_vec(&record).expect("a member record serializes");
        let heartbeat = [SinkRecord {
            key: Some(key.clone()),
            value: Some(value),
            headers: Vec::new(),
            partition: Some(PARTITION),
        }];
        // A broker that is down must not hold the loop (nor the engine's shutdown).
        let sent = tokio::time::timeout(HEARTBEAT, sink.send_all(&heartbeat)).await;
        if let Some(error) = sent.map_or_else(
            |_| Some("no answer within 5 s".to_string()),
            |sent| sent.into_iter().find_map(Result::err).map(|e| e.to_string()),
        ) {
            tracing::warn!(%error, "cannot announce this engine in the members topic");
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            () = shutdown.recv() => break,
        }
    }
    let tombstone = [SinkRecord {
        key: Some(key),
        value: None,
        headers: Vec::new(),
        partition: Some(PARTITION),
    }];
    match tokio::time::timeout(LEAVE_TIMEOUT, sink.send_all(&tombstone)).await {
        Ok(gone) if gone.iter().all(Result::is_ok) => {}
        _ => tracing::warn!("cannot remove this engine from the members topic; it goes stale in 20 s"),
    }
    directory.inner.stop.store(true, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, heartbeat_at: Millis) -> Vec<u8> {
        serde_json::to_vec(&MemberRecord {
            id: id.into(),
            admin_url: format!("http://{id}:8680"),
            instance: None,
            started_at: 0,
            heartbeat_at,
            assigned: BTreeMap::new(),
        })
        .unwrap()
    }

    #[test]
    fn members_go_stale_then_out_of_view_and_a_tombstone_removes_one() {
        let directory = Directory::new("b".into(), "g.members".into());
        let now = 1_000_000;
        directory.apply(b"a", Some(&record("a", now - 1_000)));
        directory.apply(b"b", Some(&record("b", now)));
        directory.apply(b"c", Some(&record("c", now - STALE_AFTER_MS)));
        directory.apply(b"d", Some(&record("d", now - FORGET_AFTER_MS)));
        directory.apply(b"e", Some(b"not json"));
        let view = directory.view(now);
        let listed: Vec<(&str, bool, bool)> = view
            .members
            .iter()
            .map(|m| (m.record.id.as_str(), m.me, m.stale))
            .collect();
        assert_eq!(listed, [("b", true, false), ("a", false, false), ("c", false, true)]);
        let peers: Vec<String> = directory.peers(now).into_iter().map(|m| m.id).collect();
        assert_eq!(peers, ["a"], "neither this engine nor a stale one is asked");
        directory.apply(b"a", None);
        assert!(directory.peers(now).is_empty());
    }
}
