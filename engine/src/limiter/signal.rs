//! What one attempt's outcome says about the endpoint's load. Pure.
//!
//! Only answers that *say* the endpoint is saturated count as overload: 429, a 503 that
//! carries `Retry-After`, an SDK's declared overload, a timeout, a refused or reset
//! connection. A plain 5xx says nothing either way (a bug, a bad dependency, or a
//! saturated server): it is an [`Signal::Error`], and the limiter cuts for it only after
//! seeing that the error rate falls when concurrency falls. An SDK's application error is
//! an answer like any other.

use std::time::Duration;

use sdk::protocol::DeclaredFailure;

use crate::delivery::{AttemptOutcome, TransportFailure};

/// What one attempt tells the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The endpoint answered and did not complain of load (a success, a permanent failure,
    /// or an error its handler declared an application error).
    Answered { latency: Duration },
    /// A temporary failure that does not say whether it is overload (500, 502, 503 without
    /// `Retry-After`, 504, a broken response).
    Error { latency: Duration },
    /// The endpoint is saturated or cannot be reached.
    Overload(OverloadCause),
}

/// Why an attempt counts as overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverloadCause {
    /// HTTP 429.
    TooManyRequests,
    /// HTTP 503 with `Retry-After`.
    UnavailableRetryAfter,
    /// The handler's SDK said so (`engine-failure: overload`).
    Declared,
    /// No answer within the subscription's timeout.
    Timeout,
    /// The connection was refused.
    Refused,
    /// The connection was reset before an answer.
    Reset,
}

impl OverloadCause {
    /// A short phrase for explanations.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TooManyRequests => "429 Too Many Requests",
            Self::UnavailableRetryAfter => "503 with Retry-After",
            Self::Declared => "the handler declared overload",
            Self::Timeout => "a timeout",
            Self::Refused => "a refused connection",
            Self::Reset => "a reset connection",
        }
    }
}

/// Classify an attempt's outcome for the limiter.
pub fn signal_of(outcome: &AttemptOutcome) -> Signal {
    let latency = outcome.duration;
    if let Some(transport) = outcome.transport {
        return match transport {
            TransportFailure::TimedOut => Signal::Overload(OverloadCause::Timeout),
            TransportFailure::Refused => Signal::Overload(OverloadCause::Refused),
            TransportFailure::Reset => Signal::Overload(OverloadCause::Reset),
            TransportFailure::Broken => Signal::Error { latency },
        };
    }
    match (outcome.declared, outcome.http_status) {
        (Some(DeclaredFailure::Overload), _) => Signal::Overload(OverloadCause::Declared),
        (None, Some(429)) => Signal::Overload(OverloadCause::TooManyRequests),
        (None, Some(503)) if outcome.retry_after.is_some() => Signal::Overload(OverloadCause::UnavailableRetryAfter),
        (None, Some(status)) if sdk::protocol::classify_status(status) == sdk::protocol::OutcomeClass::Temporary => {
            Signal::Error { latency }
        }
        // Success, a permanent failure, or an application error: an answer.
        _ => Signal::Answered { latency },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::protocol::OutcomeClass;

    fn answer(status: u16) -> AttemptOutcome {
        AttemptOutcome {
            class: sdk::protocol::classify_status(status),
            http_status: Some(status),
            error: None,
            output: None,
            retry_after: None,
            declared: None,
            transport: None,
            workflow: None,
            duration: Duration::from_millis(7),
        }
    }

    const LATENCY: Duration = Duration::from_millis(7);

    #[test]
    fn only_answers_that_say_so_are_overload() {
        assert_eq!(
            signal_of(&answer(429)),
            Signal::Overload(OverloadCause::TooManyRequests)
        );
        for status in [500, 502, 503, 504, 408] {
            assert_eq!(
                signal_of(&answer(status)),
                Signal::Error { latency: LATENCY },
                "{status}"
            );
        }
        let mut busy = answer(503);
        busy.retry_after = Some(Duration::from_secs(1));
        assert_eq!(signal_of(&busy), Signal::Overload(OverloadCause::UnavailableRetryAfter));
        for status in [200, 204, 400, 404, 422, 501] {
            assert_eq!(
                signal_of(&answer(status)),
                Signal::Answered { latency: LATENCY },
                "{status}"
            );
        }
    }

    #[test]
    fn a_declared_failure_wins_over_the_status() {
        let mut app = answer(503);
        app.retry_after = Some(Duration::from_secs(60));
        app.declared = Some(DeclaredFailure::Application);
        assert_eq!(signal_of(&app), Signal::Answered { latency: LATENCY });
        let mut overload = answer(500);
        overload.declared = Some(DeclaredFailure::Overload);
        assert_eq!(signal_of(&overload), Signal::Overload(OverloadCause::Declared));
    }

    #[test]
    fn transport_failures() {
        let mut outcome = answer(200);
        outcome.class = OutcomeClass::Temporary;
        outcome.http_status = None;
        for (failure, signal) in [
            (TransportFailure::TimedOut, Signal::Overload(OverloadCause::Timeout)),
            (TransportFailure::Refused, Signal::Overload(OverloadCause::Refused)),
            (TransportFailure::Reset, Signal::Overload(OverloadCause::Reset)),
            (TransportFailure::Broken, Signal::Error { latency: LATENCY }),
        ] {
            outcome.transport = Some(failure);
            assert_eq!(signal_of(&outcome), signal, "{failure:?}");
        }
    }
}
