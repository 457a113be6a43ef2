//! The `engine` binary: a thin command line over the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use engine::{Config, Engine};

/// `print!` to stdout that ends the process quietly once stdout is closed
/// (`engine calls list | head`), instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(&error);
        }
    }};
}

/// `println!` with the behaviour of [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(&error);
        }
    }};
}

mod cli;
mod dev;

/// A closed pipe is the reader saying it has enough: exit as `head` expects.
fn stdout_failed(error: &std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {error}");
    std::process::exit(1);
}

/// Durable execution for Kafka records: every record becomes a call that is delivered over
/// HTTP, retried with backoff, and kept as a dead letter when it cannot succeed.
#[derive(Debug, Parser)]
#[command(name = "engine", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine with a config file: consume, persist, deliver, serve the admin API.
    Serve {
        /// The TOML config file (see the configuration reference in README.md).
        #[arg(long, short, env = "ENGINE_CONFIG", default_value = "engine.toml")]
        config: PathBuf,
    },
    /// Try it with no Kafka: an in-process broker, the engine on a SQLite file, a demo
    /// handler, and a producer reading lines from stdin.
    Dev(dev::DevOptions),
    /// Inspect and act on calls of a running engine.
    Calls {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::Calls,
    },
    /// Inspect, redrive and purge dead letters of a running engine.
    Dead {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(subcommand)]
        command: cli::Dead,
    },
    /// Counts by status per subscription, and endpoint limits, of a running engine.
    Stats {
        #[command(flatten)]
        remote: cli::Remote,
        /// Cluster mode: counts of every member, and their sum.
        #[arg(long)]
        group: bool,
    },
    /// Cluster mode: the engines of the cluster, their admin APIs and partitions.
    Cluster {
        #[command(flatten)]
        remote: cli::Remote,
    },
    /// Enqueue a call directly, without Kafka.
    Invoke {
        #[command(flatten)]
        remote: cli::Remote,
        #[command(flatten)]
        args: cli::InvokeArgs,
    },
    /// Generate an Ed25519 key pair for request signing: the private key goes to the
    /// engine (`[signing] private_key` or ENGINE_SIGNING_KEY), the public key to handlers
    /// (ENGINE_VERIFY_KEY).
    Keygen,
    /// Check a config file and print what it configures, without starting anything.
    CheckConfig {
        #[arg(long, short, env = "ENGINE_CONFIG", default_value = "engine.toml")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ENGINE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald, files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .init();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")?
                .block_on(serve(config))
        }
        Command::Dev(options) => {
            let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let result = runtime.block_on(dev::run(options, shutdown_signal()));
            // The stdin reader sits in a blocking read that nothing can interrupt: do not
            // wait for it.
            runtime.shutdown_background();
            result
        }
        Command::Calls { remote, command } => client_runtime()?.block_on(cli::calls(remote, command)),
        Command::Dead { remote, command } => client_runtime()?.block_on(cli::dead(remote, command)),
        Command::Stats { remote, group } => client_runtime()?.block_on(cli::stats(remote, group)),
        Command::Cluster { remote } => client_runtime()?.block_on(cli::cluster(remote)),
        Command::Invoke { remote, args } => client_runtime()?.block_on(cli::invoke(remote, args)),
        Command::Keygen => {
            let keys = sdk::signing::KeyPair::generate();
            outln!("ENGINE_SIGNING_KEY={}", keys.private_base64());
            outln!("ENGINE_VERIFY_KEY={}", keys.public_base64());
            eprintln!("Give ENGINE_SIGNING_KEY to the engine only; handlers need ENGINE_VERIFY_KEY.");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config)?;
            outln!("{}: ok", config.display());
            outln!("  store: {}", loaded.store.path.display());
            outln!("  admin: http://{}", loaded.admin.listen);
            for sub in &loaded.subscriptions {
                let source = sub.kafka.as_ref().map_or_else(
                    || "admin API only".to_string(),
                    |k| format!("kafka {} from {}", k.topics.join(","), k.brokers),
                );
                outln!(
                    "  subscription {} -> {} ({source}, ordering {:?})",
                    sub.name,
                    sub.target,
                    sub.ordering
                );
            }
            // Where values came from, never the values: they are often secrets.
            for value in &loaded.from_env {
                let vars: Vec<String> = value.vars.iter().map(|v| format!("${{{v}}}")).collect();
                outln!(
                    "  {} from the environment: {} (value not shown)",
                    value.key,
                    vars.join(" ")
                );
            }
            Ok(())
        }
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let engine = Engine::start(config).await?;
    eprintln!("engine: admin API on http://{}", engine.admin_addr());
    let progress = tokio::spawn(progress(engine.figures().clone()));
    let result = engine.run_until(shutdown_signal()).await;
    progress.abort();
    Ok(result?)
}

/// A compact status line per subscription: on a terminal every 5 s when something changed,
/// otherwise a log line every 30 s.
async fn progress(figures: std::collections::HashMap<String, std::sync::Arc<engine::figures::Figures>>) {
    use std::io::IsTerminal as _;
    let terminal = std::io::stderr().is_terminal();
    let every = std::time::Duration::from_secs(if terminal { 5 } else { 30 });
    let mut names: Vec<_> = figures.keys().cloned().collect();
    names.sort();
    let mut last: std::collections::HashMap<String, (u64, String)> = std::collections::HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        for name in &names {
            let s = figures[name].snapshot();
            let done = s.succeeded + s.dead;
            let previous = last.get(name).map_or(done, |(d, _)| *d);
            let rate = (done - previous) as f64 / every.as_secs_f64();
            let line = format!(
                "{name}: {rate:.0} calls/s, backlog {}, in flight {}, retrying {}, dead {}",
                s.backlog, s.in_flight, s.waiting_retry, s.dead
            );
            let changed = last.get(name).is_none_or(|(_, l)| *l != line);
            if terminal && changed {
                eprintln!("[status] {line}");
            } else if !terminal {
                tracing::info!(target: "engine::status", "{line}");
            }
            last.insert(name.clone(), (done, line));
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: finishing attempts in flight");
}
