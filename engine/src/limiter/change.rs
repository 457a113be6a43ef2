//! What the limiter did and why: a change of the limit or a verdict, explained with the
//! figures behind it for stats, metrics, logs and the dashboard.

use super::OverloadCause;
use crate::model::Millis;

/// A change of the limit, or a verdict about the endpoint, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitChange {
    pub at: Millis,
    pub from: usize,
    pub to: usize,
    pub reason: ChangeReason,
}

/// Where latency, rising with concurrency in slow start, will cross the threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knee {
    /// The concurrency where it will.
    pub at: f64,
    /// What the estimate rests on: this median at this concurrency, against the reference.
    pub median_ms: f64,
    pub reference_ms: f64,
    pub in_flight: f64,
}

/// Why the limit changed, with what was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChangeReason {
    /// The endpoint was kept busy and answered without complaint.
    Raise,
    /// An attempt said the endpoint is saturated.
    Overload(OverloadCause),
    /// The median latency rose with concurrency.
    Latency {
        median_ms: f64,
        reference_ms: f64,
        in_flight: f64,
    },
    /// Slow start ended at the knee that latency rising with concurrency points to;
    /// `cut` when the limit was already past it.
    Knee { estimate: Knee, cut: bool },
    /// Unexplained errors rose above the usual rate: a trial cut.
    ErrorTrial { rate: f64, usual: Option<f64> },
    /// The trial cut made the errors fall: they were overload, the cut stays.
    ErrorsWereOverload { before: f64, after: f64 },
    /// The trial cut did not make the errors fall: application errors, the limit is back.
    ErrorsNotOverload { before: f64, after: f64 },
    /// Concurrency held at the initial limit for a round, to measure the latency there.
    Probe { after_futile_cut: bool },
    /// The probe's measurement; the limit is back. `usual_errors`: the 5xx errors seen even
    /// at low concurrency, taken as the application's from then on. `plateau_ms`: the
    /// latency that latency cuts did not lower while this measurement stayed the same,
    /// taken as the endpoint's latency under load from then on.
    Probed {
        reference_ms: f64,
        usual_errors: Option<f64>,
        plateau_ms: Option<f64>,
    },
}

impl ChangeReason {
    /// A stable short name, for metrics labels and filters.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Raise => "raise",
            Self::Overload(_) => "overload",
            Self::Latency { .. } => "latency",
            Self::Knee { .. } => "knee",
            Self::ErrorTrial { .. } => "error_trial",
            Self::ErrorsWereOverload { .. } => "errors_were_overload",
            Self::ErrorsNotOverload { .. } => "errors_not_overload",
            Self::Probe { .. } => "probe",
            Self::Probed { .. } => "probed",
        }
    }

    /// Whether this lowered the limit because of the endpoint's state.
    pub fn is_cut(&self) -> bool {
        matches!(
            self,
            Self::Overload(_) | Self::Latency { .. } | Self::ErrorTrial { .. } | Self::Knee { cut: true, .. }
        )
    }

    /// What was seen and what was done, in a sentence for operators.
    pub fn explain(&self) -> String {
        let pct = |rate: f64| format!("{:.0}%", rate * 100.0);
        match *self {
            Self::Raise => "raise: the endpoint was kept busy and answered without overload".into(),
            Self::Overload(cause) => format!("cut: {} (overload)", cause.describe()),
            Self::Latency {
                median_ms,
                reference_ms,
                in_flight,
            } => format!(
                "cut: median latency {median_ms:.1} ms at {in_flight:.0} in flight, {:.1}x the {reference_ms:.1} ms at low concurrency",
                median_ms / reference_ms.max(1e-3)
            ),
            Self::Knee { estimate, cut } => format!(
                "{}: median latency {:.1} ms at {:.0} in flight against {:.1} ms at low concurrency points to the threshold near {:.0} in flight; one slot per round trip from there",
                if cut { "cut to the knee" } else { "slow start ends" },
                estimate.median_ms,
                estimate.in_flight,
                estimate.reference_ms,
                estimate.at
            ),
            Self::ErrorTrial { rate, usual } => format!(
                "trial cut: {} of answers were 5xx errors (usual {}); do they fall with concurrency?",
                pct(rate),
                usual.map_or_else(|| "unknown".into(), pct)
            ),
            Self::ErrorsWereOverload { before, after } => format!(
                "kept the cut: 5xx errors fell from {} to {} with less concurrency (overload)",
                pct(before),
                pct(after)
            ),
            Self::ErrorsNotOverload { before, after } => format!(
                "restored: 5xx errors did not fall with less concurrency ({} then {}): application errors, not overload",
                pct(before),
                pct(after)
            ),
            Self::Probe { after_futile_cut } => if after_futile_cut {
                "probe: latency did not fall after cutting the limit by a fifth; measuring it at low concurrency before cutting again"
            } else {
                "probe: measuring latency at low concurrency for one round"
            }
            .into(),
            Self::Probed {
                reference_ms,
                usual_errors,
                plateau_ms,
            } => {
                let errors = usual_errors.map_or_else(String::new, |rate| {
                    format!(
                        "; {} of answers were 5xx errors even there: application errors, not overload",
                        pct(rate)
                    )
                });
                let plateau = plateau_ms.map_or_else(String::new, |ms| {
                    format!(
                        "; unchanged, so latency under load ({ms:.1} ms, which cuts did not lower) is not a queue: the limit is back where the cuts began, and only latency above {:.1} ms counts from now on",
                        ms * super::PLATEAU_TOLERANCE
                    )
                });
                format!("probe done: median latency {reference_ms:.1} ms at low concurrency{errors}{plateau}")
            }
        }
    }
}
