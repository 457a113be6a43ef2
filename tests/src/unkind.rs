//! The unkind target (`tests/targets/unkind.py`): a threaded Python HTTP server with
//! jitter, random 5xx, a capacity, load-dependent latency and phases, started as a process;
//! and other Python targets of `tests/targets` (the workflow handler `workflow.py`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running unkind target; killed on drop.
#[derive(Debug)]
pub struct UnkindTarget {
    pub addr: SocketAddr,
    child: Child,
}

impl UnkindTarget {
    /// Start the target with `args` (its command-line options) on a free port, and wait
    /// until it answers.
    pub async fn start(args: &[&str]) -> Self {
        Self::start_script("unkind.py", args).await
    }

    /// Start another script of `tests/targets` (one that also answers `GET /stats`).
    pub async fn start_script(name: &str, args: &[&str]) -> Self {
        let addr = crate::free_addr();
        let script = format!("{}/targets/{name}", env!("CARGO_MANIFEST_DIR"));
        let child = Command::new("python3")
            .arg(script)
            .args(["--listen", &addr.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the unkind target");
        let target = Self { addr, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while target.try_stats().await.is_none() {
            assert!(Instant::now() < deadline, "the unkind target did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        target
    }

    /// A URL on the target (any path is served).
    pub fn url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    /// What it received so far (see the script's documentation).
    pub async fn stats(&self) -> Value {
        self.try_stats().await.expect("unkind target stats")
    }

    async fn try_stats(&self) -> Option<Value> {
        let response = reqwest::get(format!("http://{}/stats", self.addr)).await.ok()?;
        response.json().await.ok()
    }
}

impl Drop for UnkindTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Store `calls` calls for `subscription` before an engine starts on `db`: keyed over
/// `keys` keys and ordered per key, each with the payload `k<key>:<n>` that the unkind
/// target reads to check per-key order.
pub async fn store_keyed_backlog(
    db: &std::path::Path,
    subscription: &str,
    url: &str,
    calls: usize,
    keys: usize,
) -> anyhow::Result<()> {
    use engine::model::NewCall;
    use engine::store::{Store, StoreOptions};

    let store = Store::open(db, StoreOptions::default())?;
    for chunk in (0..calls).collect::<Vec<_>>().chunks(5000) {
        let batch = chunk
            .iter()
            .map(|&n| {
                let key = format!("k{}", n % keys).into_bytes();
                NewCall {
                    subscription: subscription.into(),
                    target: url.to_string(),
                    payload: format!("k{}:{n}", n % keys).into_bytes(),
                    tombstone: false,
                    key: Some(key.clone()),
                    headers: None,
                    source: None,
                    ordering_key: Some(key),
                    dead_reason: None,
                    block_group_if_dead: false,
                    idempotency_key: None,
                }
            })
            .collect();
        store.insert(batch).await?;
    }
    store.close();
    Ok(())
}
