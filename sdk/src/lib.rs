//! Write handlers for the engine.
//!
//! A handler is an HTTP server the engine POSTs each call to. This crate gives you one:
//! register async functions by name on an [`Endpoint`], return `Ok(output)`, or an [`Error`]
//! that says whether the engine should retry ([`Error::temporary`]) or give up
//! ([`Error::permanent`]). Each function gets a [`Context`] with the call id (stable across
//! attempts: your idempotency key), the attempt number and the Kafka metadata.
//!
//! ```no_run
//! use sdk::{Context, Endpoint, Error};
//!
//! async fn shout(ctx: Context, text: String) -> Result<String, Error> {
//!     if text.is_empty() {
//!         return Err(Error::permanent("empty text"));
//!     }
//!     Ok(format!("{} (attempt {})", text.to_uppercase(), ctx.attempt))
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     Endpoint::new().function("shout", shout).serve("127.0.0.1:9080".parse().unwrap()).await
//! }
//! ```
//!
//! Layout:
//! - [`Endpoint`]: registration and the HTTP server (axum), health check, graceful shutdown.
//! - [`Context`]: the call's metadata.
//! - [`Error`]: temporary or permanent failures.
//! - [`protocol`]: the wire protocol shared with the engine.
//! - [`signing`]: Ed25519 request signatures (the engine signs, the endpoint verifies).
//! - [`workflow`]: durable workflows: journaled steps and sleeps, replayed on every run.
//!
//! The protocol is plain HTTP, so any web server can be a target too; this crate is the
//! convenient way, not the only one. See `docs/protocol.md`.

#![warn(missing_docs)]

mod context;
mod endpoint;
mod error;
pub mod protocol;
pub mod signing;
pub mod workflow;

pub use context::{Context, KafkaRecord};
pub use endpoint::{Endpoint, VERIFY_KEY_ENV};
pub use error::{Error, ErrorKind};
pub use workflow::{Durable, Workflow};

/// The README's handler example is compiled as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
