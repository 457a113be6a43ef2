//! The admin HTTP API (JSON, versioned under `/v1`). Binds to loopback by default; with a
//! token configured, every `/v1` request needs `Authorization: Bearer <token>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::SubscriptionConfig;
use crate::ingest::{new_call, persist, Record};
use crate::model::{CallView, Inserted};
use crate::scheduler::SchedulerStats;
use crate::store::{StatusCounts, Store, StoreError};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Store,
    pub subscriptions: Arc<HashMap<String, Arc<SubscriptionConfig>>>,
    pub schedulers: Arc<HashMap<String, Arc<SchedulerStats>>>,
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    pub token: Option<Arc<str>>,
}

/// The API's router.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/subscriptions/{name}/calls", post(enqueue))
        .route("/calls/{id}", get(show_call))
        .route("/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
        )
        .nest("/v1", v1)
        .with_state(state)
}

/// An API error: a status and a message, as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(token.as_ref()) {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        }
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    /// The call's key (UTF-8 text); used for ordering like a Kafka key.
    key: Option<String>,
}

async fn enqueue(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(query): Query<EnqueueQuery>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let subscription = state
        .subscriptions
        .get(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown subscription `{name}`")))?;
    let call = new_call(
        subscription,
        Record {
            value: Some(body.to_vec()),
            key: query.key.map(String::into_bytes),
            headers: None,
            source: None,
        },
    );
    let dead = call.dead_reason.is_some();
    let stats = state.schedulers.get(&name).cloned().unwrap_or_default();
    let inserted = persist(&state.store, &stats, vec![call]).await?;
    match inserted.first() {
        Some(Inserted::New(id)) => Ok((
            StatusCode::CREATED,
            Json(json!({ "id": id, "status": if dead { "dead" } else { "pending" } })),
        )),
        _ => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the call was not created".into(),
        )),
    }
}

async fn show_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("`{id}` is not a call id (a UUID)")))?;
    let call = state
        .store
        .call(id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no call with id {id}")))?;
    Ok(Json(call_json(&call)))
}

/// A call as JSON; bytes are shown as text when they are UTF-8, else percent-encoded.
pub fn call_json(call: &CallView) -> Value {
    let mut value = serde_json::to_value(call).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.insert("payload".into(), bytes_json(Some(&call.payload)));
        map.insert("key".into(), bytes_json(call.key.as_deref()));
        map.insert("output".into(), bytes_json(call.output.as_deref()));
    }
    value
}

fn bytes_json(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => json!({ "encoding": "utf8", "data": text }),
            Err(_) => json!({ "encoding": "percent", "data": sdk::protocol::encode_bytes(bytes) }),
        },
    }
}

async fn stats(State(state): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let counts = state.store.counts().await?;
    let mut total = StatusCounts::default();
    let mut subscriptions = BTreeMap::new();
    for name in state.subscriptions.keys().chain(counts.keys()) {
        let c = counts.get(name).copied().unwrap_or_default();
        let mut entry = serde_json::to_value(c).unwrap_or_default();
        if let (Value::Object(map), Some(s)) = (&mut entry, state.schedulers.get(name)) {
            map.insert("in_flight".into(), s.in_flight.load(Relaxed).into());
            map.insert("waiting_retry".into(), s.waiting_retry.load(Relaxed).into());
            map.insert("in_memory".into(), s.in_memory.load(Relaxed).into());
        }
        subscriptions.insert(name.clone(), entry);
    }
    for c in counts.values() {
        total.pending += c.pending;
        total.running += c.running;
        total.succeeded += c.succeeded;
        total.dead += c.dead;
        total.cancelled += c.cancelled;
    }
    let mut body = serde_json::to_value(total).unwrap_or_default();
    if let Value::Object(map) = &mut body {
        map.insert(
            "subscriptions".into(),
            serde_json::to_value(subscriptions).unwrap_or_default(),
        );
        let endpoints: BTreeMap<_, _> = state
            .endpoints
            .all()
            .map(|(key, e)| (key.clone(), e.snapshot()))
            .collect();
        map.insert("endpoints".into(), serde_json::to_value(endpoints).unwrap_or_default());
    }
    Ok(Json(body))
}

/// Prometheus text exposition of the live figures.
async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let label = |k: &str, v: &str| format!("{{{k}=\"{}\"}}", v.replace('\\', "\\\\").replace('"', "\\\""));
    let subs: Vec<_> = {
        let mut subs: Vec<_> = state.schedulers.iter().collect();
        subs.sort_by(|a, b| a.0.cmp(b.0));
        subs
    };
    let per_sub = |f: &dyn Fn(&SchedulerStats) -> f64| -> Vec<(String, f64)> {
        subs.iter()
            .map(|(name, s)| (label("subscription", name), f(s)))
            .collect()
    };
    family(
        "engine_calls_created_total",
        "counter",
        "Calls created from records or the API.",
        per_sub(&|s| s.ingested.load(Relaxed) as f64),
    );
    family(
        "engine_calls_succeeded_total",
        "counter",
        "Calls that succeeded.",
        per_sub(&|s| s.succeeded.load(Relaxed) as f64),
    );
    family(
        "engine_calls_dead_total",
        "counter",
        "Calls that went dead.",
        per_sub(&|s| s.dead.load(Relaxed) as f64),
    );
    family(
        "engine_attempts_retried_total",
        "counter",
        "Attempts that failed temporarily.",
        per_sub(&|s| s.retried.load(Relaxed) as f64),
    );
    family(
        "engine_backlog",
        "gauge",
        "Calls pending or running.",
        per_sub(&|s| s.open.load(Relaxed) as f64),
    );
    family(
        "engine_in_flight",
        "gauge",
        "Attempts in flight.",
        per_sub(&|s| s.in_flight.load(Relaxed) as f64),
    );
    let mut endpoints: Vec<_> = state.endpoints.all().map(|(k, e)| (k.clone(), e.snapshot())).collect();
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    let per_endpoint = |f: &dyn Fn(&crate::endpoints::EndpointStats) -> f64| -> Vec<(String, f64)> {
        endpoints.iter().map(|(k, e)| (label("endpoint", k), f(e))).collect()
    };
    family(
        "engine_endpoint_concurrency_limit",
        "gauge",
        "Current adaptive concurrency limit.",
        per_endpoint(&|e| e.limit as f64),
    );
    family(
        "engine_endpoint_in_flight",
        "gauge",
        "Attempts in flight to the endpoint.",
        per_endpoint(&|e| e.in_flight as f64),
    );
    family(
        "engine_endpoint_limit_raises_total",
        "counter",
        "Times the limit went up.",
        per_endpoint(&|e| e.raises as f64),
    );
    family(
        "engine_endpoint_limit_cuts_total",
        "counter",
        "Times the limit was cut.",
        per_endpoint(&|e| e.cuts as f64),
    );
    let writer = state.store.writer_stats();
    family(
        "engine_store_commits_total",
        "counter",
        "Store transactions committed.",
        vec![(String::new(), writer.commits.load(Relaxed) as f64)],
    );
    family(
        "engine_store_rows_total",
        "counter",
        "Changes committed (rows per commit = rows / commits).",
        vec![(String::new(), writer.rows.load(Relaxed) as f64)],
    );
    family(
        "engine_store_commit_seconds_total",
        "counter",
        "Time spent committing.",
        vec![(String::new(), writer.commit_micros.load(Relaxed) as f64 / 1e6)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
