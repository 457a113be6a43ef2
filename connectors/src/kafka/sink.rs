//! A Kafka producer for dead letters: `acks=all` and idempotence, so a record a broker
//! acknowledged is on every in-sync replica and librdkafka's own retries add no duplicate.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Settings of one sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// For logs and errors.
    pub name: String,
    pub brokers: String,
    pub topic: String,
    /// librdkafka producer properties, passed through.
    pub options: BTreeMap<String, String>,
}

/// A record to produce, as bytes. `value: None` is a tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkRecord {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The partition to write to; `None`: the producer's partitioner picks it by key.
    pub partition: Option<i32>,
}

/// Why a sink could not start or a record was not produced.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid Kafka producer settings for `{name}`: {source}")]
    Config {
        name: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("producing to `{topic}` failed: {source}")]
    Produce {
        topic: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
}

impl SinkError {
    /// The record is larger than the producer or the broker takes (`message.max.bytes`):
    /// sending it again cannot work.
    pub fn is_too_large(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode;
        matches!(self, Self::Produce { source, .. } if matches!(
            source.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
        ))
    }
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A producer to one topic.
pub struct Sink {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Sink {
    pub fn new(config: &SinkConfig) -> Result<Self, SinkError> {
        let mut client = ClientConfig::new();
        // Defaults a user may override: give up on a record after 30 s (the caller retries
        // later) rather than librdkafka's 5 minutes.
        client.set("message.timeout.ms", "30000").set("linger.ms", "5");
        for (key, value) in &config.options {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true");
        let producer = client.create().map_err(|source| SinkError::Config {
            name: config.name.clone(),
            source: Box::new(source),
        })?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produce `records` in order and wait for every delivery report. One result per record,
    /// in the same order: `Ok` only once the broker acknowledged it.
    pub async fn send_all(&self, records: &[SinkRecord]) -> Vec<Result<Delivered, SinkError>> {
        let topic = self.topic.clone();
        self.send_all_to(&topic, records).await
    }

    /// Like [`Sink::send_all`], to `topic` instead of the sink's own.
    pub async fn send_all_to(&self, topic: &str, records: &[SinkRecord]) -> Vec<Result<Delivered, SinkError>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(value) = &record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(partition) = record.partition {
                out = out.partition(partition);
            }
            pending.push(match self.producer.send_result(out) {
                Ok(delivery) => Ok(delivery),
                Err((error, _)) => Err(produce_error(topic, error)),
            });
        }
        let mut results = Vec::with_capacity(pending.len());
        for entry in pending {
            results.push(match entry {
                Err(error) => Err(error),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(delivery)) => Ok(Delivered {
                        partition: delivery.partition,
                        offset: delivery.offset,
                    }),
                    Ok(Err((error, _))) => Err(produce_error(topic, error)),
                    Err(_cancelled) => Err(produce_error(topic, rdkafka::error::KafkaError::Canceled)),
                },
            });
        }
        results
    }

    /// Wait up to `timeout` for records still queued.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(topic = %self.topic, %error, "dead-letter producer did not flush");
        }
    }
}

fn produce_error(topic: &str, source: rdkafka::error::KafkaError) -> SinkError {
    SinkError::Produce {
        topic: topic.to_string(),
        source: Box::new(source),
    }
}
