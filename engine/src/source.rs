//! The Kafka side of a subscription: take batches from the connector, make them durable
//! calls, then acknowledge them so their offsets may be stored. Also the backpressure: no
//! batch is taken while the subscription's open calls are at `max_backlog`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use connectors::kafka::{Source, SourceConfig, SourceRecord};
use tokio::sync::watch;

use crate::config::SubscriptionConfig;
use crate::engine::EngineError;
use crate::ingest::{new_call, persist, Record};
use crate::model::KafkaSource;
use crate::scheduler::SchedulerStats;
use crate::store::Store;

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
    tracing::info!(subscription = %subscription.name, topics = ?kafka.topics, brokers = %kafka.brokers, "consuming");
    let mut waiting_logged = false;

    'consume: loop {
        // Backpressure: stop taking batches at the bound; the connector pauses its
        // partitions when its channel fills, and keeps polling.
        while stats.open.load(Relaxed) >= kafka.max_backlog as i64 {
            if !waiting_logged {
                tracing::info!(subscription = %subscription.name, backlog = stats.open.load(Relaxed), "backlog at max_backlog; pausing consumption");
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
        let calls: Vec<_> = batch
            .records
            .into_iter()
            .map(|r| new_call(&subscription, record_from(r)))
            .collect();
        // The durable write comes first; the offsets are stored only after it.
        let mut delay = Duration::from_millis(100);
        loop {
            match persist(&store, &stats, calls.clone()).await {
                Ok(_) => break,
                Err(error) => {
                    tracing::error!(subscription = %subscription.name, %error, "cannot persist a batch; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => break 'consume,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.ack.ack();
    }
    drop(batches);
    tokio::task::spawn_blocking(move || source.stop())
        .await
        .map_err(|e| EngineError::Task(format!("stopping the Kafka source: {e}")))
}

fn record_from(record: SourceRecord) -> Record {
    let headers =
        (!record.headers.is_empty()).then(|| sdk::protocol::encode_record_headers(&record.headers));
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
