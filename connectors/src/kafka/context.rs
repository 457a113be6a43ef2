//! The consumer context: owns the offset bookkeeping, stores offsets as batches become
//! durable, and flushes before partitions are revoked.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use rdkafka::statistics::Statistics;

use super::offsets::{OffsetTracker, TopicPartition};
use super::status::{PartitionLag, SourceStatus};
use super::PartitionHook;

/// Shared between the poll loop and librdkafka's callbacks (which run inside `poll`, on the
/// poll thread).
#[derive(Debug)]
pub(crate) struct SourceContext {
    pub(crate) tracker: Mutex<OffsetTracker>,
    acks: Receiver<u64>,
    /// Partitions revoked since the poll loop last looked: records of them that were polled
    /// but not handed over must be dropped (the next owner reads them again).
    revoked: Mutex<HashSet<TopicPartition>>,
    revoke_timeout: Duration,
    name: String,
    status: Arc<SourceStatus>,
    hook: Option<Arc<dyn PartitionHook>>,
    /// Where a partition without a committed offset starts (`auto.offset.reset`).
    reset: Offset,
}

impl SourceContext {
    pub(crate) fn new(
        name: String,
        acks: Receiver<u64>,
        revoke_timeout: Duration,
        status: Arc<SourceStatus>,
        hook: Option<Arc<dyn PartitionHook>>,
        reset: Offset,
    ) -> Self {
        Self {
            tracker: Mutex::default(),
            acks,
            revoked: Mutex::default(),
            revoke_timeout,
            name,
            status,
            hook,
            reset,
        }
    }

    /// Store the offsets of every batch acknowledged so far.
    pub(crate) fn drain_acks(&self, consumer: &BaseConsumer<Self>) {
        while let Ok(id) = self.acks.try_recv() {
            self.apply_ack(consumer, id);
        }
    }

    fn apply_ack(&self, consumer: &BaseConsumer<Self>, id: u64) {
        let advanced = self.tracker.lock().expect("tracker lock").ack(id);
        if advanced.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(advanced.len());
        for ((topic, partition), next) in advanced {
            if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(source = %self.name, %error, "cannot build an offset list");
            }
        }
        if let Err(error) = consumer.store_offsets(&list) {
            // A partition revoked meanwhile: its next owner starts from the last commit.
            tracing::debug!(source = %self.name, %error, "could not store offsets");
        }
    }

    /// Partitions revoked since the last call.
    pub(crate) fn take_revoked(&self) -> HashSet<TopicPartition> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked lock"))
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode;
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.status.brokers_down.swap(true, Relaxed) {
                tracing::error!(source = %self.name, "Kafka unreachable: every broker is down ({reason}); consumption waits, records already taken keep being delivered, nothing is lost");
            }
            // Said by `brokers_down`; the error that brought them down stays shown.
            return;
        }
        self.status.set_error(Some(format!("{error}: {reason}")));
        tracing::warn!(source = %self.name, %error, "Kafka: {reason}");
    }

    fn stats(&self, statistics: Statistics) {
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        if up {
            self.status.set_error(None);
            if self.status.brokers_down.swap(false, Relaxed) {
                tracing::warn!(source = %self.name, "Kafka reachable again; consumption resumes");
            }
        }
        let mut lag: Vec<PartitionLag> = statistics
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .values()
                    .filter_map(|p| PartitionLag::from_statistics(topic, p))
            })
            .collect();
        lag.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        if let Ok(mut partitions) = self.status.partitions.lock() {
            *partitions = lag;
        }
    }
}

impl ConsumerContext for SourceContext {
    // Replaces rdkafka's default: a newly assigned partition's state is restored (the hook)
    // before it is assigned, at the offsets read before that restore; and the same code
    // serves the eager protocol (every partition revoked and assigned again) and the
    // cooperative one (only the partitions that move are revoked and assigned).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, list: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assigning(consumer, list);
                if cooperative {
                    consumer.incremental_assign(list)
                } else {
                    consumer.assign(list)
                }
            }
            revoke => {
                if revoke == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    self.revoking(consumer, list);
                } else {
                    tracing::error!(source = %self.name, error = ?revoke, "rebalance failed; giving up the partitions it was about");
                }
                if cooperative {
                    consumer.incremental_unassign(list)
                } else {
                    consumer.unassign()
                }
            }
        };
        if let Err(error) = result {
            tracing::error!(source = %self.name, %error, cooperative, "cannot apply the rebalance");
        }
    }
}

impl SourceContext {
    /// Newly assigned partitions: restore their state, then start each at the offset
    /// committed before that restore. Read after, a commit the previous owner made
    /// meanwhile (it may not know yet that it lost the partition) could move the start past
    /// records whose state the restore did not see.
    fn assigning(&self, consumer: &BaseConsumer<Self>, list: &mut TopicPartitionList) {
        let partitions = partitions_of(list);
        tracing::info!(source = %self.name, partitions = %describe(list), "partitions assigned");
        let Some(hook) = &self.hook else {
            self.status.rebalanced(true, &partitions);
            return;
        };
        let starts = (list.count() > 0)
            .then(|| self.committed_offsets(consumer, list))
            .flatten();
        hook.assigned(&partitions);
        // Shown as held once restored: from here on they are consumed and delivered.
        self.status.rebalanced(true, &partitions);
        let Some(starts) = starts else { return };
        for element in starts.elements() {
            if let Err(error) = list.set_partition_offset(element.topic(), element.partition(), element.offset()) {
                tracing::error!(source = %self.name, %error, "cannot start {}/{} at the offset read before its restore", element.topic(), element.partition());
            }
        }
        tracing::info!(source = %self.name, starts = %describe_offsets(list), "assigned partitions start at the offsets committed before their restore");
    }

    /// Partitions about to be revoked: their batches already handed to the engine are made
    /// durable and their offsets committed, and the hook hands their state over.
    fn revoking(&self, consumer: &BaseConsumer<Self>, list: &TopicPartitionList) {
        let revoked = partitions_of(list);
        self.status.rebalanced(false, &revoked);
        // Wait until the batches already handed to the engine are durable, so their offsets
        // are stored before the commit below.
        let deadline = Instant::now() + self.revoke_timeout;
        loop {
            self.drain_acks(consumer);
            let pending: usize = {
                let tracker = self.tracker.lock().expect("tracker lock");
                revoked.iter().map(|tp| tracker.in_flight(tp)).sum()
            };
            if pending == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(source = %self.name, batches = pending, "revoking partitions before their records were durable; the next owner will read them again");
                break;
            }
            if let Ok(id) = self.acks.recv_timeout(left.min(Duration::from_millis(50))) {
                self.apply_ack(consumer, id);
            }
        }
        let mut tracker = self.tracker.lock().expect("tracker lock");
        let mut revoked_set = self.revoked.lock().expect("revoked lock");
        for tp in &revoked {
            tracker.revoke(tp);
            revoked_set.insert(tp.clone());
        }
        drop(revoked_set);
        drop(tracker);
        if let Some(hook) = &self.hook {
            hook.revoking(&revoked);
        }
        tracing::info!(source = %self.name, partitions = %describe(list), "partitions revoked");
        // Commit now what was stored, rather than at the next auto-commit tick.
        if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(source = %self.name, %error, "commit on revoke");
        }
    }
}

impl SourceContext {
    /// The committed offset of each partition of `list` (the reset position where there is
    /// none), or `None` if the group coordinator did not answer after a few tries.
    fn committed_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        list: &TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=COMMITTED_TRIES {
            match consumer.committed_offsets(list.clone(), COMMITTED_TIMEOUT) {
                Ok(mut committed) => {
                    let unset: Vec<_> = committed
                        .elements()
                        .iter()
                        .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect();
                    for (topic, partition) in unset {
                        if let Err(error) = committed.set_partition_offset(&topic, partition, self.reset) {
                            tracing::warn!(source = %self.name, %error, "cannot set a start offset");
                        }
                    }
                    return Some(committed);
                }
                Err(error) => {
                    tracing::warn!(source = %self.name, %error, attempt, "cannot read the committed offsets of the assigned partitions");
                    std::thread::sleep(wait);
                    wait *= 2;
                }
            }
        }
        tracing::error!(source = %self.name, "starting the assigned partitions from the offsets the group has when they start, not before their restore: a record may become a second call");
        None
    }
}

/// Tries, and the wait for each, to read the committed offsets of newly assigned partitions.
const COMMITTED_TRIES: u32 = 5;
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);

fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn describe_offsets(list: &TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(offset) => format!("{}/{}@{offset}", e.topic(), e.partition()),
            other => format!("{}/{}@{other:?}", e.topic(), e.partition()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn describe(list: &TopicPartitionList) -> String {
    list.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
