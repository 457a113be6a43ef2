//! Turning a record (from Kafka or the admin API) into a [`NewCall`] for a subscription.

use crate::config::{OnDead, Ordering, SubscriptionConfig};
use crate::figures::Figures;
use crate::model::{Inserted, KafkaSource, NewCall};
use crate::store::{Store, StoreError};

/// A record as it arrives, before it becomes a call. Bytes stay bytes: nothing is decoded.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// `None` for a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    /// Already in the protocol's header text encoding.
    pub headers: Option<String>,
    pub source: Option<KafkaSource>,
}

/// The call a record becomes. A value above `max_payload_bytes` still becomes a call, created
/// dead with the reason, so it is visible and never silently dropped.
pub fn new_call(subscription: &SubscriptionConfig, record: Record) -> NewCall {
    let ordering_key = ordering_key(subscription.ordering, record.key.as_deref(), record.source.as_ref());
    let tombstone = record.value.is_none();
    let payload = record.value.unwrap_or_default();
    let dead_reason = (payload.len() > subscription.max_payload_bytes).then(|| {
        format!(
            "payload of {} bytes is above max_payload_bytes ({}); raise the limit and redrive",
            payload.len(),
            subscription.max_payload_bytes
        )
    });
    NewCall {
        subscription: subscription.name.clone(),
        target: subscription.target.clone(),
        payload,
        tombstone,
        key: record.key,
        headers: record.headers,
        source: record.source,
        ordering_key,
        dead_reason,
        block_group_if_dead: subscription.on_dead == OnDead::Block,
        idempotency_key: None,
    }
}

/// Make calls durable and count them into the subscription's backlog.
pub async fn persist(store: &Store, figures: &Figures, calls: Vec<NewCall>) -> Result<Vec<Inserted>, StoreError> {
    persist_queued(store, calls)?.counted(figures).await
}

/// Calls queued for creation (in order) but not yet known to be durable.
#[derive(Debug)]
pub struct Persisting<F> {
    durable: F,
    born_dead: Vec<bool>,
}

/// Queue calls for creation now; see [`Store::insert_queued`].
pub fn persist_queued(
    store: &Store,
    calls: Vec<NewCall>,
) -> Result<Persisting<impl std::future::Future<Output = Result<Vec<Inserted>, StoreError>> + Send + use<>>, StoreError>
{
    let born_dead: Vec<bool> = calls.iter().map(|c| c.dead_reason.is_some()).collect();
    Ok(Persisting {
        durable: store.insert_queued(calls)?,
        born_dead,
    })
}

impl<F: std::future::Future<Output = Result<Vec<Inserted>, StoreError>>> Persisting<F> {
    /// Wait until durable, then count the new calls into the subscription's figures.
    pub async fn counted(self, figures: &Figures) -> Result<Vec<Inserted>, StoreError> {
        let inserted = self.durable.await?;
        let (mut created, mut born_dead) = (0, 0);
        for (result, dead) in inserted.iter().zip(self.born_dead) {
            if matches!(result, Inserted::New(_)) {
                created += 1;
                born_dead += u64::from(dead);
            }
        }
        figures.calls_created(created, born_dead);
        Ok(inserted)
    }
}

/// The ordering group of a record: `k` + key in key mode, `p` + topic + NUL + partition in
/// partition mode. Records without a key (or, in partition mode, without a partition) are
/// not ordered.
pub fn ordering_key(mode: Ordering, key: Option<&[u8]>, source: Option<&KafkaSource>) -> Option<Vec<u8>> {
    match mode {
        Ordering::Unordered => None,
        Ordering::Key => key.map(|key| {
            let mut group = Vec::with_capacity(key.len() + 1);
            group.push(b'k');
            group.extend_from_slice(key);
            group
        }),
        Ordering::Partition => source.map(|s| format!("p{}\0{}", s.topic, s.partition).into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_groups() {
        let source = KafkaSource {
            topic: "t".into(),
            partition: 2,
            offset: 9,
            timestamp: None,
        };
        assert_eq!(ordering_key(Ordering::Unordered, Some(b"a"), Some(&source)), None);
        assert_eq!(
            ordering_key(Ordering::Key, Some(b"a"), Some(&source)),
            Some(b"ka".to_vec())
        );
        assert_eq!(ordering_key(Ordering::Key, None, Some(&source)), None);
        assert_eq!(
            ordering_key(Ordering::Partition, Some(b"a"), Some(&source)),
            Some(b"pt\x002".to_vec())
        );
        assert_eq!(ordering_key(Ordering::Partition, Some(b"a"), None), None);
    }
}
