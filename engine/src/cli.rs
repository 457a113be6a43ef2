//! Commands against a running engine's admin API: `calls`, `dead`, `stats`, `invoke`.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the engine's admin API is.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// Admin API of the engine.
    #[arg(long, global = true, env = "ENGINE_ADMIN", default_value = "http://127.0.0.1:8680")]
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
    /// One call with its attempts.
    Show { id: String },
    /// Make a waiting call due now.
    Retry { id: String },
    /// Cancel a pending, running or dead call.
    Cancel { id: String },
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
    /// pending, running, succeeded, dead or cancelled.
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

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        json: bool,
    ) -> anyhow::Result<Value> {
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
        let value: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }));
        if !status.is_success() {
            bail!("{}", value["error"].as_str().unwrap_or(&format!("HTTP {status}")));
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None, false).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
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

fn time(millis: &Value) -> String {
    millis.as_i64().map_or_else(
        || "-".into(),
        |ms| {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(map) if map.contains_key("data") => map["data"].as_str().unwrap_or("-").to_string(),
        other => other.to_string(),
    }
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

fn print_listing(value: &Value) {
    let rows: Vec<Vec<String>> = value["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let mut error = text(&c["last_error"]);
                    if error.chars().count() > 60 {
                        error = error.chars().take(57).collect::<String>() + "...";
                    }
                    vec![
                        text(&c["id"]),
                        text(&c["subscription"]),
                        text(&c["status"]),
                        c["attempts"].to_string(),
                        text(&c["key"]),
                        time(&c["created_at"]),
                        error,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
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
    if let Some(next) = value["next"].as_i64() {
        outln!("(more: --after {next})");
    }
}

fn print_call(call: &Value) {
    outln!("call {}", text(&call["id"]));
    for (label, field) in [
        ("subscription", "subscription"),
        ("target", "target"),
        ("status", "status"),
        ("last error", "last_error"),
    ] {
        outln!("  {label:<13} {}", text(&call[field]));
    }
    outln!("  {:<13} {}", "attempts", call["attempts"]);
    outln!("  {:<13} {}", "key", text(&call["key"]));
    outln!("  {:<13} {}", "created", time(&call["created_at"]));
    outln!("  {:<13} {}", "next attempt", time(&call["next_attempt_at"]));
    if let Some(source) = call["source"].as_object() {
        outln!(
            "  {:<13} {}/{} offset {}",
            "kafka",
            text(&source["topic"]),
            source["partition"],
            source["offset"]
        );
    }
    outln!("  {:<13} {}", "output", text(&call["output"]));
    let rows: Vec<Vec<String>> = call["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|a| {
                    vec![
                        a["attempt"].to_string(),
                        time(&a["started_at"]),
                        format!("{} ms", a["duration_ms"]),
                        text(&a["outcome"]),
                        text(&a["http_status"]),
                        text(&a["error"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    outln!();
    out!(
        "{}",
        table(&["ATTEMPT", "STARTED", "DURATION", "OUTCOME", "HTTP", "ERROR"], &rows)
    );
}

/// Calls per second as shown in tables, or `-` when unknown.
fn rate(value: &Value) -> String {
    value.as_f64().map_or_else(|| "-".into(), |r| format!("{r:.1}"))
}

/// The lag summed over partitions, or `-` for a subscription without a Kafka source.
fn total_lag(value: &Value) -> String {
    value.as_array().map_or_else(
        || "-".into(),
        |partitions| {
            partitions
                .iter()
                .filter_map(|p| p["lag"].as_i64())
                .sum::<i64>()
                .to_string()
        },
    )
}

fn print_stats(stats: &Value) {
    let statuses = ["pending", "running", "succeeded", "dead", "cancelled"];
    let mut rows: Vec<Vec<String>> = stats["subscriptions"]
        .as_object()
        .map(|subs| {
            subs.iter()
                .map(|(name, s)| {
                    std::iter::once(name.clone())
                        .chain(statuses.iter().map(|k| s[*k].to_string()))
                        .chain([rate(&s["throughput"]["finished_per_second"]), total_lag(&s["lag"])])
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    rows.push(
        std::iter::once("(all)".to_string())
            .chain(statuses.iter().map(|k| stats[*k].to_string()))
            .chain([String::new(), String::new()])
            .collect(),
    );
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
                "DONE/S (1M)",
                "LAG"
            ],
            &rows
        )
    );
    let lag: Vec<Vec<String>> = stats["subscriptions"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(name, s)| {
            s["lag"].as_array().into_iter().flatten().map(move |p| {
                vec![
                    name.clone(),
                    format!("{}/{}", p["topic"].as_str().unwrap_or("?"), p["partition"]),
                    p["high_watermark"].to_string(),
                    p["committed"].to_string(),
                    p["lag"].to_string(),
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
    let endpoints: Vec<Vec<String>> = stats["endpoints"]
        .as_object()
        .map(|e| {
            e.iter()
                .map(|(name, e)| {
                    let last = e["recent_changes"]
                        .as_array()
                        .and_then(|c| c.iter().rev().find(|c| c["reason"] != "raise"))
                        .map_or_else(
                            || "-".to_string(),
                            |c| format!("{} -> {}: {}", c["from"], c["to"], c["detail"].as_str().unwrap_or("")),
                        );
                    vec![
                        name.clone(),
                        e["limit"].to_string(),
                        e["in_flight"].to_string(),
                        e["cuts"].to_string(),
                        last,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !endpoints.is_empty() {
        outln!();
        out!(
            "{}",
            table(&["ENDPOINT", "LIMIT", "IN FLIGHT", "CUTS", "LAST DECISION"], &endpoints)
        );
    }
}

fn emit(remote: &Remote, value: &Value, human: impl FnOnce(&Value)) {
    if remote.json {
        outln!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        human(value);
    }
}

pub async fn calls(remote: Remote, command: Calls) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    match command {
        Calls::List(args) => emit(
            &remote,
            &client.get(&format!("/v1/calls?{}", query(&args))).await?,
            print_listing,
        ),
        Calls::Show { id } => emit(&remote, &client.get(&format!("/v1/calls/{id}")).await?, print_call),
        Calls::Retry { id } => emit(
            &remote,
            &client.post(&format!("/v1/calls/{id}/retry"), None).await?,
            |c| {
                outln!("call {} is due now", text(&c["id"]));
            },
        ),
        Calls::Cancel { id } => emit(
            &remote,
            &client.post(&format!("/v1/calls/{id}/cancel"), None).await?,
            |c| {
                outln!("call {} is {}", text(&c["id"]), text(&c["status"]));
            },
        ),
    }
    Ok(())
}

pub async fn dead(remote: Remote, command: Dead) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    let selection = |s: Selection| -> anyhow::Result<Value> {
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
            emit(
                &remote,
                &client.get(&format!("/v1/dead?{}", query(&args))).await?,
                print_listing,
            );
        }
        Dead::Redrive(s) => emit(
            &remote,
            &client.post("/v1/dead/redrive", Some(selection(s)?)).await?,
            |v| {
                outln!("redrove {} dead call(s)", v["redriven"]);
            },
        ),
        Dead::Purge(s) => emit(
            &remote,
            &client.post("/v1/dead/purge", Some(selection(s)?)).await?,
            |v| {
                outln!("purged {} dead call(s)", v["purged"]);
            },
        ),
    }
    Ok(())
}

pub async fn stats(remote: Remote) -> anyhow::Result<()> {
    let client = Client::new(&remote);
    emit(&remote, &client.get("/v1/stats").await?, print_stats);
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
    let created = client.send(reqwest::Method::POST, &path, Some(body), false).await?;
    emit(&remote, &created, |c| {
        outln!("call {} is {}", text(&c["id"]), text(&c["status"]));
    });
    Ok(())
}
