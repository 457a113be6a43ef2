//! Adapters between the engine and the outside world. They speak in records and
//! acknowledgements, not in engine types.
//!
//! - [`kafka`]: the Kafka source (consumer group, in-order offset storage, backpressure).
//! - [`dev_broker`]: an in-process Kafka-protocol broker for `engine dev` and fault tests.

pub mod dev_broker;
pub mod kafka;
