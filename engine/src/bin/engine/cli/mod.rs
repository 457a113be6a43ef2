//! Commands against a running engine's admin API: `calls`, `dead`, `stats`, `cluster`,
//! `invoke`. The answers are read as the typed contract of [`engine::api`]; `show` prints
//! them for a person.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use engine::api;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

mod show;
use show::{print_call, print_listing, print_stats};

/// Where the engine's admin API is.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Admin API of the engine.
    #[arg(long, global = true, env = "ENGINE_ADMIN", default_value_t = format!("http://{}", engine::config::DEFAULT_ADMIN_LISTEN))]
    pub admin: String,
    /// Bearer token, when the engine requires one.
    #[arg(long, global = true, env = "ENGINE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `engine calls ...`
#[derive(Debug, Subcommand)]
pub enum Calls {
    /// List calls, oldest first.
    List(ListArgs),
    /// One call with its attempts, and a workflow's journal and what it waits for.
    Show { id: String },
    /// Send a signal to a workflow: it is handed to its `wf.signal(NAME)` wait, or kept
    /// until the workflow asks for it.
    Signal {
        id: String,
        name: String,
        /// The payload, as JSON (default `null`).
        payload: Option<String>,
    },
    /// Complete an awakeable (the id a workflow's `wf.awakeable()` gave out) with a payload.
    Resolve {
        awakeable: String,
        /// The payload, as JSON (default `null`).
        payload: Option<String>,
    },
    /// Make a waiting call due now.
    Retry { id: String },
    /// Cancel a pending, running or dead call.
    Cancel { id: String },
    /// Run an ended call again (succeeded, dead, paused or cancelled). A workflow keeps
    /// the first FROM entries of its journal and runs the rest again; open children of the
    /// dropped entries are cancelled.
    Restart {
        id: String,
        /// Journal entries kept (`engine calls show` numbers them from 0).
        #[arg(long, default_value_t = 0)]
        from: u32,
    },
}

/// `engine dead ...`
#[derive(Debug, Subcommand)]
pub enum Dead {
    /// List dead letters.
    List(ListArgs),
    /// Give dead calls new attempts: the ids given, or all matching the filter.
    Redrive(Selection),
    /// Delete dead calls: the ids given, or all matching the filter.
    Purge(Selection),
}

/// Filters of a listing.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    subscription: Option<String>,
    /// pending, running, succeeded, dead, cancelled or paused.
    #[arg(long)]
    status: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Continue after this cursor (printed at the end of a full page).
    #[arg(long)]
    after: Option<i64>,
    /// Cluster mode: the calls of every member, merged (the first page of each).
    #[arg(long, conflicts_with_all = ["member", "after"])]
    group: bool,
    /// Cluster mode: the calls of this member (to page on after `--group`).
    #[arg(long)]
    member: Option<String>,
}

/// Which dead calls a bulk action applies to.
#[derive(Debug, Args)]
pub struct Selection {
    /// Call ids; without them, every dead call matching the filter.
    ids: Vec<String>,
    #[arg(long)]
    subscription: Option<String>,
    #[arg(long)]
    key: Option<String>,
    /// Required to act on every dead call of every subscription.
    #[arg(long)]
    all: bool,
    /// Cluster mode: act on the dead calls of every member.
    #[arg(long)]
    group: bool,
}

/// `engine invoke`
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The subscription whose target gets the call.
    subscription: String,
    /// The payload; without it, standard input is read.
    #[arg(long)]
    data: Option<String>,
    /// The call's key (orders it like a Kafka key).
    #[arg(long)]
    key: Option<String>,
}

struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    fn new(remote: &Remote) -> Self {
        Self {
            base: remote.admin.trim_end_matches('/').to_string(),
            token: remote.token.clone(),
            http: reqwest::Client::new(),
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if json {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "engine not reachable at {}: {e}\n(is `engine serve` running? set --admin or ENGINE_ADMIN)",
                self.base
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the engine's answer")?;
        if !status.is_success() {
            let error = serde_json::from_slice::<api::ErrorBody>(&bytes).map_or_else(
                |_| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
                |e| e.error,
            );
            bail!("{error}");
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the engine's answer to {path} is not what this command line expects (versions differ?): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(reqwest::Method::GET, path, None, false).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<T> {
        let json = body.is_some();
        self.send(
            reqwest::Method::POST,
            path,
            body.map(|b| b.to_string().into_bytes()),
            json,
        )
        .await
    }
}

fn query(args: &ListArgs) -> String {
    let mut parts = vec![format!("limit={}", args.limit)];
    for (name, value) in [
        ("subscription", &args.subscription),
        ("status", &args.status),
        ("key", &args.key),
    ] {
        if let Some(value) = value {
            parts.push(format!("{name}={}", sdk::protocol::encode_bytes(value.as_bytes())));
        }
    }
    if let Some(after) = args.after {
        parts.push(format!("after={after}"));
    }
    if args.group {
        parts.push("scope=group".into());
    }
    if let Some(member) = &args.member {
        parts.push(format!("member={}", sdk::protocol::encode_bytes(member.as_bytes())));
    }
    parts.join("&")
}

/// A signal's payload from the command line: JSON, `null` when absent.
fn json_payload(payload: Option<&str>) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(payload.unwrap_or("null"))
        .map_err(|e| anyhow::anyhow!("the payload must be JSON (a string is \"quoted\"): {e}"))
}

fn emit<T: Serialize>(remote: &Remote, value: &T, human: impl FnOnce(&T)) {
    if remote.json {
        outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        human(value);
    }
}

pub async fn calls(remote: Remote, command: Calls) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    match command {
        Calls::List(args) => {
            let list: api::CallList = client.get(&format!("/v1/calls?{}", query(&args))).await?;
            emit(&remote, &list, print_listing);
        }
        Calls::Show { id } => {
            let call: api::Call = client.get(&format!("/v1/calls/{id}")).await?;
            emit(&remote, &call, print_call);
        }
        Calls::Signal { id, name, payload } => {
            let body = json_payload(payload.as_deref())?;
            let name_in_path = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
            let sent: api::Signalled = client
                .post(&format!("/v1/calls/{id}/signals/{name_in_path}"), Some(body))
                .await?;
            emit(&remote, &sent, |s| {
                outln!("signal `{}` sent to call {}", s.signal, s.id);
            });
        }
        Calls::Resolve { awakeable, payload } => {
            let body = json_payload(payload.as_deref())?;
            let id = percent_encoding::utf8_percent_encode(&awakeable, percent_encoding::NON_ALPHANUMERIC);
            let sent: api::Signalled = client.post(&format!("/v1/awakeables/{id}"), Some(body)).await?;
            emit(&remote, &sent, |_| outln!("awakeable {awakeable} resolved"));
        }
        Calls::Retry { id } => {
            let call: api::Call = client.post(&format!("/v1/calls/{id}/retry"), None).await?;
            emit(&remote, &call, |c| outln!("call {} is due now", c.call.id));
        }
        Calls::Cancel { id } => {
            let call: api::Call = client.post(&format!("/v1/calls/{id}/cancel"), None).await?;
            emit(&remote, &call, |c| outln!("call {} is {}", c.call.id, c.call.status));
        }
        Calls::Restart { id, from } => {
            let call: api::Call = client
                .post(&format!("/v1/calls/{id}/restart?from={from}"), None)
                .await?;
            emit(&remote, &call, |c| {
                outln!(
                    "call {} is {} again, from journal entry {from}",
                    c.call.id,
                    c.call.status
                );
            });
        }
    }
    Ok(())
}

pub async fn dead(remote: Remote, command: Dead) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    let selection = |s: Selection| -> anyhow::Result<serde_json::Value> {
        if !s.ids.is_empty() {
            return Ok(json!({ "ids": s.ids }));
        }
        if s.subscription.is_none() && s.key.is_none() && !s.all {
            bail!("name call ids, or a filter (--subscription, --key), or --all for every dead call");
        }
        Ok(json!({ "subscription": s.subscription, "key": s.key }))
    };
    match command {
        Dead::List(mut args) => {
            args.status = None;
            let list: api::CallList = client.get(&format!("/v1/dead?{}", query(&args))).await?;
            emit(&remote, &list, print_listing);
        }
        Dead::Redrive(s) => {
            let scope = if s.group { "?scope=group" } else { "" };
            let done: api::Redriven = client
                .post(&format!("/v1/dead/redrive{scope}"), Some(selection(s)?))
                .await?;
            emit(&remote, &done, |d| {
                outln!("redrove {} dead call(s)", d.redriven);
                show::print_member_errors(&d.errors);
            });
        }
        Dead::Purge(s) => {
            let scope = if s.group { "?scope=group" } else { "" };
            let done: api::Purged = client
                .post(&format!("/v1/dead/purge{scope}"), Some(selection(s)?))
                .await?;
            emit(&remote, &done, |d| {
                outln!("purged {} dead call(s)", d.purged);
                show::print_member_errors(&d.errors);
            });
        }
    }
    Ok(())
}

pub async fn stats(remote: Remote, group: bool) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    if group {
        let stats: api::GroupStats = client.get("/v1/stats?scope=group").await?;
        emit(&remote, &stats, show::print_group_stats);
    } else {
        let stats: api::Stats = client.get("/v1/stats").await?;
        emit(&remote, &stats, print_stats);
    }
    Ok(())
}

pub async fn cluster(remote: Remote) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    let view: api::ClusterView = client.get("/v1/cluster").await?;
    emit(&remote, &view, show::print_cluster);
    Ok(())
}

pub async fn invoke(remote: Remote, args: InvokeArgs) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    let body = if let Some(data) = args.data {
        data.into_bytes()
    } else {
        use std::io::Read as _;
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        buf
    };
    let mut path = format!("/v1/subscriptions/{}/calls", args.subscription);
    if let Some(key) = args.key {
        let _ = write!(path, "?key={}", sdk::protocol::encode_bytes(key.as_bytes()));
    }
    let created: api::Enqueued = client.send(reqwest::Method::POST, &path, Some(body), false).await?;
    emit(&remote, &created, |c| outln!("call {} is {}", c.id, c.status));
    Ok(())
}
