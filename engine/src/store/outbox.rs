//! Reading the outbox: records workflows produced, stored with their journal entries, and
//! outputs of calls of a subscription with an `output_topic`, stored as the calls succeed;
//! published by `crate::outbox`.

use rusqlite::{params, Connection};

use crate::model::Millis;

/// The outbox position of a call's output (journal entries count from 0).
pub(crate) const OUTPUT_POSITION: i64 = -1;

/// An outbox record not yet acknowledged by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpublished {
    pub seq: i64,
    /// The call's id and the entry's position (`None`: the call's output): the record's
    /// identity, sent as headers so that it is found again after a crash instead of
    /// published twice.
    pub call_id: String,
    pub position: Option<u32>,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// When it was first handed to the producer; `None`: never, so not in Kafka.
    pub attempted_at: Option<Millis>,
}

pub(crate) fn unpublished(conn: &Connection, subscription: &str, limit: usize) -> rusqlite::Result<Vec<Unpublished>> {
    conn.prepare_cached(
        "SELECT o.seq, c.id, o.position, o.topic, o.key, o.value, o.attempted_at
         FROM outbox o JOIN calls c ON c.seq = o.call_seq
         WHERE o.subscription = ?1 AND o.published_at IS NULL
         ORDER BY o.seq LIMIT ?2",
    )?
    .query_map(params![subscription, limit as i64], |r| {
        Ok(Unpublished {
            seq: r.get(0)?,
            call_id: r.get(1)?,
            position: u32::try_from(r.get::<_, i64>(2)?).ok(),
            topic: r.get(3)?,
            key: r.get(4)?,
            value: r.get(5)?,
            attempted_at: r.get(6)?,
        })
    })?
    .collect()
}
