//! Reading a changelog topic back: the latest value of every key of one partition, through a
//! record the reader wrote itself. Writing goes through a [`super::sink::Sink`].
//!
//! Fencing: an owner of some state first writes a *claim* (a record with a [`CLAIM_HEADER`]
//! holding a fresh token, keyed by what it claims), then tags its writes with
//! [`OWNER_HEADER`] and [`OWNER_CLAIM_HEADER`] (its token and the claim's key). A reader
//! drops a tagged record whose token is not that of the last claim of its key read before
//! it: the writer had been replaced and did not know yet.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};

/// Why a changelog could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the changelog `{topic}` failed: {source}")]
pub struct ChangelogError {
    pub topic: String,
    #[source]
    pub source: Box<rdkafka::error::KafkaError>,
}

/// A restore waits for records it knows are there: no long polls.
const RESTORE_FETCH_WAIT_MS: &str = "20";

/// The header of a claim record: the claimer's token.
pub const CLAIM_HEADER: &str = "engine-claim";
/// The header of an owner's write: the token of the claim it wrote under.
pub const OWNER_HEADER: &str = "engine-owner";
/// The header of an owner's write: the key of the claim it wrote under.
pub const OWNER_CLAIM_HEADER: &str = "engine-owner-claim";

/// What one partition of a changelog holds: the last value of each key (a tombstone drops
/// the key), and how many records were read to get it.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub latest: HashMap<Vec<u8>, Latest>,
    pub records: u64,
    /// Records dropped because a later claim had replaced their writer.
    pub fenced: u64,
    /// The token of the last claim read, by claim key.
    claims: HashMap<Vec<u8>, Vec<u8>>,
}

/// One changelog record as [`PartitionState::apply`] takes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry<'a> {
    pub key: Option<&'a [u8]>,
    /// `None`: a tombstone.
    pub value: Option<&'a [u8]>,
    pub offset: i64,
    /// A claim's token ([`CLAIM_HEADER`]).
    pub claim: Option<&'a [u8]>,
    /// The claim key and token a write was made under ([`OWNER_CLAIM_HEADER`], [`OWNER_HEADER`]).
    pub owner: Option<(&'a [u8], &'a [u8])>,
}

impl PartitionState {
    /// Take the next record of the partition, in offset order.
    pub fn apply(&mut self, entry: Entry<'_>) {
        self.records += 1;
        let Some(key) = entry.key else { return };
        if let Some((claim_key, token)) = entry.owner {
            if self
                .claims
                .get(claim_key)
                .is_some_and(|current| current.as_slice() != token)
            {
                self.fenced += 1;
                return;
            }
        }
        if let Some(token) = entry.claim {
            self.claims.insert(key.to_vec(), token.to_vec());
        }
        match entry.value {
            Some(value) => {
                self.latest
                    .entry(key.to_vec())
                    .and_modify(|latest| latest.value = value.to_vec())
                    .or_insert_with(|| Latest {
                        value: value.to_vec(),
                        first_offset: entry.offset,
                    });
            }
            None => {
                self.latest.remove(key);
            }
        }
    }
}

/// The last value of a key, and where the key first appeared (since its last tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub value: Vec<u8>,
    pub first_offset: i64,
}

/// A consumer for `assign`; `fetch_wait_ms` is how long the broker may hold a fetch open.
fn consumer(
    brokers: &str,
    options: &BTreeMap<String, String>,
    fetch_wait_ms: &str,
) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    let mut client = ClientConfig::new();
    for (key, value) in options {
        client.set(key, value);
    }
    // `assign`, never `subscribe`: the group id joins nothing and nothing is committed.
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", "engine-changelog-restore")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms)
        .create()
}

/// The number of partitions of `topic`, or `None` if it does not exist.
pub fn partition_count(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, ChangelogError> {
    let error = |source| ChangelogError {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    let consumer = consumer(brokers, options, RESTORE_FETCH_WAIT_MS).map_err(error)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(error)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|&n| n > 0))
}

/// Follow partition `partition` of `topic` from its start, calling `apply(key, value)` for
/// every keyed record (`value` is `None` for a tombstone), until `stop` is set. Blocking:
/// run it on a thread of its own. Errors of a poll are logged and polling goes on (a
/// broker that is down comes back).
pub fn follow_partition(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    partition: i32,
    stop: &std::sync::atomic::AtomicBool,
    mut apply: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), ChangelogError> {
    let error = |source| ChangelogError {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    // Long polls: a follower waits for news that comes every few seconds.
    let consumer = consumer(brokers, options, "500").map_err(error)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(error)?;
    consumer.assign(&assignment).map_err(error)?;
    let mut failing = false;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(250)) {
            None => {}
            Some(Ok(message)) => {
                failing = false;
                if let Some(key) = message.key() {
                    apply(key, message.payload());
                }
            }
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(%topic, error = %e, "following the topic failed; retrying");
                }
                failing = true;
            }
        }
    }
    Ok(())
}

/// Read each partition of `topic` in `through` from its start through the offset given for
/// it (a record the caller wrote and saw acknowledged), keeping the last value of each key.
///
/// The end is a record of the reader's own, not the partition's high watermark: a broker may
/// report a watermark behind records it has already acknowledged (seen on Tansu), and a
/// restore that stops there misses state whose source offsets are already committed.
#[allow(clippy::implicit_hasher)]
pub fn read_partitions(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    through: &HashMap<i32, i64>,
    timeout: Duration,
) -> Result<HashMap<i32, PartitionState>, ChangelogError> {
    let error = |source| ChangelogError {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    let mut states: HashMap<i32, PartitionState> = through.keys().map(|&p| (p, PartitionState::default())).collect();
    if through.is_empty() {
        return Ok(states);
    }
    let consumer = consumer(brokers, options, RESTORE_FETCH_WAIT_MS).map_err(error)?;
    let mut assignment = TopicPartitionList::new();
    for &partition in through.keys() {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(error)?;
    }
    consumer.assign(&assignment).map_err(error)?;
    let mut unfinished = through.len();
    // Quiet time, not total time: a long changelog takes as long as it takes.
    let mut last_progress = Instant::now();
    while unfinished > 0 {
        if last_progress.elapsed() >= timeout {
            return Err(error(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.map_err(error)?;
        last_progress = Instant::now();
        let partition = message.partition();
        let (Some(state), Some(&end)) = (states.get_mut(&partition), through.get(&partition)) else {
            continue;
        };
        if message.offset() > end {
            continue; // read through already; the rest is another writer's, later
        }
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| headers.iter().find(|h| h.key == name).and_then(|h| h.value))
        };
        state.apply(Entry {
            key: message.key(),
            value: message.payload(),
            offset: message.offset(),
            claim: header(CLAIM_HEADER),
            owner: header(OWNER_CLAIM_HEADER).zip(header(OWNER_HEADER)),
        });
        if message.offset() == end {
            unfinished -= 1;
        }
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(state: &PartitionState, key: &[u8]) -> Option<Vec<u8>> {
        state.latest.get(key).map(|l| l.value.clone())
    }

    #[test]
    fn a_write_under_a_replaced_claim_is_dropped() {
        let mut state = PartitionState::default();
        let claim = |token: &'static [u8], offset| Entry {
            key: Some(b"claim:p0"),
            value: Some(b"{}"),
            offset,
            claim: Some(token),
            owner: None,
        };
        let write = |v: &'static [u8], token: &'static [u8], offset| Entry {
            key: Some(b"call-1"),
            value: Some(v),
            offset,
            claim: None,
            owner: Some((b"claim:p0", token)),
        };
        state.apply(claim(b"old", 0));
        state.apply(write(b"pending", b"old", 1));
        state.apply(claim(b"new", 2));
        // The old owner, frozen, wakes and writes an outcome after the new claim.
        state.apply(write(b"succeeded-stale", b"old", 3));
        assert_eq!(value(&state, b"call-1").as_deref(), Some(&b"pending"[..]));
        state.apply(write(b"succeeded", b"new", 4));
        assert_eq!(value(&state, b"call-1").as_deref(), Some(&b"succeeded"[..]));
        assert_eq!((state.records, state.fenced), (5, 1));
    }

    #[test]
    fn writes_before_any_claim_read_are_kept() {
        // Compaction removed the claims older than the last one: what comes before it stays.
        let mut state = PartitionState::default();
        state.apply(Entry {
            key: Some(b"call-1"),
            value: Some(b"pending"),
            offset: 7,
            claim: None,
            owner: Some((b"claim:p0", b"gone")),
        });
        assert_eq!(value(&state, b"call-1").as_deref(), Some(&b"pending"[..]));
        assert_eq!(state.latest[&b"call-1".to_vec()].first_offset, 7);
        assert_eq!(state.fenced, 0);
    }

    #[test]
    fn a_tombstone_drops_the_key_and_untagged_writes_are_never_fenced() {
        let mut state = PartitionState::default();
        for entry in [
            Entry {
                key: Some(b"claim:p0"),
                value: Some(b"{}"),
                offset: 0,
                claim: Some(b"t"),
                owner: None,
            },
            Entry {
                key: Some(b"call-1"),
                value: Some(b"pending"),
                offset: 1,
                claim: None,
                owner: None,
            },
            Entry {
                key: Some(b"call-1"),
                value: None,
                offset: 2,
                claim: None,
                owner: None,
            },
        ] {
            state.apply(entry);
        }
        assert!(!state.latest.contains_key(b"call-1".as_slice()));
        assert_eq!(state.fenced, 0);
    }
}
