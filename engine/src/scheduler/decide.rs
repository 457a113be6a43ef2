//! What happens to a call after an attempt: a pure function of the outcome, the policy, the
//! call's age and a random draw.

use sdk::protocol::OutcomeClass;

use crate::delivery::AttemptOutcome;
use crate::model::{Millis, Transition};
use crate::retry::RetryPolicy;
use crate::workflow::WorkflowStep;

/// Decide the call's next state after attempt number `attempt`.
pub fn decide(
    policy: &RetryPolicy,
    outcome: &AttemptOutcome,
    attempt: u32,
    created_at: Millis,
    now: Millis,
    random: f64,
) -> Transition {
    let error = || outcome.error.clone().unwrap_or_else(|| "unknown error".into());
    match &outcome.workflow {
        Some(WorkflowStep::Suspended(suspended)) => return Transition::Suspended(suspended.clone()),
        Some(WorkflowStep::Paused(reason)) => return Transition::Paused { error: reason.clone() },
        None => {}
    }
    match outcome.class {
        OutcomeClass::Success => Transition::Succeeded {
            output: outcome.output.clone(),
        },
        OutcomeClass::Permanent => Transition::Dead { error: error() },
        OutcomeClass::Temporary => {
            if policy.max_attempts > 0 && attempt >= policy.max_attempts {
                return Transition::Dead {
                    error: format!("gave up after {attempt} attempts; last error: {}", error()),
                };
            }
            let delay = match outcome.retry_after {
                Some(asked) => policy.clamp_retry_after(asked),
                None => policy.backoff(attempt, random),
            };
            let at = now.saturating_add(delay.as_millis() as Millis);
            let deadline = created_at.saturating_add(policy.max_age.as_millis() as Millis);
            if at > deadline {
                return Transition::Dead {
                    error: format!(
                        "gave up: the next attempt would pass max_age ({}); last error: {}",
                        humantime::format_duration(policy.max_age),
                        error()
                    ),
                };
            }
            Transition::Retry { at, error: error() }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;

    /// An outcome of `class`, answered 503 ("HTTP 503") in 3 ms.
    pub(in crate::scheduler) fn outcome(class: OutcomeClass) -> AttemptOutcome {
        AttemptOutcome {
            class,
            http_status: Some(503),
            error: Some("HTTP 503".into()),
            output: None,
            retry_after: None,
            declared: None,
            transport: None,
            workflow: None,
            duration: Duration::from_millis(3),
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .with_initial_delay(Duration::from_secs(1))
            .with_jitter(0.0)
            .with_max_attempts(5)
            .with_max_age(Duration::from_secs(3600))
            .with_max_delay(Duration::from_secs(60))
    }

    #[test]
    fn success_and_permanent_are_final() {
        let mut ok = outcome(OutcomeClass::Success);
        ok.output = Some(b"done".to_vec());
        assert_eq!(
            decide(&policy(), &ok, 1, 0, 0, 0.0),
            Transition::Succeeded {
                output: Some(b"done".to_vec())
            }
        );
        assert_eq!(
            decide(&policy(), &outcome(OutcomeClass::Permanent), 1, 0, 0, 0.0),
            Transition::Dead {
                error: "HTTP 503".into()
            }
        );
    }

    #[test]
    fn temporary_retries_with_backoff() {
        let t = decide(&policy(), &outcome(OutcomeClass::Temporary), 2, 0, 10_000, 0.0);
        assert_eq!(
            t,
            Transition::Retry {
                at: 12_000,
                error: "HTTP 503".into()
            }
        );
    }

    #[test]
    fn retry_after_overrides_backoff_within_max_delay() {
        let mut o = outcome(OutcomeClass::Temporary);
        o.retry_after = Some(Duration::from_secs(7));
        assert!(matches!(
            decide(&policy(), &o, 1, 0, 0, 0.0),
            Transition::Retry { at: 7_000, .. }
        ));
        o.retry_after = Some(Duration::from_secs(7200));
        assert!(matches!(
            decide(&policy(), &o, 1, 0, 0, 0.0),
            Transition::Retry { at: 60_000, .. }
        ));
    }

    #[test]
    fn max_attempts_and_max_age_end_in_dead() {
        let t = decide(&policy(), &outcome(OutcomeClass::Temporary), 5, 0, 0, 0.0);
        assert!(
            matches!(&t, Transition::Dead { error } if error.contains("after 5 attempts")),
            "{t:?}"
        );
        let t = decide(&policy(), &outcome(OutcomeClass::Temporary), 1, 0, 3_599_500, 0.0);
        assert!(
            matches!(&t, Transition::Dead { error } if error.contains("max_age")),
            "{t:?}"
        );
        let unlimited = policy().with_max_attempts(0);
        let t = decide(&unlimited, &outcome(OutcomeClass::Temporary), 1000, 0, 0, 0.0);
        assert!(matches!(t, Transition::Retry { .. }));
    }
}
