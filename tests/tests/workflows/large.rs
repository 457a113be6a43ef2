//! A journal over the inline limit (4 MiB) is not sent in the request: the SDK fetches it
//! from the engine's admin API with the link the request carries, and replay goes on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use integration_tests::config::Subscription;
use integration_tests::{free_addr, metric, start_engine};
use sdk::{Endpoint, Workflow};

use super::serve;

const STEPS: u32 = 9;
/// Each step's result: 9 of them make a journal of about 5.4 MB.
const RESULT_BYTES: usize = 600 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_over_the_inline_limit_is_fetched_by_the_sdk_and_every_step_runs_once() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&runs);
    let endpoint = Endpoint::new().workflow("bulky", move |wf: Workflow, (): ()| {
        let runs = Arc::clone(&counter);
        async move {
            let mut total = 0;
            for n in 0..STEPS {
                let runs = Arc::clone(&runs);
                let chunk: String = wf
                    .step(&format!("chunk-{n}"), move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok(char::from(b'a' + u8::try_from(n).unwrap())
                            .to_string()
                            .repeat(RESULT_BYTES))
                    })
                    .await?;
                assert_eq!(chunk.len(), RESULT_BYTES, "a replayed result is whole");
                total += chunk.len();
            }
            Ok(total)
        }
    });
    let addr = free_addr();
    let _handler = serve(endpoint, addr).await;
    let dir = tempfile::tempdir().unwrap();
    let (engine, admin) = start_engine(&dir, Subscription::new("bulky", &format!("http://{addr}/bulky"))).await;
    let id = admin.enqueue("bulky", b"null", None).await;
    let waited = tokio::time::timeout(std::time::Duration::from_secs(20), admin.wait_status(&id, "succeeded")).await;
    let call = admin.call(&id).await;
    assert!(
        waited.is_ok(),
        "status {} attempts {} error {:?} history {}",
        call["status"],
        call["attempts"],
        call["last_error"],
        call["history"]
    );
    assert_eq!(call["output"]["data"], (STEPS as usize * RESULT_BYTES).to_string());
    assert_eq!(runs.load(Ordering::SeqCst), STEPS, "each step ran once");

    let metrics = admin.metrics().await;
    let fetched = metric(&metrics, "engine_workflow_journals_fetched_total").unwrap();
    println!("journals fetched through the admin API: {fetched}");
    assert!(
        fetched >= 1.0,
        "the last requests' journals were over 4 MiB: fetched, not inline"
    );
    let gone = reqwest::get(format!(
        "http://{}/v1/journals/00000000000000000000000000000000",
        engine.admin_addr()
    ))
    .await
    .unwrap();
    assert_eq!(gone.status(), 404);
    engine.shutdown().await.unwrap();
}
