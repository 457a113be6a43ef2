//! Durable workflows, the engine's side (protocol 4): what a workflow's answer means for
//! its journal. Pure: the delivery reads the answer, this turns it into the entries to
//! store and when to call again, the store appends them fenced by the journal's length.
//!
//! The SDK's side, and the entries themselves, are in `sdk::workflow`; the wire format is
//! in docs/protocol.md and the model in docs/workflows.md.

use sdk::workflow::{Entry, Suspension, Wait};

use crate::model::Millis;

/// Most entries a journal may hold: a workflow that loops forever is stopped with a clear
/// error instead of growing without bound.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes of one entry (a step's result, JSON).
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Most bytes of a *suspended* answer read from a handler.
pub const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// What a workflow's answer asks of the engine, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowStep {
    /// Append `entries` (JSON) at position `from`, then call again at `resume_at`.
    Suspended {
        from: u32,
        entries: Vec<String>,
        resume_at: Millis,
    },
    /// The code and the journal disagree, or the answer breaks the protocol or a limit:
    /// the call waits for an operator.
    Paused(String),
}

/// Turn a suspended answer into what to store. `sent` is the journal the request carried
/// (`None`: an empty one); `now` is the engine's clock as the answer arrived, from which
/// new sleeps count.
pub fn resolve(sent: Option<&[u8]>, answer: Suspension, now: Millis) -> WorkflowStep {
    match try_resolve(sent, answer, now) {
        Ok(step) => step,
        Err(reason) => WorkflowStep::Paused(format!("broken workflow answer: {reason}")),
    }
}

fn try_resolve(sent: Option<&[u8]>, answer: Suspension, now: Millis) -> Result<WorkflowStep, String> {
    let journal: Vec<Entry> = match sent {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("the journal sent does not decode: {e}"))?,
        None => Vec::new(),
    };
    if answer.from as usize != journal.len() {
        return Err(format!(
            "it continues the journal at entry {} but the request carried {} entries",
            answer.from,
            journal.len()
        ));
    }
    if journal.len() + answer.entries.len() > MAX_ENTRIES {
        return Err(format!(
            "the journal would hold {} entries, more than the limit of {MAX_ENTRIES}",
            journal.len() + answer.entries.len()
        ));
    }
    let mut stored = Vec::with_capacity(answer.entries.len());
    let mut wakes: Vec<Option<Millis>> = journal.iter().map(wake_of).collect();
    for (i, entry) in answer.entries.into_iter().enumerate() {
        let position = journal.len() + i;
        let entry = match entry {
            Entry::Sleep { wake_at, duration_ms } => {
                let wake_at = match (wake_at, duration_ms) {
                    (Some(at), _) => at,
                    (None, Some(duration)) => now.saturating_add(duration.max(0)),
                    (None, None) => {
                        return Err(format!(
                            "entry {position}: a sleep with neither wake_at nor duration_ms"
                        ))
                    }
                };
                Entry::Sleep {
                    wake_at: Some(wake_at),
                    duration_ms: None,
                }
            }
            other => other,
        };
        wakes.push(wake_of(&entry));
        let json = serde_json::to_string(&entry).map_err(|e| format!("entry {position}: {e}"))?;
        if json.len() > MAX_ENTRY_BYTES {
            return Err(format!(
                "entry {position} is {} bytes, more than the limit of {MAX_ENTRY_BYTES}",
                json.len()
            ));
        }
        stored.push(json);
    }
    let resume_at = match answer.wait {
        None => now,
        Some(Wait::Sleep(position)) => wakes
            .get(position as usize)
            .copied()
            .flatten()
            .ok_or_else(|| format!("it waits for entry {position}, which is not a sleep"))?,
    };
    Ok(WorkflowStep::Suspended {
        from: answer.from,
        entries: stored,
        resume_at,
    })
}

fn wake_of(entry: &Entry) -> Option<Millis> {
    match entry {
        Entry::Sleep { wake_at, .. } => *wake_at,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str) -> Entry {
        Entry::Step {
            name: name.into(),
            ok: Some(serde_json::json!(1)),
            error: None,
        }
    }

    #[test]
    fn a_new_sleep_wakes_on_the_engine_clock() {
        let answer = Suspension {
            from: 0,
            entries: vec![
                step("charge"),
                Entry::Sleep {
                    wake_at: None,
                    duration_ms: Some(5_000),
                },
            ],
            wait: Some(Wait::Sleep(1)),
        };
        let WorkflowStep::Suspended {
            from,
            entries,
            resume_at,
        } = resolve(None, answer, 1_000)
        else {
            panic!()
        };
        assert_eq!((from, resume_at), (0, 6_000));
        assert_eq!(entries[1], r#"{"kind":"sleep","wake_at":6000}"#);
    }

    #[test]
    fn an_early_wake_waits_for_the_stored_sleep_and_no_wait_means_now() {
        let sent = br#"[{"kind":"sleep","wake_at":9000}]"#;
        let again = Suspension {
            from: 1,
            entries: vec![],
            wait: Some(Wait::Sleep(0)),
        };
        assert!(matches!(
            resolve(Some(sent), again, 2_000),
            WorkflowStep::Suspended { resume_at: 9_000, .. }
        ));
        let store_first = Suspension {
            from: 1,
            entries: vec![step("a")],
            wait: None,
        };
        assert!(matches!(
            resolve(Some(sent), store_first, 2_000),
            WorkflowStep::Suspended {
                resume_at: 2_000,
                from: 1,
                ..
            }
        ));
    }

    #[test]
    fn broken_answers_pause_the_call_with_the_reason() {
        let wrong_from = Suspension {
            from: 3,
            entries: vec![],
            wait: None,
        };
        let WorkflowStep::Paused(reason) = resolve(None, wrong_from, 0) else {
            panic!()
        };
        assert!(reason.contains("at entry 3 but the request carried 0"), "{reason}");

        let wait_on_a_step = Suspension {
            from: 0,
            entries: vec![step("a")],
            wait: Some(Wait::Sleep(0)),
        };
        let WorkflowStep::Paused(reason) = resolve(None, wait_on_a_step, 0) else {
            panic!()
        };
        assert!(reason.contains("not a sleep"), "{reason}");

        let huge = Suspension {
            from: 0,
            entries: vec![Entry::Step {
                name: "big".into(),
                ok: Some(serde_json::Value::String("x".repeat(MAX_ENTRY_BYTES))),
                error: None,
            }],
            wait: None,
        };
        let WorkflowStep::Paused(reason) = resolve(None, huge, 0) else {
            panic!()
        };
        assert!(reason.contains("more than the limit"), "{reason}");
    }
}
