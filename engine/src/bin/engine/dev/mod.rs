//! `engine dev`: everything on one machine with no Kafka. An in-process Kafka-protocol
//! broker (librdkafka's mock cluster), the engine on a SQLite file, a handler, and a
//! producer reading lines from stdin.
//!
//! - `demo` (the default, [`demo`]): a plain handler that fails a share of attempts;
//! - `--example checkout` ([`checkout`]): the durable checkout workflow of
//!   `examples/checkout`, with its child calls, signal and confirmations topic.

mod checkout;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use connectors::dev_broker::DevBroker;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::io::AsyncBufReadExt;

use engine::{Config, Engine};

/// Options of `engine dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevOptions {
    /// Database file (created if missing).
    #[arg(long, default_value = "engine-dev.db")]
    pub db: PathBuf,
    /// Admin API address.
    #[arg(long, default_value = engine::config::DEFAULT_ADMIN_LISTEN)]
    pub admin: SocketAddr,
    /// Topic to create and consume.
    #[arg(long, default_value = "dev")]
    pub topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Deliver to this URL instead of the built-in demo handler.
    #[arg(long)]
    pub target: Option<String>,
    /// Fraction of attempts the demo handler fails with 503 (to show retries).
    #[arg(long, default_value_t = 0.3)]
    pub failure_rate: f64,
    /// Run an example instead of the demo handler: `checkout` is a durable workflow
    /// (charge, sleep, a child call per line, a signal, a record produced to Kafka).
    #[arg(long, value_enum)]
    pub example: Option<Example>,
}

/// The examples `engine dev` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Example {
    Checkout,
}

/// Run until `stop` completes.
pub async fn run(options: DevOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.failure_rate),
        "--failure-rate must be within [0, 1]"
    );
    if options.example == Some(Example::Checkout) {
        anyhow::ensure!(
            options.target.is_none(),
            "--target and --example cannot be used together: the example is the target"
        );
        return checkout::run(options, stop).await;
    }
    let broker = DevBroker::start(1)?;
    broker.create_topic(&options.topic, options.partitions)?;
    let bootstrap = broker.bootstrap_servers();

    let (target, handler) = if let Some(url) = &options.target {
        (url.clone(), None)
    } else {
        let (addr, task) = demo::start_demo_handler(options.failure_rate).await?;
        (format!("http://{addr}/dev"), Some(task))
    };
    let config = Config::from_toml(&format!(
        r#"
[store]
path = {db}

[admin]
listen = "{admin}"

[[subscription]]
name = "dev"
target = "{target}"
timeout = "10s"

[subscription.retry]
initial_delay = "500ms"
max_delay = "5s"
max_attempts = 8

[subscription.kafka]
brokers = "{bootstrap}"
topics = ["{topic}"]
group_id = "engine-dev"
"#,
        db = toml_string(&options.db.display().to_string()),
        admin = options.admin,
        topic = options.topic,
    ))?;
    let engine = Engine::start(config).await?;

    println!("engine dev is running");
    println!(
        "  Kafka bootstrap: {bootstrap}   (topic \"{}\", {} partitions)",
        options.topic, options.partitions
    );
    println!("  admin API:       http://{}", engine.admin_addr());
    println!("  database:        {}", options.db.display());
    match &handler {
        Some(_) => println!(
            "  handler:         {target}   (fails {:.0}% of attempts with 503; a value starting with \"fail\" is rejected for good)",
            options.failure_rate * 100.0
        ),
        None => println!("  target:          {target}"),
    }
    println!("Type a line to produce it as a record (\"key: value\" sets the key). Ctrl-C stops.");

    let figures = engine.figures().get("dev").cloned().expect("the dev subscription");
    let stdin_task = produce_lines(&bootstrap, options.topic.clone(), |line| match line.split_once(": ") {
        Some((key, value)) if !key.contains(' ') => Ok((Some(key.to_string()), value.to_string())),
        _ => Ok((None, line.to_string())),
    })?;
    let status_task = print_status(move || {
        let s = figures.snapshot();
        format!(
            "[status] ingested {}, succeeded {}, retries {}, dead {}, backlog {}",
            s.ingested, s.succeeded, s.retried, s.dead, s.backlog
        )
    });

    let result = engine.run_until(stop).await;
    stdin_task.abort();
    status_task.abort();
    if let Some(task) = handler {
        task.abort();
    }
    drop(broker);
    Ok(result?)
}

/// A record to produce, made from a line typed on stdin: key and value, or why not.
type LineToRecord = fn(&str) -> Result<(Option<String>, String), String>;

/// Produce each line of stdin to `topic`, as `to_record` makes it.
fn produce_lines(
    bootstrap: &str,
    topic: String,
    to_record: LineToRecord,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "10000")
        .create()?;
    Ok(tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = match to_record(&line) {
                Ok(record) => record,
                Err(why) => {
                    println!("not produced: {why}");
                    continue;
                }
            };
            let mut record = FutureRecord::to(&topic).payload(&value);
            if let Some(key) = &key {
                record = record.key(key);
            }
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(delivery) => println!(
                    "produced to {topic}/{} at offset {}",
                    delivery.partition, delivery.offset
                ),
                Err((error, _)) => println!("produce failed: {error}"),
            }
        }
    }))
}

/// Print `status()` every 2 s, when it changed.
fn print_status(status: impl Fn() -> String + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let line = status();
            if line != last {
                println!("{line}");
                last = line;
            }
        }
    })
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
