//! `produce`: the three ways to send records to Kafka, and what each tells you when the
//! broker fails.
//!
//! - `--mode fire-and-forget`: hand records to the client and never look at the outcome.
//!   Fastest; when the broker dies, records are lost and nothing says so.
//! - `--mode sync`: wait for each record's delivery report (with `--timeout`) before sending
//!   the next. Slowest; every failure is reported, record by record.
//! - `--mode async`: send without waiting and count delivery reports as they arrive in a
//!   callback. Fast, and every failure is still counted.
//!
//! ```text
//! cargo run -p produce -- --brokers 127.0.0.1:9092 --topic dev --mode async --count 10000 --rate 2000 --keys 10
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    FireAndForget,
    Sync,
    Async,
}

#[derive(Debug, Parser)]
#[command(version, about = "Produce records in one of three send modes")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "dev")]
    topic: String,
    #[arg(long, value_enum, default_value_t = Mode::Async)]
    mode: Mode,
    /// Records to send.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Records per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of distinct keys (`key-0` …); 0 sends records without a key.
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    payload_size: usize,
    /// How long one record may take to be delivered (sync mode) and how long to flush at
    /// the end (all modes).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Per-record lines are printed up to this many records.
const VERBOSE_UP_TO: u64 = 20;

struct Record {
    key: Option<String>,
    value: Vec<u8>,
}

fn record(args: &Args, n: u64) -> Record {
    let mut value = format!("record {n} ").into_bytes();
    value.resize(args.payload_size.max(value.len()), b'.');
    Record {
        key: (args.keys > 0).then(|| format!("key-{}", n % args.keys)),
        value,
    }
}

/// Paces sends to `rate` per second.
struct Pacer {
    started: Instant,
    rate: u64,
}

impl Pacer {
    async fn wait(&self, n: u64) {
        if self.rate > 0 {
            let due = self.started + Duration::from_secs_f64(n as f64 / self.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

#[derive(Default)]
struct Summary {
    sent: u64,
    acked: AtomicU64,
    failed: AtomicU64,
    unknown: u64,
}

fn config(args: &Args) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("message.timeout.ms", args.timeout.as_millis().to_string())
        // Expired records are only noticed when the broker thread wakes; with the default
        // reconnect backoff (up to 10 s) a dead broker delays every failure report.
        .set("reconnect.backoff.max.ms", "1000");
    config
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let pacer = Pacer {
        started,
        rate: args.rate,
    };
    let verbose = args.count <= VERBOSE_UP_TO;
    let summary = match args.mode {
        Mode::FireAndForget => fire_and_forget(&args, &pacer, verbose).await?,
        Mode::Sync => sync(&args, &pacer, verbose).await?,
        Mode::Async => asynchronous(&args, &pacer, verbose).await?,
    };
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "summary: mode {:?}, sent {}, acked {}, failed {}, unknown {}, {:.0} records/s",
        args.mode,
        summary.sent,
        summary.acked.load(Relaxed),
        summary.failed.load(Relaxed),
        summary.unknown,
        summary.sent as f64 / elapsed
    );
    Ok(())
}

async fn fire_and_forget(args: &Args, pacer: &Pacer, verbose: bool) -> anyhow::Result<Summary> {
    let producer: ThreadedProducer<_> = config(args).create()?;
    let mut summary = Summary::default();
    for n in 0..args.count {
        pacer.wait(n).await;
        let r = record(args, n);
        let mut base = BaseRecord::to(&args.topic).payload(&r.value);
        if let Some(key) = &r.key {
            base = base.key(key);
        }
        match producer.send(base) {
            Ok(()) => summary.sent += 1,
            Err((e, _)) => {
                // Only a full local queue is visible here; broker failures never are.
                if verbose {
                    println!("record {n}: not queued: {e}");
                }
            }
        }
        if verbose {
            println!("record {n}: handed to the client (outcome not tracked)");
        }
    }
    let _ = producer.flush(args.timeout);
    summary.unknown = summary.sent;
    Ok(summary)
}

async fn sync(args: &Args, pacer: &Pacer, verbose: bool) -> anyhow::Result<Summary> {
    let producer: FutureProducer = config(args).create()?;
    let mut summary = Summary::default();
    for n in 0..args.count {
        pacer.wait(n).await;
        let r = record(args, n);
        let mut future = FutureRecord::to(&args.topic).payload(&r.value);
        if let Some(key) = &r.key {
            future = future.key(key);
        }
        summary.sent += 1;
        match producer.send(future, args.timeout).await {
            Ok(delivery) => {
                summary.acked.fetch_add(1, Relaxed);
                if verbose {
                    println!(
                        "record {n}: acked at partition {} offset {}",
                        delivery.partition, delivery.offset
                    );
                }
            }
            Err((error, _)) => {
                summary.failed.fetch_add(1, Relaxed);
                println!("record {n}: FAILED: {error}");
            }
        }
    }
    Ok(summary)
}

/// Counts delivery reports as they arrive.
struct Counting {
    summary: Arc<Summary>,
    verbose: bool,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, n: Self::DeliveryOpaque) {
        match result {
            Ok(message) => {
                self.summary.acked.fetch_add(1, Relaxed);
                if self.verbose {
                    use rdkafka::Message as _;
                    println!(
                        "record {n}: acked at partition {} offset {}",
                        message.partition(),
                        message.offset()
                    );
                }
            }
            Err((error, _)) => {
                let failed = self.summary.failed.fetch_add(1, Relaxed) + 1;
                if self.verbose || failed <= VERBOSE_UP_TO {
                    println!("record {n}: FAILED: {error}");
                }
            }
        }
    }
}

async fn asynchronous(args: &Args, pacer: &Pacer, verbose: bool) -> anyhow::Result<Summary> {
    let summary = Arc::new(Summary::default());
    let producer: ThreadedProducer<Counting> = config(args).create_with_context(Counting {
        summary: Arc::clone(&summary),
        verbose,
    })?;
    let mut sent = 0;
    let mut not_queued = 0;
    for n in 0..args.count {
        pacer.wait(n).await;
        let r = record(args, n);
        let mut base = BaseRecord::with_opaque_to(&args.topic, Box::new(n)).payload(&r.value);
        if let Some(key) = &r.key {
            base = base.key(key);
        }
        match producer.send(base) {
            Ok(()) => sent += 1,
            Err((error, _)) => {
                not_queued += 1;
                println!("record {n}: FAILED to queue: {error}");
            }
        }
    }
    // Every queued record gets a report: delivered, or failed once message.timeout.ms passes.
    let _ = producer.flush(args.timeout + Duration::from_secs(1));
    drop(producer);
    let acked = summary.acked.load(Relaxed);
    let failed = summary.failed.load(Relaxed) + not_queued;
    Ok(Summary {
        sent,
        acked: AtomicU64::new(acked),
        failed: AtomicU64::new(failed),
        unknown: (sent + not_queued).saturating_sub(acked + failed),
    })
}
