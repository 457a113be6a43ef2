//! `/metrics`: the live figures in Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use connectors::kafka::SourceStatus;

use super::AdminState;
use crate::api::EndpointStats;
use crate::figures::FiguresSnapshot;
use crate::telemetry::HistogramSnapshot;

/// Prometheus text exposition of the live figures.
pub(super) async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut subs: Vec<_> = state.figures.iter().collect();
    subs.sort_by(|a, b| a.0.cmp(b.0));
    let snapshots: Vec<(&String, FiguresSnapshot)> = subs.iter().map(|(name, f)| (*name, f.snapshot())).collect();
    let mut endpoints: Vec<_> = state.endpoints.all().map(|(k, e)| (k.clone(), e.snapshot())).collect();
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Exposition::default();

    let per_sub = |f: &dyn Fn(&FiguresSnapshot) -> f64| -> Vec<(String, f64)> {
        snapshots
            .iter()
            .map(|(name, s)| (labels(&[("subscription", name)]), f(s)))
            .collect()
    };
    let with_dead_letters = |name: &String| state.subscriptions.get(name).is_some_and(|s| s.dead_letter.is_some());
    // One series per Kafka subscription, read from its source's status.
    let per_source = |f: &dyn Fn(&SourceStatus) -> f64| -> Vec<(String, f64)> {
        subs.iter()
            .filter_map(|(name, s)| Some((labels(&[("subscription", name)]), f(s.source()?))))
            .collect()
    };
    out.family(
        "engine_records_consumed_total",
        "counter",
        "Records read from Kafka (before deduplication).",
        per_source(&|s| s.consumed.load(Relaxed) as f64),
    );
    out.family(
        "engine_kafka_brokers_down",
        "gauge",
        "1 while librdkafka reports every broker of the subscription's cluster down.",
        per_source(&|s| f64::from(u8::from(s.brokers_down.load(Relaxed)))),
    );
    out.family(
        "engine_kafka_rebalances_total",
        "counter",
        "Rebalance events of the subscription's consumer: assignments and revocations.",
        per_source(&|s| s.rebalances.load(Relaxed) as f64),
    );
    out.family(
        "engine_kafka_assigned_partitions",
        "gauge",
        "Partitions of the subscription's topics assigned to this engine.",
        per_source(&|s| s.assigned.lock().map_or(0, |a| a.len()) as f64),
    );
    for (family, help, value) in [
        (
            "engine_cluster_restores_total",
            "Cluster mode: assignments restored from the changelog.",
            (|r: crate::figures::Restores| r.restores as f64) as fn(crate::figures::Restores) -> f64,
        ),
        (
            "engine_cluster_restored_calls_total",
            "Cluster mode: calls stored by restores (open and finished).",
            |r| r.calls as f64,
        ),
        (
            "engine_cluster_restore_seconds_total",
            "Cluster mode: time spent restoring, from the claim to the last call stored.",
            |r| r.seconds,
        ),
    ] {
        out.family(
            family,
            "counter",
            help,
            subs.iter()
                .filter(|(_, s)| s.source().is_some())
                .map(|(name, s)| (labels(&[("subscription", name)]), value(s.restores())))
                .collect(),
        );
    }
    out.family(
        "engine_calls_created_total",
        "counter",
        "Calls created from records or the API.",
        per_sub(&|s| s.ingested as f64),
    );
    out.family(
        "engine_calls_total",
        "counter",
        "Calls finished, by outcome.",
        snapshots
            .iter()
            .flat_map(|(name, s)| {
                [("succeeded", s.succeeded), ("dead", s.dead)]
                    .map(|(outcome, n)| (labels(&[("subscription", name), ("outcome", outcome)]), n as f64))
            })
            .collect(),
    );
    out.family(
        "engine_attempts_retried_total",
        "counter",
        "Attempts that failed temporarily.",
        per_sub(&|s| s.retried as f64),
    );
    out.family(
        "engine_workflow_suspensions_total",
        "counter",
        "Workflow answers that stored journal entries and suspended.",
        per_sub(&|s| s.suspended as f64),
    );
    out.family(
        "engine_workflows_paused_total",
        "counter",
        "Workflows paused for an operator (code and journal disagree, or a broken answer).",
        per_sub(&|s| s.paused as f64),
    );
    out.family(
        "engine_calls_parked",
        "gauge",
        "Calls waiting outside memory for a time or an event: sleeping and waiting workflows, retries far off.",
        per_sub(&|s| s.parked as f64),
    );
    out.family(
        "engine_timers_due",
        "gauge",
        "Parked calls past their time and not read back yet (a backlog of due timers).",
        per_sub(&|s| s.timers_due as f64),
    );
    out.histogram(
        "engine_workflow_wake_lag_seconds",
        "How late a workflow's next attempt started after it was due (a sleep's wake time, the end of what it waited for, a retry's time).",
        subs.iter()
            .map(|(name, s)| (vec![("subscription", name.as_str())], s.wake_lag_seconds()))
            .collect(),
    );
    out.histogram(
        "engine_attempt_duration_seconds",
        "Time from sending an attempt to its outcome.",
        subs.iter()
            .map(|(name, s)| (vec![("subscription", name.as_str())], s.attempt_seconds()))
            .collect(),
    );
    out.family(
        "engine_dead_letters_published_total",
        "counter",
        "Dead calls produced to the subscription's dead-letter topic.",
        snapshots
            .iter()
            .filter(|(name, _)| with_dead_letters(name))
            .map(|(name, s)| (labels(&[("subscription", name)]), s.dead_lettered as f64))
            .collect(),
    );
    out.family(
        "engine_dead_letters_failing",
        "gauge",
        "1 while producing to the subscription's dead-letter topic fails.",
        snapshots
            .iter()
            .filter(|(name, _)| with_dead_letters(name))
            .map(|(name, s)| {
                (
                    labels(&[("subscription", name)]),
                    f64::from(u8::from(s.dead_letters_failing)),
                )
            })
            .collect(),
    );
    out.family(
        "engine_backlog",
        "gauge",
        "Calls pending or running.",
        per_sub(&|s| s.backlog as f64),
    );
    out.family(
        "engine_in_flight",
        "gauge",
        "Attempts in flight.",
        per_sub(&|s| s.in_flight as f64),
    );
    out.family(
        "engine_consumer_lag",
        "gauge",
        "Records of a partition not yet committed by the engine's consumer group.",
        subs.iter()
            .filter_map(|(name, s)| s.source().map(|source| (name, source.lag())))
            .flat_map(|(name, lag)| {
                lag.into_iter().map(move |p| {
                    let partition = p.partition.to_string();
                    (
                        labels(&[("subscription", name), ("topic", &p.topic), ("partition", &partition)]),
                        p.lag as f64,
                    )
                })
            })
            .collect(),
    );
    let per_endpoint = |f: &dyn Fn(&EndpointStats) -> f64| -> Vec<(String, f64)> {
        endpoints
            .iter()
            .map(|(k, e)| (labels(&[("endpoint", k)]), f(e)))
            .collect()
    };
    out.family(
        "engine_workflow_journals_fetched_total",
        "counter",
        "Journals too large to send inline (over 4 MiB) that handlers fetched from the admin API.",
        vec![(String::new(), state.journals.fetched() as f64)],
    );
    out.family(
        "engine_endpoint_concurrency_limit",
        "gauge",
        "Current adaptive concurrency limit.",
        per_endpoint(&|e| e.limit as f64),
    );
    out.family(
        "engine_endpoint_in_flight",
        "gauge",
        "Attempts in flight to the endpoint.",
        per_endpoint(&|e| e.in_flight as f64),
    );
    out.family(
        "engine_endpoint_limit_raises_total",
        "counter",
        "Times the limit went up.",
        per_endpoint(&|e| e.raises as f64),
    );
    out.family(
        "engine_endpoint_limit_cuts_total",
        "counter",
        "Times the limit was cut for overload (explicit, latency, or a 5xx trial).",
        per_endpoint(&|e| e.cuts as f64),
    );
    out.family(
        "engine_endpoint_limit_changes_total",
        "counter",
        "Limit changes and verdicts by reason: raise, overload, latency, knee, error_trial, errors_were_overload, errors_not_overload, probe, probed.",
        endpoints
            .iter()
            .flat_map(|(k, e)| {
                e.changes_by_reason
                    .iter()
                    .map(move |(reason, n)| (labels(&[("endpoint", k), ("reason", reason)]), *n as f64))
            })
            .collect(),
    );
    out.family(
        "engine_endpoint_usual_error_rate",
        "gauge",
        "Share of answers that are 5xx errors found to be the application's, not overload (absent until found).",
        endpoints
            .iter()
            .filter_map(|(k, e)| Some((labels(&[("endpoint", k)]), e.usual_error_rate?)))
            .collect(),
    );
    let writer = state.store.writer_stats();
    out.family(
        "engine_store_commits_total",
        "counter",
        "Store transactions committed.",
        vec![(String::new(), writer.commits.load(Relaxed) as f64)],
    );
    out.family(
        "engine_store_rows_total",
        "counter",
        "Changes committed.",
        vec![(String::new(), writer.rows.load(Relaxed) as f64)],
    );
    out.histogram(
        "engine_store_commit_rows",
        "Changes per store commit (group commit batch size).",
        vec![(Vec::new(), writer.batch_rows.snapshot())],
    );
    out.histogram(
        "engine_store_commit_duration_seconds",
        "Time to commit one store transaction.",
        vec![(Vec::new(), writer.commit_seconds.snapshot())],
    );
    out.family(
        "engine_store_failing",
        "gauge",
        "1 while store writes fail (for example a full disk) and ingestion waits.",
        vec![(String::new(), f64::from(u8::from(writer.failing.load(Relaxed))))],
    );
    out.family(
        "engine_store_failed_writes_total",
        "counter",
        "Store commits that failed and were retried (the batch is held until one succeeds).",
        vec![(String::new(), writer.failed_writes.load(Relaxed) as f64)],
    );
    out.family(
        "engine_store_reused_offsets_total",
        "counter",
        "Records stored as new calls because a different record had used their offset before (a recreated topic, another cluster).",
        vec![(String::new(), writer.reused_offsets.load(Relaxed) as f64)],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.text)
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.text, "{name}{labels} {value}");
        }
    }

    fn histogram(&mut self, name: &str, help: &str, series: Vec<(Vec<(&str, &str)>, HistogramSnapshot)>) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (base, snapshot) in series {
            for (bound, count) in &snapshot.buckets {
                let le = if bound.is_infinite() {
                    "+Inf".to_string()
                } else {
                    bound.to_string()
                };
                let mut with_le = base.clone();
                with_le.push(("le", &le));
                let _ = writeln!(self.text, "{name}_bucket{} {count}", labels(&with_le));
            }
            let _ = writeln!(self.text, "{name}_sum{} {}", labels(&base), snapshot.sum);
            let _ = writeln!(self.text, "{name}_count{} {}", labels(&base), snapshot.count);
        }
    }
}

/// `{k="v",...}` with values escaped, or nothing for no labels.
fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Histogram;

    #[test]
    fn histograms_are_exposed_cumulatively_with_sum_and_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        let mut out = Exposition::default();
        out.histogram(
            "x_seconds",
            "help",
            vec![(vec![("subscription", "a\"b")], h.snapshot())],
        );
        let expected = "# HELP x_seconds help\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{subscription=\"a\\\"b\",le=\"0.1\"} 1\n\
            x_seconds_bucket{subscription=\"a\\\"b\",le=\"1\"} 2\n\
            x_seconds_bucket{subscription=\"a\\\"b\",le=\"+Inf\"} 2\n\
            x_seconds_sum{subscription=\"a\\\"b\"} 0.55\n\
            x_seconds_count{subscription=\"a\\\"b\"} 2\n";
        assert_eq!(out.text, expected);
    }
}
