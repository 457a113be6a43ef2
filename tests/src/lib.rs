//! Helpers for the integration suite: real HTTP targets on 127.0.0.1, the engine binary,
//! a Tansu broker ([`kafka`]),
//! admin API calls, and waiting on conditions.

pub mod config;
pub mod kafka;
pub mod tls;
pub mod unkind;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sdk::protocol::header;
use serde_json::Value;

/// One request a [`Target`] received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub call_id: String,
    pub attempt: u32,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When the request arrived.
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a [`Target`] answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16, &'static str),
    /// A status with a `Retry-After` header.
    RetryAfter(u16, &'static str),
    /// Wait this long before answering 200.
    Hang(Duration),
    /// 200 with a body of this many bytes.
    Large(usize),
}

type Behaviour = dyn Fn(&Seen) -> Reply + Send + Sync;

#[derive(Clone)]
struct TargetState {
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Behaviour>,
}

/// A real HTTP target on 127.0.0.1 that records every request and answers as told.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    /// Start on a free port.
    pub async fn start(behaviour: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// Start on a given address (to bring a target "back up" where the engine expects it).
    pub async fn start_on(addr: SocketAddr, behaviour: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind target");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = TargetState {
            seen: Arc::clone(&seen),
            behaviour: Arc::new(behaviour),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Self { addr, seen, task }
    }

    /// The URL to configure as a subscription target.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The bodies received so far, as text, sorted.
    pub fn bodies_sorted(&self) -> Vec<String> {
        let mut bodies: Vec<String> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|seen| String::from_utf8_lossy(&seen.body).into_owned())
            .collect();
        bodies.sort();
        bodies
    }
}

/// A call for the record at `offset` of topic `t`, partition 0, in subscription `s`, for
/// tests that write to a store directly.
pub fn record_call(offset: i64) -> engine::model::NewCall {
    engine::model::NewCall {
        subscription: "s".into(),
        target: "http://127.0.0.1:1/".into(),
        payload: b"v".to_vec(),
        tombstone: false,
        key: None,
        headers: None,
        source: Some(engine::model::KafkaSource {
            topic: "t".into(),
            partition: 0,
            offset,
            timestamp: None,
        }),
        ordering_key: None,
        dead_reason: None,
        block_group_if_dead: false,
        idempotency_key: None,
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(state): State<TargetState>, headers: HeaderMap, body: Bytes) -> Response {
    let seen = Seen {
        call_id: headers
            .get(header::CALL_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        attempt: headers
            .get(header::ATTEMPT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let reply = (state.behaviour)(&seen);
    state.seen.lock().unwrap().push(seen);
    match reply {
        Reply::Status(code, text) => (StatusCode::from_u16(code).unwrap(), text).into_response(),
        Reply::RetryAfter(code, after) => {
            (StatusCode::from_u16(code).unwrap(), [("retry-after", after)], "later").into_response()
        }
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            (StatusCode::OK, "late").into_response()
        }
        Reply::Large(bytes) => (StatusCode::OK, vec![b'x'; bytes]).into_response(),
    }
}

/// A loopback address with a port that nothing listens on (for "target is down").
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Poll `condition` every 20 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client for a running engine's admin API.
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    /// A client that sends `Authorization: Bearer <token>`.
    pub fn with_token(addr: SocketAddr, token: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("token header"),
        );
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("client"),
        }
    }

    /// Enqueue a call directly; returns its id.
    pub async fn enqueue(&self, subscription: &str, body: &[u8], key: Option<&str>) -> String {
        let mut url = format!("{}/v1/subscriptions/{subscription}/calls", self.base);
        if let Some(key) = key {
            url = format!("{url}?key={key}");
        }
        let response = self.http.post(url).body(body.to_vec()).send().await.expect("enqueue");
        assert_eq!(response.status(), 201, "enqueue failed: {:?}", response.text().await);
        let value: Value = response.json().await.unwrap();
        value["id"].as_str().unwrap().to_string()
    }

    /// One call with its history.
    pub async fn call(&self, id: &str) -> Value {
        self.get(&format!("/v1/calls/{id}")).await
    }

    /// The status of one call.
    pub async fn status(&self, id: &str) -> String {
        self.call(id).await["status"].as_str().unwrap_or_default().to_string()
    }

    /// Wait (up to 20 s) until a call has this status.
    pub async fn wait_status(&self, id: &str, status: &str) {
        wait_for(
            &format!("call {id} to be {status}"),
            Duration::from_secs(20),
            || async { self.status(id).await == status },
        )
        .await;
    }

    /// `/v1/stats`.
    pub async fn stats(&self) -> Value {
        self.get("/v1/stats").await
    }

    /// `/metrics`, as Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    /// `/v1/stats`, or `None` while the engine does not answer yet.
    pub async fn try_stats(&self) -> Option<Value> {
        let response = self.http.get(format!("{}/v1/stats", self.base)).send().await.ok()?;
        response.json().await.ok()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    /// POST `body` (JSON) to `path`: the status and the response text.
    pub async fn post(&self, path: &str, body: Value) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("admin request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Whether the API answers at all.
    pub async fn is_up(&self) -> bool {
        self.http.get(format!("{}/healthz", self.base)).send().await.is_ok()
    }
}

/// The `engine` binary of this workspace, built on first use.
pub fn engine_binary() -> PathBuf {
    workspace_binary("engine")
}

/// A binary of this workspace (package and binary share the name), built on first use.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    // target/<profile>/deps/<test> (or target/<profile>/<bench>) -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let mut profile_dir = exe.parent().unwrap().to_path_buf();
    if profile_dir.ends_with("deps") {
        profile_dir.pop();
    }
    let mut built = BUILT.get_or_init(Mutex::default).lock().unwrap();
    if !built.contains(name) {
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", name, "--bin", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        built.insert(name.to_string());
    }
    profile_dir.join(name)
}

/// Start an engine in-process on a SQLite file in `dir`, with `subscription` (see
/// [`test_subscription`]).
pub async fn start_engine(dir: &tempfile::TempDir, subscription: config::Subscription) -> (engine::Engine, Admin) {
    let engine = engine::Engine::start(test_config(dir.path(), subscription).build())
        .await
        .unwrap();
    let admin = Admin::new(engine.admin_addr());
    (engine, admin)
}

/// Start `engine serve --config <config>` as a process (logs at warn, or at
/// `ENGINE_TEST_LOG` when set, to stderr, each line headed by the engine's pid so that the
/// logs of several engines can be told apart).
pub fn spawn_engine(config: &std::path::Path) -> Proc {
    let mut child = std::process::Command::new(engine_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "ENGINE_LOG",
            std::env::var("ENGINE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn engine");
    let (pid, stderr) = (child.id(), child.stderr.take().expect("piped stderr"));
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[engine {pid}] {line}");
        }
    });
    Proc(child)
}

/// A subscription named `test` delivering to `target`.
pub fn test_subscription(target: &str) -> config::Subscription {
    config::Subscription::new("test", target)
}

/// A config with a store in `dir` and `subscription`.
pub fn test_config(dir: &std::path::Path, subscription: config::Subscription) -> config::EngineConfig {
    config::EngineConfig::new(dir.join("engine.db")).subscription(subscription)
}

/// The value of one series (name with its labels, exactly as exposed) in Prometheus text.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A child process killed on drop, so that a failing test leaves nothing running (an
/// orphan would also hold the test's output pipes open).
#[derive(Debug)]
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL (a crash: nothing is flushed or closed), then wait for it to be gone.
    pub fn crash(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.0.id());
        self.0.wait().expect("wait for the process")
    }

    /// SIGSTOP: the process is frozen (a long GC pause, a stalled VM) until [`Proc::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", self.0.id());
    }

    /// SIGTERM, then wait.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}
/// Resident set size and its peak, in MiB.
pub fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}
