//! The Kafka source: a consumer-group member on a dedicated thread that hands out batches
//! of records and stores an offset only after the batch holding it is acknowledged durable.
//!
//! - `offsets`: the in-order commit tokens (pure).
//! - `batching`: when a batch closes, and when to pause or resume the partitions (pure).
//! - `status`: the live figures a source reports (records consumed, brokers down, lag).
//! - `context`: librdkafka callbacks: offset storage and the flush on revoke.
//! - `sink`: the idempotent producer of dead letters and workflows' records.
//! - `changelog`: reading a compacted changelog partition back (scale-out restore).
//! - `scan`: reading a topic's recent records back, to find what a crash left unconfirmed.
//! - this module: configuration and the poll loop, which carries out what `batching` decides.
//!
//! Backpressure: batches go through a bounded channel. When the engine stops taking them
//! and a few batches are held back, the loop pauses its partitions and keeps polling (so
//! `max.poll.interval.ms` is never exceeded), then resumes once it has handed them over.

mod batching;
pub mod changelog;
mod context;
pub mod offsets;
pub mod scan;
pub mod sink;
mod status;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;

use batching::{Batcher, Flow};
use context::SourceContext;
pub use status::{PartitionLag, SourceStatus};

/// Settings of one source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// A name for logs (the subscription).
    pub name: String,
    pub brokers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    /// librdkafka properties passed through; they override the defaults below but not the
    /// settings the source relies on (group, offset storage).
    pub options: BTreeMap<String, String>,
    /// Most records per batch.
    pub batch_size: usize,
    /// Most record bytes per batch (see [`SourceRecord::size_bytes`]).
    pub batch_bytes: usize,
    /// Longest a batch stays open while records keep arriving; it closes earlier as soon as
    /// no more records are ready.
    pub batch_linger: Duration,
    /// Batches waiting in the channel for the engine.
    pub channel_batches: usize,
    /// Closed batches the channel had no room for; at this many, the partitions are paused
    /// (and resumed once all are handed over).
    pub held_batches: usize,
    /// Longest wait, on revoke, for handed-over batches to become durable.
    pub revoke_timeout: Duration,
    /// Told of partitions as they move (scale-out: a partition's state follows it).
    pub hook: Option<Arc<dyn PartitionHook>>,
}

/// Told of partitions as they move, on the consumer's poll thread, which waits for it: no
/// record of an assigned partition is handed out before `assigned` returns, and a revoked
/// partition goes back to the group only after `revoking` returns (its handed-out batches
/// are durable by then).
pub trait PartitionHook: Send + Sync + std::fmt::Debug {
    fn assigned(&self, partitions: &[offsets::TopicPartition]);
    fn revoking(&self, partitions: &[offsets::TopicPartition]);
}

impl SourceConfig {
    pub fn new(
        name: impl Into<String>,
        brokers: impl Into<String>,
        topics: Vec<String>,
        group_id: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            brokers: brokers.into(),
            topics,
            group_id: group_id.into(),
            options: BTreeMap::new(),
            batch_size: 1000,
            batch_bytes: 1024 * 1024,
            batch_linger: Duration::from_millis(5),
            channel_batches: 8,
            held_batches: 16,
            revoke_timeout: Duration::from_secs(10),
            hook: None,
        }
    }
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid Kafka settings for `{name}`: {source}")]
    Config {
        name: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("cannot subscribe `{name}` to {topics}: {source}")]
    Subscribe {
        name: String,
        topics: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    #[error("cannot start the consumer thread: {0}")]
    Thread(std::io::Error),
}

/// One record, as bytes. A null value (tombstone) is `value: None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header name and value (a header value may be null).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Milliseconds since the epoch, when the record has a timestamp.
    pub timestamp: Option<i64>,
}

impl SourceRecord {
    /// Bytes of the value, key and headers (what the record costs in memory, roughly).
    pub fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        self.value.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len) + headers
    }
}

/// Records to make durable, then [`Ack::ack`].
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<SourceRecord>,
    pub ack: Ack,
}

/// Acknowledges a batch as durable; its offsets may then be stored (in order).
#[derive(Debug)]
pub struct Ack {
    id: u64,
    acks: Sender<u64>,
}

impl Ack {
    /// The batch is durable. Dropping an `Ack` without calling this leaves the offsets
    /// unstored, and the records are read again after a restart or rebalance.
    pub fn ack(self) {
        let _ = self.acks.send(self.id);
    }
}

/// A running source. [`Source::stop`] it to commit what is durable and leave the group.
#[derive(Debug)]
pub struct Source {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    status: Arc<SourceStatus>,
}

impl Source {
    /// Join the group and start polling. Batches arrive on the returned receiver.
    pub fn start(config: SourceConfig) -> Result<(Self, mpsc::Receiver<Batch>), SourceError> {
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        let status = Arc::new(SourceStatus::default());
        let context = SourceContext::new(
            config.name.clone(),
            ack_rx,
            config.revoke_timeout,
            Arc::clone(&status),
            config.hook.clone(),
            reset_offset(&config.options),
        );
        let consumer: BaseConsumer<SourceContext> =
            client_config(&config)
                .create_with_context(context)
                .map_err(|source| SourceError::Config {
                    name: config.name.clone(),
                    source: Box::new(source),
                })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|source| SourceError::Subscribe {
            name: config.name.clone(),
            topics: config.topics.join(","),
            source: Box::new(source),
        })?;
        let (tx, rx) = mpsc::channel(config.channel_batches.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let poll = PollLoop {
            consumer,
            config,
            batches: tx,
            acks: ack_tx,
            stop: Arc::clone(&stop),
            status: Arc::clone(&status),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-source".into())
            .spawn(move || poll.run())
            .map_err(SourceError::Thread)?;
        Ok((
            Self {
                stop,
                thread: Some(thread),
                status,
            },
            rx,
        ))
    }

    pub fn status(&self) -> Arc<SourceStatus> {
        Arc::clone(&self.status)
    }

    /// Store the offsets of acknowledged batches, commit, and leave the group. Call after
    /// the engine has acknowledged (or dropped) every batch it took.
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the Kafka source thread panicked");
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Where a partition without a committed offset starts, as `auto.offset.reset` says
/// (default: the beginning).
fn reset_offset(options: &BTreeMap<String, String>) -> rdkafka::Offset {
    match options.get("auto.offset.reset").map(String::as_str) {
        Some("latest" | "largest" | "end") => rdkafka::Offset::End,
        _ => rdkafka::Offset::Beginning,
    }
}

fn client_config(config: &SourceConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    // Defaults a user may override.
    client
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("auto.commit.interval.ms", "1000")
        .set("statistics.interval.ms", "5000");
    for (key, value) in &config.options {
        client.set(key, value);
    }
    // What correctness relies on.
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    client
}

struct PollLoop {
    consumer: BaseConsumer<SourceContext>,
    config: SourceConfig,
    batches: mpsc::Sender<Batch>,
    acks: Sender<u64>,
    stop: Arc<AtomicBool>,
    status: Arc<SourceStatus>,
}

impl PollLoop {
    fn run(self) {
        let mut next_id = 1_u64;
        let mut batcher = Batcher::new(
            self.config.batch_size,
            self.config.batch_linger,
            self.config.held_batches,
        )
        .with_batch_bytes(self.config.batch_bytes);
        let mut last_error: Option<(String, Instant)> = None;

        'poll: while !self.stop.load(Relaxed) {
            self.consumer.context().drain_acks(&self.consumer);
            batcher.close_if_due(Instant::now());
            while let Some(records) = batcher.next_closed() {
                match self.hand_over(records, &mut next_id) {
                    HandOver::Done => {}
                    HandOver::Full(records) => {
                        batcher.give_back(records);
                        break;
                    }
                    HandOver::Closed => break 'poll,
                }
            }
            match batcher.flow() {
                Some(Flow::Pause) => self.set_paused(true),
                Some(Flow::Resume) => self.set_paused(false),
                None => {}
            }
            match self.consumer.poll(batcher.poll_timeout()) {
                Some(Ok(message)) => {
                    batcher.push(record_of(&message), Instant::now());
                    self.status.consumed.fetch_add(1, Relaxed);
                }
                Some(Err(error)) => {
                    let text = error.to_string();
                    let repeat = last_error
                        .as_ref()
                        .is_some_and(|(last, at)| *last == text && at.elapsed() < Duration::from_secs(30));
                    if !repeat {
                        tracing::warn!(source = %self.config.name, error = %text, "Kafka consumer error; retrying");
                        last_error = Some((text, Instant::now()));
                    }
                }
                None => batcher.drained(),
            }
            batcher.drop_revoked(&self.consumer.context().take_revoked());
        }
        self.shutdown();
    }

    /// Try to hand a batch to the engine.
    fn hand_over(&self, records: Vec<SourceRecord>, next_id: &mut u64) -> HandOver {
        let permit = match self.batches.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => return HandOver::Full(records),
            Err(mpsc::error::TrySendError::Closed(())) => return HandOver::Closed,
        };
        let id = *next_id;
        *next_id += 1;
        let mut highest: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in &records {
            let entry = highest.entry((r.topic.clone(), r.partition)).or_insert(r.offset);
            *entry = (*entry).max(r.offset);
        }
        self.consumer
            .context()
            .tracker
            .lock()
            .expect("tracker lock")
            .register(id, highest);
        permit.send(Batch {
            records,
            ack: Ack {
                id,
                acks: self.acks.clone(),
            },
        });
        HandOver::Done
    }

    fn set_paused(&self, pause: bool) {
        self.status.paused.store(pause, Relaxed);
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => tracing::debug!(source = %self.config.name, pause, "backpressure"),
            Err(error) => {
                tracing::warn!(source = %self.config.name, %error, pause, "cannot pause/resume partitions");
            }
        }
    }

    /// Give acknowledgements in flight a moment, store their offsets, commit and leave.
    fn shutdown(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let context = self.consumer.context();
        while context.tracker.lock().expect("tracker lock").total_in_flight() > 0 && Instant::now() < deadline {
            context.drain_acks(&self.consumer);
            std::thread::sleep(Duration::from_millis(10));
        }
        context.drain_acks(&self.consumer);
        if let Err(error) = self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(source = %self.config.name, %error, "final commit");
        }
        self.consumer.unsubscribe();
        tracing::info!(source = %self.config.name, "Kafka source stopped");
    }
}

enum HandOver {
    Done,
    /// The channel is full: here is the batch back.
    Full(Vec<SourceRecord>),
    /// The engine stopped taking batches.
    Closed,
}

fn record_of(message: &BorrowedMessage<'_>) -> SourceRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    SourceRecord {
        topic: message.topic().to_string(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: message.timestamp().to_millis(),
    }
}
