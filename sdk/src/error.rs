//! The error a handler returns: temporary (the engine retries) or permanent (the call
//! becomes a dead letter).

use std::fmt;
use std::time::Duration;

/// What the engine should do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Retry later, with backoff (or after the suggested delay). The handler's own failure:
    /// the engine keeps sending other calls at the same concurrency.
    Temporary,
    /// The handler is saturated: retry later, and send less. The engine lowers the
    /// endpoint's concurrency, and a suggested delay pauses the whole endpoint.
    Overloaded,
    /// Retrying cannot help: the call becomes a dead letter.
    Permanent,
}

/// A handler failure.
///
/// Any `std::error::Error` converts into a *temporary* error with `?`, because retrying is the
/// safe default for an unknown failure; say [`Error::permanent`] when retrying cannot help.
///
/// ```
/// use std::time::Duration;
/// use sdk::{Error, ErrorKind};
///
/// fn parse(text: &str) -> Result<u32, Error> {
///     text.parse::<u32>().map_err(|e| Error::permanent(format!("bad amount: {e}")))
/// }
/// assert_eq!(parse("x").unwrap_err().kind(), ErrorKind::Permanent);
///
/// let flaky = Error::temporary("payment API timed out").retry_after(Duration::from_secs(2));
/// assert_eq!(flaky.retry_after_hint(), Some(Duration::from_secs(2)));
///
/// let busy = Error::overloaded("connection pool exhausted");
/// assert_eq!(busy.kind(), ErrorKind::Overloaded);
///
/// fn read() -> Result<String, Error> {
///     Ok(std::fs::read_to_string("/definitely/not/here")?)
/// }
/// assert_eq!(read().unwrap_err().kind(), ErrorKind::Temporary);
/// ```
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    retry_after: Option<Duration>,
    /// A specific status to answer with (it must agree with `kind`).
    status: Option<u16>,
}

impl Error {
    /// A failure worth retrying.
    pub fn temporary(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Temporary,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }

    /// The handler cannot take more work now (a full pool, a queue over its bound): the
    /// call is retried and the engine sends less to this endpoint. Use
    /// [`Error::temporary`] for failures that sending less would not fix.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Overloaded,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.into(),
            retry_after: None,
            status: None,
        }
    }

    /// Suggest when to retry (sent as `Retry-After`, rounded up to whole seconds). On a
    /// temporary error it delays only this call; on an overloaded one, the whole endpoint.
    /// Ignored on permanent errors.
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Temporary or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What went wrong, as the engine will record it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Answer with this status instead of the kind's default (500, 503 or 422).
    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn status(&self) -> Option<u16> {
        self.status
    }

    /// The suggested retry delay, if any.
    pub fn retry_after_hint(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Temporary => "temporary",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} error: {}", self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::temporary(message)
    }
}
