//! Unit tests of children, signals, selects and produce, without an engine.

use super::tests::{run, wf};
use super::*;
use serde_json::json;

fn child(n: u32, done: Option<(i64, Result<u32, &str>)>) -> Entry {
    Entry::Call {
        target: "lines".into(),
        input: json!(n),
        key: None,
        id: Some(format!("c{n}")),
        ok: done.and_then(|(_, r)| r.ok()).map(|v| json!(v)),
        error: done.and_then(|(_, r)| r.err()).map(str::to_string),
        at: done.map(|(at, _)| at),
    }
}

async fn gather(w: Workflow) -> Vec<Result<u32, Error>> {
    let children: Vec<Durable<u32>> = (0..3).map(|n| w.call("lines", &n)).collect();
    w.join_all(children).await
}

#[tokio::test]
async fn join_all_is_one_suspension_and_gives_results_in_creation_order() {
    let Err(Stop::Suspended(s)) = run(&wf(Vec::new(), 0), gather).await else {
        panic!()
    };
    assert_eq!(
        s.entries,
        [child(0, None), child(1, None), child(2, None)].map(|mut e| {
            if let Entry::Call { id, .. } = &mut e {
                *id = None;
            }
            e
        })
    );
    assert_eq!(s.wait, Some(Wait::AnyOf(vec![vec![0, 1, 2]])), "one group: all three");

    // Two done (the last first), one still running: suspend again for that one only.
    let partly = vec![
        child(0, None),
        child(1, Some((9, Ok(11)))),
        child(2, Some((5, Err("dead")))),
    ];
    let Err(Stop::Suspended(s)) = run(&wf(partly, 10), gather).await else {
        panic!()
    };
    assert_eq!((s.entries.len(), s.wait), (0, Some(Wait::AnyOf(vec![vec![0]]))));

    let all = vec![
        child(0, Some((12, Ok(10)))),
        child(1, Some((9, Ok(11)))),
        child(2, Some((5, Err("dead")))),
    ];
    let results = run(&wf(all, 20), gather).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap(), &10);
    assert_eq!(results[1].as_ref().unwrap(), &11);
    assert_eq!(results[2].as_ref().unwrap_err().message(), "dead");
}

async fn approval(w: Workflow) -> Result<Option<String>, Error> {
    w.signal_within::<String>("approved", Duration::from_secs(60)).await
}

#[tokio::test]
async fn a_signal_with_a_timeout_is_a_select_and_the_earliest_wins_on_replay() {
    let Err(Stop::Suspended(s)) = run(&wf(Vec::new(), 1_000), approval).await else {
        panic!()
    };
    assert_eq!(s.entries.len(), 2);
    assert_eq!(s.wait, Some(Wait::AnyOf(vec![vec![0], vec![1]])));

    let signal = |at| Entry::Signal {
        name: "approved".into(),
        ok: Some(json!("yes")),
        at: Some(at),
    };
    let timer = Entry::Sleep {
        wake_at: Some(61_000),
        duration_ms: None,
    };
    // The signal came at 5 s: it wins, even replayed after the timer's time.
    let got = run(&wf(vec![signal(5_000), timer.clone()], 90_000), approval).await;
    assert_eq!(got.unwrap().unwrap().as_deref(), Some("yes"));
    // The timer fired first (the signal arrived after it): the timeout is kept on replay.
    let got = run(&wf(vec![signal(70_000), timer.clone()], 90_000), approval).await;
    assert_eq!(got.unwrap().unwrap(), None);
    // No signal, timer due: timed out.
    let pending = Entry::Signal {
        name: "approved".into(),
        ok: None,
        at: None,
    };
    assert_eq!(
        run(&wf(vec![pending, timer], 61_000), approval).await.unwrap().unwrap(),
        None
    );
}

#[tokio::test]
async fn a_run_that_ends_with_an_unstored_produce_stores_it_first() {
    async fn body(w: Workflow) -> Result<u32, Error> {
        w.produce("confirmations", Some("k"), &json!({"order": 1}));
        Ok(7)
    }
    let Err(Stop::Suspended(s)) = run(&wf(Vec::new(), 0), body).await else {
        panic!()
    };
    assert_eq!((s.entries.len(), s.wait), (1, None));
    let done = run(&wf(s.entries, 0), body).await.unwrap();
    assert_eq!(done.unwrap(), 7, "replayed with the entry stored, it completes");
}

#[tokio::test]
async fn a_child_where_the_journal_has_a_step_is_nondeterminism() {
    let journal = vec![Entry::Step {
        name: "charge".into(),
        ok: Some(json!(1)),
        error: None,
    }];
    let stop = run(&wf(journal, 0), |w| async move {
        let child: Durable<u32> = w.call("lines", &1);
        child.await
    })
    .await;
    let Err(Stop::Nondeterminism(text)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!(
        text,
        "journal entry 0 is step `charge`, but the code asks for call to `lines`"
    );
}
