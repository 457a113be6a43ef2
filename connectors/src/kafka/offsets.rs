//! In-order commit tokens: an offset is stored only when every record before it in its
//! partition is durable. Pure bookkeeping, no Kafka calls.

use std::collections::{HashMap, VecDeque};

/// A topic partition.
pub type TopicPartition = (String, i32);

#[derive(Debug, Default)]
struct PartitionQueue {
    /// Batches holding records of this partition, in poll order: (batch id, highest offset,
    /// durable yet).
    batches: VecDeque<(u64, i64, bool)>,
}

/// Tracks the batches handed out and tells which offsets may be stored.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionQueue>,
    /// Partitions each batch touches, so an ack finds them.
    batches: HashMap<u64, Vec<TopicPartition>>,
}

impl OffsetTracker {
    /// Record that batch `id` holds records of `partitions`, with the highest offset of each.
    pub fn register(&mut self, id: u64, partitions: impl IntoIterator<Item = (TopicPartition, i64)>) {
        let mut touched = Vec::new();
        for (tp, max_offset) in partitions {
            self.partitions
                .entry(tp.clone())
                .or_default()
                .batches
                .push_back((id, max_offset, false));
            touched.push(tp);
        }
        self.batches.insert(id, touched);
    }

    /// Batch `id` is durable. Returns, per partition that advanced, the offset to store:
    /// one past the highest offset of the contiguous durable prefix.
    pub fn ack(&mut self, id: u64) -> Vec<(TopicPartition, i64)> {
        let mut advanced = Vec::new();
        for tp in self.batches.remove(&id).unwrap_or_default() {
            let Some(queue) = self.partitions.get_mut(&tp) else {
                continue; // revoked meanwhile
            };
            if let Some(entry) = queue.batches.iter_mut().find(|(b, _, _)| *b == id) {
                entry.2 = true;
            }
            let mut next = None;
            while let Some(&(_, max_offset, true)) = queue.batches.front() {
                next = Some(max_offset + 1);
                queue.batches.pop_front();
            }
            if let Some(next) = next {
                advanced.push((tp, next));
            }
        }
        advanced
    }

    /// Batches of `tp` not yet durable.
    pub fn in_flight(&self, tp: &TopicPartition) -> usize {
        self.partitions
            .get(tp)
            .map_or(0, |q| q.batches.iter().filter(|(_, _, done)| !done).count())
    }

    /// Batches not yet durable, over all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.batches.len()
    }

    /// Forget a partition that this consumer no longer owns; later acks skip it.
    pub fn revoke(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".to_string(), p)
    }

    #[test]
    fn offsets_advance_only_over_a_durable_prefix() {
        let mut t = OffsetTracker::default();
        t.register(1, [(tp(0), 9)]);
        t.register(2, [(tp(0), 19)]);
        t.register(3, [(tp(0), 29)]);
        assert_eq!(t.ack(2), vec![], "batch 1 is not durable yet");
        assert_eq!(t.in_flight(&tp(0)), 2);
        assert_eq!(t.ack(1), vec![(tp(0), 20)], "1 and 2 are now a durable prefix");
        assert_eq!(t.ack(3), vec![(tp(0), 30)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn a_batch_spanning_partitions_advances_each() {
        let mut t = OffsetTracker::default();
        t.register(1, [(tp(0), 4), (tp(1), 7)]);
        t.register(2, [(tp(1), 8)]);
        let mut advanced = t.ack(1);
        advanced.sort();
        assert_eq!(advanced, vec![(tp(0), 5), (tp(1), 8)]);
        assert_eq!(t.ack(2), vec![(tp(1), 9)]);
    }

    #[test]
    fn revoked_partitions_are_skipped() {
        let mut t = OffsetTracker::default();
        t.register(1, [(tp(0), 4), (tp(1), 7)]);
        t.revoke(&tp(0));
        assert_eq!(t.ack(1), vec![(tp(1), 8)]);
        assert_eq!(t.ack(99), vec![], "unknown batches are ignored");
    }
}
