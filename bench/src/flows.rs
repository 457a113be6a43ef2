//! Workflows side by side (`bench e2e --scenarios workflows`): every Kafka record starts the
//! same workflow, three journaled steps that do nothing and a sleep of zero, through the
//! engine (our SDK's `Endpoint::workflow`, the bench handler's `flow`) and through Restate
//! (its Rust SDK, the peer's `Flow/run`, from a Kafka subscription). Reported per system:
//! completed workflows per second (first to last completion, as the handler saw them),
//! handler requests per workflow (every execution of the workflow function) and CPU of the
//! engine process or of restate-server per workflow.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use integration_tests::kafka::Tansu;

use crate::e2e::{
    cpu_seconds, get_json, produce_all, producer, wait_delivered, wait_until, Delivered, EngineProc, EngineSetup,
    Handler,
};
use crate::report::{Restate, RestateBins};
use crate::summary;

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct FlowRun {
    workflows_per_s: f64,
    requests_per_workflow: f64,
    cpu_us_per_workflow: f64,
}

impl FlowRun {
    /// A run's figures: `records` workflows delivered as `done` says, with `cpu` seconds of
    /// the system's process, and the requests per workflow its handler's stats report.
    async fn of(stats: &str, done: &Delivered, cpu: f64, records: usize) -> anyhow::Result<Self> {
        let v = get_json(stats).await?;
        let requests = v["attempts"].as_f64().unwrap_or(0.0) / v["count"].as_f64().unwrap_or(0.0).max(1.0);
        let span = (done.last_us - done.first_us) as f64 / 1e6;
        Ok(Self {
            workflows_per_s: (records - 1) as f64 / span,
            requests_per_workflow: requests,
            cpu_us_per_workflow: cpu * 1e6 / records as f64,
        })
    }

    fn report(&self, system: &str, from: &str, run: usize, records: usize, started: Instant) {
        eprintln!(
            "  {system} workflows run {}: {records} in {:.1?} from {from}, {:.0} workflows/s first to last, {:.2} requests each",
            run + 1,
            started.elapsed(),
            self.workflows_per_s,
            self.requests_per_workflow
        );
    }
}

async fn engine_run(tansu: &Tansu, records: usize, run: usize) -> anyhow::Result<FlowRun> {
    let topic = format!("flows-{run}");
    tansu.create_topic(&topic, 3).await;
    let bootstrap = tansu.bootstrap();
    produce_all(&producer(&bootstrap), &topic, records, |_| 0).await?;
    let handler = Handler::start().await?;
    let dir = tempfile::tempdir_in("target")?;
    let target = handler.url.replace("/run", "/flow");
    let group = format!("engine-{topic}");
    let engine = EngineProc::start(&EngineSetup {
        dir: dir.path(),
        bootstrap: &bootstrap,
        topic: &topic,
        target: &target,
        group: &group,
        paused: false,
    })
    .await?;
    let cpu_before = cpu_seconds(engine.proc.pid());
    let started = Instant::now();
    let done = wait_delivered(&handler.stats, records as u64, Duration::from_secs(60)).await?;
    let cpu = cpu_seconds(engine.proc.pid()) - cpu_before;
    wait_until("every workflow succeeded", Duration::from_secs(30), || async {
        engine
            .stats()
            .await
            .is_ok_and(|s| s["succeeded"].as_u64() == Some(records as u64))
    })
    .await?;
    let figures = FlowRun::of(&handler.stats, &done, cpu, records).await?;
    engine.proc.stop();
    figures.report("engine", "start", run, records, started);
    Ok(figures)
}

async fn restate_run(tansu: &Tansu, bins: &RestateBins, records: usize, run: usize) -> anyhow::Result<FlowRun> {
    let topic = format!("rs-flows-{run}");
    tansu.create_topic(&topic, 3).await;
    produce_all(&producer(&tansu.bootstrap()), &topic, records, |_| 0).await?;
    let restate = Restate::start(tansu, bins).await?;
    let cpu_before = cpu_seconds(restate.server.pid());
    let started = Instant::now();
    restate.subscribe(&topic, "Flow/run").await?;
    let done = wait_delivered(&restate.stats, records as u64, Duration::from_secs(120)).await?;
    let cpu = cpu_seconds(restate.server.pid()) - cpu_before;
    let figures = FlowRun::of(&restate.stats, &done, cpu, records).await?;
    figures.report("Restate", "subscribing", run, records, started);
    Ok(figures)
}

/// Run both sides `runs` times, interleaved, and write the table.
pub async fn compare(
    tansu: &Tansu,
    restate: Option<&RestateBins>,
    records: usize,
    runs: usize,
    md: &mut String,
) -> anyhow::Result<()> {
    let mut engine_runs = Vec::new();
    let mut restate_runs = Vec::new();
    for run in 0..runs {
        engine_runs.push(engine_run(tansu, records, run).await?);
        if let Some(bins) = restate {
            restate_runs.push(restate_run(tansu, bins, records, run).await?);
        }
    }
    let _ = writeln!(
        md,
        "### Workflows: {records} records produced up front, each a workflow of 3 steps and a sleep of 0\n"
    );
    let _ = writeln!(
        md,
        "| system | workflows/s (median) | min | max | handler requests per workflow | CPU µs per workflow (engine process or restate-server) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let row = |md: &mut String, name: &str, runs: &[FlowRun]| -> f64 {
        let rates: Vec<f64> = runs.iter().map(|r| r.workflows_per_s).collect();
        let (median, min, max) = summary(&rates);
        let requests: Vec<f64> = runs.iter().map(|r| r.requests_per_workflow).collect();
        let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_us_per_workflow).collect();
        let _ = writeln!(
            md,
            "| {name} | {median:.0} | {min:.0} | {max:.0} | {:.2} | {:.0} |",
            summary(&requests).0,
            summary(&cpu).0
        );
        median
    };
    let engine = row(md, "engine", &engine_runs);
    if !restate_runs.is_empty() {
        let restate = row(md, "Restate 1.7.12", &restate_runs);
        let _ = writeln!(
            md,
            "| **ratio engine / Restate** | **{:.2}** | | | | |",
            engine / restate
        );
    }
    let _ = writeln!(md);
    Ok(())
}
