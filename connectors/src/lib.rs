//! Adapters between the engine and the outside world. The Kafka source arrives here next.
