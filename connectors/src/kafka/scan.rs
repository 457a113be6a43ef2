//! Reading back what was produced: after a crash, records handed to the producer but never
//! confirmed may or may not be in the topic. Reading the topic from a little before the
//! first of them tells which, so none is published twice.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// How long reading goes on without a record once every watermark is reached.
const TAIL_QUIET: Duration = Duration::from_secs(1);

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
#[error("reading back `{topic}` failed: {source}")]
pub struct ScanError {
    pub topic: String,
    #[source]
    pub source: Box<rdkafka::error::KafkaError>,
}

/// The values of headers `first` and `second` of every record of `topic` produced at or
/// after `since_ms` (record timestamps, ms since the epoch), up to the end of each
/// partition as it is now. `options` are client properties (security, TLS, SASL).
pub fn header_pairs(
    brokers: &str,
    options: &BTreeMap<String, String>,
    topic: &str,
    since_ms: i64,
    (first, second): (&str, &str),
    timeout: Duration,
) -> Result<HashSet<(String, String)>, ScanError> {
    let error = |source| ScanError {
        topic: topic.to_string(),
        source: Box::new(source),
    };
    let mut client = ClientConfig::new();
    for (key, value) in options {
        client.set(key, value);
    }
    let consumer: BaseConsumer = client
        .set("bootstrap.servers", brokers)
        .set("group.id", "engine-outbox-scan")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(error)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(error)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(rdkafka::metadata::MetadataPartition::id))
        .collect();
    let mut by_time = TopicPartitionList::new();
    for partition in &partitions {
        by_time
            .add_partition_offset(topic, *partition, Offset::Offset(since_ms))
            .map_err(error)?;
    }
    // The first offset at or after `since_ms`; a broker that cannot tell gives the start.
    let starts = consumer.offsets_for_times(by_time, timeout).ok();
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    // The watermarks only say how far to read at least: every partition is read, and reading
    // goes on past them (below), as they may lag behind what the broker holds.
    for partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *partition, timeout).map_err(error)?;
        let start = starts
            .as_ref()
            .and_then(|list| list.find_partition(topic, *partition))
            .and_then(|p| match p.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .map_or(low, |offset| offset.max(low));
        // Trust the broker's answer only if the record before it is older than `since_ms`: a
        // broker whose time index is incomplete could answer an offset past records of the
        // window, which would then be produced a second time.
        let start = if start > low && !older_than(&consumer, topic, *partition, start - 1, since_ms, timeout) {
            low
        } else {
            start
        };
        assignment
            .add_partition_offset(topic, *partition, Offset::Offset(start))
            .map_err(error)?;
        if start < high {
            ends.insert(*partition, high);
        }
    }
    let mut found = HashSet::new();
    if partitions.is_empty() {
        return Ok(found);
    }
    consumer.assign(&assignment).map_err(error)?;
    let deadline = Instant::now() + timeout;
    // Past every partition's watermark, reading goes on until nothing comes for a while: a
    // broker whose watermarks lag behind what it holds (Tansu) would otherwise hide records.
    let mut quiet_since: Option<Instant> = None;
    loop {
        if Instant::now() >= deadline {
            return Err(error(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if ends.is_empty() && quiet_since.get_or_insert_with(Instant::now).elapsed() >= TAIL_QUIET {
                break;
            }
            continue;
        };
        quiet_since = None;
        let message = message.map_err(error)?;
        if let Some(headers) = message.headers() {
            let value = |name: &str| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            if let (Some(a), Some(b)) = (value(first), value(second)) {
                found.insert((a, b));
            }
        }
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
    }
    Ok(found)
}

/// Whether the record of `topic`/`partition` at `offset` has a timestamp before `since_ms`.
/// `false` if it cannot be read in `timeout` (the caller then reads from further back).
fn older_than(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
    since_ms: i64,
    timeout: Duration,
) -> bool {
    let mut at = TopicPartitionList::new();
    if at
        .add_partition_offset(topic, partition, Offset::Offset(offset))
        .is_err()
        || consumer.assign(&at).is_err()
    {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.partition() == partition && message.offset() >= offset => {
                return message.offset() == offset
                    && message.timestamp().to_millis().is_some_and(|time| time < since_ms);
            }
            Some(Err(_)) => return false,
            _ => {}
        }
    }
    false
}
