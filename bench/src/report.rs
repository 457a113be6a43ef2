//! `bench e2e`: runs every end-to-end scenario in one process against one Tansu broker and
//! prints markdown tables (also written to `<out>/results.md`), plus per-delivery CSV files
//! for the plots (`bench/plot.py`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use integration_tests::free_addr;
use integration_tests::kafka::Tansu;
use serde_json::json;

use crate::e2e::{
    self, cpu_seconds, delivered, post_json, produce_all, produce_at_rate, producer, wait_delivered, wait_until,
    Delivered, Proc,
};
use crate::summary;

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// Records of the throughput scenario.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Runs of the throughput and head-of-line scenarios (median and spread reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Fixed produce rates of the latency scenario (records/s).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 10_000])]
    rates: Vec<u64>,
    /// Seconds of each latency run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Records of the head-of-line scenario (1% fail twice).
    #[arg(long, default_value_t = 20_000)]
    hol_records: usize,
    /// Backlog of the memory scenario (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    memory_records: usize,
    /// restate-server binary (scripts/provision-restate); without it Restate is skipped.
    #[arg(long)]
    restate_server: Option<PathBuf>,
    /// restate-peer binary (bench/restate-peer).
    #[arg(long)]
    restate_peer: Option<PathBuf>,
    /// Restate's `default-num-partitions` (its default is 24; fewer suit 2 cores better).
    #[arg(long, default_value_t = 2)]
    restate_partitions: u32,
    /// Records of the workflow scenario (each one workflow).
    #[arg(long, default_value_t = 20_000)]
    workflow_records: usize,
    /// Scenarios to run: throughput, latency, hol, memory, workflows.
    #[arg(long, value_delimiter = ',', default_values_t = ["throughput".to_string(), "latency".to_string(), "hol".to_string(), "memory".to_string(), "workflows".to_string()])]
    scenarios: Vec<String>,
    /// Where results.md and the CSV files go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let tansu = Tansu::start();
    let restate = match (&args.restate_server, &args.restate_peer) {
        (Some(server), Some(peer)) => Some(RestateBins {
            server: server.clone(),
            peer: peer.clone(),
            partitions: args.restate_partitions,
        }),
        _ => None,
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {} cores, {:.0} GiB RAM. Broker: Tansu 0.6.0 (memory storage), 3 partitions, 100-byte records.\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        mem_gib()
    );

    let wants = |name: &str| args.scenarios.iter().any(|s| s == name);
    if wants("throughput") {
        throughput(&args, &tansu, restate.as_ref(), &mut md).await?;
    }
    if wants("latency") {
        latency(&args, &tansu, restate.as_ref(), &mut md).await?;
    }
    if wants("hol") {
        head_of_line(&args, &tansu, &mut md).await?;
    }
    if wants("memory") && args.memory_records > 0 {
        memory(&args, &tansu, &mut md).await?;
    }
    if wants("workflows") {
        let before = md.len();
        crate::flows::compare(&tansu, restate.as_ref(), args.workflow_records, args.runs, &mut md).await?;
        print!("{}", &md[before..]);
    }
    std::fs::write(args.out.join("results.md"), &md)?;
    eprintln!("written: {}", args.out.join("results.md").display());
    Ok(())
}

async fn throughput(
    args: &E2eArgs,
    tansu: &Tansu,
    restate: Option<&RestateBins>,
    md: &mut String,
) -> anyhow::Result<()> {
    let mut engine_runs = Vec::new();
    let mut restate_runs = Vec::new();
    for run in 0..args.runs {
        engine_runs.push(e2e::engine_throughput(tansu, args.records, run).await?);
        if let Some(bins) = restate {
            restate_runs.push(restate_throughput(tansu, bins, args.records, run).await?);
        }
    }
    let rates: Vec<f64> = engine_runs.iter().map(|t| t.calls_per_s).collect();
    let (median, min, max) = summary(&rates);
    let _ = writeln!(
        md,
        "### End to end: {} records produced up front, no-op handler over HTTP\n",
        args.records
    );
    let _ = writeln!(
        md,
        "| system | calls/s (median) | min | max | CPU µs per record (median) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let cpu: Vec<f64> = engine_runs.iter().map(|t| t.cpu_us_per_record).collect();
    let _ = writeln!(
        md,
        "| engine | {median:.0} | {min:.0} | {max:.0} | {:.0} |",
        summary(&cpu).0
    );
    if !restate_runs.is_empty() {
        let r: Vec<f64> = restate_runs.iter().map(|t| t.0).collect();
        let rc: Vec<f64> = restate_runs.iter().map(|t| t.1).collect();
        let (rm, rmin, rmax) = summary(&r);
        let _ = writeln!(
            md,
            "| Restate 1.7.12 | {rm:.0} | {rmin:.0} | {rmax:.0} | {:.0} |",
            summary(&rc).0
        );
        let _ = writeln!(md, "| **ratio engine / Restate** | **{:.2}** | | | |", median / rm);
    }
    let batch: Vec<f64> = engine_runs.iter().map(|t| t.rows_per_commit).collect();
    let commits: Vec<f64> = engine_runs.iter().map(|t| t.commits_per_s).collect();
    let _ = writeln!(
        md,
        "\nEngine store during these runs: {:.0} changes per commit (median), {:.0} commits/s.\n",
        summary(&batch).0,
        summary(&commits).0
    );
    print!("{md}");
    Ok(())
}

async fn latency(args: &E2eArgs, tansu: &Tansu, restate: Option<&RestateBins>, md: &mut String) -> anyhow::Result<()> {
    let mut latency_md = String::new();
    let _ = writeln!(
        latency_md,
        "### Latency, produce → handler start, {} s at each rate\n",
        args.seconds
    );
    let _ = writeln!(
        latency_md,
        "| system | rate (records/s) | delivered | p50 ms | p99 ms | p999 ms |"
    );
    let _ = writeln!(latency_md, "|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &rate in &args.rates {
        let engine = e2e::engine_latency(tansu, rate, args.seconds).await?;
        write_csv(&args.out.join(format!("latency-engine-{rate}.csv")), &engine)?;
        let _ = writeln!(latency_md, "{}", latency_row("engine", rate, &engine));
        if let Some(bins) = restate {
            match restate_latency(tansu, bins, rate, args.seconds).await {
                Ok(restate) => {
                    write_csv(&args.out.join(format!("latency-restate-{rate}.csv")), &restate)?;
                    let _ = writeln!(latency_md, "{}", latency_row("Restate 1.7.12", rate, &restate));
                    ratios.push((rate, engine.p99_us as f64 / restate.p99_us.max(1) as f64));
                }
                Err(e) => {
                    let _ = writeln!(latency_md, "| Restate 1.7.12 | {rate} | failed: {e} | | | |");
                }
            }
        }
    }
    for (rate, ratio) in ratios {
        let _ = writeln!(
            latency_md,
            "\nRatio of p99, engine / Restate, at {rate}/s: **{ratio:.2}** (below 1: the engine is faster)."
        );
    }
    print!("{latency_md}");
    md.push_str(&latency_md);
    Ok(())
}

async fn head_of_line(args: &E2eArgs, tansu: &Tansu, md: &mut String) -> anyhow::Result<()> {
    let mut hol = String::new();
    let mut ok_runs = Vec::new();
    let mut fail_runs = Vec::new();
    let mut naive_runs = Vec::new();
    for run in 0..args.runs {
        ok_runs.push(e2e::engine_hol(tansu, args.hol_records, false, run).await?);
        fail_runs.push(e2e::engine_hol(tansu, args.hol_records, true, run).await?);
        naive_runs.push(e2e::naive_hol(tansu, args.hol_records, run).await?);
    }
    let (ok, fail, naive) = (summary(&ok_runs), summary(&fail_runs), summary(&naive_runs));
    let _ = writeln!(
        hol,
        "\n### Head-of-line: {} records, 1% fail twice (retried after 100 ms, then 200 ms)\n",
        args.hol_records
    );
    let _ = writeln!(hol, "| consumer | seconds to finish (median) | min | max |");
    let _ = writeln!(hol, "|---|---|---|---|");
    let _ = writeln!(hol, "| engine, all succeed | {:.2} | {:.2} | {:.2} |", ok.0, ok.1, ok.2);
    let _ = writeln!(
        hol,
        "| engine, 1% fail twice | {:.2} | {:.2} | {:.2} |",
        fail.0, fail.1, fail.2
    );
    let _ = writeln!(
        hol,
        "| naive inline retry, 1% fail twice | {:.2} | {:.2} | {:.2} |",
        naive.0, naive.1, naive.2
    );
    let _ = writeln!(
        hol,
        "\nEngine with failures / engine all succeed: **{:.2}**; naive / engine with failures: **{:.1}×**.",
        fail.0 / ok.0,
        naive.0 / fail.0
    );
    print!("{hol}");
    md.push_str(&hol);
    Ok(())
}

async fn memory(args: &E2eArgs, tansu: &Tansu, md: &mut String) -> anyhow::Result<()> {
    {
        let m = e2e::engine_memory(tansu, args.memory_records).await?;
        let mut mem = String::new();
        let _ = writeln!(mem, "\n### Memory and restart with a backlog of {} calls\n", m.backlog);
        let _ = writeln!(mem, "| measure | value |");
        let _ = writeln!(mem, "|---|---|");
        let _ = writeln!(
            mem,
            "| time to store the backlog (delivery paused) | {:.1} s |",
            m.ingest_s
        );
        let _ = writeln!(
            mem,
            "| RSS of `engine serve` with the backlog stored | {:.0} MiB |",
            m.rss_mib
        );
        let _ = writeln!(mem, "| peak RSS while storing it | {:.0} MiB |", m.peak_mib);
        let _ = writeln!(mem, "| restart → first delivery | {:.2} s |", m.first_delivery_s);
        let _ = writeln!(
            mem,
            "| RSS 3 s into delivering the backlog | {:.0} MiB |",
            m.restart_rss_mib
        );
        print!("{mem}");
        md.push_str(&mem);
    }
    Ok(())
}

fn latency_row(system: &str, rate: u64, d: &Delivered) -> String {
    format!(
        "| {system} | {rate} | {} | {:.1} | {:.1} | {:.1} |",
        d.count,
        d.p50_us as f64 / 1e3,
        d.p99_us as f64 / 1e3,
        d.p999_us as f64 / 1e3
    )
}

/// `arrival_s,latency_ms` per delivery, arrival relative to the first.
fn write_csv(path: &Path, d: &Delivered) -> anyhow::Result<()> {
    let mut out = String::from("arrival_s,latency_ms\n");
    let first = d.arrivals_us.iter().copied().min().unwrap_or(0);
    for (arrival, latency) in d.arrivals_us.iter().zip(&d.latencies_us) {
        let _ = writeln!(
            out,
            "{:.6},{:.3}",
            (arrival - first) as f64 / 1e6,
            *latency as f64 / 1e3
        );
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn mem_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0)
}

/// The Restate side: binaries and settings.
pub struct RestateBins {
    server: PathBuf,
    peer: PathBuf,
    partitions: u32,
}

/// restate-server, its peer, the deployment registered.
pub struct Restate {
    pub server: Proc,
    _peer: Proc,
    admin: String,
    pub stats: String,
    _dir: tempfile::TempDir,
}

impl Restate {
    pub async fn start(tansu: &Tansu, bins: &RestateBins) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir_in("target")?;
        let (node, admin, ingress, listen, stats) = (free_addr(), free_addr(), free_addr(), free_addr(), free_addr());
        let peer = Proc(
            Command::new(&bins.peer)
                .args(["--listen", &listen.to_string(), "--stats", &stats.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawn restate-peer")?,
        );
        let config = dir.path().join("restate.toml");
        std::fs::write(
            &config,
            format!(
                r#"
node-name = "bench"
cluster-name = "bench"
base-dir = "{base}"
listen-mode = "tcp"
bind-address = "{node}"
advertised-address = "http://{node}/"
default-num-partitions = {partitions}
disable-telemetry = true
log-filter = "warn,octocrab=off"
log-disable-ansi-codes = true

[admin]
bind-address = "{admin}"
disable-web-ui = true

[ingress]
bind-address = "{ingress}"

[[ingress.kafka-clusters]]
name = "tansu"
brokers = ["{bootstrap}"]
"#,
                base = dir.path().join("data").display(),
                bootstrap = tansu.bootstrap(),
                partitions = bins.partitions,
            ),
        )?;
        let server = Proc(
            Command::new(&bins.server)
                .args(["--config-file"])
                .arg(&config)
                .arg("--no-logo")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("restate.log"))?)
                .spawn()
                .context("spawn restate-server")?,
        );
        let admin = format!("http://{admin}");
        let health = format!("{admin}/health");
        wait_until("restate-server", Duration::from_secs(60), || {
            let url = health.clone();
            async move { reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await?;
        let stats = format!("http://{stats}/stats");
        let stats_url = stats.clone();
        wait_until("restate-peer", Duration::from_secs(10), || {
            let url = stats_url.clone();
            async move { reqwest::get(&url).await.is_ok() }
        })
        .await?;
        post_json(
            &format!("{admin}/deployments"),
            &json!({ "uri": format!("http://{listen}") }),
        )
        .await?;
        Ok(Self {
            server,
            _peer: peer,
            admin,
            stats,
            _dir: dir,
        })
    }

    /// Invoke `handler` (`Service/handler`) for every record of `topic`.
    pub async fn subscribe(&self, topic: &str, handler: &str) -> anyhow::Result<()> {
        post_json(
            &format!("{}/subscriptions", self.admin),
            &json!({
                "source": format!("kafka://tansu/{topic}"),
                "sink": format!("service://{handler}"),
                "options": {
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": "6000",
                    "max.poll.interval.ms": "7000",
                    "fetch.wait.max.ms": "10",
                },
            }),
        )
        .await?;
        Ok(())
    }
}

/// (calls/s first to last delivery, CPU µs per record of restate-server).
async fn restate_throughput(
    tansu: &Tansu,
    bins: &RestateBins,
    records: usize,
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let topic = format!("rs-e2e-{run}");
    tansu.create_topic(&topic, 3).await;
    produce_all(&producer(&tansu.bootstrap()), &topic, records, |_| 0).await?;
    let restate = Restate::start(tansu, bins).await?;
    let cpu_before = cpu_seconds(restate.server.pid());
    let started = Instant::now();
    restate.subscribe(&topic, "Bench/run").await?;
    let done = wait_delivered(&restate.stats, records as u64, Duration::from_secs(120)).await?;
    let cpu = cpu_seconds(restate.server.pid()) - cpu_before;
    let span = (done.last_us - done.first_us) as f64 / 1e6;
    eprintln!(
        "  Restate run {}: {records} calls in {:.1?} from subscribing, {span:.2} s first to last delivery",
        run + 1,
        started.elapsed()
    );
    Ok(((records - 1) as f64 / span, cpu * 1e6 / records as f64))
}

async fn restate_latency(tansu: &Tansu, bins: &RestateBins, rate: u64, seconds: u64) -> anyhow::Result<Delivered> {
    let topic = format!("rs-latency-{rate}");
    tansu.create_topic(&topic, 3).await;
    let restate = Restate::start(tansu, bins).await?;
    restate.subscribe(&topic, "Bench/run").await?;
    produce_all(&producer(&tansu.bootstrap()), &topic, 10, |_| 0).await?;
    wait_delivered(&restate.stats, 10, Duration::from_secs(60)).await?;
    reqwest::Client::new()
        .post(restate.stats.replace("/stats", "/reset"))
        .send()
        .await?;
    let produced = produce_at_rate(&producer(&tansu.bootstrap()), &topic, rate, seconds).await?;
    let result = wait_delivered(&restate.stats, produced, Duration::from_secs(30)).await;
    let d = delivered(&restate.stats, true).await?;
    result?;
    Ok(d)
}
