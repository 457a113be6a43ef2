//! Durable workflows, the engine's side (protocol 4): what a workflow's answer means for
//! its journal. Pure: the delivery reads the answer, this turns it into the entries to
//! store and when to call again, the store appends them fenced by the journal's length.
//!
//! The SDK's side, and the entries themselves, are in `sdk::workflow`; the wire format is
//! in docs/protocol.md and the model in docs/workflows.md.

use sdk::workflow::{Entry, Suspension};

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
    /// Store the new entries and what the call waits for.
    Suspended(Box<Suspended>),
    /// The code and the journal disagree, or the answer breaks the protocol or a limit:
    /// the call waits for an operator.
    Paused(String),
}

/// A suspension to store, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspended {
    /// The position of the first new entry (the fence: the journal's length when sent).
    pub from: u32,
    /// New entries, JSON.
    pub entries: Vec<String>,
    /// When to call again as far as time goes; `None`: only an event (a child ending, a
    /// signal) ends the wait. The store may make it sooner (a child already ended).
    pub resume_at: Option<Millis>,
    /// What the call waits for (JSON of [`Wait`]), kept so that children and signals can
    /// tell when it is over.
    pub wait: Option<String>,
    /// Child calls to create.
    pub children: Vec<Child>,
    /// Records to publish.
    pub outbox: Vec<OutboxRecord>,
    /// The children as calls of their subscriptions, filled in by the scheduler (which
    /// knows every subscription's config) before the store creates them.
    pub calls: Vec<crate::model::NewCall>,
    /// The deployment that answered (protocol 7), pinned if the call has none yet.
    pub deployment: Option<String>,
}

/// What a workflow's next attempt is sent with: its journal (a JSON array), the engine's
/// clock when it was read, and the deployment the workflow is pinned to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub journal: Vec<u8>,
    pub now: Millis,
    pub pinned: Option<String>,
}

/// Whether an answer may be used by a workflow pinned to `pinned`: `None` if so, else why
/// the call pauses. A workflow replayed on code it did not start on could take another path
/// through its journal; pausing lets an operator bring the old deployment back (then
/// redrive) or restart the call on the new one.
pub fn deployment_changed(pinned: Option<&str>, answered: Option<&str>, target: &str) -> Option<String> {
    let pinned = pinned?;
    let by = match answered {
        Some(answered) if answered == pinned => return None,
        Some(answered) => format!("deployment `{answered}`"),
        None => "code that declares no deployment".to_string(),
    };
    Some(format!(
        "the workflow started on deployment `{pinned}`, but {by} answered at {target}: serve `{pinned}` there until its workflows end, then redrive (new code goes to a new URL: change the subscription's target), or restart the call to run it on the new code"
    ))
}

/// A child call a workflow asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub position: u32,
    pub id: uuid::Uuid,
    /// The subscription it runs in.
    pub subscription: String,
    /// Its payload: the input, as JSON.
    pub input: Vec<u8>,
    pub key: Option<String>,
}

/// A record a workflow produces, published from the outbox once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRecord {
    pub position: u32,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// What the engine knows beyond the answer: which subscriptions exist (children run in
/// one), and whether this subscription can publish records (it has a Kafka connection).
pub trait Directory: Send + Sync {
    fn has_subscription(&self, name: &str) -> bool;
    fn can_produce(&self) -> bool;
}

/// The time the engine gives to a wait only an event can end.
pub const NEVER: Millis = i64::MAX / 4;

/// Turn a suspended answer into what to store. `sent` is the journal the request carried
/// (`None`: an empty one); `now` is the engine's clock as the answer arrived, from which
/// new sleeps count.
pub fn resolve(sent: Option<&[u8]>, answer: Suspension, now: Millis, directory: &dyn Directory) -> WorkflowStep {
    match try_resolve(sent, answer, now, directory) {
        Ok(step) => WorkflowStep::Suspended(Box::new(step)),
        Err(reason) => WorkflowStep::Paused(format!("broken workflow answer: {reason}")),
    }
}

fn try_resolve(
    sent: Option<&[u8]>,
    answer: Suspension,
    now: Millis,
    directory: &dyn Directory,
) -> Result<Suspended, String> {
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
    let mut all = journal;
    let mut suspended = Suspended {
        from: answer.from,
        entries: Vec::with_capacity(answer.entries.len()),
        resume_at: None,
        wait: None,
        children: Vec::new(),
        outbox: Vec::new(),
        calls: Vec::new(),
        deployment: None,
    };
    for entry in answer.entries {
        let position = u32::try_from(all.len()).unwrap_or(u32::MAX);
        let entry = admit(entry, position, now, directory, &mut suspended)?;
        let json = serde_json::to_string(&entry).map_err(|e| format!("entry {position}: {e}"))?;
        if json.len() > MAX_ENTRY_BYTES {
            return Err(format!(
                "entry {position} is {} bytes, more than the limit of {MAX_ENTRY_BYTES}",
                json.len()
            ));
        }
        suspended.entries.push(json);
        all.push(entry);
    }
    if suspended.children.len() > MAX_CHILDREN_PER_ANSWER {
        return Err(format!(
            "it starts {} child calls at once, more than the limit of {MAX_CHILDREN_PER_ANSWER}",
            suspended.children.len()
        ));
    }
    match answer.wait {
        None => suspended.resume_at = Some(now),
        Some(wait) => {
            for position in wait.positions() {
                let waitable = all
                    .get(position as usize)
                    .is_some_and(|e| matches!(e, Entry::Sleep { .. } | Entry::Call { .. } | Entry::Signal { .. }));
                if !waitable {
                    return Err(format!(
                        "it waits for entry {position}, which is not a sleep, a child call or a signal"
                    ));
                }
            }
            suspended.resume_at = wait.ends_at(|p| all.get(p as usize), now);
            suspended.wait = Some(serde_json::to_string(&wait).map_err(|e| e.to_string())?);
        }
    }
    Ok(suspended)
}

/// Longest signal name, in bytes.
pub const MAX_SIGNAL_NAME: usize = 255;

/// Whether `name` may name a signal (in a workflow's entry, or sent through the API).
pub fn valid_signal_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_SIGNAL_NAME
}

/// Most child calls one answer may start.
pub const MAX_CHILDREN_PER_ANSWER: usize = 1_000;

/// Check one new entry and fill in what the engine decides: a sleep's wake time, a child's
/// id; note the children to create and the records to publish.
fn admit(
    entry: Entry,
    position: u32,
    now: Millis,
    directory: &dyn Directory,
    suspended: &mut Suspended,
) -> Result<Entry, String> {
    Ok(match entry {
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
        Entry::Call { target, input, key, .. } => {
            if !directory.has_subscription(&target) {
                return Err(format!(
                    "entry {position} calls `{target}`, which is not a subscription of this engine"
                ));
            }
            let id = uuid::Uuid::now_v7();
            suspended.children.push(Child {
                position,
                id,
                subscription: target.clone(),
                input: serde_json::to_vec(&input).map_err(|e| e.to_string())?,
                key: key.clone(),
            });
            Entry::Call {
                target,
                input,
                key,
                id: Some(id.to_string()),
                ok: None,
                error: None,
                at: None,
            }
        }
        Entry::Signal { name, .. } => {
            if !valid_signal_name(&name) {
                return Err(format!(
                    "entry {position}: a signal's name must be 1 to {MAX_SIGNAL_NAME} bytes"
                ));
            }
            Entry::Signal {
                name,
                ok: None,
                at: None,
            }
        }
        Entry::Produce { topic, key, value } => {
            if !directory.can_produce() {
                return Err(format!(
                    "entry {position} produces to `{topic}`, but this subscription has no [subscription.kafka] section to publish with"
                ));
            }
            if topic.is_empty() {
                return Err(format!("entry {position}: produce to an empty topic name"));
            }
            suspended.outbox.push(OutboxRecord {
                position,
                topic: topic.clone(),
                key: key.clone().map(String::into_bytes),
                value: serde_json::to_vec(&value).map_err(|e| e.to_string())?,
            });
            Entry::Produce { topic, key, value }
        }
        Entry::Patch { id } => {
            if id.is_empty() || id.len() > MAX_SIGNAL_NAME {
                return Err(format!(
                    "entry {position}: a patch id must be 1 to {MAX_SIGNAL_NAME} bytes"
                ));
            }
            Entry::Patch { id }
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdk::workflow::Wait;

    struct Known;
    impl Directory for Known {
        fn has_subscription(&self, name: &str) -> bool {
            name == "lines"
        }
        fn can_produce(&self) -> bool {
            false
        }
    }

    fn step(name: &str) -> Entry {
        Entry::Step {
            name: name.into(),
            ok: Some(serde_json::json!(1)),
            error: None,
        }
    }

    fn suspended(step: WorkflowStep) -> Suspended {
        match step {
            WorkflowStep::Suspended(s) => *s,
            WorkflowStep::Paused(reason) => panic!("paused: {reason}"),
        }
    }

    fn paused(step: WorkflowStep) -> String {
        match step {
            WorkflowStep::Paused(reason) => reason,
            WorkflowStep::Suspended(s) => panic!("suspended: {s:?}"),
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
        let s = suspended(resolve(None, answer, 1_000, &Known));
        assert_eq!((s.from, s.resume_at), (0, Some(6_000)));
        assert_eq!(s.entries[1], r#"{"kind":"sleep","wake_at":6000}"#);
    }

    #[test]
    fn an_early_wake_waits_for_the_stored_sleep_and_no_wait_means_now() {
        let sent = br#"[{"kind":"sleep","wake_at":9000}]"#;
        let again = Suspension {
            from: 1,
            entries: vec![],
            wait: Some(Wait::AnyOf(vec![vec![0]])),
        };
        assert_eq!(
            suspended(resolve(Some(sent), again, 2_000, &Known)).resume_at,
            Some(9_000)
        );
        let store_first = Suspension {
            from: 1,
            entries: vec![step("a")],
            wait: None,
        };
        let s = suspended(resolve(Some(sent), store_first, 2_000, &Known));
        assert_eq!((s.from, s.resume_at, s.wait), (1, Some(2_000), None));
    }

    #[test]
    fn children_get_ids_and_a_wait_for_them_has_no_time() {
        let child = |n: u32| Entry::Call {
            target: "lines".into(),
            input: serde_json::json!(n),
            key: None,
            id: None,
            ok: None,
            error: None,
            at: None,
        };
        let answer = Suspension {
            from: 0,
            entries: vec![child(1), child(2)],
            wait: Some(Wait::AnyOf(vec![vec![0, 1]])),
        };
        let s = suspended(resolve(None, answer, 1_000, &Known));
        assert_eq!(s.resume_at, None, "only the children's ends can wake it");
        assert_eq!(s.children.len(), 2);
        assert_eq!((s.children[1].position, s.children[1].input.as_slice()), (1, &b"2"[..]));
        let stored: Entry = serde_json::from_str(&s.entries[0]).unwrap();
        assert!(matches!(stored, Entry::Call { id: Some(id), .. } if id == s.children[0].id.to_string()));
        assert_eq!(s.wait.as_deref(), Some(r#"{"any_of":[[0,1]]}"#));

        let unknown = Suspension {
            from: 0,
            entries: vec![Entry::Call {
                target: "nowhere".into(),
                input: serde_json::Value::Null,
                key: None,
                id: None,
                ok: None,
                error: None,
                at: None,
            }],
            wait: None,
        };
        assert!(paused(resolve(None, unknown, 0, &Known)).contains("`nowhere`, which is not a subscription"));
        let produce = Suspension {
            from: 0,
            entries: vec![Entry::Produce {
                topic: "out".into(),
                key: None,
                value: serde_json::Value::Null,
            }],
            wait: None,
        };
        assert!(paused(resolve(None, produce, 0, &Known)).contains("no [subscription.kafka] section"));
    }

    #[test]
    fn broken_answers_pause_the_call_with_the_reason() {
        let wrong_from = Suspension {
            from: 3,
            entries: vec![],
            wait: None,
        };
        let reason = paused(resolve(None, wrong_from, 0, &Known));
        assert!(reason.contains("at entry 3 but the request carried 0"), "{reason}");

        let wait_on_a_step = Suspension {
            from: 0,
            entries: vec![step("a")],
            wait: Some(Wait::Sleep(0)),
        };
        let reason = paused(resolve(None, wait_on_a_step, 0, &Known));
        assert!(reason.contains("not a sleep, a child call or a signal"), "{reason}");

        let huge = Suspension {
            from: 0,
            entries: vec![Entry::Step {
                name: "big".into(),
                ok: Some(serde_json::Value::String("x".repeat(MAX_ENTRY_BYTES))),
                error: None,
            }],
            wait: None,
        };
        let reason = paused(resolve(None, huge, 0, &Known));
        assert!(reason.contains("more than the limit"), "{reason}");
    }

    #[test]
    fn only_the_pinned_deployment_may_answer_a_workflow() {
        assert_eq!(
            deployment_changed(None, Some("v2"), "http://t"),
            None,
            "nothing pinned yet"
        );
        assert_eq!(deployment_changed(Some("v1"), Some("v1"), "http://t"), None);
        let other = deployment_changed(Some("v1"), Some("v2"), "http://t/ship").unwrap();
        assert!(
            other.contains("started on deployment `v1`, but deployment `v2` answered at http://t/ship"),
            "{other}"
        );
        let undeclared = deployment_changed(Some("v1"), None, "http://t").unwrap();
        assert!(undeclared.contains("code that declares no deployment"), "{undeclared}");
    }
}
