//! Unit tests of the SDK's replay, without an engine.

use super::*;

/// A workflow of call `call-1` with `journal`, at `now_ms` on the engine's clock.
pub(super) fn wf(journal: Vec<Entry>, now_ms: i64) -> Workflow {
    Workflow::new(
        Context {
            call_id: "call-1".into(),
            ..Context::default()
        },
        journal,
        now_ms,
    )
}

/// Run `f` as the endpoint does: its output, or why it stopped short.
pub(super) async fn run<O, F, Fut>(wf: &Workflow, f: F) -> Result<O, Stop>
where
    F: FnOnce(Workflow) -> Fut,
    Fut: Future<Output = O>,
{
    let body = f(wf.clone());
    tokio::select! {
        biased;
        stop = wf.stopped() => Err(stop),
        done = body => match wf.take_stop() { Some(stop) => Err(stop), None => Ok(done) },
    }
}

fn step(name: &str, ok: u32) -> Entry {
    Entry::Step {
        name: name.into(),
        ok: Some(ok.into()),
        error: None,
    }
}

async fn two_steps_and_a_sleep(wf: Workflow, runs: Arc<Mutex<Vec<&'static str>>>) -> Result<u32, Error> {
    let r = Arc::clone(&runs);
    let a: u32 = wf
        .step("a", move || async move {
            r.lock().unwrap().push("a");
            Ok(1)
        })
        .await?;
    wf.sleep(Duration::from_secs(10)).await;
    let r = Arc::clone(&runs);
    let b: u32 = wf
        .step("b", move || async move {
            r.lock().unwrap().push("b");
            Ok(2)
        })
        .await?;
    Ok(a + b)
}

#[tokio::test]
async fn a_new_step_and_sleep_suspend_together_then_replay_to_completion() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let first = wf(Vec::new(), 1_000);
    let stop = run(&first, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
    let Err(Stop::Suspended(s)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!(s.from, 0);
    assert_eq!(
        s.entries,
        [
            step("a", 1),
            Entry::Sleep {
                wake_at: None,
                duration_ms: Some(10_000)
            }
        ]
    );
    assert_eq!(s.wait, Some(Wait::AnyOf(vec![vec![1]])));

    // Too early (the engine's clock before the wake time): suspend again, nothing new.
    let journal = vec![
        step("a", 1),
        Entry::Sleep {
            wake_at: Some(11_000),
            duration_ms: None,
        },
    ];
    let early = wf(journal.clone(), 5_000);
    let stop = run(&early, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
    let Err(Stop::Suspended(s)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!(
        (s.from, s.entries.len(), s.wait),
        (2, 0, Some(Wait::AnyOf(vec![vec![1]])))
    );

    let awake = wf(journal, 11_000);
    let done = run(&awake, |w| two_steps_and_a_sleep(w, Arc::clone(&runs))).await;
    assert_eq!(done.unwrap().unwrap(), 3);
    assert_eq!(*runs.lock().unwrap(), ["a", "b"], "each step ran once");
}

#[tokio::test]
async fn a_sleep_already_over_costs_no_request_and_rides_with_the_next_suspension() {
    let w = wf(Vec::new(), 5_000);
    let stop = run(&w, |w| async move {
        let a: u32 = w.step("a", || async { Ok(1) }).await?;
        w.sleep(Duration::ZERO).await;
        w.sleep_until(UNIX_EPOCH + Duration::from_secs(4)).await;
        let b: u32 = w.step("b", || async { Ok(2) }).await?;
        Ok::<u32, Error>(a + b)
    })
    .await;
    let Err(Stop::Suspended(s)) = stop else {
        panic!("{stop:?}")
    };
    let slept = |at| Entry::Sleep {
        wake_at: Some(at),
        duration_ms: None,
    };
    assert_eq!(
        (s.entries, s.wait),
        (vec![step("a", 1), slept(5_000), slept(4_000)], None),
        "both sleeps were over: the run went on to the next step, which waits for `a` to be stored"
    );

    // A run that ends after a sleep of zero completes in the same request.
    let w = wf(vec![step("a", 1)], 6_000);
    let done = run(&w, |w| async move {
        let a: u32 = w.step("a", || async { Ok(1) }).await?;
        w.sleep(Duration::ZERO).await;
        Ok::<u32, Error>(a)
    })
    .await;
    assert_eq!(done.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn a_second_new_step_waits_for_the_first_to_be_stored() {
    let w = wf(Vec::new(), 0);
    let stop = run(&w, |w| async move {
        let a: u32 = w.step("a", || async { Ok(1) }).await?;
        let b: u32 = w
            .step("b", || async { panic!("must not run before a is stored") })
            .await?;
        Ok::<u32, Error>(a + b)
    })
    .await;
    let Err(Stop::Suspended(s)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!((s.entries, s.wait), (vec![step("a", 1)], None));
}

#[tokio::test]
async fn a_different_step_at_a_position_is_nondeterminism() {
    let w = wf(vec![step("charge", 1)], 0);
    let stop = run(&w, |w| async move { w.step("refund", || async { Ok(1) }).await }).await;
    let Err(Stop::Nondeterminism(text)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!(
        text,
        "journal entry 0 is step `charge`, but the code asks for step `refund`"
    );
}

#[tokio::test]
async fn permanent_step_errors_are_journaled_and_temporary_ones_fail_the_attempt() {
    async fn body(w: Workflow) -> Result<u32, Error> {
        let failed = w
            .step("a", || async { Err::<u32, _>(Error::permanent("card declined")) })
            .await;
        assert_eq!(failed.unwrap_err().message(), "card declined");
        w.step("b", || async { Err(Error::temporary("timeout")) }).await
    }
    let stop = run(&wf(Vec::new(), 0), body).await;
    let Err(Stop::Suspended(s)) = stop else {
        panic!("{stop:?}")
    };
    let declined = Entry::Step {
        name: "a".into(),
        ok: None,
        error: Some("card declined".into()),
    };
    assert_eq!(
        s.entries,
        std::slice::from_ref(&declined),
        "the permanent error is stored before b runs"
    );

    let stop = run(&wf(vec![declined], 0), body).await;
    let Err(Stop::Failed(error)) = stop else {
        panic!("{stop:?}")
    };
    assert_eq!(error.message(), "timeout", "the temporary error fails the attempt");
}

#[tokio::test]
async fn time_and_ids_are_the_same_on_replay() {
    let first = wf(Vec::new(), 42_000);
    let (now, id, n) = (first.now(), first.uuid(), first.random_u64());
    assert_eq!(now, UNIX_EPOCH + Duration::from_secs(42));
    let Stop::Suspended(s) = first.suspension_stop() else {
        unreachable!()
    };
    let replay = wf(s.entries, 99_000);
    assert_eq!((replay.now(), replay.uuid(), replay.random_u64()), (now, id.clone(), n));
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "8", "a version 8 UUID");
}

impl Workflow {
    fn suspension_stop(&self) -> Stop {
        Stop::Suspended(self.suspension())
    }
}

#[test]
fn the_body_splits_into_journal_and_input() {
    let body = br#"[{"kind":"now","value":5}]{"order":1}"#;
    let (journal, input) = split_body(body, 26).unwrap();
    assert_eq!(journal, [Entry::Now { value: 5 }]);
    assert_eq!(input, br#"{"order":1}"#);
    assert!(split_body(body, 500).unwrap_err().contains("engine-journal-bytes"));
    assert!(split_body(body, 3).unwrap_err().contains("does not decode"));
}

/// A workflow as an engine of `protocol` calls it.
fn wf_under(protocol: u32, journal: Vec<Entry>) -> Workflow {
    Workflow::new(
        Context {
            call_id: "call-1".into(),
            protocol,
            ..Context::default()
        },
        journal,
        0,
    )
}

/// step a, then the patched branch: step `new` or step `old`.
async fn patched_flow(wf: Workflow) -> Result<&'static str, Error> {
    wf.step("a", || async { Ok(1) }).await?;
    if wf.patched("v2") {
        wf.step("new", || async { Ok(2) }).await?;
        Ok("new")
    } else {
        wf.step("old", || async { Ok(2) }).await?;
        Ok("old")
    }
}

#[tokio::test]
async fn a_patch_point_is_journaled_for_new_runs_and_false_for_runs_already_past_it() {
    // A run reaching the point with this code: true, and the point is journaled with the
    // step after it.
    let fresh = wf_under(PATCH_PROTOCOL, Vec::new());
    let Err(Stop::Suspended(s)) = run(&fresh, patched_flow).await else {
        panic!("step a is stored before the next step runs")
    };
    assert_eq!(s.from, 0);
    assert_eq!(s.entries, [step("a", 1), Entry::Patch { id: "v2".into() }]);
    let replay = wf_under(PATCH_PROTOCOL, s.entries);
    assert_eq!(run(&replay, patched_flow).await.unwrap().unwrap(), "new");

    // A run that had gone past the point under the old code keeps the old path.
    let old = wf_under(PATCH_PROTOCOL, vec![step("a", 1), step("old", 2)]);
    assert_eq!(run(&old, patched_flow).await.unwrap().unwrap(), "old");
}

#[tokio::test]
async fn a_patch_point_the_code_no_longer_asks_about_is_passed_over() {
    let journal = vec![step("a", 1), Entry::Patch { id: "v2".into() }, step("new", 2)];
    let wf = wf_under(PATCH_PROTOCOL, journal);
    let done = run(&wf, |wf| async move {
        wf.step("a", || async { Ok(1) }).await?;
        wf.step("new", || async { Ok(2) }).await?;
        Ok::<_, Error>("patch removed")
    })
    .await;
    assert_eq!(done.unwrap().unwrap(), "patch removed");
}

#[tokio::test]
async fn a_new_patch_point_under_an_engine_of_protocol_5_fails_with_a_clear_error() {
    let wf = wf_under(5, vec![step("a", 1)]);
    let Err(Stop::Failed(error)) = run(&wf, patched_flow).await else {
        panic!("the run fails")
    };
    assert!(
        error.message().contains("needs an engine of protocol 6"),
        "{}",
        error.message()
    );
    // Replaying a journal without the point is fine under the old engine.
    let old = wf_under(5, vec![step("a", 1), step("old", 2)]);
    assert_eq!(run(&old, patched_flow).await.unwrap().unwrap(), "old");
}
