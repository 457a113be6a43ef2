//! The changelog publisher: every commit's changes of Kafka-record calls go to the
//! changelog topic of their subscription, in commit order, tagged with the claim of their
//! partition (fencing).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use connectors::kafka::changelog::{OWNER_CLAIM_HEADER, OWNER_HEADER};
use connectors::kafka::sink::{Sink, SinkConfig, SinkRecord};
use tokio::sync::{mpsc, watch};

use super::claim_key;
use crate::error::EngineError;
use crate::model::Millis;
use crate::shutdown::Shutdown;
use crate::store::{CallSnapshot, Change, Committed};

/// Most changes produced in one go.
const PUBLISH_BATCH: usize = 10_000;

/// The token of this engine's last claim of each source partition, by claim key: its
/// changelog writes carry it, and readers drop those written under a claim another engine
/// has replaced since (fencing, see [`connectors::kafka::changelog`]).
#[derive(Debug, Clone, Default)]
pub struct Owners(Arc<std::sync::Mutex<Tokens>>);

/// Claim key → token.
type Tokens = HashMap<Vec<u8>, Vec<u8>>;

impl Owners {
    pub(super) fn set(&self, claim_key: Vec<u8>, token: Vec<u8>) {
        if let Ok(mut owners) = self.0.lock() {
            owners.insert(claim_key, token);
        }
    }
}

/// The headers that tag a write for this call's partition, if it was claimed.
fn tag(tokens: &Tokens, call: &CallSnapshot) -> Vec<(String, Option<Vec<u8>>)> {
    let key = claim_key(&call.subscription, &call.topic, call.partition);
    let Some(token) = tokens.get(&key) else {
        return Vec::new();
    };
    vec![
        (OWNER_HEADER.to_string(), Some(token.clone())),
        (OWNER_CLAIM_HEADER.to_string(), Some(key)),
    ]
}

/// A changelog record of `change`, tagged with its partition's claim.
fn record_of(change: &Change, tokens: &Tokens) -> Result<SinkRecord, serde_json::Error> {
    Ok(SinkRecord {
        key: Some(change.id().as_bytes().to_vec()),
        value: match change {
            Change::Call(call) => Some(serde_json::to_vec(call)?),
            Change::Purged { .. } => None,
        },
        headers: match change {
            Change::Call(call) => tag(tokens, call),
            Change::Purged { .. } => Vec::new(),
        },
        partition: Some(change.partition()),
    })
}

/// Produce every commit's changes to the changelog of its subscription, in commit order,
/// until `shutdown` (triggered by the engine once the last commit is published or a grace
/// period is over). A failed produce is retried (with the whole batch, so each key's last
/// record stays last); meanwhile nothing newer is acknowledged, and ingestion waits.
#[allow(clippy::implicit_hasher)]
pub async fn publish(
    mut changes: mpsc::UnboundedReceiver<Committed>,
    sinks: HashMap<String, Sink>,
    owners: Owners,
    acked: watch::Sender<Millis>,
    covered_seq: watch::Sender<i64>,
    mut shutdown: Shutdown,
) -> Result<(), EngineError> {
    loop {
        let Committed {
            mut clock,
            mut max_seq,
            changes: mut batch,
        } = tokio::select! {
            biased;
            next = changes.recv() => match next {
                Some(next) => next,
                None => return Ok(()),
            },
            () = shutdown.recv() => return Ok(()),
        };
        while batch.len() < PUBLISH_BATCH {
            match changes.try_recv() {
                Ok(later) => {
                    clock = later.clock;
                    max_seq = max_seq.max(later.max_seq);
                    batch.extend(later.changes);
                }
                Err(_) => break,
            }
        }
        let mut by_sink: HashMap<&str, Vec<SinkRecord>> = HashMap::new();
        {
            // Locked once per batch; claims change only at rebalances.
            let tokens = owners.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for change in &batch {
                if !sinks.contains_key(change.subscription()) {
                    continue;
                }
                let record =
                    record_of(change, &tokens).map_err(|e| EngineError::task("encoding a changelog record", e))?;
                by_sink.entry(change.subscription()).or_default().push(record);
            }
        }
        let mut backoff = Duration::from_millis(100);
        'retry: loop {
            for (subscription, records) in &by_sink {
                let sink = &sinks[*subscription];
                if let Some(error) = sink.send_all(records).await.into_iter().find_map(Result::err) {
                    tracing::error!(subscription, topic = sink.topic(), %error, retry_in = ?backoff, "cannot write the changelog; ingestion waits until it can");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.recv() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue 'retry;
                }
            }
            break;
        }
        covered_seq.send_if_modified(|seq| {
            let grew = max_seq > *seq;
            *seq = (*seq).max(max_seq);
            grew
        });
        acked.send_replace(clock);
    }
}

/// The changelog producer of a subscription.
pub fn changelog_sink(
    subscription: &str,
    brokers: &str,
    topic: &str,
    options: &BTreeMap<String, String>,
) -> Result<Sink, EngineError> {
    Ok(Sink::new(&SinkConfig {
        name: format!("{subscription} changelog"),
        brokers: brokers.to_string(),
        topic: topic.to_string(),
        options: options.clone(),
    })?)
}

/// The changelog publisher, stopped after every other task of the engine: the outcomes of
/// the last attempts go to the changelog before the engine exits.
#[derive(Debug)]
pub struct Publisher {
    pub(super) stop: crate::shutdown::ShutdownTrigger,
    pub(super) task: tokio::task::JoinHandle<Result<(), EngineError>>,
    pub(super) acked: watch::Receiver<Millis>,
}

impl Publisher {
    /// Publish what the store has committed up to `clock` (within `grace`), then stop.
    pub async fn finish(mut self, clock: Millis, grace: Duration) -> Result<(), EngineError> {
        let reached = tokio::time::timeout(grace, self.acked.wait_for(|&c| c >= clock)).await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!("the changelog does not have the last changes; the next owner of these partitions delivers those calls again");
        }
        self.stop.trigger();
        self.task
            .await
            .map_err(|e| EngineError::task("the changelog publisher", e))?
    }
}
