//! Operating workflows: signals (`POST /v1/calls/{id}/signals/{name}`), awakeables
//! (`POST /v1/awakeables/{id}`), restarting a call from a journal entry
//! (`POST /v1/calls/{id}/restart?from=N`), and the journals too large to send inline
//! (`GET /v1/journals/{token}`, fetched by handlers).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use sdk::workflow::Entry;
use serde::Deserialize;

use super::{find_call, operate, operate_one, parse_call_id, AdminState, ApiError};
use crate::api;
use crate::model::Operation;

/// Most bytes of a signal's payload.
const MAX_SIGNAL_BYTES: usize = 1024 * 1024;

/// `POST /v1/awakeables/{id}`: an awakeable's id is `<call id>.<token>`, and it is the
/// call's signal `awakeable.<token>`.
pub(super) async fn resolve_awakeable(
    state: State<AdminState>,
    Path(awakeable): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<api::Signalled>), ApiError> {
    let (id, token) = awakeable
        .split_once('.')
        .filter(|(_, token)| !token.is_empty())
        .ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("`{awakeable}` is not an awakeable id (`<call id>.<token>`, as `wf.awakeable()` gives it)"),
            )
        })?;
    let name = format!("{}{token}", sdk::workflow::AWAKEABLE_PREFIX);
    signal_call(state, Path((id.to_string(), name)), body).await
}

pub(super) async fn signal_call(
    State(state): State<AdminState>,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<api::Signalled>), ApiError> {
    let id = parse_call_id(&id)?;
    if !crate::workflow::valid_signal_name(&name) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "a signal's name must be 1 to {} bytes",
                crate::workflow::MAX_SIGNAL_NAME
            ),
        ));
    }
    if body.len() > MAX_SIGNAL_BYTES {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a signal's payload is at most {MAX_SIGNAL_BYTES} bytes"),
        ));
    }
    // The payload is JSON (an empty body is `null`), as the workflow decodes it.
    let payload = if body.is_empty() {
        "null".to_string()
    } else {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("a signal's payload must be JSON: {e}")))?;
        value.to_string()
    };
    match state.store.signal(id, &name, payload).await? {
        crate::store::Signalled::Kept => Ok((StatusCode::ACCEPTED, Json(api::Signalled { id, signal: name }))),
        crate::store::Signalled::NoCall => Err(ApiError(StatusCode::NOT_FOUND, format!("no call with id {id}"))),
        crate::store::Signalled::Ended => Err(ApiError(
            StatusCode::CONFLICT,
            format!("call {id} has ended (succeeded, dead or cancelled): no workflow will read the signal"),
        )),
    }
}

/// `GET /v1/journals/{token}`: a journal an attempt in flight sent as a link.
pub(super) async fn journal(
    State(state): State<AdminState>,
    Path(token): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let journal = state.journals.get(&token).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "no journal with this token: a journal link lives as long as its attempt".into(),
        )
    })?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], journal).into_response())
}

/// Query of `POST /v1/calls/{id}/restart`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestartQuery {
    /// Entries kept (0, the default: run from the start).
    #[serde(default)]
    from: u32,
}

/// `POST /v1/calls/{id}/restart?from=N`: run an ended call again, keeping the first `N`
/// entries of its journal. Children of the dropped entries that are still open are
/// cancelled first; their records are produced again when the entries run again.
pub(super) async fn restart_call(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    query: Result<Query<RestartQuery>, QueryRejection>,
) -> Result<Json<api::Call>, ApiError> {
    let Query(RestartQuery { from }) = query?;
    let call = find_call(&state, parse_call_id(&id)?).await?;
    let entries = call.call.journal.len();
    if from as usize > entries {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("call {id} has {entries} journal entries: `from` must be 0 to {entries}"),
        ));
    }
    let operation = Operation::Restart { id: call.call.id, from };
    if !operation.applies_to().contains(&call.call.status) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "call {id} is {}; only {} calls restart (cancel it first)",
                call.call.status,
                operation.applies_to_text()
            ),
        ));
    }
    for child in open_children_from(&call.call.journal, from as usize) {
        operate(&state, Operation::Cancel(child)).await?;
    }
    operate_one(&state, &id, |id| Operation::Restart { id, from }).await
}

/// The children of entries at `from` and after that have not ended.
fn open_children_from(journal: &[serde_json::Value], from: usize) -> Vec<uuid::Uuid> {
    journal
        .iter()
        .skip(from)
        .filter_map(|entry| match serde_json::from_value::<Entry>(entry.clone()) {
            Ok(Entry::Call {
                id: Some(id), at: None, ..
            }) => uuid::Uuid::parse_str(&id).ok(),
            _ => None,
        })
        .collect()
}
