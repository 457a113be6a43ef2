//! What a handler knows about the call it serves.

use axum::http::HeaderMap;

use crate::protocol::{decode_bytes, decode_record_headers, header, RecordHeader};

/// Metadata of one attempt of a call, read from the request headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The call id: stable across attempts. Use it as an idempotency key.
    pub call_id: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// The subscription that created the call.
    pub subscription: String,
    /// Where the record came from; `None` for calls enqueued directly.
    pub kafka: Option<KafkaRecord>,
    /// The protocol version of the request.
    pub protocol: u32,
    /// The engine's clock when it sent the request (ms since the Unix epoch), protocol 4.
    pub(crate) now_ms: Option<i64>,
    /// How many leading bytes of the body are the workflow's journal (protocol 4).
    pub(crate) journal_bytes: usize,
    /// Where to fetch a journal too large to travel in the body (protocol 7).
    pub(crate) journal_url: Option<String>,
}

/// The Kafka record behind a call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaRecord {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    /// `None` for a null key. Bytes: Kafka keys need not be UTF-8.
    pub key: Option<Vec<u8>>,
    /// The record's own headers; a value may be null.
    pub headers: Vec<RecordHeader>,
    /// The record value was null (the body is then empty).
    pub tombstone: bool,
}

impl Context {
    /// Read the protocol headers. Missing ones get empty defaults, so a plain `curl` works.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let kafka = text(header::KAFKA_TOPIC).map(|topic| KafkaRecord {
            topic: String::from_utf8_lossy(&decode_bytes(topic)).into_owned(),
            partition: text(header::KAFKA_PARTITION)
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            offset: text(header::KAFKA_OFFSET)
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
            timestamp: text(header::KAFKA_TIMESTAMP).and_then(|v| v.parse().ok()),
            key: text(header::KAFKA_KEY).map(decode_bytes),
            headers: text(header::KAFKA_HEADERS)
                .map(decode_record_headers)
                .unwrap_or_default(),
            tombstone: text(header::KAFKA_TOMBSTONE) == Some("true"),
        });
        Self {
            call_id: text(header::CALL_ID).unwrap_or_default().to_string(),
            attempt: text(header::ATTEMPT).and_then(|v| v.parse().ok()).unwrap_or(1),
            subscription: text(header::SUBSCRIPTION).unwrap_or_default().to_string(),
            kafka,
            protocol: text(header::PROTOCOL).and_then(|v| v.parse().ok()).unwrap_or(1),
            now_ms: text(header::NOW).and_then(|v| v.parse().ok()),
            journal_bytes: text(header::JOURNAL_BYTES).and_then(|v| v.parse().ok()).unwrap_or(0),
            journal_url: text(header::JOURNAL_URL).map(str::to_string),
        }
    }

    /// The record key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.kafka.as_ref().and_then(|k| k.key.as_deref())
    }
}
