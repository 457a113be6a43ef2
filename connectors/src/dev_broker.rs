//! An in-process Kafka-protocol broker: librdkafka's mock cluster on a loopback port. Any
//! Kafka client can produce to it and consume from it while the process lives. Used by
//! `engine dev` and by fault-injection tests (`broker_down` / `broker_up`).
//!
//! It does not answer the CreateTopics admin call: create topics with
//! [`DevBroker::create_topic`].

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub use rdkafka::error::KafkaError;

/// The embedded broker. Not `Send`: keep it on the thread that created it.
pub struct DevBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: i32,
}

impl std::fmt::Debug for DevBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevBroker")
            .field("bootstrap", &self.bootstrap_servers())
            .finish()
    }
}

impl DevBroker {
    /// Start a cluster of `brokers` brokers on loopback ports.
    pub fn start(brokers: i32) -> Result<Self, KafkaError> {
        Ok(Self {
            cluster: MockCluster::new(brokers)?,
            brokers,
        })
    }

    /// The `bootstrap.servers` string for clients.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Create a topic (replication factor 1).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster.create_topic(name, partitions, 1)
    }

    /// Make every broker refuse connections (a broker outage).
    pub fn all_down(&self) -> Result<(), KafkaError> {
        (1..=self.brokers).try_for_each(|id| self.cluster.broker_down(id))
    }

    /// Bring every broker back.
    pub fn all_up(&self) -> Result<(), KafkaError> {
        (1..=self.brokers).try_for_each(|id| self.cluster.broker_up(id))
    }
}
