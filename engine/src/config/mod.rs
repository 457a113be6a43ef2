//! The TOML configuration file. Unknown keys are errors, and every error names the key or
//! the line. See the configuration reference in README.md.

mod cluster;
mod env;

pub use cluster::{changelog_topic, members_topic, ClusterConfig};
pub use env::FromEnv;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetryPolicy;

/// A configuration problem, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}:\n{message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error("config {key} uses the environment variable {var}, which is not set")]
    MissingEnv { key: String, var: String },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub signing: SigningConfig,
    /// `[cluster]`: a partition's calls follow it across engines (off by default).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// One entry per `[[subscription]]` table.
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// The values that came from the environment (`${NAME}`), for `engine check-config`.
    #[serde(skip)]
    pub from_env: Vec<FromEnv>,
    /// One entry per `[[endpoint]]` table: settings for the endpoints calls go to.
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<EndpointConfig>,
}

/// `[[endpoint]]`: concurrency and rate limits of one endpoint. Subscriptions whose target
/// has this `origin` use it, as do subscriptions that name it with `endpoint = "<name>"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: Option<String>,
    /// `scheme://host:port`, for example `http://127.0.0.1:9000`.
    pub origin: Option<String>,
    /// The adaptive concurrency limit (`[endpoint.concurrency]`).
    #[serde(default)]
    pub concurrency: crate::limiter::AimdConfig,
    /// Requests per second to this endpoint, over every subscription.
    pub rate_limit: Option<u32>,
    /// Requests allowed at once above the rate. Default: one second's worth.
    pub rate_burst: Option<u32>,
}

/// `[store]`: the SQLite file and its group commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Database file. Relative paths are resolved from the working directory.
    pub path: PathBuf,
    /// Succeeded and cancelled calls are deleted this long after they finish.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Longest wait for more changes before a commit.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most rows in one commit.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let writer = crate::store::WriterOptions::default();
        Self {
            path: PathBuf::from("engine.db"),
            retention: Duration::from_secs(7 * 24 * 3600),
            commit_interval: writer.commit_interval,
            max_batch: writer.max_batch,
        }
    }
}

/// Where the admin API listens unless `[admin] listen` says otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8680";

/// `[admin]`: the admin HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on. Default `127.0.0.1:8680`.
    pub listen: SocketAddr,
    /// Bearer token required on every request; mandatory when `listen` is not loopback.
    pub token: Option<String>,
    /// How handlers reach this API to fetch journals too large to send inline, and how the
    /// other engines of a cluster reach it, e.g. `http://engine-1.internal:8680`. Default:
    /// `http://` and the address it listens on (127.0.0.1 for an unspecified address).
    pub public_url: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.parse().expect("a socket address"),
            token: None,
            public_url: None,
        }
    }
}

impl AdminConfig {
    /// The base URL handlers use to reach the admin API, given the address it is bound to.
    pub fn public_base(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let mut addr = bound;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }
}

/// `[signing]`: sign every request with Ed25519 (see docs/protocol.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Base64 private key from `engine keygen`. The environment variable
    /// `ENGINE_SIGNING_KEY` overrides it (keep keys out of files).
    pub private_key: Option<String>,
    /// Sent as `keyid`, so handlers can tell keys apart during a rotation.
    pub key_id: String,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            private_key: None,
            key_id: "engine".into(),
        }
    }
}

/// The environment variable that overrides `signing.private_key`.
pub const SIGNING_KEY_ENV: &str = "ENGINE_SIGNING_KEY";

impl SigningConfig {
    /// The signer, if a key is configured (the environment first).
    pub fn signer(&self) -> Result<Option<sdk::signing::Signer>, ConfigError> {
        let key = std::env::var(SIGNING_KEY_ENV).ok().or_else(|| self.private_key.clone());
        key.map(|key| {
            sdk::signing::Signer::from_base64(&self.key_id, &key)
                .map_err(|e| ConfigError::Invalid(format!("signing key: {e}")))
        })
        .transpose()
    }
}

/// How calls of a subscription are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// No ordering: maximum parallelism.
    Unordered,
    /// Calls with the same key run one at a time, in offset order.
    #[default]
    Key,
    /// Calls from the same partition run one at a time, in offset order.
    Partition,
}

/// What a dead call means for the calls after it in its ordering group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDead {
    /// Later calls continue.
    #[default]
    Skip,
    /// Later calls wait until an operator redrives, cancels or purges the dead call.
    Block,
}

/// `[[subscription]]`: where calls come from, where they go, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Unique name, used in the API and in the `engine-subscription` header.
    pub name: String,
    /// URL every call is POSTed to.
    pub target: String,
    #[serde(default)]
    pub ordering: Ordering,
    #[serde(default)]
    pub on_dead: OnDead,
    /// Time limit of one attempt, from sending the request to reading the response.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most attempts in flight at once.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// Most bytes of a response body kept as the call's output.
    #[serde(default = "defaults::max_output_bytes")]
    pub max_output_bytes: usize,
    /// Records with a larger value become dead calls with a reason, never dropped.
    #[serde(default = "defaults::max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Most calls held in memory; the rest wait in the store.
    #[serde(default = "defaults::window")]
    pub window: usize,
    /// Most payload bytes held in memory (in the window and in flight); past it, calls wait
    /// in the store. One call larger than this is still delivered, alone.
    #[serde(default = "defaults::window_bytes")]
    pub window_bytes: usize,
    /// Ingest but do not deliver (for maintenance of the target, or to measure ingest).
    #[serde(default)]
    pub paused: bool,
    /// Use the `[[endpoint]]` of this name instead of the one of the target's origin.
    pub endpoint: Option<String>,
    /// Requests per second of this subscription.
    pub rate_limit: Option<u32>,
    /// Requests allowed at once above the rate. Default: one second's worth.
    pub rate_burst: Option<u32>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where records come from; without it, calls are only enqueued through the admin API.
    pub kafka: Option<KafkaConfig>,
    /// Also produce every call that goes dead to a Kafka topic.
    pub dead_letter: Option<DeadLetterConfig>,
    /// Produce the output of every call that succeeds to this topic of the source's cluster,
    /// exactly once per call (child calls of workflows excepted). Needs `[subscription.kafka]`.
    pub output_topic: Option<String>,
}

/// `[subscription.dead_letter]`: the dead-letter topic of a subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub topic: String,
    /// Bootstrap servers. Default: those of `[subscription.kafka]`.
    pub brokers: Option<String>,
    /// Any librdkafka producer property, passed through. `acks` and
    /// `enable.idempotence` are fixed by the engine.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl SubscriptionConfig {
    /// The dead-letter topic's brokers: its own, or the source's.
    pub fn dead_letter_brokers(&self) -> Option<&str> {
        let dead_letter = self.dead_letter.as_ref()?;
        dead_letter
            .brokers
            .as_deref()
            .or(self.kafka.as_ref().map(|k| k.brokers.as_str()))
    }
}

/// `[subscription.kafka]`: the Kafka source of a subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// Consumer group id. Default: `engine-<subscription name>`.
    pub group_id: Option<String>,
    /// Pause consumption while the subscription has this many open (pending or running)
    /// calls; resume below it.
    #[serde(default = "defaults::max_backlog")]
    pub max_backlog: u64,
    /// Most records persisted in one batch.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Most record bytes (values, keys and headers) in one batch: with large records, what
    /// the source holds in memory is bounded by this, not only by `batch_size`.
    #[serde(default = "defaults::batch_bytes")]
    pub batch_bytes: usize,
    /// Any librdkafka consumer property, passed through (security, SASL, TLS, tuning).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

mod defaults {
    use std::time::Duration;

    pub fn timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_concurrency() -> usize {
        64
    }
    pub fn max_output_bytes() -> usize {
        64 * 1024
    }
    pub fn max_payload_bytes() -> usize {
        1024 * 1024
    }
    pub fn window_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn window() -> usize {
        10_000
    }
    pub fn max_backlog() -> u64 {
        100_000
    }
    pub fn batch_bytes() -> usize {
        1024 * 1024
    }
    pub fn batch_size() -> usize {
        1000
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate config text (for tests and embedded defaults).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::parse(text, Path::new("<inline>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        let from_env = env::interpolate(&mut table, &|name| std::env::var(name).ok())?;
        let mut config: Self = if from_env.is_empty() {
            // From the text itself, so that errors say which line.
            toml::from_str(text).map_err(parse_error)?
        } else {
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: format!("{e} (after replacing ${{…}} from the environment)"),
                })?
        };
        config.from_env = from_env;
        config.validate()?;
        Ok(config)
    }

    /// Check what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.admin.listen.ip().is_loopback() && self.admin.token.as_deref().is_none_or(str::is_empty) {
            return invalid(format!(
                "admin.listen = {} is not a loopback address, so admin.token is required",
                self.admin.listen
            ));
        }
        if let Some(url) = &self.admin.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(url).is_err() {
                return invalid(format!("admin.public_url = {url:?} is not an http:// or https:// URL"));
            }
        }
        self.signing.signer()?;
        if self.store.max_batch == 0 {
            return invalid("store.max_batch must be at least 1".into());
        }
        self.cluster.validate().or_else(invalid)?;
        for endpoint in &self.endpoints {
            let label = endpoint
                .name
                .as_deref()
                .or(endpoint.origin.as_deref())
                .unwrap_or("(unnamed)");
            if endpoint.name.is_none() && endpoint.origin.is_none() {
                return invalid("an [[endpoint]] needs a name or an origin".into());
            }
            if let Some(origin) = &endpoint.origin {
                if reqwest::Url::parse(origin).is_err() {
                    return invalid(format!("endpoint `{label}`: origin `{origin}` is not a URL"));
                }
            }
            endpoint
                .concurrency
                .validate()
                .or_else(|m| invalid(format!("endpoint `{label}`: {m}")))?;
            if endpoint.rate_limit == Some(0) {
                return invalid(format!("endpoint `{label}`: rate_limit must be at least 1"));
            }
        }
        let mut names = HashSet::new();
        for sub in &self.subscriptions {
            let name = &sub.name;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return invalid(format!(
                    "subscription name `{name}` must be non-empty and use only letters, digits, `-`, `_` and `.`"
                ));
            }
            if !names.insert(name) {
                return invalid(format!("subscription `{name}` is defined twice"));
            }
            match reqwest::Url::parse(&sub.target) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                Ok(_) => {
                    return invalid(format!(
                        "subscription `{name}`: target `{}` must be an http:// or https:// URL",
                        sub.target
                    ))
                }
                Err(e) => {
                    return invalid(format!(
                        "subscription `{name}`: target `{}` is not a URL: {e}",
                        sub.target
                    ))
                }
            }
            if sub.max_concurrency == 0 || sub.window == 0 || sub.window_bytes == 0 {
                return invalid(format!(
                    "subscription `{name}`: max_concurrency, window and window_bytes must be at least 1"
                ));
            }
            if let Some(endpoint) = &sub.endpoint {
                if !self.endpoints.iter().any(|e| e.name.as_ref() == Some(endpoint)) {
                    return invalid(format!("subscription `{name}`: no [[endpoint]] named `{endpoint}`"));
                }
            }
            if sub.rate_limit == Some(0) {
                return invalid(format!("subscription `{name}`: rate_limit must be at least 1"));
            }
            if sub.timeout.is_zero() {
                return invalid(format!("subscription `{name}`: timeout must be above zero"));
            }
            sub.retry
                .validate()
                .or_else(|m| invalid(format!("subscription `{name}`: {m}")))?;
            if let Some(dead_letter) = &sub.dead_letter {
                if dead_letter.topic.trim().is_empty() {
                    return invalid(format!("subscription `{name}`: dead_letter.topic is empty"));
                }
                if sub.dead_letter_brokers().is_none_or(|b| b.trim().is_empty()) {
                    return invalid(format!(
                        "subscription `{name}`: dead_letter.brokers is required without a [subscription.kafka] section"
                    ));
                }
                for reserved in ["acks", "enable.idempotence", "bootstrap.servers"] {
                    if dead_letter.options.contains_key(reserved) {
                        return invalid(format!(
                            "subscription `{name}`: dead_letter.options may not set `{reserved}`; the engine manages it"
                        ));
                    }
                }
            }
            if let Some(topic) = &sub.output_topic {
                if topic.trim().is_empty() {
                    return invalid(format!("subscription `{name}`: output_topic is empty"));
                }
                if sub.kafka.is_none() {
                    return invalid(format!(
                        "subscription `{name}`: output_topic needs a [subscription.kafka] section (outputs go to the source's cluster)"
                    ));
                }
                if sub.kafka.as_ref().is_some_and(|k| k.topics.contains(topic)) {
                    return invalid(format!(
                        "subscription `{name}`: output_topic `{topic}` is also a source topic; every output would come back as a new call"
                    ));
                }
            }
            if let Some(kafka) = &sub.kafka {
                if kafka.topics.is_empty() || kafka.topics.iter().any(String::is_empty) {
                    return invalid(format!(
                        "subscription `{name}`: kafka.topics must list at least one topic"
                    ));
                }
                if kafka.batch_size == 0 || kafka.batch_bytes == 0 || kafka.max_backlog == 0 {
                    return invalid(format!(
                        "subscription `{name}`: kafka.batch_size, kafka.batch_bytes and kafka.max_backlog must be at least 1"
                    ));
                }
                if kafka.brokers.trim().is_empty() {
                    return invalid(format!("subscription `{name}`: kafka.brokers is empty"));
                }
                for reserved in ["group.id", "bootstrap.servers", "enable.auto.offset.store"] {
                    if kafka.options.contains_key(reserved) {
                        return invalid(format!(
                            "subscription `{name}`: kafka.options may not set `{reserved}`; the engine manages it (use kafka.brokers / kafka.group_id)"
                        ));
                    }
                }
                if self.cluster.instance.is_some() && kafka.options.contains_key("group.instance.id") {
                    return invalid(format!(
                        "subscription `{name}`: kafka.options sets `group.instance.id` and [cluster] sets `instance`; keep one"
                    ));
                }
                let strategy = kafka.options.get("partition.assignment.strategy");
                if let Some(strategy) = strategy.filter(|s| s.contains("cooperative") && s.contains(',')) {
                    // librdkafka cannot mix the protocols, and says so only when joining.
                    return invalid(format!(
                        "subscription `{name}`: partition.assignment.strategy = `{strategy}` mixes the cooperative protocol with others; name `cooperative-sticky` alone, or eager strategies (range, roundrobin) only"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl SubscriptionConfig {
    /// The consumer group id, explicit or derived from the name.
    pub fn group_id(&self) -> Option<String> {
        self.kafka
            .as_ref()
            .map(|k| k.group_id.clone().unwrap_or_else(|| format!("engine-{}", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[subscription]]
        name = "orders"
        target = "http://127.0.0.1:9000/orders"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.store.path, PathBuf::from("engine.db"));
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8680");
        let sub = &config.subscriptions[0];
        assert_eq!(sub.ordering, Ordering::Key);
        assert_eq!(sub.on_dead, OnDead::Skip);
        assert_eq!(sub.timeout, Duration::from_secs(30));
        assert_eq!(sub.retry, RetryPolicy::default());
    }

    fn error_of(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = error_of("[store]\npath = \"x.db\"\nretentoin = \"1d\"\n");
        assert!(e.contains("retentoin") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = error_of(&format!("{MINIMAL}max_concurrency = \"many\"\n"));
        assert!(e.contains("max_concurrency") && e.contains("line 5"), "{e}");
        let e = error_of(&format!("{MINIMAL}timeout = \"soon\"\n"));
        assert!(e.contains("timeout") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn missing_target_is_named() {
        let e = error_of("[[subscription]]\nname = \"a\"\n");
        assert!(e.contains("target"), "{e}");
    }

    #[test]
    fn semantic_errors_are_explained() {
        assert!(error_of(&format!("{MINIMAL}{MINIMAL}")).contains("defined twice"));
        assert!(error_of("[[subscription]]\nname = \"a\"\ntarget = \"ftp://x\"\n").contains("http://"));
        assert!(error_of("[admin]\nlisten = \"0.0.0.0:8680\"\n").contains("admin.token"));
        let e = error_of(&format!(
            "{MINIMAL}[subscription.kafka]\nbrokers = \"b:9092\"\ntopics = []\n"
        ));
        assert!(e.contains("kafka.topics"), "{e}");
        let e = error_of(&format!(
            "{MINIMAL}[subscription.kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\noptions = {{ \"group.id\" = \"x\" }}\n"
        ));
        assert!(e.contains("group.id"), "{e}");
        let e = error_of(&format!("{MINIMAL}[subscription.retry]\nmultiplier = 0.1\n"));
        assert!(e.contains("multiplier"), "{e}");
    }

    #[test]
    fn an_output_topic_needs_a_source_cluster_and_may_not_be_a_source_topic() {
        let e = error_of(&format!("{MINIMAL}output_topic = \"done\"\n"));
        assert!(e.contains("output_topic needs a [subscription.kafka]"), "{e}");
        let e = error_of(&format!(
            "{MINIMAL}output_topic = \"t\"\n[subscription.kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\n"
        ));
        assert!(e.contains("also a source topic"), "{e}");
        let ok = Config::from_toml(&format!(
            "{MINIMAL}output_topic = \"done\"\n[subscription.kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\n"
        ))
        .unwrap();
        assert_eq!(ok.subscriptions[0].output_topic.as_deref(), Some("done"));
    }

    #[test]
    fn cluster_instance_needs_cluster_mode_and_refuses_a_conflicting_option_or_mixed_protocols() {
        let kafka = "[subscription.kafka]\nbrokers = \"b:9092\"\ntopics = [\"t\"]\n";
        let error = |text: String| Config::from_toml(&text).unwrap_err().to_string();
        assert!(
            error(format!("{MINIMAL}{kafka}[cluster]\ninstance = \"e1\"\n")).contains("needs [cluster] enabled = true")
        );
        assert!(error(format!(
            "{MINIMAL}{kafka}[cluster]\nenabled = true\ninstance = \"has space\"\n"
        ))
        .contains("without spaces"));
        assert!(error(format!(
            "{MINIMAL}{kafka}options = {{ \"group.instance.id\" = \"x\" }}\n[cluster]\nenabled = true\ninstance = \"e1\"\n"
        ))
        .contains("keep one"));
        assert!(error(format!(
            "{MINIMAL}{kafka}options = {{ \"partition.assignment.strategy\" = \"cooperative-sticky,range\" }}\n[cluster]\nenabled = true\n"
        ))
        .contains("mixes the cooperative protocol"));
        for strategy in ["cooperative-sticky", "range,roundrobin"] {
            Config::from_toml(&format!(
                "{MINIMAL}{kafka}options = {{ \"partition.assignment.strategy\" = \"{strategy}\" }}\n[cluster]\nenabled = true\n"
            ))
            .unwrap();
        }
        let config = Config::from_toml(&format!(
            "{MINIMAL}{kafka}[cluster]\nenabled = true\ninstance = \"engine-0\"\n"
        ))
        .unwrap();
        assert_eq!(config.cluster.instance.as_deref(), Some("engine-0"));
    }
}
