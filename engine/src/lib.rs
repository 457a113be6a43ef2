//! The engine: consume records, persist each as a durable call, deliver it over HTTP with
//! retries, and let operators see and act on what failed.
//!
//! Layout (the path of one call, top to bottom):
//! - [`config`]: the TOML file and its validation.
//! - [`source`]: Kafka batches become durable calls, then their offsets are acknowledged.
//! - [`ingest`]: a record becomes a [`model::NewCall`] (ordering group, payload limit).
//! - [`store`]: SQLite, one writer thread with group commit, migrations, crash recovery.
//! - [`scheduler`]: the pure window and decisions, and the executor that runs them.
//! - [`retry`]: backoff policy.
//! - [`delivery`]: one HTTP attempt and its classification.
//! - [`limiter`]: the pure adaptive concurrency limit (what an outcome says about load,
//!   rounds of answers, the decisions and their reasons); [`endpoints`] applies it (and
//!   rate limits, and `Retry-After` pauses) per endpoint.
//! - [`dead_letter`]: dead calls produced to a subscription's dead-letter topic.
//! - [`admin`]: the admin HTTP API, `/metrics` and the dashboard.
//! - [`telemetry`]: histograms and per-second rates behind stats and metrics.
//! - [`engine`]: wiring and graceful shutdown.
//!
//! The binary (`main.rs`, `dev.rs`) is a thin command line over this library.

pub mod admin;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod endpoints;
pub mod engine;
pub mod ingest;
pub mod limiter;
pub mod model;
pub mod retry;
pub mod scheduler;
pub mod source;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use engine::{Engine, EngineError};
