//! The admin HTTP API (JSON, versioned under `/v1`). Binds to loopback by default; with a
//! token configured, every `/v1` request needs `Authorization: Bearer <token>`.
//!
//! - this module: routes, auth, calls, dead letters, stats;
//! - `group`: cluster mode's answers for the whole group (a call found wherever it is,
//!   `scope=group` lists, stats and bulk actions, `GET /v1/cluster`);
//! - `workflow`: signals, awakeables and restarting a call from a journal entry;
//! - `metrics`: `/metrics` in Prometheus text format;
//! - `dashboard`: the embedded web dashboard at `/`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

mod dashboard;
mod group;
mod metrics;
mod workflow;

pub use group::{Group, FORWARDED};

use workflow::{resolve_awakeable, restart_call, signal_call};

use crate::api::{self, LiveFigures, SubscriptionStats, Throughput};
use crate::config::SubscriptionConfig;
use crate::figures::Figures;
use crate::ingest::{new_call, persist, Record};
use crate::model::{Affected, CallStatus, Inserted, Operation};
use crate::scheduler::Control;
use crate::store::{CallFilter, StatusCounts, Store, StoreError};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Store,
    pub subscriptions: Arc<HashMap<String, Arc<SubscriptionConfig>>>,
    /// Each subscription's live figures.
    pub figures: Arc<HashMap<String, Arc<Figures>>>,
    pub endpoints: Arc<crate::endpoints::Endpoints>,
    /// Each subscription's scheduler, told about operators' actions.
    pub controls: Arc<HashMap<String, tokio::sync::mpsc::UnboundedSender<Control>>>,
    pub token: Option<Arc<str>>,
    /// Journals too large to send inline, fetched by handlers.
    pub journals: crate::shelf::JournalShelf,
    /// Cluster mode: the other members, for answers about the whole group.
    pub group: Option<Group>,
}

/// The API's router.
pub fn router(state: AdminState) -> Router {
    // In cluster mode, a call this engine does not hold is looked for on the others.
    let one_call = Router::new()
        .route("/calls/{id}", get(show_call))
        .route("/calls/{id}/retry", post(retry_call))
        .route("/calls/{id}/cancel", post(cancel_call))
        .route("/calls/{id}/redrive", post(redrive_call))
        .route("/calls/{id}/restart", post(restart_call))
        .route("/calls/{id}/signals/{name}", post(signal_call))
        .route("/awakeables/{id}", post(resolve_awakeable))
        .route_layer(middleware::from_fn_with_state(state.clone(), group::find_elsewhere));
    let v1 = Router::new()
        .route("/subscriptions/{name}/calls", post(enqueue))
        .route("/calls", get(list_calls))
        .merge(one_call)
        .route("/cluster", get(group::cluster_view))
        .route("/dead", get(list_dead))
        .route("/dead/redrive", post(redrive_dead))
        .route("/dead/purge", post(purge_dead))
        .route("/stats", get(stats))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        // The random token in the path is the permission: handlers hold no admin token.
        .route("/v1/journals/{token}", get(workflow::journal))
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
        (self.0, Json(api::ErrorBody { error: self.1 })).into_response()
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
        if !presented.is_some_and(|presented| same_secret(presented.as_bytes(), token.as_bytes())) {
            return ApiError(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into()).into_response();
        }
    }
    next.run(request).await
}

/// Whether two secrets are equal, in a time that does not depend on where they differ (only
/// on their lengths), so a token cannot be guessed byte by byte from response times.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    let differences = presented.iter().zip(expected).fold(0_u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(differences) == 0 && presented.len() == expected.len()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueQuery {
    /// The call's key (UTF-8 text); used for ordering like a Kafka key.
    key: Option<String>,
}

/// The header a client sets so that a retried enqueue does not make a second call.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest idempotency key taken.
const MAX_IDEMPOTENCY_KEY: usize = 255;

async fn enqueue(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    query: Result<Query<EnqueueQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query?;
    let subscription = state
        .subscriptions
        .get(&name)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown subscription `{name}`")))?;
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Some(key.to_string()),
            _ => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                ))
            }
        },
    };
    let mut call = new_call(
        subscription,
        Record {
            value: Some(body.to_vec()),
            key: query.key.map(String::into_bytes),
            headers: None,
            source: None,
        },
    );
    call.idempotency_key.clone_from(&idempotency_key);
    let status = if call.dead_reason.is_some() {
        CallStatus::Dead
    } else {
        CallStatus::Pending
    };
    let figures = state.figures.get(&name).cloned().unwrap_or_default();
    let inserted = persist(&state.store, &figures, vec![call]).await?;
    match (inserted.first(), idempotency_key) {
        (Some(Inserted::New(id)), _) => Ok((StatusCode::CREATED, Json(api::Enqueued { id: *id, status }))),
        // The same key again: the first call, as it is now.
        (Some(Inserted::Duplicate), Some(key)) => match state.store.call_by_idempotency_key(&name, &key).await? {
            Some((id, status)) => Ok((StatusCode::OK, Json(api::Enqueued { id, status }))),
            None => Err(ApiError(
                StatusCode::CONFLICT,
                "a call with this Idempotency-Key was just purged; send again".into(),
            )),
        },
        _ => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the call was not created".into(),
        )),
    }
}

async fn show_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<api::Call>, ApiError> {
    let id = parse_call_id(&id)?;
    Ok(Json(find_call(&state, id).await?))
}

async fn find_call(state: &AdminState, id: uuid::Uuid) -> Result<api::Call, ApiError> {
    let call = state
        .store
        .call(id)
        .await?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no call with id {id}")))?;
    let mut call = api::Call::from(call);
    call.member = state.group.as_ref().map(|g| g.directory.me().to_string());
    Ok(call)
}

/// Whether an answer is this engine's (`local`, the default) or the whole group's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Local,
    Group,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    #[serde(default)]
    scope: Scope,
}

impl ScopeQuery {
    /// The group, when the whole group is asked for (an error outside cluster mode).
    fn group<'a>(&self, state: &'a AdminState) -> Result<Option<&'a Group>, ApiError> {
        match self.scope {
            Scope::Local => Ok(None),
            Scope::Group => state.group.as_ref().map(Some).ok_or_else(group::cluster_off),
        }
    }
}

async fn stats(
    State(state): State<AdminState>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let local = local_stats(&state).await;
    let Some(group) = query.group(&state)? else {
        return Ok(Json(local?).into_response());
    };
    let answers = group
        .gather(local.map_err(|e| e.1), "/v1/stats", &ScopeQuery::default())
        .await;
    let mut calls = StatusCounts::default();
    let mut members = std::collections::BTreeMap::new();
    for (member, answer) in answers {
        let (stats, error) = match answer {
            Ok(stats) => {
                calls += stats.calls;
                (Some(stats), None)
            }
            Err(error) => (None, Some(error)),
        };
        members.insert(member, api::MemberStats { stats, error });
    }
    Ok(Json(api::GroupStats { calls, members }).into_response())
}

async fn local_stats(state: &AdminState) -> Result<api::Stats, ApiError> {
    let counts = state.store.counts().await?;
    let mut total = StatusCounts::default();
    for c in counts.values() {
        total += *c;
    }
    let names = state.subscriptions.keys().chain(counts.keys());
    let subscriptions = names
        .map(|name| {
            let stats = SubscriptionStats {
                calls: counts.get(name).copied().unwrap_or_default(),
                live: state
                    .figures
                    .get(name)
                    .map(|figures| live_figures(state, name, figures)),
            };
            (name.clone(), stats)
        })
        .collect();
    let endpoints = state
        .endpoints
        .all()
        .map(|(key, e)| (key.clone(), e.snapshot()))
        .collect();
    Ok(api::Stats {
        calls: total,
        subscriptions,
        endpoints,
    })
}

fn live_figures(state: &AdminState, name: &str, figures: &Figures) -> LiveFigures {
    let now = figures.snapshot();
    let (created_per_second, finished_per_second) = figures.rates();
    let dead_letters = state.subscriptions.get(name).is_some_and(|c| c.dead_letter.is_some());
    let source = figures.source();
    LiveFigures {
        in_flight: now.in_flight,
        waiting_retry: now.waiting_retry,
        in_memory: now.in_memory,
        throughput: Throughput {
            window_seconds: crate::telemetry::RATE_WINDOW_SECS,
            created_per_second,
            finished_per_second,
        },
        dead_lettered: dead_letters.then_some(now.dead_lettered),
        dead_letters_failing: dead_letters.then_some(now.dead_letters_failing),
        consumed: source.map(|s| s.consumed.load(std::sync::atomic::Ordering::Relaxed)),
        kafka_down: source.map(|s| s.brokers_down.load(std::sync::atomic::Ordering::Relaxed)),
        kafka_error: source.and_then(|s| s.last_error()),
        lag: source.map(|s| s.lag()),
        assigned: source.map(|s| s.assigned()),
        rebalances: source.map(|s| s.rebalances.load(std::sync::atomic::Ordering::Relaxed)),
    }
}

/// Query of `GET /v1/calls` and `GET /v1/dead`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `group`: the first page of every member, merged.
    #[serde(default, skip_serializing)]
    scope: Scope,
    /// Cluster mode: list this member's calls (to page on after a `scope=group` page).
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    /// The key, as UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Created at or after (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<i64>,
    /// Created before (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<i64>,
    /// Continue after this cursor (from `next`).
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
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

async fn list(
    state: &AdminState,
    query: &ListQuery,
    status: Option<CallStatus>,
    path: &str,
) -> Result<Json<api::CallList>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let member = query
        .member
        .as_ref()
        .filter(|&m| state.group.as_ref().is_none_or(|g| g.directory.me() != m));
    match (query.scope, member, &state.group) {
        (Scope::Local, None, _) => Ok(Json(local_list(state, query, status, limit).await?)),
        (_, Some(member), Some(group)) => {
            let record = group.member(member).ok_or_else(|| {
                ApiError(
                    StatusCode::NOT_FOUND,
                    format!("no member `{member}` in the cluster (see GET /v1/cluster)"),
                )
            })?;
            let mut list: api::CallList = group
                .get(&record, path, query)
                .await
                .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e))?;
            for line in &mut list.calls {
                line.member = Some(member.clone());
            }
            Ok(Json(list))
        }
        (Scope::Group, None, Some(group)) => {
            let local = local_list(state, query, status, limit).await.map_err(|e| e.1);
            let answers = group.gather(local, path, query).await;
            Ok(Json(group::merge_pages(answers, limit, query.after)))
        }
        (_, _, None) => Err(group::cluster_off()),
    }
}

async fn local_list(
    state: &AdminState,
    query: &ListQuery,
    status: Option<CallStatus>,
    limit: usize,
) -> Result<api::CallList, ApiError> {
    let filter = query.filter(state, status)?;
    let calls = state.store.list_calls(filter, query.after.unwrap_or(0), limit).await?;
    let next = (calls.len() == limit).then(|| calls.last().map(|c| c.cursor)).flatten();
    Ok(api::CallList {
        calls: calls.into_iter().map(api::CallLine::from).collect(),
        next,
        members: std::collections::BTreeMap::new(),
    })
}

async fn list_calls(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<api::CallList>, ApiError> {
    let Query(query) = query?;
    list(&state, &query, None, "/v1/calls").await
}

async fn list_dead(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<api::CallList>, ApiError> {
    let Query(query) = query?;
    list(&state, &query, Some(CallStatus::Dead), "/v1/dead").await
}

fn parse_call_id(id: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("`{id}` is not a call id (a UUID)")))
}

/// Apply an operation and tell the schedulers concerned.
async fn operate(state: &AdminState, operation: Operation) -> Result<Vec<Affected>, ApiError> {
    let affected = state.store.operate(operation.clone()).await?;
    for call in &affected {
        // A subscription no longer configured has no scheduler: nothing runs its calls.
        if let Some(control) = state.controls.get(&call.subscription) {
            let _ = control.send(Control::after(&operation, call));
        }
    }
    Ok(affected)
}

/// One call's operation: 404 for an unknown id, 409 when its state does not allow it.
async fn operate_one(
    state: &AdminState,
    id: &str,
    make: impl FnOnce(uuid::Uuid) -> Operation,
) -> Result<Json<api::Call>, ApiError> {
    let id = parse_call_id(id)?;
    let operation = make(id);
    let affected = operate(state, operation.clone()).await?;
    let call = find_call(state, id).await?;
    if affected.is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "call {id} is {}; this applies only to {} calls",
                call.call.status,
                operation.applies_to_text()
            ),
        ));
    }
    Ok(Json(call))
}

async fn retry_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<api::Call>, ApiError> {
    operate_one(&state, &id, Operation::RetryNow).await
}

async fn cancel_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<api::Call>, ApiError> {
    operate_one(&state, &id, Operation::Cancel).await
}

async fn redrive_call(State(state): State<AdminState>, Path(id): Path<String>) -> Result<Json<api::Call>, ApiError> {
    operate_one(&state, &id, |id| Operation::Redrive(vec![id])).await
}

/// Body of the bulk dead-letter actions: explicit ids, or every dead call matching a filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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

/// What a member answers to a bulk action: only its ids are kept (the counts follow).
#[derive(Deserialize)]
struct Ids {
    ids: Vec<uuid::Uuid>,
}

/// A bulk operation on the dead calls a selection names, on this engine or (`scope=group`)
/// on every member: the calls it changed, and the members that did not answer.
async fn operate_dead(
    state: &AdminState,
    query: Result<Query<ScopeQuery>, QueryRejection>,
    selection: Result<Json<DeadSelection>, JsonRejection>,
    make: fn(Vec<uuid::Uuid>) -> Operation,
    path: &str,
) -> Result<(Vec<uuid::Uuid>, std::collections::BTreeMap<String, String>), ApiError> {
    let Query(query) = query?;
    let Json(selection) = selection?;
    let group = query.group(state)?;
    let local = async {
        let ids = select_dead(state, selection.clone()).await?;
        let affected = operate(state, make(ids)).await?;
        Ok::<_, ApiError>(affected.iter().map(|a| a.id).collect::<Vec<_>>())
    }
    .await;
    let Some(group) = group else {
        return Ok((local?, std::collections::BTreeMap::new()));
    };
    let local = local.map(|ids| Ids { ids }).map_err(|e| e.1);
    let (mut ids, mut errors) = (Vec::new(), std::collections::BTreeMap::new());
    for (member, answer) in group.scatter::<Ids>(local, path, &selection).await {
        match answer {
            Ok(answer) => ids.extend(answer.ids),
            Err(error) => {
                errors.insert(member, error);
            }
        }
    }
    Ok((ids, errors))
}

async fn redrive_dead(
    State(state): State<AdminState>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
    selection: Result<Json<DeadSelection>, JsonRejection>,
) -> Result<Json<api::Redriven>, ApiError> {
    let (ids, errors) = operate_dead(&state, query, selection, Operation::Redrive, "/v1/dead/redrive").await?;
    Ok(Json(api::Redriven {
        redriven: ids.len(),
        ids,
        errors,
    }))
}

async fn purge_dead(
    State(state): State<AdminState>,
    query: Result<Query<ScopeQuery>, QueryRejection>,
    selection: Result<Json<DeadSelection>, JsonRejection>,
) -> Result<Json<api::Purged>, ApiError> {
    let (ids, errors) = operate_dead(&state, query, selection, Operation::PurgeDead, "/v1/dead/purge").await?;
    Ok(Json(api::Purged {
        purged: ids.len(),
        ids,
        errors,
    }))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"), "a prefix is not the secret");
        assert!(!same_secret(b"s3cret!", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
