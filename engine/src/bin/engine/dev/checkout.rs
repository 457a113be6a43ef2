//! `engine dev --example checkout`: the durable checkout workflow of `examples/checkout`,
//! served in process. Orders typed on stdin go to topic `orders`; the workflow charges,
//! sleeps, reserves each line as a child call of `reserve-line`, waits for the `shipped`
//! signal and produces a confirmation to topic `confirmations`, which is printed here.

use connectors::dev_broker::DevBroker;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};

use super::{print_status, produce_lines, toml_string, DevOptions};
use engine::{Config, Engine};

const ORDERS: &str = "orders";
const CONFIRMATIONS: &str = "confirmations";

/// Run until `stop` completes.
pub async fn run(options: DevOptions, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let broker = DevBroker::start(1)?;
    broker.create_topic(ORDERS, options.partitions)?;
    broker.create_topic(CONFIRMATIONS, 1)?;
    let bootstrap = broker.bootstrap_servers();

    let settings = ::checkout::Settings {
        confirmations_topic: CONFIRMATIONS.into(),
        ..::checkout::Settings::default()
    };
    let shipping_timeout = settings.shipping_timeout;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handler = listener.local_addr()?;
    let router = ::checkout::endpoint(settings).router();
    let handler_task = tokio::spawn(async move {
        axum::serve(listener, router).await.ok();
    });

    let config = Config::from_toml(&format!(
        r#"
[store]
path = {db}

[admin]
listen = "{admin}"

[[subscription]]
name = "checkout"
target = "http://{handler}/checkout"
timeout = "10s"

[subscription.retry]
initial_delay = "200ms"
max_delay = "5s"

[subscription.kafka]
brokers = "{bootstrap}"
topics = ["{ORDERS}"]
group_id = "engine-dev-checkout"

[[subscription]]
name = "{reserve}"
target = "http://{handler}/{reserve}"
timeout = "10s"

[subscription.retry]
initial_delay = "200ms"
max_delay = "5s"
max_attempts = 8
"#,
        db = toml_string(&options.db.display().to_string()),
        admin = options.admin,
        reserve = ::checkout::RESERVE_LINE,
    ))?;
    let engine = Engine::start(config).await?;

    println!("engine dev is running the checkout example");
    println!("  Kafka bootstrap: {bootstrap}   (orders on \"{ORDERS}\", confirmations on \"{CONFIRMATIONS}\")");
    println!("  admin API:       http://{}", engine.admin_addr());
    println!("  database:        {}", options.db.display());
    println!(
        "  handler:         http://{handler}/checkout and /{}",
        ::checkout::RESERVE_LINE
    );
    println!("Type an order: `<order id> <sku>[xN] ...` (a sku starting with \"gone\" is out of stock),");
    println!("or its JSON: {{\"id\": \"o-1\", \"customer\": \"ada\", \"lines\": [{{\"sku\": \"book\", \"quantity\": 1, \"price_cents\": 1200}}]}}");
    println!(
        "Each order waits up to {} for its `shipped` signal: engine calls signal <call id> shipped '{{\"carrier\": \"ups\"}}'",
        humantime::format_duration(shipping_timeout)
    );
    println!("(engine calls show <call id> prints the workflow's journal.) Ctrl-C stops.");

    let stdin_task = produce_lines(&bootstrap, ORDERS.to_string(), order_record)?;
    let confirmations_task = print_confirmations(&bootstrap)?;
    let figures = engine.figures();
    let (orders, lines) = (
        figures.get("checkout").cloned().expect("the checkout subscription"),
        figures
            .get(::checkout::RESERVE_LINE)
            .cloned()
            .expect("the reserve-line subscription"),
    );
    let status_task = print_status(move || {
        let (o, l) = (orders.snapshot(), lines.snapshot());
        format!(
            "[status] orders: ingested {}, completed {}, waiting {}, dead {} | line reservations: succeeded {}, retries {}, dead {}",
            o.ingested, o.succeeded, o.backlog, o.dead, l.succeeded, l.retried, l.dead
        )
    });

    let result = engine.run_until(stop).await;
    stdin_task.abort();
    confirmations_task.abort();
    status_task.abort();
    handler_task.abort();
    drop(broker);
    Ok(result?)
}

/// An order from a typed line: JSON as it is (keyed by its id when it has one), or
/// `<order id> <sku>[xN] ...`.
fn order_record(line: &str) -> Result<(Option<String>, String), String> {
    let line = line.trim();
    if line.starts_with('{') {
        let key = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
        return Ok((key, line.to_string()));
    }
    let mut words = line.split_whitespace();
    let id = words.next().ok_or("an empty line")?.to_string();
    let lines = words
        .map(|word| {
            let (sku, quantity) = match word.rsplit_once('x') {
                Some((sku, n)) if !sku.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    (sku, n.parse::<u32>().map_err(|e| format!("`{word}`: {e}"))?)
                }
                _ => (word, 1),
            };
            Ok(::checkout::Line {
                sku: sku.to_string(),
                quantity,
                price_cents: 500 + 100 * (sku.len() as i64 % 10),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if lines.is_empty() {
        return Err(format!("order `{id}` has no lines: type `{id} book lamp x2`"));
    }
    let order = ::checkout::Order {
        id: id.clone(),
        customer: "dev".into(),
        lines,
    };
    let json = serde_json::to_string(&order).map_err(|e| e.to_string())?;
    Ok((Some(id), json))
}

/// Print every confirmation the workflow produces.
fn print_confirmations(bootstrap: &str) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "engine-dev-confirmations")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[CONFIRMATIONS])?;
    Ok(tokio::spawn(async move {
        let mut stream = consumer.stream();
        while let Some(message) = stream.next().await {
            match message {
                Ok(message) => println!(
                    "confirmation on {CONFIRMATIONS}: {}",
                    String::from_utf8_lossy(message.payload().unwrap_or_default())
                ),
                Err(error) => println!("reading {CONFIRMATIONS} failed: {error}"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::order_record;

    #[test]
    fn a_short_order_line_becomes_an_order() {
        let (key, json) = order_record("o-1 book lampx2 gone-vase").unwrap();
        assert_eq!(key.as_deref(), Some("o-1"));
        let order: ::checkout::Order = serde_json::from_str(&json).unwrap();
        let lines: Vec<_> = order.lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
        assert_eq!(lines, [("book", 1), ("lamp", 2), ("gone-vase", 1)]);
        assert!(order_record("o-2").unwrap_err().contains("no lines"));
        assert!(order_record("o-3 bookx99999999999").is_err());
        let (key, _) = order_record(r#"{"id": "o-4", "lines": []}"#).unwrap();
        assert_eq!(key.as_deref(), Some("o-4"));
    }
}
