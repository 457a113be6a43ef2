//! The handler side of the engine.
//!
//! Layout:
//! - [`protocol`]: the wire protocol shared by the engine and handlers: header names,
//!   the classification of responses, `Retry-After` parsing and the lossless text encoding
//!   of Kafka keys and record headers.
//!
//! Any web server can be a target: the protocol is a plain HTTP `POST` per attempt, with the
//! record value as the body and metadata in headers (see `docs/protocol.md`).

pub mod protocol;
