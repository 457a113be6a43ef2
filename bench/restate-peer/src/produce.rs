//! `restate-peer-produce`: produce the benchmark's timestamped records to a Kafka topic.
//!
//! Each record value is JSON `{"ts_us": <µs since the Unix epoch, taken just before the send>,
//! "pad": "xxx..."}`, padded to `--size` bytes (100 by default). Records are sent
//! asynchronously; every delivery report is awaited at the end and failures are counted.
//!
//! ```text
//! restate-peer-produce --brokers 127.0.0.1:9092 --topic bench --count 10000            # as fast as possible
//! restate-peer-produce --brokers 127.0.0.1:9092 --topic bench --count 20000 --rate 1000
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

#[derive(Debug, Parser)]
#[command(version, about = "Produce {\"ts_us\":..,\"pad\":..} records for the benchmark")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Records to send.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Records per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Number of distinct keys (`k-0` …); 0 sends records without a key.
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Bytes per value (the JSON is padded up to this size).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// librdkafka linger.ms.
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Counts>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => self.0.delivered.fetch_add(1, Relaxed),
            Err((err, _)) => {
                if self.0.failed.fetch_add(1, Relaxed) < 5 {
                    eprintln!("produce: delivery failed: {err}");
                }
                0
            }
        };
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `{"ts_us":N,"pad":"xxx"}` padded to `size` bytes.
fn payload(ts_us: u64, size: usize) -> Vec<u8> {
    let bare = format!(r#"{{"ts_us":{ts_us},"pad":""}}"#);
    let pad = size.saturating_sub(bare.len());
    format!(r#"{{"ts_us":{ts_us},"pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("linger.ms", args.linger_ms.to_string())
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Ctx(counts.clone()))?;

    let started = Instant::now();
    for n in 0..args.count {
        if args.rate > 0 {
            let due = started + Duration::from_nanos(n * 1_000_000_000 / args.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let key = (args.keys > 0).then(|| format!("k-{}", n % args.keys));
        let mut value = payload(now_us(), args.size);
        loop {
            let mut record = BaseRecord::to(&args.topic).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((err, _)) => {
                    if err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        std::thread::sleep(Duration::from_millis(1));
                        value = payload(now_us(), args.size);
                        continue;
                    }
                    anyhow::bail!("send: {err}");
                }
            }
        }
    }
    let sent_in = started.elapsed();
    producer.flush(Duration::from_secs(60))?;
    let acked_in = started.elapsed();
    let delivered = counts.delivered.load(Relaxed);
    let failed = counts.failed.load(Relaxed);
    println!(
        "{{\"sent\":{},\"delivered\":{delivered},\"failed\":{failed},\"send_s\":{:.3},\"acked_s\":{:.3},\"rate_per_s\":{:.0}}}",
        args.count,
        sent_in.as_secs_f64(),
        acked_in.as_secs_f64(),
        delivered as f64 / acked_in.as_secs_f64()
    );
    if failed > 0 || delivered != args.count {
        anyhow::bail!("{failed} records failed, {delivered} of {} delivered", args.count);
    }
    Ok(())
}
