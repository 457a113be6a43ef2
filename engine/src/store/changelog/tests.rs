use super::*;
use crate::model::{AttemptRecord, Inserted, KafkaSource, NewCall, Transition};
use crate::store::{Committed, Store, StoreOptions};
use std::collections::BTreeMap;

fn record(partition: i32, offset: i64, key: &str) -> NewCall {
    NewCall {
        subscription: "orders".into(),
        target: "http://127.0.0.1:1/".into(),
        payload: format!("{key}:{offset}").into_bytes(),
        tombstone: false,
        key: Some(key.as_bytes().to_vec()),
        headers: None,
        source: Some(KafkaSource {
            topic: "orders".into(),
            partition,
            offset,
            timestamp: None,
        }),
        ordering_key: Some(format!("k{key}").into_bytes()),
        dead_reason: None,
        block_group_if_dead: false,
        idempotency_key: None,
    }
}

/// A successful attempt.
fn attempt(n: u32) -> AttemptRecord {
    AttemptRecord {
        attempt: n,
        started_at: 1,
        duration_ms: 1,
        outcome: "success",
        http_status: Some(200),
        error: None,
    }
}

fn store(dir: &tempfile::TempDir, name: &str) -> Store {
    let options = StoreOptions {
        changelog: true,
        ..StoreOptions::default()
    };
    Store::open(dir.path().join(name), options).unwrap()
}

async fn seq_of(store: &Store, inserted: Inserted) -> i64 {
    let Inserted::New(id) = inserted else {
        panic!("not new: {inserted:?}")
    };
    let id = id.to_string();
    store
        .read(move |conn| conn.query_row("SELECT seq FROM calls WHERE id = ?1", [&id], |r| r.get(0)))
        .await
        .unwrap()
}

#[tokio::test]
async fn changes_follow_a_partition_from_one_store_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let old = store(&dir, "old.db");
    let mut changes = old.take_changes().unwrap();
    let inserted = old
        .insert(vec![record(0, 0, "a"), record(0, 1, "a"), record(1, 0, "b")])
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for inserted in inserted {
        seqs.push(seq_of(&old, inserted).await);
    }
    // The first attempt of the first call succeeds; the second call's fails once.
    let attempt = |n| AttemptRecord {
        attempt: n,
        started_at: 1,
        duration_ms: 1,
        outcome: "temporary",
        http_status: Some(503),
        error: None,
    };
    old.start_attempt(seqs[0], 1, 1).unwrap();
    old.finish_attempt(seqs[0], attempt(1), Transition::Succeeded { output: None }, false, None)
        .unwrap();
    old.finish_attempt(
        seqs[1],
        attempt(1),
        Transition::Retry {
            at: 5,
            error: "busy".into(),
        },
        false,
        None,
    )
    .unwrap();
    old.flush().await.unwrap();

    // The changelog as a compacted topic would keep it: the last change per id.
    let mut latest: BTreeMap<String, Change> = BTreeMap::new();
    while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
        for change in batch {
            latest.insert(change.id().to_string(), change);
        }
    }
    let open: Vec<CallSnapshot> = latest
        .values()
        .filter_map(|c| match c {
            Change::Call(call) => Some(call.as_ref().clone()),
            Change::Purged { .. } => None,
        })
        .collect();
    assert_eq!(latest.len(), 3, "{latest:?}");
    assert_eq!(open.len(), 3, "a finished call stays until purged: {latest:?}");
    let done = open.iter().find(|c| c.offset == 0 && c.partition == 0).unwrap();
    assert_eq!(done.status, "succeeded");
    let retried = open.iter().find(|c| c.offset == 1).unwrap();
    assert_eq!(
        (retried.status.as_str(), retried.attempts, retried.last_error.as_deref()),
        ("pending", 1, Some("busy"))
    );
    // Through JSON, as on the topic.
    let open: Vec<CallSnapshot> = open
        .iter()
        .map(|c| serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap())
        .collect();

    // Partition 0 leaves: its open call goes without a tombstone; partition 1 stays.
    let released = old.release("orders", Some(vec![("orders".into(), 0)])).await.unwrap();
    assert_eq!(
        released,
        Released {
            calls: 1,
            backlog: 1,
            ..Released::default()
        }
    );
    old.flush().await.unwrap();
    let mut after_release = Vec::new();
    while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
        after_release.extend(batch);
    }
    assert!(after_release.is_empty(), "a release is not an end: {after_release:?}");
    assert_eq!(old.open_calls("orders").await.unwrap(), 1);

    // The next owner restores partition 0 (the finished call too): same id, same
    // attempts, pending, no echo.
    let new = store(&dir, "new.db");
    let mut echoes = new.take_changes().unwrap();
    let partition0: Vec<CallSnapshot> = open.into_iter().filter(|c| c.partition == 0).collect();
    let id = partition0.iter().find(|c| c.offset == 1).unwrap().id.clone();
    new.restore(partition0.clone()).await.unwrap();
    new.restore(partition0).await.unwrap(); // twice: replaced, not doubled
    new.flush().await.unwrap();
    assert_eq!(new.open_calls("orders").await.unwrap(), 1);
    let view = new.call(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!((view.attempts, view.status.as_str()), (1, "pending"));
    let mut echoed = Vec::new();
    while let Ok(Committed { changes: batch, .. }) = echoes.try_recv() {
        echoed.extend(batch);
    }
    assert!(echoed.is_empty(), "restoring writes nothing back: {echoed:?}");
    // Records read again (their offsets not committed by the old owner) are the same
    // calls, finished or not, never second ones.
    let again = new.insert(vec![record(0, 0, "a"), record(0, 1, "a")]).await.unwrap();
    assert_eq!(again, vec![Inserted::Duplicate, Inserted::Duplicate]);
}

#[tokio::test]
async fn unpublished_outbox_records_move_with_their_partition() {
    let dir = tempfile::tempdir().unwrap();
    let old = store(&dir, "old.db");
    let mut changes = old.take_changes().unwrap();
    let inserted = old.insert(vec![record(0, 0, "a"), record(1, 0, "b")]).await.unwrap();
    let mut seqs = Vec::new();
    for inserted in inserted {
        seqs.push(seq_of(&old, inserted).await);
    }
    // Both succeed with an output for the subscription's `output_topic`.
    for &seq in &seqs {
        old.finish_attempt(
            seq,
            attempt(1),
            Transition::Succeeded {
                output: Some(b"done".to_vec()),
            },
            false,
            Some("out".into()),
        )
        .unwrap();
    }
    old.flush().await.unwrap();
    let mut latest: BTreeMap<String, CallSnapshot> = BTreeMap::new();
    while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
        for change in batch {
            if let Change::Call(call) = change {
                latest.insert(call.id.clone(), *call);
            }
        }
    }
    let moved = latest.values().find(|c| c.partition == 0).unwrap().clone();
    assert_eq!(moved.outbox.len(), 1, "{moved:?}");
    let record = &moved.outbox[0];
    assert_eq!(
        (
            record.position,
            record.topic.as_str(),
            record.key.as_deref(),
            record.value.as_slice()
        ),
        (-1, "out", Some(&b"a"[..]), &b"done"[..])
    );
    assert!(record.maybe_since > 0);
    assert_eq!(old.outbox_unpublished("orders", 10).await.unwrap().len(), 2);

    // Partition 0 leaves: its finished call stays as history, but its record is the
    // next owner's to publish; partition 1's stays here.
    old.release("orders", Some(vec![("orders".into(), 0)])).await.unwrap();
    let left = old.outbox_unpublished("orders", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].call_id, moved.id);

    // The next owner restores it marked attempted, so its publisher reads the topic
    // back before producing it.
    let new = store(&dir, "new.db");
    let through_json: CallSnapshot = serde_json::from_slice(&serde_json::to_vec(&moved).unwrap()).unwrap();
    new.restore(vec![through_json]).await.unwrap();
    let restored = new.outbox_unpublished("orders", 10).await.unwrap();
    assert_eq!(restored.len(), 1);
    assert_eq!(
        (
            restored[0].call_id.as_str(),
            restored[0].position,
            restored[0].topic.as_str(),
            restored[0].value.as_slice(),
            restored[0].attempted_at
        ),
        (moved.id.as_str(), None, "out", &b"done"[..], Some(record.maybe_since))
    );

    // Once published, the call's next snapshot no longer carries it: a later move does
    // not bring it back.
    let mut published = new.take_changes().unwrap();
    new.outbox_mark(vec![restored[0].seq], true).await.unwrap();
    new.flush().await.unwrap();
    let mut after: Vec<Change> = Vec::new();
    while let Ok(Committed { changes: batch, .. }) = published.try_recv() {
        after.extend(batch);
    }
    match after.as_slice() {
        [Change::Call(call)] => assert!(call.id == moved.id && call.outbox.is_empty(), "{call:?}"),
        other => panic!("one snapshot of the call, without the record: {other:?}"),
    }
}

#[tokio::test]
async fn a_seq_is_never_reused_after_the_newest_calls_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("seq.db"), StoreOptions::default()).unwrap();
    let first = store.insert(vec![record(0, 0, "a")]).await.unwrap();
    let newest = seq_of(&store, first[0]).await;
    store
        .finish_attempt(newest, attempt(1), Transition::Succeeded { output: None }, false, None)
        .unwrap();
    // Purged (retention over): the table is empty, the scheduler's cursor is past it.
    let purged = store.purge(i64::MAX, 100).await.unwrap();
    assert_eq!(purged.deleted, 1);
    let next = store.insert(vec![record(0, 1, "a")]).await.unwrap();
    assert!(
        seq_of(&store, next[0]).await > newest,
        "a new call took a seq already read past"
    );
}

/// A workflow step that creates child calls in subscription `lines` and waits.
fn spawning(children: &[uuid::Uuid]) -> Transition {
    Transition::Suspended(Box::new(crate::workflow::Suspended {
        from: 0,
        entries: children
            .iter()
            .map(|id| format!(r#"{{"type":"note","id":"{id}"}}"#))
            .collect(),
        resume_at: Some(crate::workflow::NEVER),
        wait: None,
        children: children
            .iter()
            .enumerate()
            .map(|(position, id)| crate::workflow::Child {
                position: position as u32,
                id: *id,
                subscription: "lines".into(),
                input: b"{}".to_vec(),
                key: None,
            })
            .collect(),
        outbox: Vec::new(),
        calls: children
            .iter()
            .map(|_| NewCall {
                subscription: "lines".into(),
                target: "http://127.0.0.1:1/line".into(),
                payload: b"{}".to_vec(),
                tombstone: false,
                key: None,
                headers: None,
                source: None,
                ordering_key: None,
                dead_reason: None,
                block_group_if_dead: false,
                idempotency_key: None,
            })
            .collect(),
        deployment: None,
    }))
}

async fn seq_by_id(store: &Store, id: uuid::Uuid) -> Option<i64> {
    let id = id.to_string();
    store
        .read(move |conn| {
            conn.query_row("SELECT seq FROM calls WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
        })
        .await
        .unwrap()
}

fn drain(changes: &mut tokio::sync::mpsc::UnboundedReceiver<Committed>) -> Vec<Change> {
    let mut all = Vec::new();
    while let Ok(Committed { changes: batch, .. }) = changes.try_recv() {
        all.extend(batch);
    }
    all
}

#[tokio::test]
async fn a_workflows_open_child_calls_move_with_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let old = store(&dir, "old.db");
    let mut changes = old.take_changes().unwrap();
    let inserted = old.insert(vec![record(0, 0, "a"), record(1, 0, "b")]).await.unwrap();
    let (root, other_root) = (seq_of(&old, inserted[0]).await, seq_of(&old, inserted[1]).await);
    let (reserve, notify, grandchild, elsewhere) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // The root starts two children and ends without awaiting them; the first starts a
    // child of its own and ends too; the second ends. Only the grandchild is open.
    old.finish_attempt(root, attempt(1), spawning(&[reserve, notify]), false, None)
        .unwrap();
    old.finish_attempt(other_root, attempt(1), spawning(&[elsewhere]), false, None)
        .unwrap();
    old.flush().await.unwrap();
    let reserve_seq = seq_by_id(&old, reserve).await.unwrap();
    old.finish_attempt(reserve_seq, attempt(1), spawning(&[grandchild]), false, None)
        .unwrap();
    old.flush().await.unwrap();
    for (seq, n) in [(reserve_seq, 2), (seq_by_id(&old, notify).await.unwrap(), 1), (root, 2)] {
        old.finish_attempt(seq, attempt(n), Transition::Succeeded { output: None }, false, None)
            .unwrap();
    }
    old.flush().await.unwrap();

    // The changelog holds roots only; the root carries the open grandchild and the
    // finished child between them, parents first.
    let mut latest: BTreeMap<String, CallSnapshot> = BTreeMap::new();
    for change in drain(&mut changes) {
        match change {
            Change::Call(call) => latest.insert(call.id.clone(), *call),
            Change::Purged { id, .. } => panic!("nothing was purged: {id}"),
        };
    }
    assert_eq!(latest.len(), 2, "one record per root: {:?}", latest.keys());
    let moved = latest.values().find(|c| c.partition == 0).unwrap().clone();
    assert_eq!(moved.status, "succeeded");
    let carried: Vec<(String, Option<String>, &str, &str, i32)> = moved
        .descendants
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.parent.clone(),
                d.status.as_str(),
                d.topic.as_str(),
                d.partition,
            )
        })
        .collect();
    assert_eq!(
        carried,
        [
            (reserve.to_string(), Some(moved.id.clone()), "succeeded", "orders", 0),
            (
                grandchild.to_string(),
                Some(reserve.to_string()),
                "pending",
                "orders",
                0
            ),
        ]
    );
    assert_eq!(moved.descendants[0].parent_position, Some(0));
    assert_eq!(moved.descendants[0].journal.len(), 1, "its own journal goes along");

    // Partition 0 leaves: the carried descendants go with it, the finished root and the
    // finished child that carries nothing stay as history; partition 1's tree stays.
    let released = old.release("orders", Some(vec![("orders".into(), 0)])).await.unwrap();
    assert_eq!(released.calls, 0, "the root had ended");
    assert_eq!(released.children, BTreeMap::from([("lines".to_string(), (2, 1))]));
    assert!(seq_by_id(&old, grandchild).await.is_none());
    assert!(seq_by_id(&old, reserve).await.is_none());
    assert!(seq_by_id(&old, notify).await.is_some());
    assert!(seq_by_id(&old, elsewhere).await.is_some());
    old.flush().await.unwrap();
    assert!(drain(&mut changes).is_empty(), "a release is not an end");

    // The next owner stores the tree under the same ids, the grandchild pending under its
    // parent, with nothing echoed back; once it ends, the root carries nothing.
    let new = store(&dir, "new.db");
    let mut echoes = new.take_changes().unwrap();
    let through_json: CallSnapshot = serde_json::from_slice(&serde_json::to_vec(&moved).unwrap()).unwrap();
    new.restore(vec![through_json.clone()]).await.unwrap();
    new.restore(vec![through_json]).await.unwrap(); // twice: replaced, not doubled
    new.flush().await.unwrap();
    assert!(drain(&mut echoes).is_empty(), "restoring writes nothing back");
    let view = new.call(grandchild).await.unwrap().unwrap();
    assert_eq!(view.status, crate::model::CallStatus::Pending);
    assert_eq!(view.parent.map(|p| p.id.to_string()), Some(reserve.to_string()));
    let reserve_view = new.call(reserve).await.unwrap().unwrap();
    assert_eq!(reserve_view.parent.map(|p| p.id.to_string()), Some(moved.id.clone()));
    assert_eq!(new.open_calls("lines").await.unwrap(), 1);
    let grandchild_seq = seq_by_id(&new, grandchild).await.unwrap();
    new.finish_attempt(
        grandchild_seq,
        attempt(1),
        Transition::Succeeded { output: None },
        false,
        None,
    )
    .unwrap();
    new.flush().await.unwrap();
    match drain(&mut echoes).as_slice() {
        [Change::Call(call)] => assert!(call.id == moved.id && call.descendants.is_empty(), "{call:?}"),
        other => panic!("one snapshot of the root, carrying nothing: {other:?}"),
    }
}
