//! Wiring: open the store, start each [`Subscription`], the admin API and the purger, and
//! stop them all in order.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::admin::{self, AdminState};
use crate::cluster;
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::endpoints::Endpoints;
use crate::error::EngineError;
use crate::figures::Figures;
use crate::model::now_millis;
use crate::shelf::JournalShelf;
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::store::{Store, StoreOptions, WriterOptions};
use crate::subscription::Subscription;

/// A running engine. Drop without [`Engine::shutdown`] only in tests that simulate a crash.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    admin_addr: SocketAddr,
    figures: Arc<HashMap<String, Arc<Figures>>>,
    endpoints: Arc<Endpoints>,
    shutdown: ShutdownTrigger,
    tasks: JoinSet<Result<(), EngineError>>,
    /// Cluster mode: stopped last.
    publisher: Option<cluster::Publisher>,
}

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
                changelog: config.cluster.enabled,
            },
        )?;
        let (shutdown, listener) = shutdown::channel();
        let mut tasks = JoinSet::new();
        let (cluster, publisher) = if config.cluster.enabled {
            let (changelog, publisher) = cluster::start(&config, &store).await?;
            (Some((changelog, config.cluster.clone())), Some(publisher))
        } else {
            (None, None)
        };
        let targets = config
            .subscriptions
            .iter()
            .map(|s| (s.name.clone(), s.target.clone()))
            .collect();
        for retargeted in store.follow_targets(targets).await? {
            if retargeted.moved > 0 {
                tracing::info!(subscription = %retargeted.subscription, calls = retargeted.moved, "calls not started as workflows follow the subscription's new target");
            }
            for (target, workflows) in &retargeted.pinned {
                tracing::info!(subscription = %retargeted.subscription, %target, workflows, "workflows stay pinned to the target they started on: keep it serving until they end");
            }
        }
        let listener_socket = tokio::net::TcpListener::bind(config.admin.listen)
            .await
            .map_err(|source| EngineError::Bind {
                addr: config.admin.listen,
                source,
            })?;
        let admin_addr = listener_socket.local_addr().map_err(|source| EngineError::Bind {
            addr: config.admin.listen,
            source,
        })?;
        // Journals too large to send inline are fetched from the admin API.
        let journals = JournalShelf::default();
        let deliverer = Deliverer::new(config.signing.signer()?)?
            .with_shelf(journals.clone(), &config.admin.public_base(admin_addr));

        let endpoints = Arc::new(Endpoints::from_config(&config));
        let mut configs = HashMap::new();
        let mut figures = HashMap::new();
        let mut controls = HashMap::new();
        let all: Arc<HashMap<_, _>> = Arc::new(
            config
                .subscriptions
                .iter()
                .map(|sub| (sub.name.clone(), Arc::new(sub.clone())))
                .collect(),
        );
        for sub in &config.subscriptions {
            let endpoint = endpoints.for_subscription(&config, sub);
            let subscription = Subscription::new(
                sub.clone(),
                &store,
                deliverer.clone(),
                endpoint,
                Arc::clone(&all),
                cluster.clone(),
            )
            .await?;
            configs.insert(sub.name.clone(), Arc::clone(subscription.config()));
            figures.insert(sub.name.clone(), Arc::clone(subscription.figures()));
            controls.insert(sub.name.clone(), subscription.control());
            tasks.spawn(subscription.run(listener.clone()));
        }
        let figures = Arc::new(figures);
        let controls = Arc::new(controls);
        if let Some(wakes) = store.take_wakes() {
            tasks.spawn(route_wakes(wakes, Arc::clone(&controls), listener.clone()));
        }

        let group = if config.cluster.enabled {
            let admin_url = config.admin.public_base(admin_addr);
            if config.admin.public_url.is_none() && !config.admin.listen.ip().is_loopback() {
                tracing::warn!(%admin_url, "cluster mode: other engines reach this one's admin API at {admin_url}; set [admin] public_url to an address they can reach");
            }
            match cluster::join_members(&config, admin_url, Arc::clone(&figures), listener.clone()).await? {
                Some((directory, announcer)) => {
                    tasks.spawn(announcer);
                    Some(admin::Group::new(directory, config.admin.token.clone().map(Arc::from)))
                }
                None => None,
            }
        } else {
            None
        };
        let app = admin::router(AdminState {
            store: store.clone(),
            subscriptions: Arc::new(configs),
            figures: Arc::clone(&figures),
            endpoints: Arc::clone(&endpoints),
            controls,
            token: config.admin.token.clone().map(Arc::from),
            journals,
            group,
        });
        let mut admin_shutdown = listener.clone();
        tasks.spawn(async move {
            axum::serve(listener_socket, app)
                .with_graceful_shutdown(async move { admin_shutdown.recv().await })
                .await
                .map_err(|e| EngineError::task("the admin API", e))
        });

        tasks.spawn(purge_loop(store.clone(), config.store.retention, listener));
        tracing::info!(admin = %admin_addr, db = %store.path().display(), "engine started");
        Ok(Self {
            store,
            admin_addr,
            figures,
            endpoints,
            shutdown,
            tasks,
            publisher,
        })
    }

    /// Where the admin API listens (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Live figures per subscription.
    pub fn figures(&self) -> &HashMap<String, Arc<Figures>> {
        &self.figures
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
        self.shutdown.trigger();
        let mut result = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = flatten(joined) {
                tracing::error!(%error, "task failed during shutdown");
                result = Err(error);
            }
        }
        let clock = self.store.commit_clock().await.ok();
        if let (Some(publisher), Some(clock)) = (self.publisher.take(), clock) {
            if let Err(error) = publisher.finish(clock, CHANGELOG_GRACE).await {
                tracing::error!(%error, "the changelog publisher failed");
                result = Err(error);
            }
        }
        self.store.close();
        tracing::info!("engine stopped");
        result
    }
}

/// How long the last changes may take to reach the changelog at shutdown.
const CHANGELOG_GRACE: Duration = Duration::from_secs(10);

fn flatten(joined: Result<Result<(), EngineError>, tokio::task::JoinError>) -> Result<(), EngineError> {
    joined.map_err(|e| EngineError::task("an engine task", e))?
}

/// Tell each workflow's scheduler that its wait is over (a child ended, a signal came).
async fn route_wakes(
    mut wakes: tokio::sync::mpsc::UnboundedReceiver<crate::store::Wake>,
    controls: Arc<HashMap<String, tokio::sync::mpsc::UnboundedSender<crate::scheduler::Control>>>,
    mut shutdown: Shutdown,
) -> Result<(), EngineError> {
    loop {
        let wake = tokio::select! {
            () = shutdown.recv() => return Ok(()),
            wake = wakes.recv() => match wake {
                Some(wake) => wake,
                None => return Ok(()),
            },
        };
        if let Some(control) = controls.get(&wake.subscription) {
            // A scheduler that stopped reads the call's due time from the store next start.
            let _ = control.send(crate::scheduler::Control::RetryNow { seq: wake.seq });
        }
    }
}

/// Delete finished calls older than the retention period, every few minutes.
async fn purge_loop(store: Store, retention: Duration, mut shutdown: Shutdown) -> Result<(), EngineError> {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        tokio::select! {
            () = shutdown.recv() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        let before = now_millis() - retention.as_millis() as i64;
        let Some(purged) = purge_in_chunks(&store, before, &shutdown).await else {
            return Ok(());
        };
        if purged > 0 {
            tracing::info!(calls = purged, "purged finished calls past retention");
        }
    }
}

/// Purge in chunks, each a few milliseconds of one commit, leaving the writer to ingest and
/// outcomes between chunks at least as long as a chunk took. Returns the calls deleted, or
/// `None` if shutdown began.
async fn purge_in_chunks(store: &Store, before: i64, shutdown: &Shutdown) -> Option<usize> {
    let mut purged = 0;
    let mut last_free = u64::MAX;
    loop {
        let started = std::time::Instant::now();
        match store.purge(before, PURGE_CHUNK).await {
            Ok(chunk) => {
                purged += chunk.deleted;
                // Done when nothing is left to delete and no more pages can be given back.
                if !chunk.more && (chunk.free_pages == 0 || chunk.free_pages >= last_free) {
                    return Some(purged);
                }
                last_free = if chunk.more { u64::MAX } else { chunk.free_pages };
            }
            Err(error) => {
                tracing::warn!(%error, "purge failed; will try again");
                return Some(purged);
            }
        }
        if shutdown.is_triggered() {
            return None;
        }
        tokio::time::sleep(started.elapsed()).await;
    }
}

/// Calls deleted per purge commit, at most (a chunk also stops after a few milliseconds).
const PURGE_CHUNK: usize = 1000;
