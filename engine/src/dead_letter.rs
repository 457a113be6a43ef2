//! Dead-letter topics: every call that goes dead in a subscription with a
//! `[subscription.dead_letter]` section is produced to that topic, with the record's key,
//! value and headers plus `engine-*` headers saying why. A call is marked published only
//! after the broker acknowledged it (`acks=all`, idempotent producer); until then it is
//! found again by the next pass, after a restart too.

use std::time::Duration;

use connectors::kafka::sink::{Sink, SinkConfig, SinkError, SinkRecord};

use crate::config::DeadLetterConfig;
use crate::error::EngineError;
use crate::store::DeadCall;
use crate::subscription::Part;

/// Headers added to a dead letter.
pub mod header {
    /// The last error of the call.
    pub const ERROR: &str = "engine-error";
    /// The call's id.
    pub const CALL_ID: &str = sdk::protocol::header::CALL_ID;
    pub const SUBSCRIPTION: &str = sdk::protocol::header::SUBSCRIPTION;
    /// Attempts made, in all eras.
    pub const ATTEMPTS: &str = "engine-attempts";
    /// When the call went dead, ms since the epoch.
    pub const DEAD_AT: &str = "engine-dead-at";
    pub const SOURCE_TOPIC: &str = "engine-source-topic";
    pub const SOURCE_PARTITION: &str = "engine-source-partition";
    pub const SOURCE_OFFSET: &str = "engine-source-offset";
    /// Set when the record was too large for the topic: what was left out, and why.
    pub const OMITTED: &str = "engine-omitted";
}

/// Dead calls read and produced per pass.
const BATCH: usize = 500;
/// Payload bytes of dead calls loaded at once, at most (one larger call is loaded alone).
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// A pass runs at least this often, even without a call going dead meanwhile.
const IDLE_PASS: Duration = Duration::from_secs(5);

/// The dead letter of a call: the original record, plus why it died.
pub fn dead_letter_of(dead: &DeadCall) -> SinkRecord {
    let call = &dead.call;
    let mut headers = call
        .headers
        .as_deref()
        .map(sdk::protocol::decode_record_headers)
        .unwrap_or_default();
    headers.extend(engine_headers(dead));
    SinkRecord {
        key: call.key.clone(),
        value: (!call.tombstone).then(|| call.payload.clone()),
        headers,
        partition: None,
    }
}

/// The headers the engine adds to a dead letter: why, which call, and where it came from.
fn engine_headers(dead: &DeadCall) -> Vec<(String, Option<Vec<u8>>)> {
    let call = &dead.call;
    let mut headers = Vec::new();
    let mut add = |name: &str, value: String| headers.push((name.to_string(), Some(value.into_bytes())));
    add(header::ERROR, dead.last_error.clone().unwrap_or_default());
    add(header::CALL_ID, call.id.to_string());
    add(header::SUBSCRIPTION, dead.subscription.clone());
    add(header::ATTEMPTS, call.attempts.to_string());
    add(header::DEAD_AT, dead.dead_at.to_string());
    if let Some(source) = &call.source {
        add(header::SOURCE_TOPIC, source.topic.clone());
        add(header::SOURCE_PARTITION, source.partition.to_string());
        add(header::SOURCE_OFFSET, source.offset.to_string());
    }
    headers
}

/// Send a dead letter too large for the topic without its value, then without the record's
/// own headers too; if even that is refused, count it as sent (the call stays dead in the
/// store, where `GET /v1/calls/{id}` shows it) and say so.
async fn send_smaller(sink: &Sink, dead: &DeadCall) -> Result<connectors::kafka::sink::Delivered, SinkError> {
    let size = dead.call.payload.len();
    let omitted = |what: &str| (header::OMITTED.to_string(), Some(what.as_bytes().to_vec()));
    let mut smaller = dead_letter_of(dead);
    smaller.value = None;
    smaller.headers.push(omitted(&format!(
        "value ({size} bytes): too large for the dead-letter topic; the call keeps it"
    )));
    let mut result = sink.send_all(std::slice::from_ref(&smaller)).await.remove(0);
    if result.as_ref().is_err_and(SinkError::is_too_large) {
        smaller.headers = engine_headers(dead);
        smaller.headers.push(omitted(&format!(
            "value ({size} bytes) and record headers: too large for the dead-letter topic; the call keeps them"
        )));
        result = sink.send_all(std::slice::from_ref(&smaller)).await.remove(0);
    }
    match result {
        Err(error) if error.is_too_large() => {
            tracing::error!(call = %dead.call.id, %error, "a dead letter is too large for the dead-letter topic even without its value; skipped (the call stays dead in the store)");
            Ok(connectors::kafka::sink::Delivered {
                partition: -1,
                offset: -1,
            })
        }
        other => {
            if other.is_ok() {
                tracing::warn!(call = %dead.call.id, bytes = size, "dead letter produced without its value: too large for the dead-letter topic");
            }
            other
        }
    }
}

/// Produce the dead calls of the subscription of `part` to the topic of `config` until
/// shutdown.
pub async fn run(mut part: Part, config: DeadLetterConfig) -> Result<(), EngineError> {
    let sink = Sink::new(&SinkConfig {
        name: part.subscription.name.clone(),
        brokers: part.subscription.dead_letter_brokers().unwrap_or_default().to_string(),
        topic: config.topic.clone(),
        options: config.options.clone(),
    })?;
    let name = part.subscription.name.as_str();
    let mut backoff = Duration::from_millis(200);
    loop {
        // Outcomes are queued to the writer before the wake-up: wait until they are durable.
        part.store.flush().await?;
        let dead = part.store.dead_unpublished(name, BATCH, BATCH_BYTES).await?;
        if dead.is_empty() {
            tokio::select! {
                () = part.shutdown.recv() => break,
                () = part.figures.went_dead() => {}
                () = tokio::time::sleep(IDLE_PASS) => {}
            }
            continue;
        }
        let records: Vec<SinkRecord> = dead.iter().map(dead_letter_of).collect();
        let mut results = tokio::select! {
            () = part.shutdown.recv() => break,
            results = sink.send_all(&records) => results,
        };
        // A record too large for the topic would stall every later one: send what fits.
        for (index, dead) in dead.iter().enumerate() {
            if results[index].as_ref().is_err_and(SinkError::is_too_large) {
                results[index] = send_smaller(&sink, dead).await;
            }
        }
        let mut published = Vec::new();
        let mut failure = None;
        for (call, result) in dead.iter().zip(results) {
            match result {
                Ok(_) => published.push(call.call.seq),
                Err(error) => failure = Some(error),
            }
        }
        part.figures.dead_letters_published(published.len());
        if !published.is_empty() {
            part.store.dead_lettered(published).await?;
        }
        if let Some(error) = failure {
            part.figures.dead_letters_failing(true);
            tracing::warn!(subscription = %name, topic = %sink.topic(), %error, retry_in = ?backoff, "cannot produce dead letters; will retry");
            tokio::select! {
                () = part.shutdown.recv() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            if part.figures.dead_letters_failing(false) {
                tracing::info!(subscription = %name, topic = %sink.topic(), "dead letters are produced again");
            }
            backoff = Duration::from_millis(200);
        }
    }
    tokio::task::spawn_blocking(move || sink.flush(Duration::from_secs(5)))
        .await
        .map_err(|e| EngineError::task("flushing dead letters", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DueCall, KafkaSource};

    #[test]
    fn a_dead_letter_keeps_the_record_and_says_why() {
        let headers = sdk::protocol::encode_record_headers(&[
            ("trace".to_string(), Some(b"abc".to_vec())),
            ("empty".to_string(), None),
        ]);
        let dead = DeadCall {
            call: DueCall {
                seq: 7,
                id: uuid::Uuid::nil(),
                target: "http://t".into(),
                payload: vec![0xff, 0x00],
                key: Some(b"k1".to_vec()),
                headers: Some(headers),
                source: Some(KafkaSource {
                    topic: "orders".into(),
                    partition: 2,
                    offset: 41,
                    timestamp: None,
                }),
                ordering_key: None,
                attempts: 3,
                next_attempt_at: 0,
                created_at: 0,
                tombstone: false,
                attempts_before_redrive: 0,
                redriven_at: None,
                journal_len: 0,
            },
            subscription: "s".into(),
            last_error: Some("HTTP 400: bad order".into()),
            dead_at: 1234,
        };
        let record = dead_letter_of(&dead);
        assert_eq!(record.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(record.value.as_deref(), Some(&[0xff, 0x00][..]));
        let get = |name: &str| record.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(get("trace"), Some(Some(b"abc".to_vec())));
        assert_eq!(get("empty"), Some(None));
        assert_eq!(get(header::ERROR), Some(Some(b"HTTP 400: bad order".to_vec())));
        assert_eq!(get(header::ATTEMPTS), Some(Some(b"3".to_vec())));
        assert_eq!(get(header::SOURCE_OFFSET), Some(Some(b"41".to_vec())));
        assert_eq!(get(header::DEAD_AT), Some(Some(b"1234".to_vec())));

        let mut tombstone = dead;
        tombstone.call.tombstone = true;
        tombstone.call.payload = Vec::new();
        assert_eq!(dead_letter_of(&tombstone).value, None);
    }
}
