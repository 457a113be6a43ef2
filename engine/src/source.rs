//! The Kafka side of a subscription: take batches from the connector, make them durable
//! calls, then acknowledge them so their offsets may be stored. Also the backpressure: no
//! batch is taken while the subscription's open calls are at `max_backlog`.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use connectors::kafka::{Source, SourceConfig, SourceRecord};
use tokio::sync::watch;

use crate::config::SubscriptionConfig;
use crate::engine::EngineError;
use crate::ingest::{new_call, persist_queued, Record};
use crate::model::KafkaSource;
use crate::scheduler::SchedulerStats;
use crate::store::{Store, StoreError};

/// Run the source of `subscription` until shutdown.
pub async fn run(
    subscription: Arc<SubscriptionConfig>,
    store: Store,
    stats: Arc<SchedulerStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let kafka = subscription
        .kafka
        .as_ref()
        .expect("only subscriptions with a kafka section have a source");
    let mut config = SourceConfig::new(
        subscription.name.clone(),
        kafka.brokers.clone(),
        kafka.topics.clone(),
        subscription.group_id().unwrap_or_default(),
    );
    config.options = kafka.options.clone();
    config.batch_size = kafka.batch_size;
    let (source, mut batches) = Source::start(config)?;
    let _ = stats.source.set(source.status());
    tracing::info!(subscription = %subscription.name, topics = ?kafka.topics, brokers = %kafka.brokers, "consuming");
    let mut waiting_logged = false;
    let mut persisting = tokio::task::JoinSet::new();
    // Records taken but not yet durable count toward the backlog too.
    let in_flight_records = Arc::new(AtomicI64::new(0));
    let backlog = || stats.open.load(Relaxed) + in_flight_records.load(Relaxed);

    'consume: loop {
        // Backpressure: stop taking batches at the bound; the connector pauses its
        // partitions when its channel fills, and keeps polling.
        while backlog() >= kafka.max_backlog as i64 {
            if !waiting_logged {
                tracing::info!(subscription = %subscription.name, backlog = backlog(), "backlog at max_backlog; pausing consumption");
                waiting_logged = true;
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break 'consume,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        if waiting_logged {
            tracing::info!(subscription = %subscription.name, "backlog below max_backlog; resuming consumption");
            waiting_logged = false;
        }
        let batch = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        // Keep a few batches in flight so the writer can group them into one commit.
        while persisting.len() >= IN_FLIGHT_BATCHES {
            flatten(persisting.join_next().await)?;
        }
        let calls: Vec<_> = batch
            .records
            .into_iter()
            .map(|r| new_call(&subscription, record_from(r)))
            .collect();
        let ack = batch.ack;
        let size = calls.len() as i64;
        in_flight_records.fetch_add(size, Relaxed);
        // Queued here, in poll order, so that calls keep offset order; awaited apart.
        let queued = persist_queued(&store, calls)?;
        let (stats, in_flight) = (Arc::clone(&stats), Arc::clone(&in_flight_records));
        persisting.spawn(async move {
            let result = queued.counted(&stats).await;
            in_flight.fetch_sub(size, Relaxed);
            // The durable write comes first; the offsets are stored only after it.
            result.map(|_| ack.ack())
        });
    }
    while let Some(joined) = persisting.join_next().await {
        flatten(Some(joined))?;
    }
    drop(batches);
    tokio::task::spawn_blocking(move || source.stop())
        .await
        .map_err(|e| EngineError::Task(format!("stopping the Kafka source: {e}")))
}

/// Batches being made durable at once.
const IN_FLIGHT_BATCHES: usize = 16;

/// A failed write is not retried here: the writer already retries what can heal (a full
/// disk, a lock), and a retry from here would reorder the batch after later ones. The
/// source stops instead; the batch's offsets are not stored, so nothing is lost.
fn flatten(joined: Option<Result<Result<(), StoreError>, tokio::task::JoinError>>) -> Result<(), EngineError> {
    match joined {
        Some(Err(e)) => Err(EngineError::Task(format!("persisting a batch: {e}"))),
        Some(Ok(Err(e))) => Err(e.into()),
        _ => Ok(()),
    }
}

fn record_from(record: SourceRecord) -> Record {
    let headers = (!record.headers.is_empty()).then(|| sdk::protocol::encode_record_headers(&record.headers));
    Record {
        value: record.value,
        key: record.key,
        headers,
        source: Some(KafkaSource {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
            timestamp: record.timestamp,
        }),
    }
}
