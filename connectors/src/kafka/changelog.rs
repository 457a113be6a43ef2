//! Reading a changelog topic back: the latest value of every key of one partition, up to
//! the partition's end as it is when the read starts. Writing goes through a [`super::sink::Sink`].

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

/// What one partition of a changelog holds: the last value of each key (`None` for a
/// tombstone, which is dropped), and how many records were read to get it.
#[derive(Debug, Default)]
pub struct PartitionState {
    pub latest: HashMap<Vec<u8>, Vec<u8>>,
    pub records: u64,
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

/// Read `partition` of `topic` from its start to its end (as it is now), keeping the last
/// value of each key.
pub fn read_partition(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<PartitionState, ChangelogError> {
    let error = |source| ChangelogError {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    let consumer = consumer(brokers, options).map_err(error)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout).map_err(error)?;
    let mut state = PartitionState::default();
    if high <= low {
        return Ok(state);
    }
    // From the beginning, not from `low`: the end is what matters, and a broker's answer
    // for the start is the less tested one.
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(error)?;
    consumer.assign(&assignment).map_err(error)?;
    // Quiet time, not total time: a long changelog takes as long as it takes.
    let mut last_progress = Instant::now();
    loop {
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
        state.records += 1;
        if let Some(key) = message.key() {
            match message.payload() {
                Some(value) => {
                    state.latest.insert(key.to_vec(), value.to_vec());
                }
                None => {
                    state.latest.remove(key);
                }
            }
        }
        if message.offset() + 1 >= high {
            return Ok(state);
        }
    }
}
