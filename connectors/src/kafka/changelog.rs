//! Reading a changelog topic back: the latest value of every key of one partition, through a
//! record the reader wrote itself. Writing goes through a [`super::sink::Sink`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// Why a changelog could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the changelog `{topic}` failed: {source}")]
pub struct ChangelogError {
    pub topic: String,
    #[source]
    pub source: Box<rdkafka::error::KafkaError>,
}

/// What one partition of a changelog holds: the last value of each key (a tombstone drops
/// the key), and how many records were read to get it.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub latest: HashMap<Vec<u8>, Latest>,
    pub records: u64,
}

/// The last value of a key, and where the key first appeared (since its last tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub value: Vec<u8>,
    pub first_offset: i64,
}

fn consumer(brokers: &str, options: &BTreeMap<String, String>) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
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
        // The reader waits for records it knows are there: no long polls.
        .set("fetch.wait.max.ms", "20")
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
    let consumer = consumer(brokers, options).map_err(error)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(error)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|&n| n > 0))
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
    let consumer = consumer(brokers, options).map_err(error)?;
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
        state.records += 1;
        if let Some(key) = message.key() {
            match message.payload() {
                Some(value) => {
                    let offset = message.offset();
                    state
                        .latest
                        .entry(key.to_vec())
                        .and_modify(|latest| latest.value = value.to_vec())
                        .or_insert_with(|| Latest {
                            value: value.to_vec(),
                            first_offset: offset,
                        });
                }
                None => {
                    state.latest.remove(key);
                }
            }
        }
        if message.offset() == end {
            unfinished -= 1;
        }
    }
    Ok(states)
}
