//! The in-memory window of one subscription's calls, with per-group ordering. Pure: no I/O,
//! no clock; the executor passes the time in.
//!
//! The store is the truth and this is a bounded cache of it:
//! - calls are offered in creation order (`seq`), from a cursor over the store;
//! - a call with an ordering key runs only when it is the head of its group; up to
//!   `group_queue` later calls of the group wait in memory, and past that the group is marked
//!   `more_on_disk` and its calls stay in the store until the group drains;
//! - so a stuck key holds at most `1 + group_queue` slots, and never blocks other keys;
//! - a call waiting for a retry that is far off (or while the window is half full) is
//!   *parked*: it leaves memory, with its group's queue, and only its sequence number and
//!   due time stay; at that time the executor reads it back. So any number of failing keys
//!   hold only themselves, not the window's slots;
//! - the window is bounded in payload bytes too: past `byte_capacity` the cursor stops
//!   (one call larger than the bound is still taken alone, so nothing is stuck).

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
    /// Held for a retry (read back from disk, or a short retry kept in memory).
    retrying: bool,
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
    byte_capacity: usize,
    /// Payload bytes of the calls held.
    bytes: usize,
    group_queue: usize,
    held: HashMap<i64, Held>,
    groups: HashMap<Vec<u8>, Group>,
    /// Calls due for their first attempt, by due time.
    due: BinaryHeap<Reverse<(Millis, i64)>>,
    /// Calls due for a retry, by due time: a queue of their own, so that a flood of retries
    /// (many failing keys) takes at most every other start while first attempts wait.
    due_retries: BinaryHeap<Reverse<(Millis, i64)>>,
    /// When both queues have a call due, whether the next start goes to a retry.
    retry_turn: bool,
    /// Calls held for a retry: read back from disk only while they are under half the
    /// window, so that a wave of retries never keeps first attempts out.
    retries_held: usize,
    /// Calls waiting for a retry on disk: their due time and ordering key.
    parked: HashMap<i64, Parked>,
    parked_due: BinaryHeap<Reverse<(Millis, i64)>>,
}

#[derive(Debug)]
struct Parked {
    at: Millis,
    ordering_key: Option<Vec<u8>>,
    /// Attempts made: a copy read back with fewer was read before its outcome was durable.
    attempts: u32,
}

/// Parked calls read back at once, at most.
const UNPARK_BATCH: usize = 500;

/// A retry at least this far off parks the call (a short one stays: reading it back would
/// cost more than holding it).
pub const PARK_AFTER_MS: Millis = 1000;

impl Window {
    /// A window holding at most `capacity` calls, with at most `group_queue` calls waiting
    /// behind each group's head.
    pub fn new(capacity: usize, group_queue: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            byte_capacity: usize::MAX,
            bytes: 0,
            group_queue,
            held: HashMap::new(),
            groups: HashMap::new(),
            due: BinaryHeap::new(),
            due_retries: BinaryHeap::new(),
            retry_turn: false,
            retries_held: 0,
            parked: HashMap::new(),
            parked_due: BinaryHeap::new(),
        }
    }

    /// Bound the payload bytes held as well.
    #[must_use]
    pub fn with_byte_capacity(mut self, bytes: usize) -> Self {
        self.byte_capacity = bytes.max(1);
        self
    }

    /// Payload bytes the cursor may still load.
    pub fn free_bytes(&self) -> usize {
        self.byte_capacity.saturating_sub(self.bytes)
    }

    /// Payload bytes of the calls in memory.
    pub fn bytes(&self) -> usize {
        self.bytes
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
        self.held.len() < self.capacity && self.bytes < self.byte_capacity
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

    /// [`Window::offer`] at `now`: a call not due for [`PARK_AFTER_MS`] or more (a sleeping
    /// or waiting workflow, a retry far off, read after a restart) is parked at once, so any
    /// number of them never fill the window and hold back calls that are due.
    pub fn offer_at(&mut self, call: DueCall, now: Millis) -> bool {
        let (seq, due) = (call.seq, call.next_attempt_at);
        let held = self.offer(call);
        if held && due - now >= PARK_AFTER_MS && self.held.get(&seq).is_some_and(|h| h.due == Some(due)) {
            self.park(seq, due);
        }
        held
    }

    fn hold_as_head(&mut self, call: DueCall) {
        let due = call.next_attempt_at;
        self.push_due(due, call.seq, call.attempts);
        self.hold(call, Some(due));
    }

    fn hold(&mut self, call: DueCall, due: Option<Millis>) {
        let attempts = call.attempts;
        self.bytes += call.payload.len();
        self.held.insert(
            call.seq,
            Held {
                call: Arc::new(call),
                due,
                attempts,
                retrying: false,
            },
        );
    }

    fn push_due(&mut self, at: Millis, seq: i64, attempts: u32) {
        let queue = if attempts > 0 {
            &mut self.due_retries
        } else {
            &mut self.due
        };
        queue.push(Reverse((at, seq)));
    }

    /// The head of a due queue that is still current (stale entries are dropped).
    fn peek_current(&mut self, retries: bool) -> Option<(Millis, i64)> {
        loop {
            let queue = if retries { &self.due_retries } else { &self.due };
            let Reverse((at, seq)) = queue.peek().copied()?;
            if self.is_current(at, seq) {
                return Some((at, seq));
            }
            if retries {
                self.due_retries.pop();
            } else {
                self.due.pop();
            }
        }
    }

    /// The earliest time a held call becomes due.
    pub fn next_due(&mut self) -> Option<Millis> {
        let first = self.peek_current(false).map(|(at, _)| at);
        let retry = self.peek_current(true).map(|(at, _)| at);
        match (first, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn is_current(&self, at: Millis, seq: i64) -> bool {
        self.held.get(&seq).is_some_and(|h| h.due == Some(at))
    }

    /// Take the next call due at `now`, marking it in flight. Returns the call and the
    /// number of the attempt to make. When first attempts and retries are both due, they
    /// take turns.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Arc<DueCall>, u32)> {
        self.pop_due_at(now).map(|(call, attempt, _)| (call, attempt))
    }

    /// [`Window::pop_due`], with the time the call was due (how late it starts is the
    /// difference with `now`).
    pub fn pop_due_at(&mut self, now: Millis) -> Option<(Arc<DueCall>, u32, Millis)> {
        let first = self.peek_current(false).filter(|(at, _)| *at <= now);
        let retry = self.peek_current(true).filter(|(at, _)| *at <= now);
        let take_retry = match (first, retry) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(_), Some(_)) => {
                self.retry_turn = !self.retry_turn;
                !self.retry_turn
            }
        };
        let (due, seq) = if take_retry {
            self.due_retries.pop().map(|Reverse(entry)| entry)?
        } else {
            self.due.pop().map(|Reverse(entry)| entry)?
        };
        let held = self.held.get_mut(&seq).expect("a current entry is held");
        held.due = None;
        held.attempts += 1;
        Some((Arc::clone(&held.call), held.attempts, due))
    }

    /// The attempt in flight failed temporarily: run the call again at `at`. A retry at
    /// least [`PARK_AFTER_MS`] away, or any retry while the window is half full, parks the
    /// call (see the module docs).
    pub fn retry(&mut self, seq: i64, at: Millis, now: Millis) {
        let half_full = self.held.len() * 2 >= self.capacity || self.bytes * 2 >= self.byte_capacity;
        if at - now >= PARK_AFTER_MS || half_full {
            self.park(seq, at);
        } else {
            self.hold_until(seq, at);
        }
    }

    /// A workflow answered and runs again at `at`: its next step at once, or the end of a
    /// sleep or wait. Kept in memory unless that is [`PARK_AFTER_MS`] away, even in a
    /// half-full window: it made progress, unlike a failing call, and parking it would cost
    /// a read from the store per step (and its group's reload).
    pub fn resume(&mut self, seq: i64, at: Millis, now: Millis) {
        if at - now >= PARK_AFTER_MS {
            self.park(seq, at);
        } else {
            self.hold_until(seq, at);
        }
    }

    fn hold_until(&mut self, seq: i64, at: Millis) {
        if let Some(held) = self.held.get_mut(&seq) {
            held.due = Some(at);
            let attempts = held.attempts;
            if !held.retrying {
                held.retrying = true;
                self.retries_held += 1;
            }
            self.push_due(at, seq, attempts);
        }
    }

    fn park(&mut self, seq: i64, at: Millis) {
        let Some(held) = self.release(seq) else {
            return;
        };
        let ordering_key = held.call.ordering_key.clone();
        let attempts = held.attempts;
        if let Some(group) = ordering_key.as_ref().and_then(|key| self.groups.get_mut(key)) {
            // The head stays the head (nothing of its key runs before it); the calls queued
            // behind it go back to disk and are read again when it is done.
            let queued: Vec<i64> = group.queued.drain(..).collect();
            if !queued.is_empty() {
                group.more_on_disk = true;
            }
            for seq in queued {
                self.release(seq);
            }
        }
        self.parked.insert(
            seq,
            Parked {
                at,
                ordering_key,
                attempts,
            },
        );
        self.parked_due.push(Reverse((at, seq)));
    }

    /// The earliest time a parked call must be read back.
    pub fn next_unpark(&mut self) -> Option<Millis> {
        while let Some(Reverse((at, seq))) = self.parked_due.peek().copied() {
            if self.parked.get(&seq).is_some_and(|p| p.at == at) {
                return Some(at);
            }
            self.parked_due.pop();
        }
        None
    }

    /// Parked calls due at `now`, to read back from the store and pass to [`Window::unpark`]
    /// (or [`Window::unpark_missing`]). They stay parked until then. At most
    /// [`UNPARK_BATCH`] at a time, and only while calls held for a retry are under half
    /// the window: the others wait, due, on disk.
    pub fn parked_due(&mut self, now: Millis) -> Vec<i64> {
        let room = (self.capacity / 2)
            .max(1)
            .saturating_sub(self.retries_held)
            .min(UNPARK_BATCH);
        let mut due = Vec::new();
        while let Some(Reverse((at, seq))) = self.parked_due.peek().copied() {
            if at > now || due.len() >= room {
                break;
            }
            self.parked_due.pop();
            if self.parked.get(&seq).is_some_and(|p| p.at == at) {
                due.push(seq);
            }
        }
        due
    }

    /// Whether this copy of a parked call was read before its last attempt was durable.
    pub fn is_stale(&self, call: &DueCall) -> bool {
        self.parked.get(&call.seq).is_some_and(|p| call.attempts < p.attempts)
    }

    /// A parked call read back: it is held again, due at its stored time.
    pub fn unpark(&mut self, call: DueCall) {
        let seq = call.seq;
        if self.parked.remove(&seq).is_some() {
            self.hold_as_head(call);
            if let Some(held) = self.held.get_mut(&seq) {
                held.retrying = true;
                self.retries_held += 1;
            }
        }
    }

    /// A parked call is no longer pending in the store (an operator cancelled it): its
    /// group moves on. Returns what to fetch to continue the group.
    pub fn unpark_missing(&mut self, seq: i64) -> Option<GroupLoad> {
        self.complete(seq, Completion::Done)
    }

    /// Calls parked on disk.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Parked calls whose time has come at `now` (not read back yet).
    pub fn parked_overdue(&self, now: Millis) -> usize {
        self.parked.values().filter(|p| p.at <= now).count()
    }

    /// Make a waiting call due now (an operator's "retry now").
    pub fn retry_now(&mut self, seq: i64, now: Millis) -> bool {
        if let Some(parked) = self.parked.get_mut(&seq) {
            parked.at = now;
            self.parked_due.push(Reverse((now, seq)));
            return true;
        }
        match self.held.get_mut(&seq) {
            Some(held) if held.due.is_some() => {
                held.due = Some(now);
                let attempts = held.attempts;
                self.push_due(now, seq, attempts);
                true
            }
            _ => false,
        }
    }

    /// The call left the window. Returns what must be fetched to continue its group.
    pub fn complete(&mut self, seq: i64, how: Completion) -> Option<GroupLoad> {
        let key = match self.release(seq) {
            Some(held) => held.call.ordering_key.clone()?,
            None => self.parked.remove(&seq)?.ordering_key?,
        };
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
            let queued: Vec<i64> = group.queued.drain(..).collect();
            group.more_on_disk = true;
            for seq in queued {
                self.release(seq);
            }
            return None;
        }
        self.next_of_group(seq, key)
    }

    fn release(&mut self, seq: i64) -> Option<Held> {
        let held = self.held.remove(&seq)?;
        self.bytes -= held.call.payload.len();
        if held.retrying {
            self.retries_held -= 1;
        }
        Some(held)
    }

    /// The head of a group left: its next call becomes the head, or the group's next
    /// calls must be loaded, or the group is done.
    fn next_of_group(&mut self, seq: i64, key: Vec<u8>) -> Option<GroupLoad> {
        let group = self.groups.get_mut(&key)?;
        if let Some(next) = group.queued.pop_front() {
            group.head = Some(next);
            let held = self.held.get_mut(&next).expect("queued calls are held");
            let at = held.call.next_attempt_at;
            held.due = Some(at);
            let attempts = held.attempts;
            self.push_due(at, next, attempts);
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
        self.held.values().filter(|h| h.due.is_some() && h.attempts > 0).count() + self.parked.len()
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
