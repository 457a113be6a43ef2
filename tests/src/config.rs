//! A typed builder for the engine's config, so that tests and benchmarks say what they set
//! instead of formatting TOML by hand. It writes the same TOML a user writes, so a test
//! that spawns `engine serve` and one that starts the engine in process read it the same way.
//!
//! ```
//! use integration_tests::config::{EngineConfig, Subscription};
//!
//! let config = EngineConfig::new("engine.db")
//!     .subscription(Subscription::new("orders", "http://127.0.0.1:9000/").ordering("unordered").fast_retries())
//!     .build();
//! assert_eq!(config.subscriptions[0].name, "orders");
//! ```

use std::net::SocketAddr;
use std::path::Path;

use toml::{Table, Value};

/// Consumer options the engine needs against Tansu 0.6 (see docs/testing.md): a short
/// first-join wait and a short fetch wait.
pub const TANSU_CONSUMER: [(&str, &str); 3] = [
    ("fetch.wait.max.ms", "10"),
    ("session.timeout.ms", "6000"),
    ("max.poll.interval.ms", "7000"),
];

/// A whole config file.
#[derive(Debug, Clone)]
#[must_use]
pub struct EngineConfig {
    store: Table,
    admin: Table,
    signing: Option<Table>,
    cluster: Option<Table>,
    endpoints: Vec<Table>,
    subscriptions: Vec<Table>,
}

impl EngineConfig {
    /// A store at `db` and the admin API on a free loopback port.
    pub fn new(db: impl AsRef<Path>) -> Self {
        let mut store = Table::new();
        store.insert("path".into(), db.as_ref().display().to_string().into());
        let mut admin = Table::new();
        admin.insert("listen".into(), "127.0.0.1:0".into());
        Self {
            store,
            admin,
            signing: None,
            cluster: None,
            endpoints: Vec::new(),
            subscriptions: Vec::new(),
        }
    }

    pub fn admin(mut self, listen: SocketAddr) -> Self {
        self.admin.insert("listen".into(), listen.to_string().into());
        self
    }

    /// Every `/v1` request then needs this bearer token.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.admin.insert("token".into(), token.into());
        self
    }

    /// Sign every request with this Ed25519 private key (base64).
    pub fn signing_key(mut self, private_key: &str) -> Self {
        let mut signing = Table::new();
        signing.insert("private_key".into(), private_key.into());
        self.signing = Some(signing);
        self
    }

    /// Cluster mode: `[cluster] enabled = true`.
    pub fn cluster(mut self) -> Self {
        let mut cluster = Table::new();
        cluster.insert("enabled".into(), true.into());
        self.cluster = Some(cluster);
        self
    }

    /// Another `[cluster]` key (`instance`, `restore_timeout`), with cluster mode on.
    pub fn cluster_set(mut self, key: &str, value: impl Into<Value>) -> Self {
        if self.cluster.is_none() {
            self = self.cluster();
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.insert(key.into(), value.into());
        }
        self
    }

    /// Another `[store]` key (`max_batch`, `retention`...).
    pub fn store(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.store.insert(key.into(), value.into());
        self
    }

    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoints.push(endpoint.0);
        self
    }

    pub fn subscription(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription.table);
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut doc = Table::new();
        doc.insert("store".into(), self.store.clone().into());
        doc.insert("admin".into(), self.admin.clone().into());
        if let Some(signing) = &self.signing {
            doc.insert("signing".into(), signing.clone().into());
        }
        if let Some(cluster) = &self.cluster {
            doc.insert("cluster".into(), cluster.clone().into());
        }
        let array = |tables: &[Table]| Value::Array(tables.iter().cloned().map(Value::Table).collect());
        if !self.endpoints.is_empty() {
            doc.insert("endpoint".into(), array(&self.endpoints));
        }
        doc.insert("subscription".into(), array(&self.subscriptions));
        toml::to_string(&doc).expect("a config serializes")
    }

    /// Parsed and validated as `engine serve` would; panics with the engine's message.
    pub fn build(&self) -> engine::Config {
        engine::Config::from_toml(&self.to_toml()).unwrap_or_else(|e| panic!("{e}\n{}", self.to_toml()))
    }

    /// Write the file, for a spawned engine.
    pub fn write(&self, path: impl AsRef<Path>) {
        std::fs::write(path, self.to_toml()).expect("write the config file");
    }
}

/// One `[[endpoint]]`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Endpoint(Table);

impl Endpoint {
    pub fn origin(origin: impl Into<String>) -> Self {
        let mut table = Table::new();
        table.insert("origin".into(), origin.into().into());
        Self(table)
    }

    pub fn rate_limit(self, per_second: u32, burst: u32) -> Self {
        self.set("rate_limit", i64::from(per_second))
            .set("rate_burst", i64::from(burst))
    }

    /// A fixed limit instead of the adaptive one.
    pub fn fixed_concurrency(self, limit: u32) -> Self {
        let mut concurrency = Table::new();
        concurrency.insert("adaptive".into(), false.into());
        concurrency.insert("max".into(), i64::from(limit).into());
        self.set("concurrency", concurrency)
    }

    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// One `[[subscription]]` with its sections.
#[derive(Debug, Clone)]
#[must_use]
pub struct Subscription {
    table: Table,
}

impl Subscription {
    pub fn new(name: &str, target: &str) -> Self {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert("target".into(), target.into());
        Self { table }
    }

    /// `key`, `partition` or `unordered`.
    pub fn ordering(self, ordering: &str) -> Self {
        self.set("ordering", ordering)
    }

    pub fn max_concurrency(self, limit: u32) -> Self {
        self.set("max_concurrency", i64::from(limit))
    }

    /// `skip` or `block`.
    pub fn on_dead(self, on_dead: &str) -> Self {
        self.set("on_dead", on_dead)
    }

    /// Any other subscription key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.insert(key.into(), value.into());
        self
    }

    /// A `[subscription.retry]` key.
    pub fn retry(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("retry", key, value)
    }

    /// Retries within milliseconds and without a limit, so tests do not wait on backoff.
    pub fn fast_retries(self) -> Self {
        self.retries_between("5ms", "50ms")
    }

    /// Backoff from `initial` up to `max` (humantime), retrying without a limit.
    pub fn retries_between(self, initial: &str, max: &str) -> Self {
        self.retry("initial_delay", initial)
            .retry("max_delay", max)
            .retry("max_attempts", 0)
    }

    /// Consume `topics` from `brokers`.
    pub fn kafka(self, brokers: &str, topics: &[&str]) -> Self {
        let topics: Vec<Value> = topics.iter().map(|t| Value::from(*t)).collect();
        self.section("kafka", "brokers", brokers)
            .section("kafka", "topics", topics)
    }

    /// The consumer options that suit Tansu ([`TANSU_CONSUMER`]).
    pub fn tansu_consumer(mut self) -> Self {
        for (key, value) in TANSU_CONSUMER {
            self = self.kafka_option(key, value);
        }
        self
    }

    /// Another `[subscription.kafka]` key (`max_backlog`, `batch_size`...).
    pub fn kafka_set(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("kafka", key, value)
    }

    /// A librdkafka option, in `[subscription.kafka.options]`.
    pub fn kafka_option(mut self, key: &str, value: &str) -> Self {
        let kafka = section(&mut self.table, "kafka");
        section(kafka, "options").insert(key.into(), value.into());
        self
    }

    /// A `[subscription.dead_letter]` key (`topic`, `brokers`...).
    pub fn dead_letter(self, key: &str, value: impl Into<Value>) -> Self {
        self.section("dead_letter", key, value)
    }

    fn section(mut self, name: &str, key: &str, value: impl Into<Value>) -> Self {
        section(&mut self.table, name).insert(key.into(), value.into());
        self
    }
}

fn section<'a>(table: &'a mut Table, name: &str) -> &'a mut Table {
    match table.entry(name).or_insert_with(|| Table::new().into()) {
        Value::Table(inner) => inner,
        other => panic!("`{name}` is already set to {other}, not a section"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_config_reads_back_with_every_section() {
        let config = EngineConfig::new("x.db")
            .store("max_batch", 10)
            .endpoint(Endpoint::origin("http://127.0.0.1:9").rate_limit(50, 1))
            .subscription(
                Subscription::new("a", "http://127.0.0.1:9/x")
                    .ordering("partition")
                    .on_dead("block")
                    .fast_retries()
                    .kafka("127.0.0.1:1", &["t1", "t2"])
                    .kafka_set("group_id", "g")
                    .tansu_consumer()
                    .kafka_set("max_backlog", 5)
                    .dead_letter("topic", "dlq"),
            )
            .build();
        assert_eq!(config.store.max_batch, 10);
        let sub = &config.subscriptions[0];
        assert_eq!(sub.ordering, engine::config::Ordering::Partition);
        let kafka = sub.kafka.as_ref().unwrap();
        assert_eq!(kafka.topics, ["t1", "t2"]);
        assert_eq!(kafka.max_backlog, 5);
        assert_eq!(kafka.options.get("fetch.wait.max.ms").map(String::as_str), Some("10"));
        assert_eq!(sub.dead_letter.as_ref().unwrap().topic, "dlq");
        assert_eq!(config.endpoints[0].rate_limit, Some(50));
    }
}
