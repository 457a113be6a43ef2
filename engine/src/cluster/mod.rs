//! Cluster mode (`[cluster] enabled = true`, docs/scaling.md): several engines in one
//! consumer group, each partition's calls following the partition.
//!
//! - [`publish`] (module `publish`): every commit's changes go to the changelog topic of their subscription
//!   (`<group id>.calls`, changelog partition = source partition, keyed by call id), in
//!   commit order; `acked` says up to which commit the broker has them.
//! - [`ClusterLink::covered`]: the source stores a batch's offsets only once its calls are
//!   in the changelog too.
//! - [`Ownership`]: the source's partition hook. An assigned partition's calls are
//!   restored from the changelog before any of its records is consumed; a revoked
//!   partition's calls are handed over (attempts in flight end, their outcomes reach the
//!   changelog, the local copies go) before the group moves it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::kafka::changelog::{read_partitions, PartitionState, CLAIM_HEADER};
use connectors::kafka::sink::{Sink, SinkRecord};
use connectors::kafka::PartitionHook;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::EngineError;
use crate::figures::Figures;
use crate::model::Millis;
use crate::scheduler::Handover;
use crate::shutdown::Shutdown;
use crate::store::{CallSnapshot, Store, StoreError};

mod members;
mod publish;
pub use members::{Directory, HEARTBEAT, STALE_AFTER_MS};
pub use publish::{changelog_sink, publish, Owners, Publisher};

/// The assignment strategy of cluster mode unless the subscription's options name one.
pub const ASSIGNMENT_STRATEGY: &str = "cooperative-sticky";

/// Keys of claim records start with this; call ids never do.
const CLAIM_PREFIX: &[u8] = b"claim:";

/// The changelog key of the claims of one source partition (compaction keeps the last).
fn claim_key(subscription: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut key = CLAIM_PREFIX.to_vec();
    key.extend_from_slice(format!("{subscription}:{topic}/{partition}").as_bytes());
    key
}

/// What a subscription's parts need of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    /// The clock of the last commit whose changes the changelog has.
    pub acked: watch::Receiver<Millis>,
    /// The largest call seq the changelog has (calls up to it may be delivered).
    pub covered_seq: watch::Receiver<i64>,
    /// Every scheduler of the engine: held still while calls leave.
    pub schedulers: Schedulers,
    pub restore_timeout: Duration,
    /// Static membership: the source joins its group with this `group.instance.id`.
    pub instance: Option<String>,
    /// The subscription's static rate limits, split by the share of partitions held.
    pub rates: Vec<Arc<crate::rate::RateLimit>>,
    /// Partitions of the subscription's source topics, over all engines.
    pub partitions: usize,
    /// The claims this engine's changelog writes are tagged with.
    pub owners: Owners,
    /// Told of each rebalance: after a freeze, deliveries wait for one.
    pub lease: crate::lease::Lease,
}

impl ClusterLink {
    /// Wait until everything durable in the store so far is in the changelog too. `false`
    /// if the engine stopped first.
    pub async fn covered(&self, store: &Store, shutdown: &mut Shutdown) -> Result<bool, StoreError> {
        let clock = store.commit_clock().await?;
        let mut acked = self.acked.clone();
        tokio::select! {
            reached = acked.wait_for(|&c| c >= clock) => Ok(reached.is_ok()),
            () = shutdown.recv() => Ok(false),
        }
    }
}

/// Every scheduler of this engine, by subscription. A revoked partition's calls leave only
/// while the schedulers that may deliver them are still: its own subscription's, and,
/// when workflow child calls go with them, every other (a child is delivered by the
/// scheduler of its own subscription). One move at a time: two sources rebalancing at
/// once would otherwise each wait for a scheduler the other holds.
#[derive(Debug, Clone, Default)]
pub struct Schedulers {
    all: Arc<std::sync::Mutex<BTreeMap<String, LocalScheduler>>>,
    moving: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug, Clone)]
struct LocalScheduler {
    handovers: mpsc::UnboundedSender<Handover>,
    figures: Arc<Figures>,
}

/// A scheduler held still until this is dropped.
struct Still {
    _resume: oneshot::Sender<()>,
}

impl Schedulers {
    pub fn register(&self, subscription: &str, handovers: mpsc::UnboundedSender<Handover>, figures: Arc<Figures>) {
        self.lock()
            .insert(subscription.to_string(), LocalScheduler { handovers, figures });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalScheduler>> {
        self.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add `delta` to the backlog figure of `subscription`.
    fn moved(&self, subscription: &str, delta: i64) {
        if let Some(local) = self.lock().get(subscription) {
            local.figures.calls_moved(delta);
        }
    }

    /// Hold the schedulers of `subscriptions` still: each lets its attempts in flight end
    /// and makes their outcomes durable. A scheduler that stopped is left out.
    async fn hold<'a>(&self, subscriptions: impl Iterator<Item = &'a str>) -> Vec<(String, Still)> {
        let mut asked = Vec::new();
        for subscription in subscriptions {
            let Some(local) = self.lock().get(subscription).cloned() else {
                continue;
            };
            let (still, is_still) = oneshot::channel();
            let (resume, wait) = oneshot::channel();
            if local.handovers.send(Handover { still, resume: wait }).is_ok() {
                asked.push((subscription.to_string(), is_still, Still { _resume: resume }));
            }
        }
        let mut held = Vec::new();
        for (subscription, is_still, hold) in asked {
            if is_still.await.is_ok() {
                held.push((subscription, hold));
            }
        }
        held
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// The partition hook of one subscription's source in cluster mode.
#[derive(Debug)]
pub struct Ownership {
    pub subscription: String,
    /// Writes the claim record a restore reads up to.
    pub marker: Sink,
    pub brokers: String,
    pub options: BTreeMap<String, String>,
    /// The changelog topic.
    pub topic: String,
    pub store: Store,
    pub figures: Arc<Figures>,
    pub link: ClusterLink,
    pub runtime: tokio::runtime::Handle,
    /// The partitions this engine holds: with the cooperative protocol, a rebalance
    /// assigns or revokes only some of them.
    pub held: std::sync::Mutex<std::collections::BTreeSet<(String, i32)>>,
}

impl Ownership {
    /// Write a claim record for each of `partitions` to the changelog and wait for the
    /// acks; per changelog partition, the highest claim's offset. Everything the changelog
    /// acknowledged before is at a lower offset.
    async fn claim(
        &self,
        partitions: &[(String, i32)],
    ) -> Result<HashMap<i32, i64>, connectors::kafka::sink::SinkError> {
        let records: Vec<SinkRecord> = partitions
            .iter()
            .map(|(topic, partition)| {
                let token = uuid::Uuid::now_v7().simple().to_string();
                let claim = serde_json::json!({
                    "subscription": self.subscription,
                    "topic": topic,
                    "partition": partition,
                    "token": token,
                    "claimed_at": crate::model::now_millis(),
                });
                SinkRecord {
                    key: Some(claim_key(&self.subscription, topic, *partition)),
                    value: Some(claim.to_string().into_bytes()),
                    headers: vec![(CLAIM_HEADER.to_string(), Some(token.into_bytes()))],
                    partition: Some(*partition),
                }
            })
            .collect();
        let mut through = HashMap::new();
        for (result, (_, partition)) in self.marker.send_all(&records).await.into_iter().zip(partitions) {
            let offset = result?.offset;
            let entry = through.entry(*partition).or_insert(offset);
            *entry = (*entry).max(offset);
        }
        // Our writes carry the new tokens from here on, after the claims: a write under an
        // older token that lands after a claim is dropped by readers (an engine that lost
        // the partition and has not noticed yet).
        for claim in &records {
            if let (Some(key), Some((_, Some(token)))) = (&claim.key, claim.headers.first()) {
                self.link.owners.set(key.clone(), token.clone());
            }
        }
        Ok(through)
    }

    /// Each changelog partition that `partitions` map to, read through a fresh claim.
    fn read(&self, partitions: &[(String, i32)]) -> HashMap<i32, PartitionState> {
        let mut wait = Duration::from_millis(200);
        loop {
            // Consuming the partitions without their calls would run keys out of order and
            // lose retries: wait (the group sees a slow member, not a wrong one).
            let error = match self.runtime.block_on(self.claim(partitions)) {
                Ok(through) => match read_partitions(
                    &self.brokers,
                    &self.options,
                    &self.topic,
                    &through,
                    self.link.restore_timeout,
                ) {
                    Ok(states) => return states,
                    Err(error) => error.to_string(),
                },
                Err(error) => error.to_string(),
            };
            tracing::error!(subscription = %self.subscription, %error, retry_in = ?wait, "cannot restore partitions from the changelog");
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// The calls of `topic`/`partition` in `state`, one per record, in the order they were made.
    fn calls_of(&self, state: &PartitionState, topic: &str, partition: i32) -> Vec<CallSnapshot> {
        let snapshots: Vec<(i64, CallSnapshot)> = state
            .latest
            .iter()
            .filter(|(key, _)| !key.starts_with(CLAIM_PREFIX))
            .filter_map(|(_, latest)| match serde_json::from_slice::<CallSnapshot>(&latest.value) {
                Ok(call) => Some((latest.first_offset, call)),
                Err(error) => {
                    tracing::error!(subscription = %self.subscription, %error, "skipping a changelog record that is not a call snapshot");
                    None
                }
            })
            .filter(|(_, c)| c.subscription == self.subscription && c.topic == topic && c.partition == partition)
            .collect();
        let (calls, dropped) = one_call_per_record(snapshots);
        if !dropped.is_empty() {
            tracing::warn!(subscription = %self.subscription, calls = dropped.len(), first = %dropped[0], "the changelog had a second call for records of {topic}/{partition} (written by an engine that had lost the partition); each record keeps its first call");
        }
        calls
    }

    /// Remove the calls of revoked `partitions` (and the workflow child calls that go with
    /// them) while the schedulers that deliver them are still, and wait until the changelog
    /// has every outcome before. `false` if this subscription's scheduler stopped: the
    /// engine is leaving after its outcomes reached the changelog (`before_leaving`).
    async fn hand_over(&self, partitions: &[(String, i32)]) -> Result<bool, StoreError> {
        let schedulers = &self.link.schedulers;
        let _one_move_at_a_time = schedulers.moving.lock().await;
        let mut held = schedulers.hold(std::iter::once(self.subscription.as_str())).await;
        if held.is_empty() {
            return Ok(false);
        }
        // Held still, this subscription's calls make no new children; those of children
        // already open may, so every scheduler is held before any moves.
        if self
            .store
            .has_descendants_to_move(&self.subscription, partitions.to_vec())
            .await?
        {
            let others = schedulers.names();
            held.extend(
                schedulers
                    .hold(others.iter().map(String::as_str).filter(|s| *s != self.subscription))
                    .await,
            );
        }
        let released = self
            .store
            .release(&self.subscription, Some(partitions.to_vec()))
            .await?;
        let clock = self.store.commit_clock().await?;
        drop(held);
        schedulers.moved(&self.subscription, -(released.backlog as i64));
        for (subscription, (_, backlog)) in &released.children {
            schedulers.moved(subscription, -(*backlog as i64));
        }
        let children: u64 = released.children.values().map(|(calls, _)| calls).sum();
        tracing::info!(subscription = %self.subscription, calls = released.calls, children, "released the open calls of revoked partitions to their next owner");
        let mut acked = self.link.acked.clone();
        acked.wait_for(|&c| c >= clock).await.map_err(|_| StoreError::Closed)?;
        Ok(true)
    }

    /// Note `partitions` as held (or no longer); how many are held now.
    fn hold(&self, partitions: &[(String, i32)], held: bool) -> usize {
        let mut set = self.held.lock().expect("held partitions lock");
        for partition in partitions {
            if held {
                set.insert(partition.clone());
            } else {
                set.remove(partition);
            }
        }
        set.len()
    }

    /// Each static rate limit allows this engine's share of it: `held` of the partitions.
    fn split_rates(&self, held: usize) {
        let share = crate::rate::Share {
            held,
            total: self.link.partitions,
        };
        for rate in &self.link.rates {
            let allowed = rate.set_share(&self.subscription, share);
            tracing::info!(
                subscription = %self.subscription,
                allowed,
                configured = rate.configured(),
                "rate limit split by the partitions held: {held} of {}",
                self.link.partitions
            );
        }
    }
}

/// Tells the lease of a rebalance when dropped (on every way out of `revoking`).
struct TellWhenDone<'a>(&'a crate::lease::Lease);

impl Drop for TellWhenDone<'_> {
    fn drop(&mut self) {
        self.0.rebalanced();
    }
}

/// Keep one call per source record: the one that appeared first in the changelog. A second
/// call for a record comes from an engine that went on consuming a partition it had lost
/// (frozen past its session, or assigned it twice during a rebalance); the first is the one
/// the partition's owners have known since. Returns the calls in the order they were made,
/// and the ids dropped.
fn one_call_per_record(mut snapshots: Vec<(i64, CallSnapshot)>) -> (Vec<CallSnapshot>, Vec<String>) {
    snapshots.sort_by_key(|(first_offset, _)| *first_offset);
    let mut seen = std::collections::HashSet::new();
    let mut dropped = Vec::new();
    let mut calls: Vec<CallSnapshot> = Vec::with_capacity(snapshots.len());
    for (_, call) in snapshots {
        if seen.insert((call.topic.clone(), call.partition, call.offset, call.source_generation)) {
            calls.push(call);
        } else {
            dropped.push(call.id);
        }
    }
    calls.sort_by_key(|c| (c.created_at, c.source_generation, c.offset));
    (calls, dropped)
}

impl PartitionHook for Ownership {
    fn assigned(&self, partitions: &[(String, i32)]) {
        self.link.lease.rebalanced();
        if partitions.is_empty() {
            // The cooperative protocol's rebalances that moved nothing here.
            return;
        }
        let started = Instant::now();
        let states = self.read(partitions);
        let read_ms = started.elapsed().as_millis() as u64;
        let mut restored = 0;
        for (topic, partition) in partitions {
            let state = states.get(partition);
            let calls = state.map(|s| self.calls_of(s, topic, *partition)).unwrap_or_default();
            let (count, backlog) = (
                calls.len(),
                calls
                    .iter()
                    .filter(|c| matches!(c.status.as_str(), "pending" | "running"))
                    .count(),
            );
            // The backlog each child's own subscription gains.
            let mut children: BTreeMap<String, i64> = BTreeMap::new();
            for child in calls.iter().flat_map(|c| &c.descendants) {
                let backlog = i64::from(matches!(child.status.as_str(), "pending" | "running"));
                *children.entry(child.subscription.clone()).or_default() += backlog;
            }
            let child_calls: usize = calls.iter().map(|c| c.descendants.len()).sum();
            let last_offset = calls.iter().map(|c| c.offset).max();
            let open = calls
                .iter()
                .filter(|c| !matches!(c.status.as_str(), "succeeded" | "cancelled"))
                .count();
            if let Err(error) = self.runtime.block_on(self.store.restore(calls)) {
                tracing::error!(subscription = %self.subscription, %error, "cannot store the calls restored for {topic}/{partition}");
                continue;
            }
            self.figures.calls_moved(backlog as i64);
            for (subscription, backlog) in &children {
                self.link.schedulers.moved(subscription, *backlog);
            }
            restored += count as u64;
            tracing::info!(
                subscription = %self.subscription,
                calls = count,
                open,
                children = child_calls,
                last_offset,
                changelog_records = state.map_or(0, |s| s.records),
                fenced = state.map_or(0, |s| s.fenced),
                read_ms,
                took_ms = started.elapsed().as_millis() as u64,
                "restored the calls of {topic}/{partition} from the changelog"
            );
        }
        self.figures.restored(restored, started.elapsed());
        self.split_rates(self.hold(partitions, true));
    }

    fn revoking(&self, partitions: &[(String, i32)]) {
        // The lease is told once the partitions are handed over: told before, a scheduler
        // held after a freeze would start attempts of partitions another engine owns.
        let _told = TellWhenDone(&self.link.lease);
        let held = self.hold(partitions, false);
        if held > 0 {
            // Cooperative: the partitions kept. Holding none (eager: every partition, until
            // the assignment that follows), the share stays: no record is delivered anyway.
            self.split_rates(held);
        }
        let started = Instant::now();
        let done = self.runtime.block_on(self.hand_over(partitions));
        match done {
            Ok(true) => {
                tracing::info!(subscription = %self.subscription, took_ms = started.elapsed().as_millis() as u64, "handed over the calls of the revoked partitions");
            }
            Ok(false) => {}
            Err(error) => {
                tracing::error!(subscription = %self.subscription, %error, "could not hand over the revoked partitions; their next owner restores what the changelog has");
            }
        }
    }
}

/// Check each Kafka subscription's changelog topic, drop the calls left from this engine's
/// last run (the changelog has them; partitions are restored as they are assigned), and
/// start the publisher. Returns how far the changelog has the store's commits.
pub async fn start(config: &crate::config::Config, store: &Store) -> Result<(Changelog, Publisher), EngineError> {
    let mut sinks = HashMap::new();
    let mut partitions = HashMap::new();
    for sub in &config.subscriptions {
        let Some(kafka) = &sub.kafka else { continue };
        let topic = crate::config::changelog_topic(&sub.group_id().unwrap_or_default());
        let options = crate::outbox::connection_options(kafka);
        let total = check_changelog(&kafka.brokers, &options, &topic, &kafka.topics).await?;
        partitions.insert(sub.name.clone(), total);
        let released = store.release(&sub.name, None).await?;
        let children: u64 = released.children.values().map(|(calls, _)| calls).sum();
        if released.calls + children > 0 {
            tracing::info!(subscription = %sub.name, calls = released.calls, children, "cluster mode: calls kept from the last run are dropped; each partition's calls are restored from {topic} when it is assigned");
        }
        sinks.insert(
            sub.name.clone(),
            changelog_sink(&sub.name, &kafka.brokers, &topic, &options)?,
        );
    }
    let changes = store
        .take_changes()
        .ok_or_else(|| EngineError::Cluster("the store was opened without its changelog".into()))?;
    let (acked_tx, acked) = watch::channel(0);
    let (covered_tx, covered_seq) = watch::channel(*store.committed_seq().borrow());
    let (stop, stopped) = crate::shutdown::channel();
    let owners = Owners::default();
    let task = tokio::spawn(publish(changes, sinks, owners.clone(), acked_tx, covered_tx, stopped));
    Ok((
        Changelog {
            acked: acked.clone(),
            covered_seq,
            partitions,
            owners,
            schedulers: Schedulers::default(),
        },
        Publisher { stop, task, acked },
    ))
}

/// Start announcing this engine in the members topic and following the others, for the
/// admin API's group-wide answers. Returns the directory and the task to run until
/// shutdown; `None` without a Kafka subscription (no group to be part of).
#[allow(clippy::implicit_hasher)]
pub async fn join_members(
    config: &crate::config::Config,
    admin_url: String,
    figures: Arc<HashMap<String, Arc<Figures>>>,
    shutdown: Shutdown,
) -> Result<Option<(Directory, impl std::future::Future<Output = Result<(), EngineError>>)>, EngineError> {
    let Some((sub, kafka)) = config
        .subscriptions
        .iter()
        .find_map(|s| s.kafka.as_ref().map(|k| (s, k)))
    else {
        return Ok(None);
    };
    let topic = config
        .cluster
        .members_topic
        .clone()
        .unwrap_or_else(|| crate::config::members_topic(&sub.group_id().unwrap_or_default()));
    let me = config
        .cluster
        .instance
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let directory = members::DirectoryConfig {
        brokers: kafka.brokers.clone(),
        options: crate::outbox::connection_options(kafka),
        topic,
        me,
        instance: config.cluster.instance.clone(),
        admin_url,
    };
    Ok(Some(members::start(directory, figures, shutdown).await?))
}

/// How far the changelog has the store.
#[derive(Debug, Clone)]
pub struct Changelog {
    pub acked: watch::Receiver<Millis>,
    pub covered_seq: watch::Receiver<i64>,
    /// Partitions of each subscription's source topics.
    pub partitions: HashMap<String, usize>,
    pub owners: Owners,
    /// Every scheduler of the engine, registered as the subscriptions are made.
    pub schedulers: Schedulers,
}

/// The changelog topic must exist with at least as many partitions as each source topic
/// (changes of source partition p go to changelog partition p). Returns the partitions of
/// the source topics, summed.
async fn check_changelog(
    brokers: &str,
    options: &BTreeMap<String, String>,
    changelog: &str,
    sources: &[String],
) -> Result<usize, EngineError> {
    use connectors::kafka::changelog::partition_count;
    const TIMEOUT: Duration = Duration::from_secs(10);
    let (brokers, options, changelog, sources) = (
        brokers.to_string(),
        options.clone(),
        changelog.to_string(),
        sources.to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        let (mut needed, mut total) = (0, 0);
        for topic in &sources {
            let partitions = partition_count(&brokers, &options, topic, TIMEOUT)?
                .ok_or_else(|| EngineError::Cluster(format!("source topic `{topic}` does not exist")))?;
            needed = needed.max(partitions);
            total += partitions;
        }
        let create = format!(
            "create it with at least {needed} partitions and cleanup.policy=compact, for example: kafka-topics.sh --create --topic {changelog} --partitions {needed} --config cleanup.policy=compact"
        );
        match partition_count(&brokers, &options, &changelog, TIMEOUT)? {
            None => Err(EngineError::Cluster(format!("the changelog topic `{changelog}` does not exist; {create}"))),
            Some(n) if n < needed => Err(EngineError::Cluster(format!(
                "the changelog topic `{changelog}` has {n} partitions, fewer than its source topics ({needed}); {create}"
            ))),
            Some(_) => Ok(total),
        }
    })
    .await
    .map_err(|e| EngineError::task("checking the changelog topic", e))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(id: &str, offset: i64, status: &str) -> CallSnapshot {
        serde_json::from_value(serde_json::json!({
            "id": id, "subscription": "orders", "target": "http://t", "ordering_key": null,
            "payload": "", "tombstone": false, "kafka_key": null, "headers": null,
            "topic": "orders", "partition": 3, "offset": offset, "source_generation": 0,
            "timestamp_ms": null, "status": status, "attempts": 0, "attempts_before_redrive": 0,
            "next_attempt_at": 0, "last_error": null, "output": null, "created_at": offset,
            "updated_at": offset, "redriven_at": null, "dead_letter_published_at": null,
            "idempotency_key": null, "journal_len": 0, "wait": null, "deployment": null,
            "journal": [], "inbox": [], "blocks_group": false,
        }))
        .unwrap()
    }

    #[test]
    fn a_record_keeps_the_call_that_reached_the_changelog_first() {
        let (calls, dropped) = one_call_per_record(vec![
            // A woken engine's second call for record 11, written after the owner's.
            (40, snapshot("late", 11, "pending")),
            (5, snapshot("first", 11, "succeeded")),
            (7, snapshot("other", 12, "pending")),
        ]);
        let kept: Vec<_> = calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(kept, ["first", "other"]);
        assert_eq!(dropped, ["late"]);
    }

    #[test]
    fn records_read_again_in_a_later_generation_are_calls_of_their_own() {
        let mut again = snapshot("again", 11, "pending");
        again.source_generation = 1;
        let (calls, dropped) = one_call_per_record(vec![(5, snapshot("first", 11, "succeeded")), (9, again)]);
        assert_eq!(calls.len(), 2);
        assert!(dropped.is_empty());
    }
}
