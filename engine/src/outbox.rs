//! Publishing what workflows produce (`wf.produce`) and the outputs of a subscription's
//! calls (`output_topic`): records are stored in the outbox in the same transaction as their
//! journal entry or the call's success, then produced here with an idempotent
//! producer (`acks=all`) to the subscription's Kafka cluster, headers `engine-call-id` and
//! `engine-entry` naming the entry. A record is marked published once acknowledged.
//!
//! Exactly once per entry: before a record is handed to the producer it is marked
//! attempted. After a restart or a failed send, records marked attempted but not published
//! may be in the topic already; the topic is read back from shortly before the first of
//! them and those found are marked published instead of being sent again. Records restored
//! with their partition from another engine (cluster mode) arrive marked attempted, so they
//! are read back for too.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use connectors::kafka::scan;
use connectors::kafka::sink::{Sink, SinkConfig, SinkRecord};

use crate::config::KafkaConfig;
use crate::error::EngineError;
use crate::store::Unpublished;
use crate::subscription::Part;

/// Headers naming the journal entry a record came from.
pub mod header {
    pub const CALL_ID: &str = sdk::protocol::header::CALL_ID;
    /// The entry's position in the workflow's journal, or [`OUTPUT`] for a call's output.
    pub const ENTRY: &str = "engine-entry";
    /// The `engine-entry` of a call's output (`output_topic`).
    pub const OUTPUT: &str = "output";
}

/// A row's record identity: its call and entry.
fn identity(row: &Unpublished) -> (String, Option<u32>) {
    (row.call_id.clone(), row.position)
}

/// The `engine-entry` header of a row.
fn entry_of(row: &Unpublished) -> String {
    row.position
        .map_or_else(|| header::OUTPUT.to_string(), |p| p.to_string())
}

/// Records read and produced per pass.
const BATCH: usize = 500;
/// A pass runs at least this often.
const IDLE_PASS: Duration = Duration::from_secs(1);
/// How far before the first unconfirmed record the topic is read back (record timestamps
/// come from this machine's clock, as do the marks).
const SCAN_SLACK_MS: i64 = 60_000;
/// How long reading back one topic may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a publisher held by the lease looks again.
const LEASE_WAIT: Duration = Duration::from_millis(100);

/// The client properties of the source that a producer needs too: security, TLS, SASL.
pub(crate) fn connection_options(kafka: &KafkaConfig) -> BTreeMap<String, String> {
    kafka
        .options
        .iter()
        .filter(|(key, _)| {
            key.starts_with("security.")
                || key.starts_with("ssl.")
                || key.starts_with("sasl.")
                || key.starts_with("client.")
                || key.starts_with("socket.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Publish the outbox of the subscription of `part` until shutdown.
pub async fn run(mut part: Part, kafka: KafkaConfig) -> Result<(), EngineError> {
    let name = part.subscription.name.clone();
    let options = connection_options(&kafka);
    // Made when there is a first record to publish: most subscriptions run no workflow.
    let mut sink: Option<Sink> = None;
    // Records marked attempted that are known not to be in Kafka, since the last restore:
    // handed to the producer by this run with no failure yet, or read back for and not
    // found. Any other attempted record (after a restart, a failed send, or restored with
    // a partition from another engine) may be in its topic: it is read back for first.
    let mut ours: HashSet<(String, Option<u32>)> = HashSet::new();
    let mut restores = part.figures.restores().restores;
    let mut backoff = Duration::from_millis(200);
    loop {
        if part.cluster.as_ref().is_some_and(|c| !c.lease.allows()) {
            // Frozen past a third of the session: the partitions may have moved, and their
            // records with them. Nothing is produced until the group confirms or moves them.
            tokio::select! {
                () = part.shutdown.recv() => break,
                () = tokio::time::sleep(LEASE_WAIT) => continue,
            }
        }
        let restored_since = part.figures.restores().restores;
        if restored_since != restores {
            // A record that left and came back may have been published by another engine
            // meanwhile: what this run knew of it no longer holds.
            restores = restored_since;
            ours.clear();
        }
        // Suspensions are queued to the writer before the wake-up: wait until durable.
        part.store.flush().await?;
        let rows = part.store.outbox_unpublished(&name, BATCH).await?;
        if rows.is_empty() {
            tokio::select! {
                () = part.shutdown.recv() => break,
                () = part.figures.outbox_grew() => {}
                () = tokio::time::sleep(IDLE_PASS) => {}
            }
            continue;
        }
        let unconfirmed = rows
            .iter()
            .any(|r| r.attempted_at.is_some() && !ours.contains(&identity(r)));
        if unconfirmed {
            match find_published(&kafka.brokers, &options, &rows).await {
                Ok(found) => {
                    let in_kafka: HashSet<i64> = found.iter().copied().collect();
                    ours.extend(rows.iter().filter(|r| !in_kafka.contains(&r.seq)).map(identity));
                    if !found.is_empty() {
                        tracing::info!(subscription = %name, records = found.len(), "workflow records found already in Kafka after a restart, a failed send or a partition's move; not producing them again");
                        part.store.outbox_mark(found, true).await?;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(subscription = %name, %error, retry_in = ?backoff, "cannot read back the topics of unconfirmed workflow records; will retry");
                    if pause(&mut part, &mut backoff).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let sink = match &mut sink {
            Some(sink) => sink,
            None => sink.insert(Sink::new(&SinkConfig {
                name: name.clone(),
                brokers: kafka.brokers.clone(),
                topic: String::new(),
                options: publisher_options(&options),
            })?),
        };
        part.store
            .outbox_mark(rows.iter().map(|r| r.seq).collect(), false)
            .await?;
        ours.extend(rows.iter().map(identity));
        let mut published = Vec::new();
        let mut failure = None;
        for (topic, group) in by_topic(&rows) {
            let records: Vec<SinkRecord> = group.iter().map(|r| record_of(r)).collect();
            let results = sink.send_all_to(topic, &records).await;
            for (row, result) in group.iter().zip(results) {
                match result {
                    Ok(_) => {
                        published.push(row.seq);
                        ours.remove(&identity(row));
                    }
                    Err(error) => {
                        // It may still have reached the broker: read back before resending.
                        ours.remove(&identity(row));
                        failure = Some(error);
                    }
                }
            }
        }
        if !published.is_empty() {
            part.store.outbox_mark(published, true).await?;
        }
        if let Some(error) = failure {
            tracing::warn!(subscription = %name, %error, retry_in = ?backoff, "cannot produce workflow records; will retry");
            if pause(&mut part, &mut backoff).await {
                break;
            }
        } else {
            backoff = Duration::from_millis(200);
        }
    }
    let Some(sink) = sink else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || sink.flush(Duration::from_secs(5)))
        .await
        .map_err(|e| EngineError::task("flushing workflow records", e))
}

/// The producer's options: the source's connection options, and no topic created by
/// producing to it (librdkafka's producer would by default): a mistyped topic in `wf.produce` or
/// `output_topic` is an error in the log, with the records kept in the outbox until the
/// topic exists, not a new topic with the broker's defaults.
fn publisher_options(connection: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut options = connection.clone();
    options.insert("allow.auto.create.topics".into(), "false".into());
    options
}

/// Wait out the backoff; `true` if shutdown began.
async fn pause(part: &mut Part, backoff: &mut Duration) -> bool {
    let stop = tokio::select! {
        () = part.shutdown.recv() => true,
        () = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(Duration::from_secs(30));
    stop
}

/// Rows grouped by topic, each group in outbox order.
fn by_topic(rows: &[Unpublished]) -> BTreeMap<&str, Vec<&Unpublished>> {
    let mut groups: BTreeMap<&str, Vec<&Unpublished>> = BTreeMap::new();
    for row in rows {
        groups.entry(row.topic.as_str()).or_default().push(row);
    }
    groups
}

/// The record of an outbox row, with the headers that name its entry.
pub fn record_of(row: &Unpublished) -> SinkRecord {
    SinkRecord {
        key: row.key.clone(),
        value: Some(row.value.clone()),
        headers: vec![
            (header::CALL_ID.to_string(), Some(row.call_id.clone().into_bytes())),
            (header::ENTRY.to_string(), Some(entry_of(row).into_bytes())),
        ],
        partition: None,
    }
}

/// The rows (seqs) that were handed to the producer before and are in their topic.
async fn find_published(
    brokers: &str,
    options: &BTreeMap<String, String>,
    rows: &[Unpublished],
) -> Result<Vec<i64>, scan::ScanError> {
    let mut found = Vec::new();
    for (topic, group) in by_topic(rows) {
        let Some(since) = group.iter().filter_map(|r| r.attempted_at).min() else {
            continue;
        };
        let (brokers, options, topic_name) = (brokers.to_string(), options.clone(), topic.to_string());
        let pairs: HashSet<(String, String)> = tokio::task::spawn_blocking(move || {
            scan::header_pairs(
                &brokers,
                &options,
                &topic_name,
                since - SCAN_SLACK_MS,
                (header::CALL_ID, header::ENTRY),
                SCAN_TIMEOUT,
            )
        })
        .await
        .unwrap_or_else(|_| Ok(HashSet::new()))?;
        found.extend(
            group
                .iter()
                .filter(|r| r.attempted_at.is_some() && pairs.contains(&(r.call_id.clone(), entry_of(r))))
                .map(|r| r.seq),
        );
    }
    Ok(found)
}
