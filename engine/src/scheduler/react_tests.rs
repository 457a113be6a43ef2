use std::time::Duration;

use sdk::protocol::OutcomeClass;

use super::*;

fn call(seq: i64, key: &str) -> DueCall {
    DueCall {
        seq,
        id: uuid::Uuid::nil(),
        target: "http://t".into(),
        payload: Vec::new(),
        tombstone: false,
        key: Some(key.as_bytes().to_vec()),
        headers: None,
        source: None,
        ordering_key: Some(format!("k{key}").into_bytes()),
        attempts: 0,
        next_attempt_at: 0,
        created_at: 0,
        attempts_before_redrive: 0,
        redriven_at: None,
        journal_len: 0,
    }
}

fn outcome(class: OutcomeClass, status: u16) -> AttemptOutcome {
    let mut outcome = super::super::decide::tests::outcome(class);
    outcome.http_status = Some(status);
    outcome.error = (class != OutcomeClass::Success).then(|| format!("HTTP {status}"));
    outcome
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_initial_delay(Duration::from_secs(1))
        .with_jitter(0.0)
        .with_max_attempts(3)
}

/// A reactor holding calls 1 and 2 of key `a` (2 queued behind 1), with 1 in flight.
fn reactor(on_dead: OnDead) -> (Reactor, Arc<DueCall>) {
    let mut reactor = Reactor::new(Window::new(10, 8), policy(), on_dead);
    reactor.window.offer(call(1, "a"));
    reactor.window.offer(call(2, "a"));
    let (first, attempt) = reactor.window.pop_due(0).expect("call 1 is due");
    assert_eq!((first.seq, attempt), (1, 1));
    reactor.attempt_started(1);
    (reactor, first)
}

fn ended(call: &Arc<DueCall>, attempt: u32, outcome: AttemptOutcome) -> AttemptEnded {
    AttemptEnded {
        call: Arc::clone(call),
        attempt,
        sent: Sent { at: 0, in_flight: 1 },
        outcome,
    }
}

fn counts(effects: &[Effect]) -> Vec<Count> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Count(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn transition(effects: &[Effect]) -> Option<&Transition> {
    effects.iter().find_map(|e| match e {
        Effect::FinishAttempt { transition, .. } => Some(transition),
        _ => None,
    })
}

#[test]
fn a_success_frees_the_endpoint_counts_and_lets_the_next_call_of_its_key_run() {
    let (mut reactor, first) = reactor(OnDead::Skip);
    let effects = reactor.attempt_ended(&ended(&first, 1, outcome(OutcomeClass::Success, 200)), 10, 0.5);
    assert!(matches!(
        effects[0],
        Effect::ReleaseEndpoint {
            signal: Signal::Answered { .. },
            ..
        }
    ));
    assert_eq!(counts(&effects), [Count::Succeeded]);
    assert!(matches!(transition(&effects), Some(Transition::Succeeded { .. })));
    assert_eq!(reactor.in_flight(), 0);
    let (next, _) = reactor.window.pop_due(10).expect("call 2 runs next");
    assert_eq!(next.seq, 2);
}

#[test]
fn a_temporary_failure_keeps_the_key_and_schedules_a_retry() {
    let (mut reactor, first) = reactor(OnDead::Skip);
    let effects = reactor.attempt_ended(&ended(&first, 1, outcome(OutcomeClass::Temporary, 500)), 10, 0.5);
    assert_eq!(counts(&effects), [Count::WillRetry]);
    assert!(matches!(
        transition(&effects),
        Some(Transition::Retry { at: 1_010, .. })
    ));
    assert!(
        reactor.window.pop_due(500).is_none(),
        "call 2 waits behind the retrying call"
    );
    assert_eq!(
        (reactor.window.len(), reactor.window.parked()),
        (0, 1),
        "a retry a second away waits on disk, with the key's queue"
    );
    assert_eq!(reactor.window.parked_due(1_010), vec![1], "read back when due");
    let mut stored = (*first).clone();
    stored.attempts = 1;
    stored.next_attempt_at = 1_010;
    reactor.window.unpark(stored);
    let (again, attempt) = reactor.window.pop_due(1_010).expect("the retry is due");
    assert_eq!((again.seq, attempt), (1, 2));
}

#[test]
fn a_dead_call_blocks_its_key_only_with_on_dead_block() {
    let dead = outcome(OutcomeClass::Permanent, 400);
    let (mut skip, first) = reactor(OnDead::Skip);
    let effects = skip.attempt_ended(&ended(&first, 1, dead.clone()), 10, 0.5);
    assert_eq!(counts(&effects), [Count::WentDead]);
    assert!(matches!(
        effects.iter().find(|e| matches!(e, Effect::FinishAttempt { .. })),
        Some(Effect::FinishAttempt { block_group: false, .. })
    ));
    assert_eq!(skip.window.pop_due(10).map(|(c, _)| c.seq), Some(2));

    let (mut block, first) = reactor(OnDead::Block);
    let effects = block.attempt_ended(&ended(&first, 1, dead), 10, 0.5);
    assert!(matches!(
        effects.iter().find(|e| matches!(e, Effect::FinishAttempt { .. })),
        Some(Effect::FinishAttempt { block_group: true, .. })
    ));
    assert!(block.window.pop_due(10).is_none(), "the key is held");
    // Redriving the dead call releases the key through the store, in order.
    let effects = block.control(
        Control::Redriven {
            seq: 1,
            ordering_key: first.ordering_key.clone(),
        },
        20,
    );
    assert_eq!(effects[0], Effect::Count(Count::Redriven));
    assert!(matches!(&effects[1], Effect::LoadGroup(load) if load.after_seq == 0));
}

#[test]
fn a_redrive_without_blocking_runs_the_call_outside_its_key_order() {
    let (mut reactor, _) = reactor(OnDead::Skip);
    let effects = reactor.control(
        Control::Redriven {
            seq: 7,
            ordering_key: Some(b"ka".to_vec()),
        },
        0,
    );
    assert_eq!(
        effects,
        [Effect::Count(Count::Redriven), Effect::OfferOutOfOrder { seq: 7 }]
    );
}

#[test]
fn a_call_cancelled_in_flight_records_its_attempt_and_nothing_more() {
    let (mut reactor, first) = reactor(OnDead::Skip);
    let effects = reactor.control(
        Control::Cancelled {
            seq: 1,
            was: CallStatus::Running,
            ordering_key: first.ordering_key.clone(),
        },
        5,
    );
    assert_eq!(
        effects,
        [Effect::Count(Count::Cancelled)],
        "the backlog shrinks at once"
    );
    let effects = reactor.attempt_ended(&ended(&first, 1, outcome(OutcomeClass::Success, 200)), 10, 0.5);
    assert!(counts(&effects).is_empty(), "a cancelled call is not counted again");
    assert_eq!(
        transition(&effects),
        Some(&Transition::Dead { error: String::new() }),
        "the store keeps the call cancelled"
    );
    assert_eq!(reactor.window.pop_due(10).map(|(c, _)| c.seq), Some(2));
}

#[test]
fn cancelling_a_waiting_call_takes_it_out_of_the_window() {
    let (mut reactor, _) = reactor(OnDead::Skip);
    let effects = reactor.control(
        Control::Cancelled {
            seq: 2,
            was: CallStatus::Pending,
            ordering_key: Some(b"ka".to_vec()),
        },
        5,
    );
    assert_eq!(effects, [Effect::Count(Count::Cancelled)]);
    assert_eq!(reactor.window.len(), 1);
}

#[test]
fn giving_up_after_max_attempts_is_dead() {
    let (mut reactor, first) = reactor(OnDead::Skip);
    let effects = reactor.attempt_ended(&ended(&first, 3, outcome(OutcomeClass::Temporary, 503)), 10, 0.5);
    assert!(matches!(transition(&effects), Some(Transition::Dead { error }) if error.contains("after 3 attempts")));
}
