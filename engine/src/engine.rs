//! Wiring: open the store, start one scheduler per subscription, the admin API and the
//! purger, and stop them all in order.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::endpoints::Endpoints;
use crate::model::now_millis;
use crate::scheduler::{Scheduler, SchedulerStats};
use crate::source;
use crate::store::{Store, StoreError, StoreOptions, WriterOptions};
use std::sync::atomic::Ordering::Relaxed;

/// Why the engine could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] connectors::kafka::SourceError),
    #[error(transparent)]
    Sink(#[from] connectors::kafka::sink::SinkError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("a task failed: {0}")]
    Task(String),
}

/// A running engine. Drop without [`Engine::shutdown`] only in tests that simulate a crash.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    admin_addr: SocketAddr,
    schedulers: Arc<HashMap<String, Arc<SchedulerStats>>>,
    endpoints: Arc<Endpoints>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<Result<(), EngineError>>,
}

/// How long attempts in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Engine {
    /// Start everything the config describes.
    pub async fn start(config: Config) -> Result<Self, EngineError> {
        let store = Store::open(
            &config.store.path,
            StoreOptions {
                writer: WriterOptions {
                    max_batch: config.store.max_batch,
                    commit_interval: config.store.commit_interval,
                },
            },
        )?;
        let signer = config.signing.signer()?;
        let deliverer = Deliverer::new(signer)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let mut subscriptions = HashMap::new();
        let mut schedulers = HashMap::new();
        let mut controls = HashMap::new();
        let endpoints = Endpoints::from_config(&config);
        for sub in &config.subscriptions {
            let endpoint = endpoints.for_subscription(&config, sub);
            let sub = Arc::new(sub.clone());
            let scheduler = Scheduler::new(Arc::clone(&sub), store.clone(), deliverer.clone(), endpoint);
            let stats = scheduler.stats();
            stats.open.store(store.open_calls(&sub.name).await? as i64, Relaxed);
            if sub.kafka.is_some() {
                tasks.spawn(source::run(
                    Arc::clone(&sub),
                    store.clone(),
                    Arc::clone(&stats),
                    shutdown_rx.clone(),
                ));
            }
            if sub.dead_letter.is_some() {
                tasks.spawn(crate::dead_letter::run(
                    Arc::clone(&sub),
                    store.clone(),
                    Arc::clone(&stats),
                    shutdown_rx.clone(),
                ));
            }
            schedulers.insert(sub.name.clone(), stats);
            controls.insert(sub.name.clone(), scheduler.control());
            let shutdown = shutdown_rx.clone();
            let grace = SHUTDOWN_GRACE.min(sub.timeout);
            tasks.spawn(async move { scheduler.run(shutdown, grace).await.map_err(EngineError::from) });
            subscriptions.insert(sub.name.clone(), sub);
        }
        let schedulers = Arc::new(schedulers);
        let endpoints = Arc::new(endpoints);

        let listener = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| EngineError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = listener.local_addr().map_err(|source| EngineError::Bind {
            addr: config.admin.listen,
            source,
        })?;
        let app = admin::router(AdminState {
            store: store.clone(),
            subscriptions: Arc::new(subscriptions),
            schedulers: Arc::clone(&schedulers),
            endpoints: Arc::clone(&endpoints),
            controls: Arc::new(controls),
            token: config.admin.token.clone().map(Arc::from),
        });
        let mut admin_shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = admin_shutdown.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(|e| EngineError::Task(format!("admin API: {e}")))
        });

        tasks.spawn(purge_loop(store.clone(), config.store.retention, shutdown_rx));
        tracing::info!(admin = %admin_addr, db = %store.path().display(), "engine started");
        Ok(Self {
            store,
            admin_addr,
            schedulers,
            endpoints,
            shutdown,
            tasks,
        })
    }

    /// Where the admin API listens (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live scheduler figures per subscription.
    pub fn schedulers(&self) -> &HashMap<String, Arc<SchedulerStats>> {
        &self.schedulers
    }

    /// The endpoints calls go to, with their live limits.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Run until `signal` completes or a task fails, then shut down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), EngineError> {
        let failure = tokio::select! {
            () = signal => None,
            Some(result) = self.tasks.join_next() => Some(flatten(result)),
        };
        let stopped = self.shutdown().await;
        match failure {
            Some(Err(error)) => Err(error),
            _ => stopped,
        }
    }

    /// Stop consuming and dispatching, let attempts in flight finish (within a grace
    /// period), make every change durable, and close the store.
    pub async fn shutdown(mut self) -> Result<(), EngineError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = flatten(joined) {
                tracing::error!(%error, "task failed during shutdown");
                result = Err(error);
            }
        }
        self.store.flush().await.ok();
        self.store.close();
        tracing::info!("engine stopped");
        result
    }
}

fn flatten(joined: Result<Result<(), EngineError>, tokio::task::JoinError>) -> Result<(), EngineError> {
    joined.map_err(|e| EngineError::Task(e.to_string()))?
}

/// Delete finished calls older than the retention period, every few minutes.
async fn purge_loop(store: Store, retention: Duration, mut shutdown: watch::Receiver<bool>) -> Result<(), EngineError> {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        let before = now_millis() - retention.as_millis() as i64;
        match store.purge(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(calls = n, "purged finished calls past retention"),
            Err(error) => tracing::warn!(%error, "purge failed; will try again"),
        }
    }
}
