//! Kafka helpers: a real Tansu broker process, topic creation, and producers (rdkafka from
//! crates.io, the only client that parses Tansu's replies).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::free_addr;

/// A Tansu broker on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct Tansu {
    pub addr: SocketAddr,
    /// The address the broker gives clients in metadata: `addr`, or a proxy in front of it.
    advertised: SocketAddr,
    /// Extra arguments of `tansu broker`.
    args: Vec<String>,
    child: Option<Child>,
}

fn tansu_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/provision-tansu");
    let output = Command::new(&script).output().expect("run scripts/provision-tansu");
    assert!(
        output.status.success(),
        "provisioning tansu failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

impl Tansu {
    /// Start a broker and wait until it accepts connections.
    pub fn start() -> Self {
        let addr = free_addr();
        Self::start_advertising(addr, addr)
    }

    /// Start a broker on `addr` that tells clients to connect to `advertised` (a proxy).
    pub fn start_advertising(addr: SocketAddr, advertised: SocketAddr) -> Self {
        let mut tansu = Self {
            addr,
            advertised,
            args: Vec::new(),
            child: None,
        };
        tansu.restart();
        tansu
    }

    /// Start a broker with extra arguments of `tansu broker` (`--authentication`, say).
    pub fn start_with(args: &[&str]) -> Self {
        let addr = free_addr();
        let mut tansu = Self {
            addr,
            advertised: addr,
            args: args.iter().map(ToString::to_string).collect(),
            child: None,
        };
        tansu.restart();
        tansu
    }

    /// (Re)start the broker process on the same port. Its storage is in memory.
    pub fn restart(&mut self) {
        let url = format!("tcp://{}", self.addr);
        let advertised = format!("tcp://{}", self.advertised);
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .args(&self.args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the broker process.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop the broker process without killing it (SIGSTOP): connections stay open and
    /// requests wait in the socket, as with a broker stuck in a long pause.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Let a frozen broker go on (SIGCONT); it then serves the requests that waited.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("tansu is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} tansu");
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// Create a topic through the admin API.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        create_topic_with(&config, name, partitions).await;
    }

    /// Delete a topic through the admin API.
    pub async fn delete_topic(&self, name: &str) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let results = admin
            .delete_topics(
                &[name],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("delete topic");
        for result in results {
            result.expect("topic deleted");
        }
    }
}

/// Create a topic through the admin API of a client built from `config` (for a broker
/// reached through TLS, say).
pub async fn create_topic_with(config: &ClientConfig, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A producer that waits for every acknowledgement.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Out {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub partition: Option<i32>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Out {
    pub fn keyed(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.into()),
            value: Some(value.into()),
            ..Self::default()
        }
    }
}

/// Produce records and wait until the broker has acknowledged all of them. Returns
/// (partition, offset) of each, in order.
pub async fn produce(producer: &FutureProducer, topic: &str, records: Vec<Out>) -> Vec<(i32, i64)> {
    let mut pending = Vec::with_capacity(records.len());
    for out in &records {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(key) = &out.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &out.value {
            record = record.payload(value.as_slice());
        }
        if let Some(partition) = out.partition {
            record = record.partition(partition);
        }
        if !out.headers.is_empty() {
            let mut headers = OwnedHeaders::new();
            for (name, value) in &out.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            record = record.headers(headers);
        }
        pending.push(producer.send_result(record).expect("queue a record"));
    }
    let mut positions = Vec::with_capacity(pending.len());
    for delivery in pending {
        let delivery = delivery.await.expect("delivery future").expect("record acknowledged");
        positions.push((delivery.partition, delivery.offset));
    }
    positions
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct In {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl In {
    /// The first header of this name, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Read every record of `topic` (partitions `0..partitions`) from the start, until at least
/// `expected` arrived and then nothing more for `quiet`, or `timeout` passed. Blocking: call
/// from `spawn_blocking`.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: i32, expected: usize, quiet: Duration) -> Vec<In> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    let mut out = Vec::new();
    while Instant::now() < deadline && (out.len() < expected || last.elapsed() < quiet) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(In {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}
