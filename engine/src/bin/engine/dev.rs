//! `engine dev`: everything on one machine with no Kafka. An in-process Kafka-protocol
//! broker (librdkafka's mock cluster), the engine on a SQLite file, a demo handler, and a
//! producer reading lines from stdin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use connectors::dev_broker::DevBroker;
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use sdk::protocol::{decode_bytes, header};
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
}

/// Run until `stop` completes.
pub async fn run(options: DevOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&options.failure_rate),
        "--failure-rate must be within [0, 1]"
    );
    let broker = DevBroker::start(1)?;
    broker.create_topic(&options.topic, options.partitions)?;
    let bootstrap = broker.bootstrap_servers();

    let (target, handler) = if let Some(url) = &options.target {
        (url.clone(), None)
    } else {
        let (addr, task) = start_demo_handler(options.failure_rate).await?;
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

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "10000")
        .create()?;
    let figures = engine.figures().get("dev").cloned().expect("the dev subscription");
    let topic = options.topic.clone();
    let stdin_task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let (key, value) = match line.split_once(": ") {
                Some((key, value)) if !key.contains(' ') => (Some(key.to_string()), value.to_string()),
                _ => (None, line),
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
    });
    let status_task = tokio::spawn(async move {
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let s = figures.snapshot();
            let line = format!(
                "[status] ingested {}, succeeded {}, retries {}, dead {}, backlog {}",
                s.ingested, s.succeeded, s.retried, s.dead, s.backlog
            );
            if line != last {
                println!("{line}");
                last = line;
            }
        }
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

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[derive(Debug)]
struct Demo {
    failure_rate: f64,
    handled: AtomicU64,
}

async fn start_demo_handler(failure_rate: f64) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Demo {
        failure_rate,
        handled: AtomicU64::new(0),
    });
    let app = axum::Router::new().fallback(demo_handle).with_state(state);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    Ok((addr, task))
}

async fn demo_handle(State(demo): State<Arc<Demo>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let key = headers
        .get(header::KAFKA_KEY)
        .and_then(|v| v.to_str().ok())
        .map_or_else(
            || "(none)".to_string(),
            |k| String::from_utf8_lossy(&decode_bytes(k)).into_owned(),
        );
    let value = String::from_utf8_lossy(&body);
    let what = format!(
        "call {} attempt {} key {key} value {value:?}",
        text(header::CALL_ID),
        text(header::ATTEMPT)
    );
    if value.starts_with("fail") {
        println!("handler: REJECT {what} -> 400, the call goes dead");
        return (
            StatusCode::BAD_REQUEST,
            "values starting with \"fail\" are rejected".into(),
        );
    }
    if rand::rng().random::<f64>() < demo.failure_rate {
        println!("handler: FAIL   {what} -> 503, the engine will retry");
        return (StatusCode::SERVICE_UNAVAILABLE, "injected failure".into());
    }
    let n = demo.handled.fetch_add(1, Relaxed) + 1;
    println!("handler: OK     {what} (#{n})");
    (StatusCode::OK, format!("handled #{n}"))
}
