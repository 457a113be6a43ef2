//! HTTP delivery of one attempt: build the request from the protocol, send it with a time
//! limit, read a bounded response, classify the outcome.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sdk::protocol::{self, classify_status, header, DeclaredFailure, OutcomeClass};

use crate::model::{now_millis, DueCall, Millis};
use crate::shelf::{JournalShelf, INLINE_JOURNAL_BYTES};
use crate::workflow::{self, Directory, Resume, WorkflowStep, MAX_ANSWER_BYTES};

/// The classified result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub class: OutcomeClass,
    pub http_status: Option<u16>,
    /// What went wrong, for operators; `None` on success.
    pub error: Option<String>,
    /// The (bounded) response body of a successful attempt.
    pub output: Option<Vec<u8>>,
    /// A delay the target asked for with `Retry-After`.
    pub retry_after: Option<Duration>,
    /// What the handler said a temporary failure is (`engine-failure`, protocol 2).
    pub declared: Option<DeclaredFailure>,
    /// How the exchange failed, when no answer came.
    pub transport: Option<TransportFailure>,
    /// What a workflow's answer asks for (protocol 4); `None` from plain functions.
    pub workflow: Option<WorkflowStep>,
    pub duration: Duration,
}

impl AttemptOutcome {
    /// A temporary failure before anything was sent (the engine could not prepare it).
    pub fn not_sent(error: String) -> Self {
        Self {
            class: OutcomeClass::Temporary,
            http_status: None,
            error: Some(error),
            output: None,
            retry_after: None,
            declared: Some(DeclaredFailure::Application),
            transport: None,
            workflow: None,
            duration: Duration::ZERO,
        }
    }
}

/// An attempt that got no (complete) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportFailure {
    /// No answer within the subscription's timeout.
    TimedOut,
    /// The connection could not be made.
    Refused,
    /// The connection was reset or closed before an answer.
    Reset,
    /// An answer came that is not valid HTTP, or its body broke off.
    Broken,
}

/// Error texts are truncated to this many bytes before they are stored.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Sends attempts over a shared keep-alive connection pool.
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    signer: Option<sdk::signing::Signer>,
    /// Where journals too large to send inline wait, and the admin API's base URL that
    /// serves them; without it every journal goes inline.
    shelf: Option<(JournalShelf, Arc<str>)>,
}

/// Per-subscription settings of a delivery.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryLimits {
    pub timeout: Duration,
    pub max_output_bytes: usize,
}

impl Deliverer {
    /// A deliverer; with a signer, every request is signed.
    pub fn new(signer: Option<sdk::signing::Signer>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("engine/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            signer,
            shelf: None,
        })
    }

    /// Send journals over [`crate::shelf::INLINE_JOURNAL_BYTES`] as a link to `shelf`,
    /// served under `admin_base` (the admin API's URL as handlers reach it).
    #[must_use]
    pub fn with_shelf(mut self, shelf: JournalShelf, admin_base: &str) -> Self {
        self.shelf = Some((shelf, Arc::from(admin_base)));
        self
    }

    /// Make one attempt. Never fails: every problem is an outcome. `resume` is a resumed
    /// workflow's journal (a JSON array), sent ahead of the input, with the clock it was
    /// read at and the deployment it is pinned to; `directory` checks what a workflow's
    /// answer asks for.
    pub async fn deliver(
        &self,
        call: &Arc<DueCall>,
        attempt: u32,
        subscription: &str,
        limits: DeliveryLimits,
        resume: Option<Resume>,
        directory: &dyn Directory,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let now = resume.as_ref().map_or_else(now_millis, |r| r.now);
        let (journal, pinned) = match resume {
            Some(Resume { journal, pinned, .. }) => (Some(bytes::Bytes::from(journal)), pinned),
            None => (None, None),
        };
        let mut headers = request_headers(call, attempt, subscription, now);
        // A journal too large to send inline waits on the shelf while this attempt lasts.
        let lease = match (&journal, &self.shelf) {
            (Some(journal), Some((shelf, base))) if journal.len() > INLINE_JOURNAL_BYTES => {
                let lease = shelf.put(journal.clone());
                HeaderValue::from_str(&format!("{base}/v1/journals/{}", lease.token))
                    .ok()
                    .map(|url| {
                        headers.insert(HeaderName::from_static(header::JOURNAL_URL), url);
                        lease
                    })
            }
            _ => None,
        };
        let body = match (&journal, &lease) {
            (Some(journal), None) => {
                if let Ok(value) = HeaderValue::from_str(&journal.len().to_string()) {
                    headers.insert(HeaderName::from_static(header::JOURNAL_BYTES), value);
                }
                let mut framed = Vec::with_capacity(journal.len() + call.payload.len());
                framed.extend_from_slice(journal);
                framed.extend_from_slice(&call.payload);
                bytes::Bytes::from(framed)
            }
            // The body shares the payload held in the window instead of copying it.
            _ => bytes::Bytes::from_owner(PayloadOf(Arc::clone(call))),
        };
        if let Some(signer) = &self.signer {
            sign(signer, &mut headers, &call.target, &body);
        }
        let request = self.client.post(&call.target).headers(headers).body(body).send();
        let result = tokio::time::timeout(limits.timeout, async {
            let response = request.await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| protocol::parse_retry_after(v, SystemTime::now()));
            let declared = response
                .headers()
                .get(header::FAILURE)
                .and_then(|v| v.to_str().ok())
                .and_then(DeclaredFailure::parse);
            let handler_protocol = response
                .headers()
                .get(header::PROTOCOL)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let workflow = response
                .headers()
                .get(header::WORKFLOW)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let deployment = response
                .headers()
                .get(header::DEPLOYMENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let limit = match workflow.as_deref() {
                Some("suspended") => MAX_ANSWER_BYTES,
                _ if classify_status(status) == OutcomeClass::Success => limits.max_output_bytes,
                _ => MAX_ERROR_BYTES,
            };
            let (body, truncated) = read_bounded(response, limit).await?;
            Ok::<_, reqwest::Error>(Answer {
                status,
                retry_after,
                declared,
                handler_protocol,
                workflow,
                deployment,
                body,
                truncated,
            })
        })
        .await;
        let duration = started.elapsed();
        drop(lease);
        match result {
            Ok(Ok(answer)) => {
                // A resumed workflow's answer counts only from the deployment it is pinned to.
                let changed = journal.as_ref().and_then(|_| {
                    workflow::deployment_changed(pinned.as_deref(), answer.deployment.as_deref(), &call.target)
                });
                let workflow = match changed {
                    Some(reason) => Some(WorkflowStep::Paused(reason)),
                    None => workflow_step(&answer, journal.as_deref(), directory).map(|step| match step {
                        WorkflowStep::Suspended(mut suspended) => {
                            suspended.deployment.clone_from(&answer.deployment);
                            WorkflowStep::Suspended(suspended)
                        }
                        paused @ WorkflowStep::Paused(_) => paused,
                    }),
                };
                AttemptOutcome {
                    workflow,
                    ..outcome_of(answer, duration)
                }
            }
            Ok(Err(error)) => transport_failure(&error, duration),
            Err(_) => AttemptOutcome {
                class: OutcomeClass::Temporary,
                http_status: None,
                error: Some(format!(
                    "timed out after {}",
                    humantime::format_duration(limits.timeout)
                )),
                output: None,
                retry_after: None,
                declared: None,
                transport: Some(TransportFailure::TimedOut),
                workflow: None,
                duration,
            },
        }
    }
}

/// The protocol version whose signatures cover the call id, attempt and idempotency key.
const SIGNED_CALL_FIELDS_SINCE: u32 = 3;

/// An HTTP answer, read within the limits.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    declared: Option<DeclaredFailure>,
    /// The protocol version an SDK handler says it speaks; `None` from plain webhooks.
    handler_protocol: Option<u32>,
    /// `engine-workflow` (protocol 4): `suspended` or `nondeterminism`.
    workflow: Option<String>,
    /// `engine-deployment` (protocol 7): the deployment that answered.
    deployment: Option<String>,
    /// The body, cut at the limit.
    body: Vec<u8>,
    truncated: bool,
}

/// What an answer means: its class, the output of a success, the error text of a failure,
/// and what a temporary failure asks for (a delay, or what the handler declared).
fn outcome_of(answer: Answer, duration: Duration) -> AttemptOutcome {
    let class = classify_status(answer.status);
    let temporary = class == OutcomeClass::Temporary;
    let (output, error) = if class == OutcomeClass::Success {
        (Some(answer.body), None)
    } else {
        let mut text = format!("HTTP {}", answer.status);
        if !answer.body.is_empty() {
            let _ = write!(text, ": {}", String::from_utf8_lossy(&answer.body).trim());
        }
        if answer.truncated {
            text.push_str(" …");
        }
        if let Some(old) = answer
            .handler_protocol
            .filter(|v| answer.status == 401 && *v < SIGNED_CALL_FIELDS_SINCE)
        {
            let _ = write!(
                text,
                " (the handler's SDK speaks protocol {old} and cannot verify signatures of protocol {}, which also cover the call id and attempt: upgrade its sdk crate)",
                protocol::PROTOCOL_VERSION
            );
        }
        (None, Some(text))
    };
    AttemptOutcome {
        class,
        http_status: Some(answer.status),
        error,
        output,
        retry_after: answer.retry_after.filter(|_| temporary),
        declared: answer.declared.filter(|_| temporary),
        transport: None,
        workflow: None,
        duration,
    }
}

/// What a workflow's answer asks for: a suspension to store, or a pause.
fn workflow_step(answer: &Answer, journal: Option<&[u8]>, directory: &dyn Directory) -> Option<WorkflowStep> {
    match answer.workflow.as_deref()? {
        "suspended" if answer.status == 202 => {
            if answer.truncated {
                return Some(WorkflowStep::Paused(format!(
                    "the workflow's answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            Some(match serde_json::from_slice(&answer.body) {
                Ok(suspension) => workflow::resolve(journal, suspension, now_millis(), directory),
                Err(e) => WorkflowStep::Paused(format!("broken workflow answer: {e}")),
            })
        }
        "nondeterminism" => Some(WorkflowStep::Paused(format!(
            "nondeterminism: {}",
            String::from_utf8_lossy(&answer.body).trim()
        ))),
        _ => None,
    }
}

fn sign(signer: &sdk::signing::Signer, headers: &mut HeaderMap, target: &str, body: &[u8]) {
    let path = reqwest::Url::parse(target).map_or_else(|_| "/".into(), |u| u.path().to_string());
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // request_headers always sets the signed fields, so signing cannot miss one.
    let Ok(signature) = signer.sign("POST", &path, body, &*headers, now) else {
        return;
    };
    for (name, value) in signature {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// Connection refused, reset, DNS failure, a broken response: all temporary.
fn transport_failure(error: &reqwest::Error, duration: Duration) -> AttemptOutcome {
    let (mut text, mut kind) = if error.is_connect() {
        ("connection failed".to_string(), TransportFailure::Refused)
    } else if error.is_body() || error.is_decode() {
        ("failed reading the response".to_string(), TransportFailure::Broken)
    } else {
        ("request failed".to_string(), TransportFailure::Broken)
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        if is_reset(cause) && kind != TransportFailure::Refused {
            kind = TransportFailure::Reset;
        }
        source = cause.source();
    }
    text.truncate(floor_char_boundary(&text, MAX_ERROR_BYTES));
    AttemptOutcome {
        class: OutcomeClass::Temporary,
        http_status: None,
        error: Some(text),
        output: None,
        retry_after: None,
        declared: None,
        transport: Some(kind),
        workflow: None,
        duration,
    }
}

/// A connection reset or aborted by the peer: what an overloaded server's full accept queue
/// looks like from outside.
fn is_reset(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        )
    })
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// Read at most `limit` bytes of the body; the rest is not read (the connection is dropped).
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The protocol's request headers for one attempt.
/// The headers of a request; `now` is the engine's clock it carries (`engine-now`).
pub fn request_headers(call: &DueCall, attempt: u32, subscription: &str, now: Millis) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(12);
    let mut put = |name: &'static str, value: String| {
        // Every value is ASCII by construction (numbers, UUIDs, percent-encoding); a
        // subscription name is validated at config load.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let id = call.id.to_string();
    put(header::PROTOCOL, protocol::PROTOCOL_VERSION.to_string());
    put(header::NOW, now.to_string());
    put(header::IDEMPOTENCY_KEY, id.clone());
    put(header::CALL_ID, id);
    put(header::ATTEMPT, attempt.to_string());
    put(header::SUBSCRIPTION, subscription.to_string());
    put("content-type", "application/octet-stream".to_string());
    if let Some(source) = &call.source {
        put(header::KAFKA_TOPIC, protocol::encode_bytes(source.topic.as_bytes()));
        put(header::KAFKA_PARTITION, source.partition.to_string());
        put(header::KAFKA_OFFSET, source.offset.to_string());
        if let Some(ts) = source.timestamp {
            put(header::KAFKA_TIMESTAMP, ts.to_string());
        }
    }
    if call.tombstone {
        put(header::KAFKA_TOMBSTONE, "true".to_string());
    }
    if let Some(key) = &call.key {
        put(header::KAFKA_KEY, protocol::encode_bytes(key));
    }
    if let Some(record_headers) = call.headers.as_ref().filter(|h| !h.is_empty()) {
        put(header::KAFKA_HEADERS, record_headers.clone());
    }
    headers
}

/// A call's payload as a request body, sharing the call.
struct PayloadOf(Arc<DueCall>);

impl AsRef<[u8]> for PayloadOf {
    fn as_ref(&self) -> &[u8] {
        &self.0.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            retry_after: Some(Duration::from_secs(2)),
            declared: Some(DeclaredFailure::Overload),
            handler_protocol: None,
            workflow: None,
            deployment: None,
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    #[test]
    fn a_success_keeps_its_output_and_nothing_a_failure_would_ask_for() {
        let outcome = outcome_of(answer(200, "done"), Duration::from_millis(4));
        assert_eq!(outcome.class, OutcomeClass::Success);
        assert_eq!(outcome.output.as_deref(), Some(&b"done"[..]));
        assert_eq!(
            (outcome.error, outcome.retry_after, outcome.declared),
            (None, None, None)
        );
    }

    #[test]
    fn a_temporary_failure_keeps_its_retry_after_and_declaration() {
        let mut busy = answer(503, " busy \n");
        busy.truncated = true;
        let outcome = outcome_of(busy, Duration::from_millis(4));
        assert_eq!(outcome.class, OutcomeClass::Temporary);
        assert_eq!(outcome.error.as_deref(), Some("HTTP 503: busy …"));
        assert_eq!(outcome.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(outcome.declared, Some(DeclaredFailure::Overload));
        assert_eq!(outcome.output, None);
    }

    #[test]
    fn a_permanent_failure_asks_for_nothing() {
        let outcome = outcome_of(answer(400, ""), Duration::from_millis(4));
        assert_eq!(outcome.class, OutcomeClass::Permanent);
        assert_eq!(outcome.error.as_deref(), Some("HTTP 400"));
        assert_eq!((outcome.retry_after, outcome.declared), (None, None));
    }

    #[test]
    fn a_refused_signature_from_an_older_sdk_says_to_upgrade_it() {
        let mut old = answer(401, "malformed `signature-input` header");
        old.handler_protocol = Some(2);
        let outcome = outcome_of(old, Duration::from_millis(1));
        assert_eq!(outcome.class, OutcomeClass::Permanent);
        let text = outcome.error.unwrap();
        assert!(
            text.contains("speaks protocol 2") && text.contains("upgrade its sdk crate"),
            "{text}"
        );

        let mut current = answer(401, "invalid signature");
        current.handler_protocol = Some(SIGNED_CALL_FIELDS_SINCE);
        let text = outcome_of(current, Duration::from_millis(1)).error.unwrap();
        assert_eq!(text, "HTTP 401: invalid signature");
    }
}
