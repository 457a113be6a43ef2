//! The Kafka side of a subscription: take batches from the connector, make them durable
//! calls, then acknowledge them so their offsets may be stored. Also the backpressure: no
//! batch is taken while the subscription's open calls are at `max_backlog`.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use connectors::kafka::{Source, SourceConfig, SourceRecord};

use crate::cluster::Ownership;
use crate::config::{changelog_topic, KafkaConfig};
use crate::error::EngineError;
use crate::ingest::{new_call, persist_queued, Record};
use crate::model::KafkaSource;
use crate::store::StoreError;
use crate::subscription::Part;

/// Consume `kafka` for the subscription of `part` until shutdown.
pub async fn run(part: Part, kafka: KafkaConfig) -> Result<(), EngineError> {
    let Part {
        subscription,
        store,
        figures,
        mut shutdown,
        cluster,
    } = part;
    let mut config = SourceConfig::new(
        subscription.name.clone(),
        kafka.brokers.clone(),
        kafka.topics.clone(),
        subscription.group_id().unwrap_or_default(),
    );
    config.options = kafka.options.clone();
    if let Some(instance) = cluster.as_ref().and_then(|link| link.instance.as_ref()) {
        config.options.insert("group.instance.id".into(), instance.clone());
    }
    if cluster.is_some() {
        // Only the partitions that must move are revoked and restored elsewhere; the others
        // stay, and are not restored again.
        config
            .options
            .entry("partition.assignment.strategy".into())
            .or_insert_with(|| crate::cluster::ASSIGNMENT_STRATEGY.into());
    }
    config.batch_size = kafka.batch_size;
    config.batch_bytes = kafka.batch_bytes;
    if let Some(link) = &cluster {
        let options = crate::outbox::connection_options(&kafka);
        let topic = changelog_topic(&subscription.group_id().unwrap_or_default());
        config.hook = Some(Arc::new(Ownership {
            subscription: subscription.name.clone(),
            marker: crate::cluster::changelog_sink(&subscription.name, &kafka.brokers, &topic, &options)?,
            brokers: kafka.brokers.clone(),
            options,
            topic,
            store: store.clone(),
            figures: Arc::clone(&figures),
            link: link.clone(),
            runtime: tokio::runtime::Handle::current(),
            held: std::sync::Mutex::default(),
        }));
    }
    let (source, mut batches) = Source::start(config)?;
    figures.source_started(source.status());
    tracing::info!(subscription = %subscription.name, topics = ?kafka.topics, brokers = %kafka.brokers, "consuming");
    let mut waiting_logged = false;
    let mut persisting = tokio::task::JoinSet::new();
    // Records taken but not yet durable count toward the backlog too.
    let in_flight_records = Arc::new(AtomicI64::new(0));
    let backlog = || figures.backlog() + in_flight_records.load(Relaxed);

    'consume: loop {
        // Backpressure: stop taking batches at the bound; the connector pauses its
        // partitions when its channel fills, and keeps polling.
        while backlog() >= kafka.max_backlog as i64 {
            if !waiting_logged {
                tracing::info!(subscription = %subscription.name, backlog = backlog(), "backlog at max_backlog; pausing consumption");
                waiting_logged = true;
            }
            // Woken when a call finishes; records being made durable only add to the
            // backlog, so the periodic check is a safety net, not the mechanism.
            tokio::select! {
                () = shutdown.recv() => break 'consume,
                () = figures.backlog_fell() => {}
                () = tokio::time::sleep(BACKLOG_RECHECK) => {}
            }
        }
        if waiting_logged {
            tracing::info!(subscription = %subscription.name, "backlog below max_backlog; resuming consumption");
            waiting_logged = false;
        }
        let batch = tokio::select! {
            () = shutdown.recv() => break,
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
        let (figures, in_flight) = (Arc::clone(&figures), Arc::clone(&in_flight_records));
        let changelog = cluster.clone().map(|link| (link, store.clone(), shutdown.clone()));
        persisting.spawn(async move {
            let result = queued.counted(&figures).await;
            in_flight.fetch_sub(size, Relaxed);
            result?;
            // The durable write comes first, and in cluster mode the changelog's; the
            // offsets are stored only after them. Not covered at shutdown: not stored, so
            // the records are read again.
            if let Some((link, store, mut stopping)) = changelog {
                if !link.covered(&store, &mut stopping).await? {
                    return Ok(());
                }
            }
            ack.ack();
            Ok(())
        });
    }
    while let Some(joined) = persisting.join_next().await {
        flatten(Some(joined))?;
    }
    drop(batches);
    tokio::task::spawn_blocking(move || source.stop())
        .await
        .map_err(|e| EngineError::task("stopping the Kafka source", e))
}

/// Batches being made durable at once.
const IN_FLIGHT_BATCHES: usize = 16;
/// How often a source held by backpressure looks at the backlog without being woken.
const BACKLOG_RECHECK: Duration = Duration::from_secs(1);

/// A failed write is not retried here: the writer already retries what can heal (a full
/// disk, a lock), and a retry from here would reorder the batch after later ones. The
/// source stops instead; the batch's offsets are not stored, so nothing is lost.
fn flatten(joined: Option<Result<Result<(), StoreError>, tokio::task::JoinError>>) -> Result<(), EngineError> {
    match joined {
        Some(Err(e)) => Err(EngineError::task("persisting a batch", e)),
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
