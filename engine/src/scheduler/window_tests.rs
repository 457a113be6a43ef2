//! Unit tests of the window: ordering, parking, capacity.
use super::*;

fn call(seq: i64, key: Option<&str>) -> DueCall {
    DueCall {
        seq,
        id: uuid::Uuid::now_v7(),
        target: "http://t".into(),
        payload: Vec::new(),
        tombstone: false,
        key: key.map(|k| k.as_bytes().to_vec()),
        headers: None,
        source: None,
        ordering_key: key.map(|k| k.as_bytes().to_vec()),
        attempts: 0,
        next_attempt_at: 0,
        created_at: 0,
        attempts_before_redrive: 0,
        redriven_at: None,
        journal_len: 0,
    }
}

fn drain(window: &mut Window, now: Millis) -> Vec<i64> {
    std::iter::from_fn(|| window.pop_due(now).map(|(c, _)| c.seq)).collect()
}

#[test]
fn calls_due_far_ahead_are_parked_as_they_are_offered_and_never_fill_the_window() {
    let mut w = Window::new(2, 4);
    let sleeping = |seq, key| DueCall {
        next_attempt_at: 86_400_000,
        ..call(seq, key)
    };
    for seq in 1..=100 {
        assert!(w.offer_at(sleeping(seq, None), 0));
    }
    assert_eq!((w.len(), w.parked()), (0, 100));
    assert!(w.has_room());
    // A sleeping head of a key is parked too; the key's next call waits behind it.
    assert!(w.offer_at(sleeping(200, Some("k")), 0));
    assert!(w.offer_at(call(201, Some("k")), 0));
    assert_eq!((w.len(), w.parked()), (1, 101));
    assert_eq!(drain(&mut w, 0), Vec::<i64>::new(), "201 waits for its key's head");
    assert!(w.offer_at(call(101, None), 0));
    assert_eq!(drain(&mut w, 0), vec![101], "a due call runs while the rest sleep");
    assert_eq!(w.next_unpark(), Some(86_400_000));
    // A call due within a second stays in memory.
    assert!(w.offer_at(
        DueCall {
            next_attempt_at: 500,
            ..call(102, None)
        },
        0
    ));
    assert_eq!((w.len(), w.parked()), (3, 101), "201 queued, 101 in flight, 102 held");
    assert_eq!(w.pop_due_at(600).map(|(c, _, due)| (c.seq, due)), Some((102, 500)));
}

#[test]
fn unordered_calls_all_run_at_once() {
    let mut w = Window::new(10, 4);
    for seq in 1..=3 {
        assert!(w.offer(call(seq, None)));
    }
    assert_eq!(drain(&mut w, 0), vec![1, 2, 3]);
}

#[test]
fn same_key_runs_one_at_a_time_in_order() {
    let mut w = Window::new(10, 4);
    for (seq, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "a")] {
        assert!(w.offer(call(seq, Some(key))));
    }
    assert_eq!(drain(&mut w, 0), vec![1, 2]);
    assert_eq!(w.complete(1, Completion::Done), None);
    assert_eq!(drain(&mut w, 0), vec![3]);
    w.complete(3, Completion::Done);
    assert_eq!(drain(&mut w, 0), vec![4]);
}

#[test]
fn a_retrying_key_holds_back_only_itself() {
    let mut w = Window::new(10, 4);
    for (seq, key) in [(1, "a"), (2, "a"), (3, "b"), (4, "b")] {
        w.offer(call(seq, Some(key)));
    }
    assert_eq!(drain(&mut w, 0), vec![1, 3]);
    w.retry(1, 500, 0);
    w.complete(3, Completion::Done);
    assert_eq!(drain(&mut w, 10), vec![4], "key b continues while a waits");
    assert_eq!(w.next_due(), Some(500));
    assert_eq!(drain(&mut w, 499), Vec::<i64>::new());
    let (again, attempt) = w.pop_due(500).unwrap();
    assert_eq!((again.seq, attempt), (1, 2));
}

#[test]
fn overflowing_group_spills_to_disk_and_is_reloaded_in_order() {
    let mut w = Window::new(100, 1);
    assert!(w.offer(call(1, Some("a"))));
    assert!(w.offer(call(2, Some("a"))));
    assert!(!w.offer(call(3, Some("a"))), "queue full: stays on disk");
    assert!(!w.offer(call(4, Some("a"))));
    assert!(w.offer(call(5, Some("b"))), "other keys still enter");
    assert_eq!(w.len(), 3);
    assert_eq!(drain(&mut w, 0), vec![1, 5]);
    assert_eq!(w.complete(1, Completion::Done), None, "queued call 2 takes over");
    assert_eq!(drain(&mut w, 0), vec![2]);
    let load = w.complete(2, Completion::Done).expect("group must be reloaded");
    assert_eq!(load.after_seq, 2);
    assert!(!w.offer(call(6, Some("a"))), "cursor calls wait while the group loads");
    w.group_loaded(b"a", vec![call(3, Some("a")), call(4, Some("a"))], false);
    assert_eq!(drain(&mut w, 0), vec![3]);
    w.complete(3, Completion::Done);
    assert_eq!(drain(&mut w, 0), vec![4]);
    let load = w.complete(4, Completion::Done).expect("more on disk");
    assert_eq!(load.after_seq, 4);
    w.group_loaded(b"a", vec![call(6, Some("a"))], true);
    assert_eq!(drain(&mut w, 0), vec![6]);
    assert_eq!(w.complete(6, Completion::Done), None);
    assert!(!w.knows_group(b"a"), "a drained group is forgotten");
}

#[test]
fn a_dead_call_blocks_its_group_until_unblocked() {
    let mut w = Window::new(10, 4);
    for (seq, key) in [(1, "a"), (2, "a"), (3, "b")] {
        w.offer(call(seq, Some(key)));
    }
    assert_eq!(drain(&mut w, 0), vec![1, 3]);
    assert_eq!(w.complete(1, Completion::BlocksGroup), None);
    assert_eq!(w.len(), 1, "queued calls of a blocked group are released from memory");
    assert!(!w.offer(call(4, Some("a"))));
    assert_eq!(drain(&mut w, 0), Vec::<i64>::new());
    let load = w.unblock(b"a").expect("blocked group reloads");
    w.group_loaded(&load.ordering_key, vec![call(2, Some("a")), call(4, Some("a"))], true);
    assert_eq!(drain(&mut w, 0), vec![2]);
}

#[test]
fn a_group_blocked_in_the_store_stays_blocked_after_restart() {
    let mut w = Window::new(10, 4);
    w.block(b"a".to_vec());
    assert!(!w.offer(call(7, Some("a"))));
    assert!(w.knows_group(b"a"));
    assert!(!w.offer(call(8, Some("a"))));
    assert_eq!(drain(&mut w, 0), Vec::<i64>::new());
}

#[test]
fn capacity_bounds_the_window() {
    let mut w = Window::new(2, 4);
    w.offer(call(1, None));
    assert!(w.has_room());
    w.offer(call(2, None));
    assert!(!w.has_room());
    drain(&mut w, 0);
    w.complete(1, Completion::Done);
    assert!(w.has_room());
}

#[test]
fn a_workflow_resuming_soon_stays_in_a_half_full_window_where_a_retry_is_parked() {
    let mut window = Window::new(4, 8);
    for seq in 1..=3 {
        assert!(window.offer(call(seq, Some(&format!("k{seq}")))));
    }
    assert_eq!(drain(&mut window, 0), [1, 2, 3]);
    window.resume(1, 10, 10);
    window.retry(2, 10, 10);
    window.resume(3, 10 + PARK_AFTER_MS, 10);
    assert_eq!(window.parked(), 2, "the retry and the far resume are parked");
    assert_eq!(
        drain(&mut window, 10),
        [1],
        "the workflow's next step runs at once, from memory"
    );
}

#[test]
fn parked_calls_past_their_time_count_as_due_timers() {
    let mut window = Window::new(8, 8);
    for seq in 1..=3 {
        assert!(window.offer(call(seq, None)));
    }
    assert_eq!(drain(&mut window, 0), [1, 2, 3]);
    window.resume(1, PARK_AFTER_MS, 0);
    window.resume(2, 2 * PARK_AFTER_MS, 0);
    window.resume(3, 10, 0);
    assert_eq!(window.parked(), 2);
    assert_eq!(window.parked_overdue(PARK_AFTER_MS), 1);
    assert_eq!(window.parked_overdue(2 * PARK_AFTER_MS), 2);
}

#[test]
fn retry_now_moves_a_waiting_call_forward() {
    let mut w = Window::new(10, 4);
    w.offer(call(1, None));
    drain(&mut w, 0);
    assert!(!w.retry_now(1, 5), "in flight: nothing to move");
    w.retry(1, 500, 0);
    assert!(w.retry_now(1, 5));
    assert_eq!(drain(&mut w, 5), vec![1]);
    assert_eq!(w.retrying(), 0);
}

fn retried(seq: i64, key: Option<&str>, attempts: u32, at: Millis) -> DueCall {
    DueCall {
        attempts,
        next_attempt_at: at,
        ..call(seq, key)
    }
}

#[test]
fn first_attempts_and_retries_take_turns_when_both_are_due() {
    let mut w = Window::new(10, 4);
    w.offer(retried(1, None, 3, 0));
    w.offer(retried(2, None, 5, 0));
    w.offer(retried(3, None, 1, 0));
    w.offer(call(4, None));
    w.offer(call(5, None));
    assert_eq!(
        drain(&mut w, 0),
        vec![4, 1, 5, 2, 3],
        "a flood of retries takes every other start, not all of them"
    );
}

#[test]
fn failing_keys_park_on_disk_and_leave_the_window_to_the_others() {
    let mut w = Window::new(4, 2);
    for (seq, key) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        w.offer(call(seq, Some(key)));
    }
    assert!(!w.has_room());
    assert_eq!(drain(&mut w, 0), vec![1, 2, 3, 4]);
    for seq in 1..=4 {
        w.retry(seq, 10_000, 0);
    }
    assert_eq!(
        (w.len(), w.parked(), w.retrying()),
        (0, 4, 4),
        "four keys wait, none in memory"
    );
    assert!(w.has_room());
    w.offer(call(5, Some("e")));
    assert_eq!(drain(&mut w, 1), vec![5], "another key runs at once");
    assert_eq!(w.next_unpark(), Some(10_000));
    assert!(w.parked_due(9_999).is_empty());
    assert_eq!(w.parked_due(10_000), vec![1, 2], "read back up to half the window");
    w.unpark(retried(1, Some("a"), 1, 10_000));
    w.unpark(retried(2, Some("b"), 1, 10_000));
    assert!(w.parked_due(10_000).is_empty(), "the rest wait while those are held");
    let (again, attempt) = w.pop_due(10_000).unwrap();
    assert_eq!((again.seq, attempt), (1, 2), "read back, it runs as the second attempt");
    w.complete(1, Completion::Done);
    assert_eq!(w.parked_due(10_000), vec![3], "one done, one more read back");
    assert_eq!(w.parked(), 2);
}

#[test]
fn a_parked_head_keeps_its_key_in_order() {
    let mut w = Window::new(100, 4);
    for seq in 1..=3 {
        w.offer(call(seq, Some("a")));
    }
    assert_eq!(drain(&mut w, 0), vec![1]);
    w.retry(1, 5_000, 0);
    assert_eq!(w.len(), 0, "the queue behind the head goes back to disk too");
    assert!(!w.offer(call(4, Some("a"))), "later calls of the key wait on disk");
    assert_eq!(drain(&mut w, 4_999), Vec::<i64>::new());
    assert_eq!(w.parked_due(5_000), vec![1]);
    w.unpark(retried(1, Some("a"), 1, 5_000));
    assert_eq!(drain(&mut w, 5_000), vec![1]);
    assert_eq!(
        w.complete(1, Completion::Done),
        Some(GroupLoad {
            ordering_key: b"a".to_vec(),
            after_seq: 1
        }),
        "then the key's next calls are read, in order"
    );
}

#[test]
fn a_short_retry_stays_in_memory_unless_the_window_is_half_full() {
    let mut w = Window::new(4, 2);
    w.offer(call(1, None));
    drain(&mut w, 0);
    w.retry(1, 200, 0);
    assert_eq!((w.len(), w.parked()), (1, 0));
    w.offer(call(2, None));
    drain(&mut w, 0);
    assert_eq!(drain(&mut w, 200), vec![1]);
    w.retry(1, 400, 200);
    assert_eq!((w.len(), w.parked()), (1, 1), "two of four held: parked");
}

#[test]
fn a_parked_call_can_be_cancelled_or_moved_forward() {
    let mut w = Window::new(10, 4);
    w.offer(call(1, Some("a")));
    w.offer(call(2, None));
    drain(&mut w, 0);
    w.retry(1, 60_000, 0);
    w.retry(2, 60_000, 0);
    assert!(w.retry_now(2, 10));
    assert_eq!(w.next_unpark(), Some(10));
    assert_eq!(
        w.complete(1, Completion::Done),
        None,
        "cancelled while parked: its key is done"
    );
    assert!(!w.knows_group(b"a"));
    assert_eq!(w.parked_due(60_000), vec![2], "only the call still parked");
    w.unpark(retried(1, Some("a"), 1, 60_000));
    assert_eq!(w.len(), 0, "reading back a call no longer parked holds nothing");
}
