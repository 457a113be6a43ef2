//! Commands against a running engine's admin API: `calls`, `dead`, `stats`, `invoke`. The
//! answers are read as the typed contract of [`engine::api`].

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use engine::api::{self, Bytes, Millis};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

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
    parts.join("&")
}

fn time(millis: Option<Millis>) -> String {
    /// The end of 9999-12-31: later is a wait only an event ends.
    const LAST: Millis = 253_402_300_799_999;
    millis.map_or_else(
        || "-".into(),
        |ms| {
            if ms > LAST {
                return "never (when what it waits for happens)".into();
            }
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    )
}

fn text(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

fn bytes(value: Option<&Bytes>) -> String {
    text(value.map(Bytes::as_text))
}

/// Render rows as an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn print_listing(list: &api::CallList) {
    let rows: Vec<Vec<String>> = list
        .calls
        .iter()
        .map(|c| {
            let mut error = text(c.call.last_error.as_deref());
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            vec![
                c.call.id.to_string(),
                c.call.subscription.clone(),
                c.call.status.to_string(),
                c.call.attempts.to_string(),
                bytes(c.key.as_ref()),
                time(Some(c.call.created_at)),
                error,
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "ID",
                "SUBSCRIPTION",
                "STATUS",
                "ATTEMPTS",
                "KEY",
                "CREATED",
                "LAST ERROR"
            ],
            &rows
        )
    );
    if let Some(next) = list.next {
        outln!("(more: --after {next})");
    }
}

fn print_call(call: &api::Call) {
    outln!("call {}", call.call.id);
    outln!("  {:<13} {}", "subscription", call.call.subscription);
    outln!("  {:<13} {}", "target", call.call.target);
    outln!("  {:<13} {}", "status", call.call.status);
    outln!("  {:<13} {}", "last error", text(call.call.last_error.as_deref()));
    outln!("  {:<13} {}", "attempts", call.call.attempts);
    outln!("  {:<13} {}", "key", bytes(call.key.as_ref()));
    outln!("  {:<13} {}", "created", time(Some(call.call.created_at)));
    outln!("  {:<13} {}", "next attempt", time(call.call.next_attempt_at));
    if let Some(source) = &call.call.source {
        outln!(
            "  {:<13} {}/{} offset {}",
            "kafka",
            source.topic,
            source.partition,
            source.offset
        );
    }
    outln!("  {:<13} {}", "output", bytes(call.output.as_ref()));
    if let Some(parent) = &call.call.parent {
        outln!("  {:<13} workflow {} entry #{}", "child of", parent.id, parent.position);
    }
    if let Some(deployment) = &call.call.deployment {
        outln!(
            "  {:<13} {deployment} (pinned: only it may answer this workflow)",
            "deployment"
        );
    }
    print_journal(call);
    let rows: Vec<Vec<String>> = call
        .call
        .history
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                time(Some(a.started_at)),
                format!("{} ms", a.duration_ms),
                a.outcome.clone(),
                text(a.http_status.map(|s| s.to_string()).as_deref()),
                text(a.error.as_deref()),
            ]
        })
        .collect();
    outln!();
    out!(
        "{}",
        table(&["ATTEMPT", "STARTED", "DURATION", "OUTCOME", "HTTP", "ERROR"], &rows)
    );
}

/// A signal's payload from the command line: JSON, `null` when absent.
fn json_payload(payload: Option<&str>) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(payload.unwrap_or("null"))
        .map_err(|e| anyhow::anyhow!("the payload must be JSON (a string is \"quoted\"): {e}"))
}

/// A workflow's journal, an entry a line, and what it waits for.
fn print_journal(call: &api::Call) {
    if call.call.journal.is_empty() {
        return;
    }
    let waited: Vec<u64> = call
        .call
        .waiting_for
        .as_ref()
        .and_then(|w| w.get("any_of"))
        .and_then(serde_json::Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .filter_map(serde_json::Value::as_array)
                .flatten()
                .filter_map(serde_json::Value::as_u64)
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = call
        .call
        .journal
        .iter()
        .enumerate()
        .map(|(position, entry)| {
            let (what, state) = describe_entry(entry);
            let marker = if waited.contains(&(position as u64)) {
                " <- waits"
            } else {
                ""
            };
            vec![format!("#{position}"), what, format!("{state}{marker}")]
        })
        .collect();
    outln!();
    out!("{}", table(&["ENTRY", "WHAT", "STATE"], &rows));
    if let Some(groups) = call.call.waiting_for.as_ref().and_then(|w| w.get("any_of")) {
        outln!("waiting for: {groups} (any group, all of its entries)");
    }
}

/// An entry's kind and name, and its state, in words.
fn describe_entry(entry: &serde_json::Value) -> (String, String) {
    use sdk::workflow::Entry;
    let short = |v: &serde_json::Value| {
        let text = v.to_string();
        if text.chars().count() > 60 {
            format!("{}...", text.chars().take(57).collect::<String>())
        } else {
            text
        }
    };
    let outcome = |ok: &Option<serde_json::Value>, error: &Option<String>, at: Option<i64>| {
        let when = at.map_or(String::new(), |at| format!(" at {}", time(Some(at))));
        match (ok, error) {
            (_, Some(error)) => format!("failed{when}: {error}"),
            (Some(ok), None) => format!("ok{when} {}", short(ok)),
            (None, None) => "open".to_string(),
        }
    };
    match serde_json::from_value::<Entry>(entry.clone()) {
        Ok(Entry::Step { name, ok, error }) => (format!("step {name}"), outcome(&ok, &error, None)),
        Ok(Entry::Sleep { wake_at, .. }) => (
            "sleep".into(),
            wake_at.map_or("wake time not set".into(), |at| format!("until {}", time(Some(at)))),
        ),
        Ok(Entry::Now { value }) => ("now".into(), time(Some(value))),
        Ok(Entry::Call {
            target,
            id,
            ok,
            error,
            at,
            ..
        }) => (
            format!("call {target} {}", id.unwrap_or_default()),
            outcome(&ok, &error, at),
        ),
        Ok(Entry::Signal { name, ok, at }) => (format!("signal {name}"), outcome(&ok, &None, at)),
        Ok(Entry::Produce { topic, key, .. }) => (
            format!(
                "produce to {topic}{}",
                key.map_or(String::new(), |k| format!(" key {k}"))
            ),
            "stored".into(),
        ),
        Ok(Entry::Patch { id }) => (format!("patch {id}"), "this run follows the patched code".into()),
        Err(_) => (short(entry), String::new()),
    }
}

fn counts_row(name: &str, c: &api::StatusCounts) -> Vec<String> {
    std::iter::once(name.to_string())
        .chain([c.pending, c.running, c.succeeded, c.dead, c.cancelled, c.paused].map(|n| n.to_string()))
        .collect()
}

fn print_stats(stats: &api::Stats) {
    let mut rows: Vec<Vec<String>> = stats
        .subscriptions
        .iter()
        .map(|(name, s)| {
            let mut row = counts_row(name, &s.calls);
            let live = s.live.as_ref();
            row.push(live.map_or_else(|| "-".into(), |l| format!("{:.1}", l.throughput.finished_per_second)));
            row.push(
                live.and_then(|l| l.lag.as_ref())
                    .map_or_else(|| "-".into(), |lag| lag.iter().map(|p| p.lag).sum::<i64>().to_string()),
            );
            row
        })
        .collect();
    let mut all = counts_row("(all)", &stats.calls);
    all.extend([String::new(), String::new()]);
    rows.push(all);
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "DEAD",
                "CANCELLED",
                "PAUSED",
                "DONE/S (1M)",
                "LAG"
            ],
            &rows
        )
    );
    let lag: Vec<Vec<String>> = stats
        .subscriptions
        .iter()
        .flat_map(|(name, s)| {
            let partitions = s.live.as_ref().and_then(|l| l.lag.clone()).unwrap_or_default();
            partitions.into_iter().map(move |p| {
                vec![
                    name.clone(),
                    format!("{}/{}", p.topic, p.partition),
                    p.high_watermark.to_string(),
                    p.committed.map_or_else(|| "-".into(), |c| c.to_string()),
                    p.lag.to_string(),
                ]
            })
        })
        .collect();
    if !lag.is_empty() {
        outln!();
        out!(
            "{}",
            table(
                &["SUBSCRIPTION", "PARTITION", "HIGH WATERMARK", "COMMITTED", "LAG"],
                &lag
            )
        );
    }
    for (name, s) in &stats.subscriptions {
        let live = s.live.as_ref();
        if live.and_then(|l| l.kafka_down) == Some(true) {
            outln!("\n{name}: every Kafka broker is down; consumption waits");
        }
        if let Some(error) = live.and_then(|l| l.kafka_error.as_ref()) {
            outln!("\n{name}: Kafka: {error}");
        }
    }
    let endpoints: Vec<Vec<String>> = stats
        .endpoints
        .iter()
        .map(|(name, e)| {
            let last = e
                .recent_changes
                .iter()
                .rev()
                .find(|c| c.reason != "raise")
                .map_or_else(|| "-".to_string(), |c| format!("{} -> {}: {}", c.from, c.to, c.detail));
            vec![
                name.clone(),
                e.limit.to_string(),
                e.in_flight.to_string(),
                e.cuts.to_string(),
                last,
            ]
        })
        .collect();
    if !endpoints.is_empty() {
        outln!();
        out!(
            "{}",
            table(&["ENDPOINT", "LIMIT", "IN FLIGHT", "CUTS", "LAST DECISION"], &endpoints)
        );
    }
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
            let done: api::Redriven = client.post("/v1/dead/redrive", Some(selection(s)?)).await?;
            emit(&remote, &done, |d| outln!("redrove {} dead call(s)", d.redriven));
        }
        Dead::Purge(s) => {
            let done: api::Purged = client.post("/v1/dead/purge", Some(selection(s)?)).await?;
            emit(&remote, &done, |d| outln!("purged {} dead call(s)", d.purged));
        }
    }
    Ok(())
}

pub async fn stats(remote: Remote) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    let stats: api::Stats = client.get("/v1/stats").await?;
    emit(&remote, &stats, print_stats);
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
