//! The wire protocol between the engine and a target, version [`PROTOCOL_VERSION`].
//!
//! One attempt is one HTTP `POST`: the body is the record value as raw bytes, metadata
//! travels in the headers named here, and the response status is classified by
//! [`classify_status`].

use std::time::{Duration, SystemTime};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The protocol version the engine speaks. Sent in [`header::PROTOCOL`].
///
/// Later versions add fields (for example a journal of durable steps) without changing the
/// meaning of version 1 headers, so plain webhooks keep working. Version 2 added the
/// response headers [`header::PROTOCOL`] and [`header::FAILURE`]; version 3 signs the call
/// id, attempt and idempotency key too (see [`crate::signing`]); version 4 carries the
/// journals of durable workflows (see [`crate::workflow`]); version 5 adds child calls,
/// signals, records produced through the outbox and waits over several entries; version 6
/// patch points; version 7 the [`header::DEPLOYMENT`] an answer comes from, and journals
/// fetched from [`header::JOURNAL_URL`] when large.
pub const PROTOCOL_VERSION: u32 = 7;

/// Header names, lower case as HTTP/2 requires and HTTP/1 ignores.
pub mod header {
    /// Protocol version of the request, for example `2`; an SDK answers with its own.
    pub const PROTOCOL: &str = "engine-protocol";
    /// The call id, a UUID v7, stable across attempts.
    pub const CALL_ID: &str = "engine-call-id";
    /// The attempt number, starting at 1.
    pub const ATTEMPT: &str = "engine-attempt";
    /// The subscription that created the call.
    pub const SUBSCRIPTION: &str = "engine-subscription";
    /// Source topic (absent for calls enqueued directly).
    pub const KAFKA_TOPIC: &str = "engine-kafka-topic";
    /// Source partition.
    pub const KAFKA_PARTITION: &str = "engine-kafka-partition";
    /// Source offset.
    pub const KAFKA_OFFSET: &str = "engine-kafka-offset";
    /// Record timestamp in milliseconds since the Unix epoch.
    pub const KAFKA_TIMESTAMP: &str = "engine-kafka-timestamp";
    /// The record key, percent-encoded (see [`super::encode_bytes`]). Absent for a null key.
    pub const KAFKA_KEY: &str = "engine-kafka-key";
    /// `true` when the record value was null (a tombstone); the body is then empty.
    pub const KAFKA_TOMBSTONE: &str = "engine-kafka-tombstone";
    /// The record's own headers, see [`super::encode_record_headers`]. Absent when there are none.
    pub const KAFKA_HEADERS: &str = "engine-kafka-headers";
    /// Always the call id, so that generic idempotency middleware works unchanged.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// Response header: seconds or an HTTP date after which a retry may happen.
    pub const RETRY_AFTER: &str = "retry-after";
    /// Request header (version 4): the engine's clock, milliseconds since the Unix epoch.
    pub const NOW: &str = "engine-now";
    /// Request header (version 4): the body starts with this many bytes of the workflow's
    /// journal (a JSON array of entries); the input follows. Absent: no journal.
    pub const JOURNAL_BYTES: &str = "engine-journal-bytes";
    /// Request header (version 7): the journal is too large to travel in the body (over 4
    /// MiB); fetch it (a JSON array of entries) with a `GET` of this URL, on the engine's
    /// admin API, while the attempt lasts. The body is the input alone.
    pub const JOURNAL_URL: &str = "engine-journal-url";
    /// Response header (version 4): `suspended` (202, the body is a
    /// [`crate::workflow::Suspension`]) or `nondeterminism` (409, the body says where the
    /// code and the journal differ). Absent from plain functions and webhooks.
    pub const WORKFLOW: &str = "engine-workflow";
    /// Response header (version 2): what a temporary failure is, see
    /// [`super::DeclaredFailure`]. Absent from plain webhooks.
    pub const FAILURE: &str = "engine-failure";
    /// Response header (version 7): the deployment of the code that answered, as declared
    /// with [`crate::Endpoint::deployment`]. A workflow is pinned to the first one that
    /// answered it. Absent when none is declared.
    pub const DEPLOYMENT: &str = "engine-deployment";
}

/// What a handler says a temporary failure is, in [`header::FAILURE`]. The class of the
/// outcome still comes from the status; this tells the engine's adaptive concurrency limit
/// whether to slow down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeclaredFailure {
    /// The handler failed for its own reasons (a bug, a bad input, a failing dependency):
    /// sending less would not help. The call is retried; the endpoint's limit is kept, and
    /// a `Retry-After` delays only this call.
    Application,
    /// The handler is saturated: the engine lowers the endpoint's concurrency, and a
    /// `Retry-After` pauses the whole endpoint.
    Overload,
}

impl DeclaredFailure {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Application => "application",
            Self::Overload => "overload",
        }
    }

    /// Read a header value; anything else is `None` (treated like a plain webhook).
    ///
    /// ```
    /// use sdk::protocol::DeclaredFailure;
    /// assert_eq!(DeclaredFailure::parse("overload"), Some(DeclaredFailure::Overload));
    /// assert_eq!(DeclaredFailure::parse("Application "), Some(DeclaredFailure::Application));
    /// assert_eq!(DeclaredFailure::parse("busy"), None);
    /// ```
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "application" => Some(Self::Application),
            "overload" => Some(Self::Overload),
            _ => None,
        }
    }
}

/// How the engine treats the outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    /// The call is done.
    Success,
    /// Try again later, with backoff.
    Temporary,
    /// Retrying cannot help: the call becomes a dead letter.
    Permanent,
}

impl OutcomeClass {
    /// A short lower-case name, as stored and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Temporary => "temporary",
            Self::Permanent => "permanent",
        }
    }
}

/// Classify an HTTP response status.
///
/// | status | class |
/// |---|---|
/// | 2xx | success |
/// | 408, 425, 429, 5xx except 501 | temporary |
/// | other 4xx, 501 | permanent |
///
/// Informational and redirect statuses (1xx, 3xx) are not followed and count as permanent:
/// a target that redirects is misconfigured, and retrying will not fix it.
///
/// ```
/// use sdk::protocol::{classify_status, OutcomeClass};
/// assert_eq!(classify_status(204), OutcomeClass::Success);
/// assert_eq!(classify_status(429), OutcomeClass::Temporary);
/// assert_eq!(classify_status(501), OutcomeClass::Permanent);
/// ```
pub fn classify_status(status: u16) -> OutcomeClass {
    match status {
        200..=299 => OutcomeClass::Success,
        501 => OutcomeClass::Permanent,
        408 | 425 | 429 | 500..=599 => OutcomeClass::Temporary,
        _ => OutcomeClass::Permanent,
    }
}

/// Parse a `Retry-After` value: delay-seconds or an HTTP date, relative to `now`.
///
/// Returns `None` for a value that is neither. A date in the past gives a zero delay.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use sdk::protocol::parse_retry_after;
/// assert_eq!(parse_retry_after("120", SystemTime::now()), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("soon", SystemTime::now()), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Everything but unreserved characters is escaped, so any byte string round-trips and the
/// result is a valid header value.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encode arbitrary bytes (a Kafka key, which need not be UTF-8) for a header value.
///
/// ```
/// use sdk::protocol::{decode_bytes, encode_bytes};
/// let key = b"caf\xc3\xa9 \xff";
/// assert_eq!(encode_bytes(key), "caf%C3%A9%20%FF");
/// assert_eq!(decode_bytes(&encode_bytes(key)), key);
/// ```
pub fn encode_bytes(bytes: &[u8]) -> String {
    percent_encoding::percent_encode(bytes, ESCAPED).to_string()
}

/// Reverse [`encode_bytes`].
pub fn decode_bytes(text: &str) -> Vec<u8> {
    percent_decode_str(text).collect()
}

/// One Kafka record header: a UTF-8 name and a value that may be null.
pub type RecordHeader = (String, Option<Vec<u8>>);

/// Encode record headers as `name=value` pairs separated by `,`, each part percent-encoded.
/// A null value is written as the bare name; an empty value as `name=`.
///
/// ```
/// use sdk::protocol::{decode_record_headers, encode_record_headers};
/// let headers = vec![
///     ("trace id".to_string(), Some(b"a,b".to_vec())),
///     ("tombstone".to_string(), None),
///     ("empty".to_string(), Some(Vec::new())),
/// ];
/// let text = encode_record_headers(&headers);
/// assert_eq!(text, "trace%20id=a%2Cb,tombstone,empty=");
/// assert_eq!(decode_record_headers(&text), headers);
/// ```
pub fn encode_record_headers(headers: &[RecordHeader]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.extend(utf8_percent_encode(name, ESCAPED));
        if let Some(value) = value {
            out.push('=');
            out.push_str(&encode_bytes(value));
        }
    }
    out
}

/// Reverse [`encode_record_headers`]. Names that are not valid UTF-8 after decoding are
/// decoded lossily; the engine never produces them.
pub fn decode_record_headers(text: &str) -> Vec<RecordHeader> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (decode_name(name), Some(decode_bytes(value))),
            None => (decode_name(pair), None),
        })
        .collect()
}

fn decode_name(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        for status in [200, 201, 204, 299] {
            assert_eq!(classify_status(status), OutcomeClass::Success, "{status}");
        }
        for status in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify_status(status), OutcomeClass::Temporary, "{status}");
        }
        for status in [400, 401, 403, 404, 409, 410, 413, 422, 501, 301, 302, 100] {
            assert_eq!(classify_status(status), OutcomeClass::Permanent, "{status}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn every_byte_round_trips_through_a_valid_header_value() {
        let all: Vec<u8> = (0..=255).collect();
        let text = encode_bytes(&all);
        assert!(text.bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(decode_bytes(&text), all);
    }

    #[test]
    fn no_headers_is_empty_text() {
        assert_eq!(encode_record_headers(&[]), "");
        assert!(decode_record_headers("").is_empty());
    }
}
