//! The in-memory window of one subscription's calls, with per-group ordering. Pure: no I/O,
//! no clock; the executor passes the time in.
//!
//! The store is the truth and this is a bounded cache of it:
//! - calls are offered in creation order (`seq`), from a cursor over the store;
//! - a call with an ordering key runs only when it is the head of its group; up to
//!   `group_queue` later calls of the group wait in memory, and past that the group is marked
//!   `more_on_disk` and its calls stay in the store until the group drains;
//! - so a stuck key holds at most `1 + group_queue` slots, and never blocks other keys.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::model::{DueCall, Millis};

/// What the executor must fetch from the store to continue a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLoad {
    pub ordering_key: Vec<u8>,
    /// Fetch pending calls of the group after this sequence number.
    pub after_seq: i64,
}

/// How a call left the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Succeeded, dead with `on_dead = skip`, or cancelled: the group moves on.
    Done,
    /// Dead with `on_dead = block`: the group waits for an operator.
    BlocksGroup,
}

#[derive(Debug)]
struct Held {
    call: Arc<DueCall>,
    /// When the call may run next; `None` while an attempt is in flight or it waits in a queue.
    due: Option<Millis>,
    attempts: u32,
}

#[derive(Debug, Default)]
struct Group {
    head: Option<i64>,
    queued: VecDeque<i64>,
    /// Later calls of the group are in the store but not in memory.
    more_on_disk: bool,
    /// An earlier call is dead and the policy is `block`.
    blocked: bool,
    /// The executor is fetching the group's next calls.
    loading: bool,
}

impl Group {
    fn is_idle(&self) -> bool {
        self.head.is_none() && self.queued.is_empty() && !self.more_on_disk && !self.blocked && !self.loading
    }
}

/// The window. See the module docs.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    group_queue: usize,
    held: HashMap<i64, Held>,
    groups: HashMap<Vec<u8>, Group>,
    due: BinaryHeap<Reverse<(Millis, i64)>>,
}

impl Window {
    /// A window holding at most `capacity` calls, with at most `group_queue` calls waiting
    /// behind each group's head.
    pub fn new(capacity: usize, group_queue: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            group_queue,
            held: HashMap::new(),
            groups: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// Calls in memory.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no call is in memory.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Whether the cursor may offer more calls.
    pub fn has_room(&self) -> bool {
        self.held.len() < self.capacity
    }

    /// Whether the group of this key is known to be blocked or is otherwise present.
    pub fn knows_group(&self, ordering_key: &[u8]) -> bool {
        self.groups.contains_key(ordering_key)
    }

    /// A dead call holds this key (`on_dead = block`, found in the store at start).
    pub fn block(&mut self, ordering_key: Vec<u8>) {
        let group = self.groups.entry(ordering_key).or_default();
        group.blocked = true;
        group.more_on_disk = true;
    }

    /// Offer the next call from the cursor. Returns whether it is now held in memory.
    pub fn offer(&mut self, call: DueCall) -> bool {
        let Some(key) = call.ordering_key.clone() else {
            self.hold_as_head(call);
            return true;
        };
        let group = self.groups.entry(key).or_default();
        if group.head.is_none() && group.queued.is_empty() && !group.blocked && !group.loading && !group.more_on_disk {
            group.head = Some(call.seq);
            self.hold_as_head(call);
            true
        } else if !group.more_on_disk && !group.blocked && !group.loading && group.queued.len() < self.group_queue {
            group.queued.push_back(call.seq);
            self.hold(call, None);
            true
        } else {
            group.more_on_disk = true;
            false
        }
    }

    fn hold_as_head(&mut self, call: DueCall) {
        let due = call.next_attempt_at;
        self.due.push(Reverse((due, call.seq)));
        self.hold(call, Some(due));
    }

    fn hold(&mut self, call: DueCall, due: Option<Millis>) {
        let attempts = call.attempts;
        self.held.insert(
            call.seq,
            Held {
                call: Arc::new(call),
                due,
                attempts,
            },
        );
    }

    /// The earliest time a held call becomes due.
    pub fn next_due(&mut self) -> Option<Millis> {
        while let Some(Reverse((at, seq))) = self.due.peek().copied() {
            if self.is_current(at, seq) {
                return Some(at);
            }
            self.due.pop();
        }
        None
    }

    fn is_current(&self, at: Millis, seq: i64) -> bool {
        self.held.get(&seq).is_some_and(|h| h.due == Some(at))
    }

    /// Take the next call due at `now`, marking it in flight. Returns the call and the
    /// number of the attempt to make.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Arc<DueCall>, u32)> {
        while let Some(Reverse((at, seq))) = self.due.peek().copied() {
            if at > now {
                return None;
            }
            self.due.pop();
            if !self.is_current(at, seq) {
                continue;
            }
            let held = self.held.get_mut(&seq).expect("checked above");
            held.due = None;
            held.attempts += 1;
            return Some((Arc::clone(&held.call), held.attempts));
        }
        None
    }

    /// The attempt in flight failed temporarily: run the call again at `at`.
    pub fn retry(&mut self, seq: i64, at: Millis) {
        if let Some(held) = self.held.get_mut(&seq) {
            held.due = Some(at);
            self.due.push(Reverse((at, seq)));
        }
    }

    /// Make a waiting call due now (an operator's "retry now").
    pub fn retry_now(&mut self, seq: i64, now: Millis) -> bool {
        match self.held.get(&seq) {
            Some(held) if held.due.is_some() => {
                self.retry(seq, now);
                true
            }
            _ => false,
        }
    }

    /// The call left the window. Returns what must be fetched to continue its group.
    pub fn complete(&mut self, seq: i64, how: Completion) -> Option<GroupLoad> {
        let held = self.held.remove(&seq)?;
        let key = held.call.ordering_key.clone()?;
        let group = self.groups.get_mut(&key)?;
        if group.head != Some(seq) {
            // A queued call was cancelled: it just leaves the queue.
            group.queued.retain(|&s| s != seq);
            return None;
        }
        group.head = None;
        if how == Completion::BlocksGroup {
            group.blocked = true;
            // Free the memory of calls that cannot run until an operator acts.
            for queued in group.queued.drain(..) {
                self.held.remove(&queued);
            }
            group.more_on_disk = true;
            return None;
        }
        if let Some(next) = group.queued.pop_front() {
            group.head = Some(next);
            let held = self.held.get_mut(&next).expect("queued calls are held");
            let at = held.call.next_attempt_at;
            held.due = Some(at);
            self.due.push(Reverse((at, next)));
            return None;
        }
        if group.more_on_disk {
            group.loading = true;
            return Some(GroupLoad {
                ordering_key: key,
                after_seq: seq,
            });
        }
        self.groups.remove(&key);
        None
    }

    /// The store answered a [`GroupLoad`] with the group's next calls, in order, and whether
    /// it returned every call it had.
    pub fn group_loaded(&mut self, ordering_key: &[u8], calls: Vec<DueCall>, complete: bool) {
        let Some(group) = self.groups.get_mut(ordering_key) else {
            return;
        };
        group.loading = false;
        group.more_on_disk = false;
        if calls.is_empty() && complete {
            if group.is_idle() {
                self.groups.remove(ordering_key);
            }
            return;
        }
        for call in calls {
            self.offer(call);
        }
        if !complete {
            if let Some(group) = self.groups.get_mut(ordering_key) {
                group.more_on_disk = true;
            }
        }
    }

    /// An operator acted on a blocked group: it may run again. Returns what to fetch.
    pub fn unblock(&mut self, ordering_key: &[u8]) -> Option<GroupLoad> {
        let group = self.groups.get_mut(ordering_key)?;
        if !group.blocked {
            return None;
        }
        group.blocked = false;
        group.loading = true;
        Some(GroupLoad {
            ordering_key: ordering_key.to_vec(),
            after_seq: 0,
        })
    }

    /// Calls waiting for a retry (not in flight, not queued behind a head), for stats.
    pub fn retrying(&self) -> usize {
        self.held.values().filter(|h| h.due.is_some() && h.attempts > 0).count()
    }
}

#[cfg(test)]
mod tests {
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
        }
    }

    fn drain(window: &mut Window, now: Millis) -> Vec<i64> {
        std::iter::from_fn(|| window.pop_due(now).map(|(c, _)| c.seq)).collect()
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
        w.retry(1, 1_000);
        w.complete(3, Completion::Done);
        assert_eq!(drain(&mut w, 10), vec![4], "key b continues while a waits");
        assert_eq!(w.next_due(), Some(1_000));
        assert_eq!(drain(&mut w, 999), Vec::<i64>::new());
        let (again, attempt) = w.pop_due(1_000).unwrap();
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
    fn retry_now_moves_a_waiting_call_forward() {
        let mut w = Window::new(10, 4);
        w.offer(call(1, None));
        drain(&mut w, 0);
        assert!(!w.retry_now(1, 5), "in flight: nothing to move");
        w.retry(1, 10_000);
        assert!(w.retry_now(1, 5));
        assert_eq!(drain(&mut w, 5), vec![1]);
        assert_eq!(w.retrying(), 0);
    }
}
