//! The admin HTTP API (JSON, versioned under `/v1`). Binds to loopback by default; with a
//! token configured, every `/v1` request needs `Authorization: Bearer <token>`.
//!
//! - this module: routes, auth, calls, dead letters, stats;
//! - `metrics`: `/metrics` in Prometheus text format;
//! - `dashboard`: the embedded web dashboard at `/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

mod dashboard;
mod metrics;

use crate::config::SubscriptionConfig;
use crate::ingest::{new_call, persist, Record};
use crate::model::{Affected, CallStatus, Operation};
use crate::model::{CallView, Inserted};
use crate::scheduler::{Control, SchedulerStats};
use crate::store::{CallFilter, CallSummary};
use crate::store::{StatusCounts, Store, StoreError};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Store,
    pub subscriptions: Arc<HashMap<String, Arc<SubscriptionConfig>>>,
    pub schedulers: Arc<HashMap<String, Arc<SchedulerStats>>>,
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    /// Each subscription's scheduler, told about operators' actions.
    pub controls: Arc<HashMap<String, tokio::sync::mpsc::UnboundedSender<Control>>>,
    pub token: Option<Arc<str>>,
}

/// The API's router.
pub fn router(state: AdminState) -> Router {
    let v1 = Router::new()
        .route("/subscriptions/{name}/calls", post(enqueue))
        .route("/calls", get(list_calls))
        .route("/calls/{id}", get(show_call))
        .route("/calls/{id}/retry", post(retry_call))
        .route("/calls/{id}/cancel", post(cancel_call))
        .route("/calls/{id}/redrive", post(redrive_call))
        .route("/dead", get(list_dead))
        .route("/dead/redrive", post(redrive_dead))
        .route("/dead/purge", post(purge_dead))
        .route("/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(metrics::metrics).route_layer(middleware::from_fn_with_state(state.clone(), require_token)),
        )
        .nest("/v1", v1)
        .merge(dashboard::routes())
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

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self(rejection.status(), rejection.body_text())
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
    query: Result<Query<EnqueueQuery>, QueryRejection>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
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
            let now = crate::telemetry::now_secs();
            map.insert(
                "throughput".into(),
                json!({
                    "window_seconds": crate::telemetry::RATE_WINDOW_SECS,
                    "created_per_second": s.created_rate.per_second(now),
                    "finished_per_second": s.finished_rate.per_second(now),
                }),
            );
            if state.subscriptions.get(name).is_some_and(|c| c.dead_letter.is_some()) {
                map.insert("dead_lettered".into(), s.dead_lettered.load(Relaxed).into());
            }
            if let Some(source) = s.source.get() {
                map.insert("consumed".into(), source.consumed.load(Relaxed).into());
                map.insert("kafka_down".into(), source.brokers_down.load(Relaxed).into());
                map.insert("lag".into(), serde_json::to_value(source.lag()).unwrap_or_default());
            }
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

/// Query of `GET /v1/calls` and `GET /v1/dead`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    subscription: Option<String>,
    status: Option<String>,
    /// The key, as UTF-8 text.
    key: Option<String>,
    /// Created at or after (ms since the epoch).
    since: Option<i64>,
    /// Created before (ms since the epoch).
    until: Option<i64>,
    /// Continue after this cursor (from `next`).
    after: Option<i64>,
    limit: Option<usize>,
}

impl ListQuery {
    fn filter(&self, state: &AdminState, status: Option<CallStatus>) -> Result<CallFilter, ApiError> {
        if let Some(name) = &self.subscription {
            if !state.subscriptions.contains_key(name) {
                return Err(ApiError(
                    StatusCode::NOT_FOUND,
                    format!("unknown subscription `{name}`"),
                ));
            }
        }
        let status = match (&self.status, status) {
            (_, Some(forced)) => Some(forced),
            (Some(text), None) => Some(text.parse().map_err(|e: String| ApiError(StatusCode::BAD_REQUEST, e))?),
            (None, None) => None,
        };
        Ok(CallFilter {
            subscription: self.subscription.clone(),
            status,
            key: self.key.clone().map(String::into_bytes),
            since: self.since,
            until: self.until,
        })
    }
}

fn summary_json(call: &CallSummary) -> Value {
    let mut value = serde_json::to_value(call).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        map.insert("key".into(), bytes_json(call.key.as_deref()));
    }
    value
}

async fn list(state: &AdminState, query: &ListQuery, status: Option<CallStatus>) -> Result<Json<Value>, ApiError> {
    let filter = query.filter(state, status)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let calls = state.store.list_calls(filter, query.after.unwrap_or(0), limit).await?;
    let next = (calls.len() == limit).then(|| calls.last().map(|c| c.cursor)).flatten();
    Ok(Json(json!({
        "calls": calls.iter().map(summary_json).collect::<Vec<_>>(),
        "next": next,
    })))
}

async fn list_calls(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    list(&state, &query, None).await
}

async fn list_dead(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    list(&state, &query, Some(CallStatus::Dead)).await
}

fn parse_call_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("`{id}` is not a call id (a UUID)")))
}

/// Apply an operation and tell the schedulers concerned.
async fn operate(state: &AdminState, operation: Operation) -> Result<Vec<Affected>, ApiError> {
    let affected = state.store.operate(operation.clone()).await?;
    for call in &affected {
        let Some(control) = state.controls.get(&call.subscription) else {
            continue; // a subscription no longer configured: nothing runs its calls
        };
        let message = match &operation {
            Operation::RetryNow(_) => Control::RetryNow { seq: call.seq },
            Operation::Cancel(_) => Control::Cancelled {
                seq: call.seq,
                was: call.was,
                ordering_key: call.ordering_key.clone(),
            },
            Operation::Redrive(_) => Control::Redriven {
                seq: call.seq,
                ordering_key: call.ordering_key.clone(),
            },
            Operation::PurgeDead(_) => Control::Purged {
                ordering_key: call.ordering_key.clone(),
            },
        };
        let _ = control.send(message);
    }
    Ok(affected)
}

/// One call's operation: 404 for an unknown id, 409 when its state does not allow it.
async fn operate_one(
    state: &AdminState,
    id: &str,
    make: fn(uuid::Uuid) -> Operation,
    allowed: &str,
) -> Result<Json<Value>, ApiError> {
    let id = parse_call_id(id)?;
    let affected = operate(state, make(id)).await?;
    if affected.is_empty() {
        let call = state
            .store
            .call(id)
            .await?
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no call with id {id}")))?;
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("call {id} is {}; this applies only to {allowed} calls", call.status),
        ));
    }
    let call = state.store.call(id).await?.map_or(Value::Null, |c| call_json(&c));
    Ok(Json(call))
}

async fn retry_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    operate_one(&state, &id, Operation::RetryNow, "pending").await
}

async fn cancel_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    operate_one(&state, &id, Operation::Cancel, "pending, running or dead").await
}

async fn redrive_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    operate_one(&state, &id, |id| Operation::Redrive(vec![id]), "dead").await
}

/// Body of the bulk dead-letter actions: explicit ids, or every dead call matching a filter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadSelection {
    ids: Option<Vec<String>>,
    subscription: Option<String>,
    key: Option<String>,
    since: Option<i64>,
    until: Option<i64>,
}

/// Most dead calls one bulk request acts on; repeat the request for more.
const BULK_LIMIT: usize = 10_000;

async fn select_dead(state: &AdminState, selection: DeadSelection) -> Result<Vec<uuid::Uuid>, ApiError> {
    if let Some(ids) = selection.ids {
        return ids.iter().map(|id| parse_call_id(id)).collect();
    }
    let query = ListQuery {
        subscription: selection.subscription,
        key: selection.key,
        since: selection.since,
        until: selection.until,
        ..ListQuery::default()
    };
    let filter = query.filter(state, Some(CallStatus::Dead))?;
    Ok(state
        .store
        .list_calls(filter, 0, BULK_LIMIT)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect())
}

async fn redrive_dead(
    State(state): State<AdminState>,
    selection: Result<Json<DeadSelection>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(selection) = selection?;
    let ids = select_dead(&state, selection).await?;
    let affected = operate(&state, Operation::Redrive(ids)).await?;
    Ok(Json(
        json!({ "redriven": affected.len(), "ids": affected.iter().map(|a| a.id).collect::<Vec<_>>() }),
    ))
}

async fn purge_dead(
    State(state): State<AdminState>,
    selection: Result<Json<DeadSelection>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(selection) = selection?;
    let ids = select_dead(&state, selection).await?;
    let affected = operate(&state, Operation::PurgeDead(ids)).await?;
    Ok(Json(
        json!({ "purged": affected.len(), "ids": affected.iter().map(|a| a.id).collect::<Vec<_>>() }),
    ))
}
