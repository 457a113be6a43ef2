//! The poll loop's decisions, without rdkafka: when a batch of records closes, which closed
//! batches wait for the engine, and when to pause or resume the partitions (with
//! hysteresis, because pausing drops librdkafka's prefetched records).

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::SourceRecord;

/// What the poll loop must do about its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Pause,
    Resume,
}

/// Records being gathered into batches, and closed batches the engine has not taken yet.
#[derive(Debug)]
pub(crate) struct Batcher {
    batch_size: usize,
    /// A batch also closes once its records hold this many bytes.
    batch_bytes: usize,
    building_bytes: usize,
    linger: Duration,
    /// Closed batches held before the partitions are paused.
    held_limit: usize,
    building: Vec<SourceRecord>,
    building_since: Instant,
    /// Closed batches, oldest first.
    held: VecDeque<Vec<SourceRecord>>,
    paused: bool,
}

impl Batcher {
    pub(crate) fn new(batch_size: usize, linger: Duration, held_limit: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
            batch_bytes: usize::MAX,
            building_bytes: 0,
            linger,
            held_limit: held_limit.max(1),
            building: Vec::new(),
            building_since: Instant::now(),
            held: VecDeque::new(),
            paused: false,
        }
    }

    /// Close batches at this many bytes too.
    #[must_use]
    pub(crate) fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes.max(1);
        self
    }

    /// A record arrived.
    pub(crate) fn push(&mut self, record: SourceRecord, now: Instant) {
        if self.building.is_empty() {
            self.building_since = now;
        }
        self.building_bytes += record.size_bytes();
        self.building.push(record);
    }

    /// Close the batch being built if it is full or has waited `linger`.
    pub(crate) fn close_if_due(&mut self, now: Instant) {
        if !self.building.is_empty()
            && (self.building.len() >= self.batch_size
                || self.building_bytes >= self.batch_bytes
                || now.duration_since(self.building_since) >= self.linger)
        {
            self.close();
        }
    }

    /// librdkafka had nothing more at hand: close what was gathered, so a trickle is not
    /// held back for `linger` while a stream still fills batches up to `batch_size`.
    pub(crate) fn drained(&mut self) {
        if !self.building.is_empty() {
            self.close();
        }
    }

    fn close(&mut self) {
        self.building_bytes = 0;
        self.held.push_back(std::mem::take(&mut self.building));
    }

    /// How long the next poll may wait: with records in hand, only take what is there.
    pub(crate) fn poll_timeout(&self) -> Duration {
        if self.building.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        }
    }

    /// The oldest closed batch, to hand to the engine.
    pub(crate) fn next_closed(&mut self) -> Option<Vec<SourceRecord>> {
        self.held.pop_front()
    }

    /// The engine could not take it: it stays first in line.
    pub(crate) fn give_back(&mut self, records: Vec<SourceRecord>) {
        self.held.push_front(records);
    }

    /// Pause once the engine has fallen `held_limit` batches behind; resume only when it
    /// has caught up.
    pub(crate) fn flow(&mut self) -> Option<Flow> {
        if !self.paused && self.held.len() >= self.held_limit {
            self.paused = true;
            Some(Flow::Pause)
        } else if self.paused && self.held.is_empty() {
            self.paused = false;
            Some(Flow::Resume)
        } else {
            None
        }
    }

    /// Partitions taken away in a rebalance: their records go (their offsets are not
    /// stored, so the new owner reads them again).
    pub(crate) fn drop_revoked(&mut self, revoked: &HashSet<(String, i32)>) {
        if revoked.is_empty() {
            return;
        }
        let keep = |r: &SourceRecord| !revoked.contains(&(r.topic.clone(), r.partition));
        self.building.retain(keep);
        self.building_bytes = self.building.iter().map(SourceRecord::size_bytes).sum();
        for records in &mut self.held {
            records.retain(keep);
        }
        self.held.retain(|records| !records.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> SourceRecord {
        SourceRecord {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: None,
            headers: Vec::new(),
            timestamp: None,
        }
    }

    #[test]
    fn a_batch_closes_when_full_or_after_the_linger() {
        let start = Instant::now();
        let mut batcher = Batcher::new(2, Duration::from_millis(50), 4);
        batcher.push(record(0, 0), start);
        batcher.close_if_due(start);
        assert!(batcher.next_closed().is_none(), "one record, no linger yet");
        assert_eq!(batcher.poll_timeout(), Duration::ZERO, "records in hand: do not wait");
        batcher.push(record(0, 1), start);
        batcher.close_if_due(start);
        assert_eq!(batcher.next_closed().map(|b| b.len()), Some(2), "full");
        batcher.push(record(0, 2), start);
        batcher.close_if_due(start + Duration::from_millis(50));
        assert_eq!(batcher.next_closed().map(|b| b.len()), Some(1), "lingered");
        assert_eq!(batcher.poll_timeout(), Duration::from_millis(100));
    }

    #[test]
    fn a_batch_closes_at_its_byte_bound_whatever_its_count() {
        let now = Instant::now();
        let mut batcher = Batcher::new(1000, Duration::from_secs(1), 4).with_batch_bytes(2500);
        let big = |offset| SourceRecord {
            value: Some(vec![0; 1000]),
            ..record(0, offset)
        };
        batcher.push(big(0), now);
        batcher.push(big(1), now);
        batcher.close_if_due(now);
        assert!(batcher.next_closed().is_none(), "2,000 bytes: still open");
        batcher.push(big(2), now);
        batcher.close_if_due(now);
        assert_eq!(batcher.next_closed().map(|b| b.len()), Some(3), "3,000 bytes: closed");
        batcher.push(big(3), now);
        batcher.close_if_due(now);
        assert!(batcher.next_closed().is_none(), "the count starts again");
    }

    #[test]
    fn partitions_pause_when_the_engine_falls_behind_and_resume_only_once_it_caught_up() {
        let now = Instant::now();
        let mut batcher = Batcher::new(1, Duration::from_millis(50), 2);
        batcher.push(record(0, 0), now);
        batcher.drained();
        assert_eq!(batcher.flow(), None);
        batcher.push(record(0, 1), now);
        batcher.drained();
        assert_eq!(batcher.flow(), Some(Flow::Pause));
        assert_eq!(batcher.flow(), None, "paused once");
        let first = batcher.next_closed().unwrap();
        assert_eq!(batcher.flow(), None, "one batch still held: stay paused");
        batcher.give_back(first);
        assert_eq!(batcher.next_closed().unwrap()[0].offset, 0, "given back first in line");
        batcher.next_closed().unwrap();
        assert_eq!(batcher.flow(), Some(Flow::Resume));
    }

    #[test]
    fn revoked_partitions_leave_the_batches() {
        let now = Instant::now();
        let mut batcher = Batcher::new(10, Duration::from_secs(1), 10);
        batcher.push(record(0, 0), now);
        batcher.push(record(1, 0), now);
        batcher.drained();
        batcher.push(record(1, 1), now);
        batcher.drop_revoked(&HashSet::from([("t".to_string(), 1)]));
        batcher.drained();
        assert_eq!(batcher.next_closed().unwrap().len(), 1);
        assert!(
            batcher.next_closed().is_none(),
            "the batch of partition 1 alone is gone"
        );
    }
}
