//! The handler server: functions registered by name, served over HTTP by axum.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::error::{Error, ErrorKind};
use crate::protocol::{header, DeclaredFailure, PROTOCOL_VERSION};
use crate::signing::{KeyError, Verifier};
use crate::workflow::{split_body, Stop, Suspension, Workflow, WORKFLOW_PROTOCOL};

/// What a function answers, short of an error.
enum Reply {
    Output(Vec<u8>),
    Suspended(Suspension),
    Nondeterminism(String),
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Reply, Error>> + Send>>;
type Function = Arc<dyn Fn(Context, Bytes) -> BoxFuture + Send + Sync>;

/// A set of named functions served over HTTP: `POST /{name}` calls one.
///
/// ```no_run
/// use sdk::{Context, Endpoint, Error};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Deserialize)]
/// struct Order { id: u64, amount_cents: u64 }
///
/// #[derive(Serialize)]
/// struct Receipt { order: u64, charged: u64 }
///
/// async fn charge(ctx: Context, order: Order) -> Result<Receipt, Error> {
///     if order.amount_cents == 0 {
///         return Err(Error::permanent("nothing to charge"));
///     }
///     // ctx.call_id is the same on every attempt: pass it to the payment API as the
///     // idempotency key so that a retry never charges twice.
///     let _ = &ctx.call_id;
///     Ok(Receipt { order: order.id, charged: order.amount_cents })
/// }
///
/// # async fn run() -> std::io::Result<()> {
/// Endpoint::new()
///     .function("charge", charge)
///     .serve("127.0.0.1:9080".parse().unwrap())
///     .await
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Endpoint {
    functions: HashMap<String, Function>,
    verifier: Option<Verifier>,
    deployment: Option<HeaderValue>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.functions.keys().collect();
        names.sort();
        f.debug_struct("Endpoint")
            .field("functions", &names)
            .field("verifies_signatures", &self.verifier.is_some())
            .field("deployment", &self.deployment)
            .finish()
    }
}

/// The largest request body an endpoint accepts: a record of up to 60 MiB with a journal
/// sent inline (at most 4 MiB). Larger bodies are refused with 413.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// The environment variable holding a verify key (see [`Endpoint::verify_from_env`]).
pub const VERIFY_KEY_ENV: &str = "ENGINE_VERIFY_KEY";

impl Endpoint {
    /// An endpoint with no functions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare which deployment of the code this is (a version, a build id; at most 255
    /// visible ASCII characters). Every workflow answer says so (protocol 7), and the
    /// engine pins each workflow to the deployment that answered it first: if another
    /// deployment answers it later (the code was replaced in place), the workflow is paused
    /// instead of replayed against code it did not start on. Run a new deployment at a new
    /// URL and point the subscription's `target` there; workflows already started keep the
    /// URL they started on until they end. See docs/workflows.md.
    ///
    /// # Panics
    /// If `id` is empty, longer than 255 bytes, or not visible ASCII.
    #[must_use]
    pub fn deployment(mut self, id: &str) -> Self {
        assert!(
            !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_graphic()),
            "a deployment id must be 1 to 255 visible ASCII characters, not {id:?}"
        );
        self.deployment = Some(HeaderValue::from_str(id).expect("visible ASCII is a header value"));
        self
    }

    /// Register a typed function: the body is JSON decoded into `I` (a decode failure is a
    /// permanent error, answered 400), and the `O` it returns is sent back as JSON.
    #[must_use]
    pub fn function<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Context, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        let function: Function = Arc::new(move |ctx, body: Bytes| {
            let f = Arc::clone(&f);
            Box::pin(async move {
                let input: I = decode_input(&body)?;
                let output = f(ctx, input).await?;
                encode_output(&output)
            })
        });
        self.functions.insert(name.to_string(), function);
        self
    }

    /// Register a function over raw bytes: the record value in, the response body out.
    #[must_use]
    pub fn raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<u8>, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        let function: Function = Arc::new(move |ctx, body| {
            let f = Arc::clone(&f);
            Box::pin(async move { f(ctx, body).await.map(Reply::Output) })
        });
        self.functions.insert(name.to_string(), function);
        self
    }

    /// Register a durable workflow (see [`crate::workflow`]): like [`Endpoint::function`],
    /// with a [`Workflow`] whose steps and sleeps are journaled by the engine, so a run
    /// resumes where the last one stopped. Needs an engine of protocol 5 or later; an
    /// older engine gets a permanent 501 that says so.
    #[must_use]
    pub fn workflow<I, O, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(Workflow, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, Error>> + Send + 'static,
    {
        let f = Arc::new(f);
        let workflow_name = name.to_string();
        let function: Function = Arc::new(move |ctx: Context, body: Bytes| {
            let f = Arc::clone(&f);
            let name = workflow_name.clone();
            Box::pin(async move {
                if ctx.protocol < WORKFLOW_PROTOCOL {
                    return Err(Error::permanent(format!(
                        "`{name}` is a workflow, which needs an engine of protocol {WORKFLOW_PROTOCOL} or later; this engine speaks protocol {}: upgrade the engine",
                        ctx.protocol
                    ))
                    .with_status(501));
                }
                let (journal, input) = match &ctx.journal_url {
                    Some(url) => (fetch_journal(url).await?, &body[..]),
                    None => split_body(&body, ctx.journal_bytes).map_err(|e| Error::permanent(e).with_status(400))?,
                };
                let input: I = decode_input(input)?;
                let now_ms = ctx.now_ms.unwrap_or_else(|| {
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                });
                let wf = Workflow::new(ctx, journal, now_ms);
                let run = f(wf.clone(), input);
                let stop = tokio::select! {
                    biased;
                    stop = wf.stopped() => stop,
                    done = run => match wf.take_stop() {
                        Some(stop) => stop,
                        None => return encode_output(&done?),
                    },
                };
                match stop {
                    Stop::Suspended(suspension) => Ok(Reply::Suspended(suspension)),
                    Stop::Nondeterminism(text) => Ok(Reply::Nondeterminism(text)),
                    Stop::Failed(error) => Err(error),
                }
            })
        });
        self.functions.insert(name.to_string(), function);
        self
    }

    /// Require every call to be signed by the engine's key (see [`crate::signing`]):
    /// missing, invalid or stale signatures are answered 401.
    #[must_use]
    pub fn verify_with(mut self, verifier: Verifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// Like [`Endpoint::verify_with`], with the base64 public key in `ENGINE_VERIFY_KEY`,
    /// when that variable is set.
    pub fn verify_from_env(self) -> Result<Self, KeyError> {
        match std::env::var(VERIFY_KEY_ENV) {
            Ok(key) => Ok(self.verify_with(Verifier::from_base64(&key)?)),
            Err(_) => Ok(self),
        }
    }

    /// The axum router, to serve yourself or to nest in a larger app. `GET /health`
    /// answers 200; `POST /{name}` calls a function; an unknown name answers 404.
    pub fn router(self) -> Router {
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/{function}", post(call))
            // A record (the engine's `max_payload_bytes`) plus a journal sent inline (up to
            // 4 MiB; larger ones are fetched): axum's default of 2 MiB refused both.
            .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::new(self))
    }

    /// Serve on `addr` until SIGINT or SIGTERM, then finish the requests in flight.
    pub async fn serve(self, addr: SocketAddr) -> std::io::Result<()> {
        self.serve_until(addr, shutdown_signal()).await
    }

    /// Serve on `addr` until `shutdown` completes, then finish the requests in flight.
    pub async fn serve_until(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Serve on a bound listener (port 0 in tests) until `shutdown` completes.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = ?listener.local_addr().ok(), functions = ?self.functions.keys().collect::<Vec<_>>(), "serving");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// The JSON input of a typed function; undecodable input is permanent (400).
fn decode_input<I: DeserializeOwned>(body: &[u8]) -> Result<I, Error> {
    serde_json::from_slice(body).map_err(|e| Error::permanent(format!("cannot decode the input: {e}")).with_status(400))
}

fn encode_output<O: Serialize>(output: &O) -> Result<Reply, Error> {
    serde_json::to_vec(output)
        .map(Reply::Output)
        .map_err(|e| Error::permanent(format!("cannot encode the output: {e}")))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// The HTTP status that carries an error's class, and what the failure is (protocol 2).
fn status_of(error: &Error) -> (StatusCode, Option<DeclaredFailure>) {
    let (default, declared) = match error.kind() {
        // 500 and 503 are temporary, 422 permanent, in the protocol's classification.
        ErrorKind::Temporary => (StatusCode::INTERNAL_SERVER_ERROR, Some(DeclaredFailure::Application)),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, Some(DeclaredFailure::Overload)),
        ErrorKind::Permanent => (StatusCode::UNPROCESSABLE_ENTITY, None),
    };
    let status = error
        .status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(default);
    (status, declared)
}

fn error_response(error: &Error) -> Response {
    let (status, declared) = status_of(error);
    let mut response = (status, format!("{}\n", error.message())).into_response();
    if let Some(declared) = declared {
        response
            .headers_mut()
            .insert(header::FAILURE, HeaderValue::from_static(declared.as_str()));
        if let Some(delay) = error.retry_after_hint() {
            let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
    }
    response
}

/// A journal too large for the body, from the engine's admin API. A failure is temporary:
/// the engine tries again (with a new link).
async fn fetch_journal(url: &str) -> Result<Vec<crate::workflow::Entry>, Error> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default()
    });
    let failed =
        |e: &dyn std::fmt::Display| Error::temporary(format!("cannot fetch the workflow's journal from {url}: {e}"));
    let response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| failed(&e))?;
    let bytes = response.bytes().await.map_err(|e| failed(&e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::permanent(format!("the journal fetched from {url} is not a journal: {e}")))
}

/// Every answer says which protocol version the SDK speaks.
fn stamp(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::PROTOCOL, HeaderValue::from(PROTOCOL_VERSION));
    response
}

async fn call(
    State(endpoint): State<Arc<Endpoint>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(verifier) = &endpoint.verifier {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if let Err(error) = verifier.verify("POST", &format!("/{name}"), &body, &headers, now) {
            tracing::warn!(function = %name, %error, "refused a request");
            return stamp((StatusCode::UNAUTHORIZED, format!("{error}\n")).into_response());
        }
    }
    let Some(function) = endpoint.functions.get(&name).cloned() else {
        return stamp((StatusCode::NOT_FOUND, format!("no function named `{name}`\n")).into_response());
    };
    let ctx = Context::from_headers(&headers);
    let call_id = ctx.call_id.clone();
    // Run the function in its own task so that a panic is contained and reported.
    let response = match tokio::spawn(function(ctx, body)).await {
        Ok(Ok(Reply::Output(output))) => (StatusCode::OK, output).into_response(),
        Ok(Ok(Reply::Suspended(suspension))) => {
            let mut response = (StatusCode::ACCEPTED, axum::Json(suspension)).into_response();
            response
                .headers_mut()
                .insert(header::WORKFLOW, HeaderValue::from_static("suspended"));
            response
        }
        Ok(Ok(Reply::Nondeterminism(text))) => {
            tracing::error!(function = %name, call = %call_id, %text, "workflow code does not match its journal");
            let mut response = (StatusCode::CONFLICT, format!("{text}\n")).into_response();
            response
                .headers_mut()
                .insert(header::WORKFLOW, HeaderValue::from_static("nondeterminism"));
            response
        }
        Ok(Err(error)) => {
            tracing::debug!(function = %name, call = %call_id, %error, "function failed");
            error_response(&error)
        }
        Err(join) => {
            let text = if join.is_panic() {
                let panic = join.into_panic();
                panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into())
            } else {
                "the function was cancelled".into()
            };
            tracing::error!(function = %name, call = %call_id, panic = %text, "function panicked");
            error_response(&Error::temporary(format!("the function panicked: {text}")))
        }
    };
    let mut response = stamp(response);
    // On every answer: the engine reads it from workflows' answers.
    if let Some(deployment) = &endpoint.deployment {
        response.headers_mut().insert(header::DEPLOYMENT, deployment.clone());
    }
    response
}
