//! Answers for the whole cluster (cluster mode): any engine's admin API finds a call
//! wherever it is held, and lists, counts, redrives and purges over every member with
//! `scope=group`. Members are found in the members topic (`cluster::members`); requests
//! between engines carry [`FORWARDED`] so that a member answers for itself only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{AdminState, ApiError};
use crate::api::{self, MemberRecord};
use crate::cluster::Directory;
use crate::model::now_millis;

/// Set on requests from one engine to another: answer from this engine alone.
pub const FORWARDED: &str = "engine-forwarded";
/// How long a member has to answer.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body passed on to another member.
const MAX_FORWARDED_BODY: usize = 16 * 1024 * 1024;

/// What the admin API needs to ask the other members.
#[derive(Debug, Clone)]
pub struct Group {
    pub directory: Directory,
    client: reqwest::Client,
    token: Option<Arc<str>>,
}

impl Group {
    pub fn new(directory: Directory, token: Option<Arc<str>>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(MEMBER_TIMEOUT)
            .build()
            .expect("an HTTP client");
        Self {
            directory,
            client,
            token,
        }
    }

    fn request(&self, method: Method, member: &MemberRecord, path_and_query: &str) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method, format!("{}{path_and_query}", member.admin_url))
            .header(FORWARDED, "1");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    /// `GET path?query` from a member, as JSON; an error says what went wrong, as text.
    pub async fn get<T: DeserializeOwned>(
        &self,
        member: &MemberRecord,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, String> {
        let request = self.request(Method::GET, member, path).query(query);
        answer_of(member, request).await
    }

    /// `POST path` with a JSON body to a member, as JSON.
    async fn post<T: DeserializeOwned>(
        &self,
        member: &MemberRecord,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, String> {
        let request = self.request(Method::POST, member, path).json(body);
        answer_of(member, request).await
    }

    /// Send the same request to a member; its answer as it came.
    async fn pass_on(
        &self,
        member: &MemberRecord,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, String> {
        let mut request = self.request(method, member, path_and_query).body(body);
        if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let answer = request.send().await.map_err(|e| format!("{}: {e}", member.admin_url))?;
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = answer.bytes().await.map_err(|e| format!("{}: {e}", member.admin_url))?;
        let mut response = (status, bytes).into_response();
        if let Some(value) = content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        Ok(response)
    }

    /// `GET path?query` from every member that is not stale, with this engine's own answer
    /// first: `(member id, answer)`.
    pub async fn gather<T: DeserializeOwned>(
        &self,
        local: Result<T, String>,
        path: &str,
        query: &impl Serialize,
    ) -> Vec<(String, Result<T, String>)> {
        self.ask_all(local, |peer| async move { self.get(&peer, path, query).await })
            .await
    }

    /// `POST path` with the same JSON body to every member that is not stale, with this
    /// engine's own answer first.
    pub async fn scatter<T: DeserializeOwned>(
        &self,
        local: Result<T, String>,
        path: &str,
        body: &impl Serialize,
    ) -> Vec<(String, Result<T, String>)> {
        self.ask_all(local, |peer| async move { self.post(&peer, path, body).await })
            .await
    }

    /// `ask` every member that is not stale, at once; this engine's `local` answer first.
    async fn ask_all<T, F>(
        &self,
        local: Result<T, String>,
        ask: impl Fn(MemberRecord) -> F,
    ) -> Vec<(String, Result<T, String>)>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        let peers = self.directory.peers(now_millis());
        let ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
        let answers = join_all(peers.into_iter().map(ask)).await;
        let mut all = vec![(self.directory.me().to_string(), local)];
        all.extend(ids.into_iter().zip(answers));
        all
    }

    /// The member with this id, if it is in the view.
    pub fn member(&self, id: &str) -> Option<MemberRecord> {
        self.directory
            .view(now_millis())
            .members
            .into_iter()
            .find(|m| m.record.id == id)
            .map(|m| m.record)
    }
}

/// Send a request to a member and decode its JSON answer.
async fn answer_of<T: DeserializeOwned>(member: &MemberRecord, request: reqwest::RequestBuilder) -> Result<T, String> {
    let response = request.send().await.map_err(|e| format!("{}: {e}", member.admin_url))?;
    let status = response.status();
    if !status.is_success() {
        let body: Option<api::ErrorBody> = response.json().await.ok();
        return Err(format!(
            "{} answered {status}: {}",
            member.admin_url,
            body.map_or_else(String::new, |b| b.error)
        ));
    }
    response
        .json()
        .await
        .map_err(|e| format!("{} answered what is not the expected JSON: {e}", member.admin_url))
}

/// Whether a request came from another member.
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Middleware of the routes about one call or awakeable: when this engine does not have
/// it (404), the other members are asked in turn, and the first that does answers.
pub async fn find_elsewhere(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(group) = state.group.clone().filter(|_| !forwarded(request.headers())) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_FORWARDED_BODY).await {
        Ok(body) => body,
        Err(error) => return ApiError(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()).into_response(),
    };
    // The routes are nested under /v1, which a nested router's requests come without.
    let uri = &parts.uri;
    let path_and_query = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_string(), ToString::to_string);
    let path_and_query = if path_and_query.starts_with("/v1/") {
        path_and_query
    } else {
        format!("/v1{path_and_query}")
    };
    let (method, headers) = (parts.method.clone(), parts.headers.clone());
    let local = next.run(Request::from_parts(parts, Body::from(body.clone()))).await;
    if local.status() != StatusCode::NOT_FOUND {
        return local;
    }
    let mut unanswered = Vec::new();
    for peer in group.directory.peers(now_millis()) {
        match group
            .pass_on(&peer, method.clone(), &path_and_query, &headers, body.clone())
            .await
        {
            Ok(answer) if answer.status() != StatusCode::NOT_FOUND => return answer,
            Ok(_) => {}
            Err(error) => unanswered.push(error),
        }
    }
    if unanswered.is_empty() {
        return local;
    }
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "not found on this engine nor on the members that answered; {} did not: {}",
            unanswered.len(),
            unanswered.join("; ")
        ),
    )
    .into_response()
}

/// `GET /v1/cluster` (200 outside cluster mode too: `enabled` says which).
pub async fn cluster_view(State(state): State<AdminState>) -> axum::Json<api::ClusterView> {
    axum::Json(state.group.as_ref().map_or_else(
        || api::ClusterView {
            enabled: false,
            me: None,
            topic: None,
            members: Vec::new(),
        },
        |group| group.directory.view(now_millis()),
    ))
}

pub fn cluster_off() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "cluster mode is off ([cluster] enabled = false): this engine is the whole group".into(),
    )
}

/// Merge the first pages of every member into one page of at most `limit` calls, in
/// creation order; each member's `next` says where its own list goes on.
pub fn merge_pages(
    answers: Vec<(String, Result<api::CallList, String>)>,
    limit: usize,
    after: Option<i64>,
) -> api::CallList {
    let mut members = BTreeMap::new();
    let mut calls = Vec::new();
    for (member, answer) in answers {
        match answer {
            Ok(list) => {
                members.insert(
                    member.clone(),
                    api::MemberPart {
                        calls: 0,
                        next: list.next,
                        error: None,
                    },
                );
                calls.extend(list.calls.into_iter().map(|mut line| {
                    line.member = Some(member.clone());
                    line
                }));
            }
            Err(error) => {
                members.insert(
                    member,
                    api::MemberPart {
                        error: Some(error),
                        ..api::MemberPart::default()
                    },
                );
            }
        }
    }
    calls.sort_by_key(|c| (c.call.created_at, c.call.id));
    let cut = calls.split_off(calls.len().min(limit));
    // A member whose calls did not all fit goes on after its last one shown.
    for (member, part) in &mut members {
        let mut shown = calls.iter().filter(|c| c.member.as_ref() == Some(member));
        part.calls = shown.clone().count();
        if cut.iter().any(|c| c.member.as_ref() == Some(member)) {
            part.next = Some(shown.next_back().map_or(after.unwrap_or(0), |c| c.call.cursor));
        }
    }
    api::CallList {
        calls,
        next: None,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CallSummary;

    fn line(created_at: i64, cursor: i64) -> api::CallLine {
        api::CallLine::from(CallSummary {
            id: uuid::Uuid::from_u128(created_at as u128),
            subscription: "s".into(),
            status: api::CallStatus::Pending,
            attempts: 0,
            last_error: None,
            created_at,
            updated_at: created_at,
            cursor,
            key: None,
        })
    }

    #[test]
    fn pages_merge_in_creation_order_and_each_member_goes_on_after_its_last_shown() {
        let a = api::CallList {
            calls: vec![line(1, 10), line(4, 11), line(6, 12)],
            next: Some(12),
            members: BTreeMap::new(),
        };
        let b = api::CallList {
            calls: vec![line(2, 7), line(3, 8)],
            next: None,
            members: BTreeMap::new(),
        };
        let merged = merge_pages(
            vec![
                ("a".into(), Ok(a)),
                ("b".into(), Ok(b)),
                ("c".into(), Err("down".into())),
            ],
            3,
            None,
        );
        let shown: Vec<(i64, &str)> = merged
            .calls
            .iter()
            .map(|c| (c.call.created_at, c.member.as_deref().unwrap()))
            .collect();
        assert_eq!(shown, [(1, "a"), (2, "b"), (3, "b")]);
        assert_eq!(merged.next, None);
        assert_eq!((merged.members["a"].calls, merged.members["a"].next), (1, Some(10)));
        assert_eq!((merged.members["b"].calls, merged.members["b"].next), (2, None));
        assert_eq!(merged.members["c"].error.as_deref(), Some("down"));
    }
}
