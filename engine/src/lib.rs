//! The engine: consume records, persist each as a durable call, deliver it over HTTP with
//! retries, and let operators see and act on what failed.
//!
//! Layout (the path of one call, top to bottom):
//! - [`config`]: the TOML file and its validation.
//! - [`engine`]: wiring (store, subscriptions, admin API, purge) and graceful shutdown;
//!   [`shutdown`] is the signal every task listens to, [`error`] why the engine stops.
//! - [`subscription`]: one subscription's life: its source, scheduler and dead-letter
//!   publisher, sharing its [`figures`], started and stopped as one.
//! - [`source`]: Kafka batches become durable calls, then their offsets are acknowledged.
//! - [`ingest`]: a record becomes a [`model::NewCall`] (ordering group, payload limit).
//! - [`store`]: SQLite, one writer thread with group commit, migrations, crash recovery.
//! - [`scheduler`]: the pure window, decisions and reactions (events in, effects out), and
//!   the executor that carries the effects out.
//! - [`retry`]: backoff policy.
//! - [`delivery`]: one HTTP attempt and its classification.
//! - [`limiter`]: the pure adaptive concurrency limit (what an outcome says about load,
//!   rounds of answers, the decisions and their reasons); [`endpoints`] applies it (and
//!   rate limits, and `Retry-After` pauses) per endpoint; [`rate`]: static rate limits,
//!   split across a cluster's engines by the partitions each holds.
//! - [`workflow`]: what a durable workflow's answer means for its journal (protocol 5);
//!   [`outbox`] publishes the records workflows produce; [`shelf`] holds journals too
//!   large to send inline until the SDK fetches them.
//! - [`cluster`]: cluster mode: every change of a call also goes to the group's changelog
//!   topic, and a partition's calls are restored where it is assigned and released where
//!   it is revoked; [`lease`] keeps an engine that was frozen from delivering until the
//!   group has spoken.
//! - [`dead_letter`]: dead calls produced to a subscription's dead-letter topic.
//! - [`admin`]: the admin HTTP API, `/metrics` and the dashboard; [`api`] is its typed
//!   contract, shared with the command line.
//! - [`telemetry`]: histograms and per-second rates behind stats and metrics.
//!
//! The binary (`src/bin/engine/`: the command line and `engine dev`) is a thin layer over
//! this library.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod figures;
pub mod ingest;
pub mod lease;
pub mod limiter;
pub mod model;
pub mod outbox;
pub mod rate;
pub mod retry;
pub mod scheduler;
pub mod shelf;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod workflow;

pub use config::Config;
pub use engine::Engine;
pub use error::EngineError;
