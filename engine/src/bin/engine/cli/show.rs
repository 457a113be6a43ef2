//! How answers of the admin API are shown to a person: tables, a call with its journal,
//! stats, the members of a cluster.

use std::fmt::Write as _;

use engine::api::{self, Bytes, Millis};

pub(super) fn time(millis: Option<Millis>) -> String {
    /// The end of 9999-12-31: later is a wait only an event ends.
    const LAST: Millis = 253_402_300_799_999;
    millis.map_or_else(
        || "-".into(),
        |ms| {
            if ms > LAST {
                return "never (when what it waits for happens)".into();
            }
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    )
}

pub(super) fn text(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

pub(super) fn bytes(value: Option<&Bytes>) -> String {
    text(value.map(Bytes::as_text))
}

/// Render rows as an aligned table.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub(super) fn print_listing(list: &api::CallList) {
    let grouped = list.calls.iter().any(|c| c.member.is_some());
    let rows: Vec<Vec<String>> = list
        .calls
        .iter()
        .map(|c| {
            let mut error = text(c.call.last_error.as_deref());
            if error.chars().count() > 60 {
                error = error.chars().take(57).collect::<String>() + "...";
            }
            let mut row = vec![
                c.call.id.to_string(),
                c.call.subscription.clone(),
                c.call.status.to_string(),
                c.call.attempts.to_string(),
                bytes(c.key.as_ref()),
                time(Some(c.call.created_at)),
                error,
            ];
            if grouped {
                row.insert(1, text(c.member.as_deref()));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "ID",
        "SUBSCRIPTION",
        "STATUS",
        "ATTEMPTS",
        "KEY",
        "CREATED",
        "LAST ERROR",
    ];
    if grouped {
        headers.insert(1, "MEMBER");
    }
    out!("{}", table(&headers, &rows));
    if let Some(next) = list.next {
        outln!("(more: --after {next})");
    }
    for (member, part) in &list.members {
        match (&part.error, part.next) {
            (Some(error), _) => outln!("(member {member} did not answer: {error})"),
            (None, Some(next)) => outln!("(more of member {member}: --member {member} --after {next})"),
            (None, None) => {}
        }
    }
}

pub(super) fn print_call(call: &api::Call) {
    outln!("call {}", call.call.id);
    outln!("  {:<13} {}", "subscription", call.call.subscription);
    outln!("  {:<13} {}", "target", call.call.target);
    if let Some(member) = &call.member {
        outln!("  {:<13} {member}", "member");
    }
    outln!("  {:<13} {}", "status", call.call.status);
    outln!("  {:<13} {}", "last error", text(call.call.last_error.as_deref()));
    outln!("  {:<13} {}", "attempts", call.call.attempts);
    outln!("  {:<13} {}", "key", bytes(call.key.as_ref()));
    outln!("  {:<13} {}", "created", time(Some(call.call.created_at)));
    outln!("  {:<13} {}", "next attempt", time(call.call.next_attempt_at));
    if let Some(source) = &call.call.source {
        outln!(
            "  {:<13} {}/{} offset {}",
            "kafka",
            source.topic,
            source.partition,
            source.offset
        );
    }
    outln!("  {:<13} {}", "output", bytes(call.output.as_ref()));
    if let Some(parent) = &call.call.parent {
        outln!("  {:<13} workflow {} entry #{}", "child of", parent.id, parent.position);
    }
    if let Some(deployment) = &call.call.deployment {
        outln!(
            "  {:<13} {deployment} (pinned: only it may answer this workflow)",
            "deployment"
        );
    }
    print_journal(call);
    let rows: Vec<Vec<String>> = call
        .call
        .history
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                time(Some(a.started_at)),
                format!("{} ms", a.duration_ms),
                a.outcome.clone(),
                text(a.http_status.map(|s| s.to_string()).as_deref()),
                text(a.error.as_deref()),
            ]
        })
        .collect();
    outln!();
    out!(
        "{}",
        table(&["ATTEMPT", "STARTED", "DURATION", "OUTCOME", "HTTP", "ERROR"], &rows)
    );
}

/// A workflow's journal, an entry a line, and what it waits for.
pub(super) fn print_journal(call: &api::Call) {
    if call.call.journal.is_empty() {
        return;
    }
    let waited: Vec<u64> = call
        .call
        .waiting_for
        .as_ref()
        .and_then(|w| w.get("any_of"))
        .and_then(serde_json::Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .filter_map(serde_json::Value::as_array)
                .flatten()
                .filter_map(serde_json::Value::as_u64)
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = call
        .call
        .journal
        .iter()
        .enumerate()
        .map(|(position, entry)| {
            let (what, state) = describe_entry(entry);
            let marker = if waited.contains(&(position as u64)) {
                " <- waits"
            } else {
                ""
            };
            vec![format!("#{position}"), what, format!("{state}{marker}")]
        })
        .collect();
    outln!();
    out!("{}", table(&["ENTRY", "WHAT", "STATE"], &rows));
    if let Some(groups) = call.call.waiting_for.as_ref().and_then(|w| w.get("any_of")) {
        outln!("waiting for: {groups} (any group, all of its entries)");
    }
}

/// An entry's kind and name, and its state, in words.
pub(super) fn describe_entry(entry: &serde_json::Value) -> (String, String) {
    use sdk::workflow::Entry;
    let short = |v: &serde_json::Value| {
        let text = v.to_string();
        if text.chars().count() > 60 {
            format!("{}...", text.chars().take(57).collect::<String>())
        } else {
            text
        }
    };
    let outcome = |ok: &Option<serde_json::Value>, error: &Option<String>, at: Option<i64>| {
        let when = at.map_or(String::new(), |at| format!(" at {}", time(Some(at))));
        match (ok, error) {
            (_, Some(error)) => format!("failed{when}: {error}"),
            (Some(ok), None) => format!("ok{when} {}", short(ok)),
            (None, None) => "open".to_string(),
        }
    };
    match serde_json::from_value::<Entry>(entry.clone()) {
        Ok(Entry::Step { name, ok, error }) => (format!("step {name}"), outcome(&ok, &error, None)),
        Ok(Entry::Sleep { wake_at, .. }) => (
            "sleep".into(),
            wake_at.map_or("wake time not set".into(), |at| format!("until {}", time(Some(at)))),
        ),
        Ok(Entry::Now { value }) => ("now".into(), time(Some(value))),
        Ok(Entry::Call {
            target,
            id,
            ok,
            error,
            at,
            ..
        }) => (
            format!("call {target} {}", id.unwrap_or_default()),
            outcome(&ok, &error, at),
        ),
        Ok(Entry::Signal { name, ok, at }) => (format!("signal {name}"), outcome(&ok, &None, at)),
        Ok(Entry::Produce { topic, key, .. }) => (
            format!(
                "produce to {topic}{}",
                key.map_or(String::new(), |k| format!(" key {k}"))
            ),
            "stored".into(),
        ),
        Ok(Entry::Patch { id }) => (format!("patch {id}"), "this run follows the patched code".into()),
        Err(_) => (short(entry), String::new()),
    }
}

pub(super) fn counts_row(name: &str, c: &api::StatusCounts) -> Vec<String> {
    std::iter::once(name.to_string())
        .chain([c.pending, c.running, c.succeeded, c.dead, c.cancelled, c.paused].map(|n| n.to_string()))
        .collect()
}

pub(super) fn print_stats(stats: &api::Stats) {
    let mut rows: Vec<Vec<String>> = stats
        .subscriptions
        .iter()
        .map(|(name, s)| {
            let mut row = counts_row(name, &s.calls);
            let live = s.live.as_ref();
            row.push(live.map_or_else(|| "-".into(), |l| format!("{:.1}", l.throughput.finished_per_second)));
            row.push(
                live.and_then(|l| l.lag.as_ref())
                    .map_or_else(|| "-".into(), |lag| lag.iter().map(|p| p.lag).sum::<i64>().to_string()),
            );
            row
        })
        .collect();
    let mut all = counts_row("(all)", &stats.calls);
    all.extend([String::new(), String::new()]);
    rows.push(all);
    out!(
        "{}",
        table(
            &[
                "SUBSCRIPTION",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "DEAD",
                "CANCELLED",
                "PAUSED",
                "DONE/S (1M)",
                "LAG"
            ],
            &rows
        )
    );
    let lag: Vec<Vec<String>> = stats
        .subscriptions
        .iter()
        .flat_map(|(name, s)| {
            let partitions = s.live.as_ref().and_then(|l| l.lag.clone()).unwrap_or_default();
            partitions.into_iter().map(move |p| {
                vec![
                    name.clone(),
                    format!("{}/{}", p.topic, p.partition),
                    p.high_watermark.to_string(),
                    p.committed.map_or_else(|| "-".into(), |c| c.to_string()),
                    p.lag.to_string(),
                ]
            })
        })
        .collect();
    if !lag.is_empty() {
        outln!();
        out!(
            "{}",
            table(
                &["SUBSCRIPTION", "PARTITION", "HIGH WATERMARK", "COMMITTED", "LAG"],
                &lag
            )
        );
    }
    for (name, s) in &stats.subscriptions {
        let live = s.live.as_ref();
        if live.and_then(|l| l.kafka_down) == Some(true) {
            outln!("\n{name}: every Kafka broker is down; consumption waits");
        }
        if let Some(error) = live.and_then(|l| l.kafka_error.as_ref()) {
            outln!("\n{name}: Kafka: {error}");
        }
    }
    let endpoints: Vec<Vec<String>> = stats
        .endpoints
        .iter()
        .map(|(name, e)| {
            let last = e
                .recent_changes
                .iter()
                .rev()
                .find(|c| c.reason != "raise")
                .map_or_else(|| "-".to_string(), |c| format!("{} -> {}: {}", c.from, c.to, c.detail));
            vec![
                name.clone(),
                e.limit.to_string(),
                e.in_flight.to_string(),
                e.cuts.to_string(),
                last,
            ]
        })
        .collect();
    if !endpoints.is_empty() {
        outln!();
        out!(
            "{}",
            table(&["ENDPOINT", "LIMIT", "IN FLIGHT", "CUTS", "LAST DECISION"], &endpoints)
        );
    }
}

pub(super) fn print_member_errors(errors: &std::collections::BTreeMap<String, String>) {
    for (member, error) in errors {
        outln!("member {member} did not answer: {error}");
    }
}

pub(super) fn print_group_stats(stats: &api::GroupStats) {
    let rows: Vec<Vec<String>> = stats
        .members
        .iter()
        .map(|(member, part)| match (&part.stats, &part.error) {
            (Some(s), _) => counts_row(member, &s.calls),
            (None, error) => vec![member.clone(), format!("did not answer: {}", text(error.as_deref()))],
        })
        .chain(std::iter::once(counts_row("(all)", &stats.calls)))
        .collect();
    out!(
        "{}",
        table(
            &[
                "MEMBER",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "DEAD",
                "CANCELLED",
                "PAUSED"
            ],
            &rows
        )
    );
}

pub(super) fn print_cluster(view: &api::ClusterView) {
    if !view.enabled {
        outln!("cluster mode is off ([cluster] enabled = false): this engine is the whole group");
        return;
    }
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|m| {
            let assigned: Vec<String> = m
                .record
                .assigned
                .iter()
                .map(|(subscription, partitions)| format!("{subscription}: {}", partitions.join(" ")))
                .collect();
            vec![
                format!("{}{}", m.record.id, if m.me { " (this)" } else { "" }),
                m.record.admin_url.clone(),
                if m.stale {
                    format!("stale, {} s ago", m.heard_ms_ago / 1000)
                } else {
                    format!("{} s ago", m.heard_ms_ago / 1000)
                },
                time(Some(m.record.started_at)),
                if assigned.is_empty() {
                    "-".into()
                } else {
                    assigned.join("; ")
                },
            ]
        })
        .collect();
    outln!("members topic {}", text(view.topic.as_deref()));
    out!(
        "{}",
        table(&["MEMBER", "ADMIN", "HEARD", "STARTED", "PARTITIONS"], &rows)
    );
}
