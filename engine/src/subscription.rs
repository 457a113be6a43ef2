//! One subscription's life: its Kafka source (with a `[subscription.kafka]` section), its
//! scheduler and its dead-letter publisher (with a `[subscription.dead_letter]` section),
//! sharing one [`Figures`], started and stopped as one.
//!
//! When one part fails, the subscription stops its other parts gracefully and reports the
//! failure; the engine then stops everything else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cluster::{Changelog, ClusterLink};
use crate::config::SubscriptionConfig;
use crate::delivery::Deliverer;
use crate::endpoints::Endpoint;
use crate::error::EngineError;
use crate::figures::Figures;
use crate::scheduler::{Control, Scheduler};
use crate::shutdown::{self, Shutdown};
use crate::store::Store;
use crate::{dead_letter, outbox, source};

/// How long attempts in flight may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What each part of a subscription works with.
#[derive(Debug, Clone)]
pub struct Part {
    pub subscription: Arc<SubscriptionConfig>,
    pub store: Store,
    pub figures: Arc<Figures>,
    /// Stops this subscription's parts (the engine's shutdown, or a failed sibling part).
    pub shutdown: Shutdown,
    /// Cluster mode: the changelog, the schedulers' handovers and the lease.
    pub cluster: Option<ClusterLink>,
}

/// A subscription ready to run.
#[derive(Debug)]
pub struct Subscription {
    config: Arc<SubscriptionConfig>,
    store: Store,
    scheduler: Scheduler,
    figures: Arc<Figures>,
    cluster: Option<ClusterLink>,
}

impl Subscription {
    /// Prepare the parts; the backlog already in the store counts from the start.
    pub async fn new(
        config: SubscriptionConfig,
        store: &Store,
        deliverer: Deliverer,
        endpoint: Arc<Endpoint>,
        all: Arc<std::collections::HashMap<String, Arc<SubscriptionConfig>>>,
        cluster: Option<(Changelog, crate::config::ClusterConfig)>,
    ) -> Result<Self, EngineError> {
        let config = Arc::new(config);
        let figures = Arc::new(Figures::default());
        figures.start_with_backlog(store.open_calls(&config.name).await?);
        let mut scheduler = Scheduler::new(
            Arc::clone(&config),
            store.clone(),
            deliverer,
            endpoint,
            Arc::clone(&figures),
            Arc::clone(&all),
        );
        let cluster = match cluster {
            None => None,
            Some((changelog, settings)) => {
                // Every call is delivered only once the changelog has it (a workflow's child
                // calls too, whatever their subscription), and every scheduler can be held
                // still while calls leave.
                scheduler.deliver_up_to(changelog.covered_seq.clone());
                changelog
                    .schedulers
                    .register(&config.name, scheduler.handovers(), Arc::clone(&figures));
                if config.kafka.is_some() {
                    let lease = crate::lease::Lease::start(&config.name, session_timeout(&config));
                    scheduler.hold_after_freeze(lease.clone());
                    Some(ClusterLink {
                        lease,
                        acked: changelog.acked,
                        covered_seq: changelog.covered_seq,
                        schedulers: changelog.schedulers,
                        restore_timeout: settings.restore_timeout,
                        instance: settings.instance,
                        rates: scheduler.rate_limits(),
                        partitions: changelog.partitions.get(&config.name).copied().unwrap_or(0),
                        owners: changelog.owners.clone(),
                    })
                } else {
                    // Its calls may be child calls of workflows whose partitions another
                    // engine took while this one was frozen: held after a freeze too, until
                    // the shortest session timeout of the engine's sources has passed awake
                    // (no rebalance of its own tells it sooner).
                    let session = all
                        .values()
                        .filter(|s| s.kafka.is_some())
                        .map(|s| session_timeout(s))
                        .min();
                    if let Some(session) = session {
                        scheduler.hold_after_freeze(crate::lease::Lease::start(&config.name, session));
                    }
                    None
                }
            }
        };
        Ok(Self {
            config,
            store: store.clone(),
            scheduler,
            figures,
            cluster,
        })
    }

    pub fn config(&self) -> &Arc<SubscriptionConfig> {
        &self.config
    }

    pub fn figures(&self) -> &Arc<Figures> {
        &self.figures
    }

    /// Where operators' actions on this subscription's calls are sent.
    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.scheduler.control()
    }

    /// Run every part until `shutdown`, or until one part fails.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), EngineError> {
        let Self {
            config,
            store,
            scheduler,
            figures,
            cluster,
        } = self;
        let (stop, parts_stop) = shutdown::channel();
        // In cluster mode the scheduler stops after the source: leaving the group hands the
        // partitions over (their attempts end, their calls reach the changelog) while the
        // scheduler still runs, and no partition is assigned to an engine on its way out.
        let (scheduler_stop, scheduler_stopping) = shutdown::channel();
        let clustered = cluster.is_some();
        let mut parts = JoinSet::new();
        let part = Part {
            subscription: Arc::clone(&config),
            store,
            figures,
            shutdown: parts_stop.clone(),
            cluster,
        };
        if let Some(kafka) = config.kafka.clone() {
            let (source_part, kafka_config) = (part.clone(), kafka.clone());
            let mut stopping = parts_stop.clone();
            let stop_scheduler = clustered.then_some(scheduler_stop);
            parts.spawn(async move {
                let result = source::run(source_part, kafka_config).await;
                if let Some(stop_scheduler) = stop_scheduler {
                    // Stopped for shutdown, or failed: the scheduler goes too (after the
                    // engine's stop, if the source ended first for another reason).
                    if result.is_ok() {
                        stopping.recv().await;
                    }
                    stop_scheduler.trigger();
                }
                result
            });
            parts.spawn(outbox::run(part.clone(), kafka));
        }
        if let Some(dead_letter) = config.dead_letter.clone() {
            parts.spawn(dead_letter::run(part, dead_letter));
        }
        let grace = SHUTDOWN_GRACE.min(config.timeout);
        let scheduler_shutdown = if clustered { scheduler_stopping } else { parts_stop };
        parts.spawn(async move {
            scheduler
                .run(scheduler_shutdown, grace)
                .await
                .map_err(EngineError::from)
        });

        let mut result = Ok(());
        loop {
            tokio::select! {
                () = shutdown.recv(), if !stop.is_triggered() => stop.trigger(),
                joined = parts.join_next() => match joined {
                    None => break,
                    Some(joined) => {
                        if let Err(error) = joined.map_err(|e| EngineError::task("a subscription task", e)).and_then(|r| r) {
                            tracing::error!(subscription = %config.name, %error, "stopping the subscription");
                            stop.trigger();
                            result = result.and(Err(error));
                        }
                    }
                },
            }
        }
        result
    }
}

/// The `session.timeout.ms` of a subscription's consumer (librdkafka's default: 45 s).
fn session_timeout(config: &SubscriptionConfig) -> Duration {
    config
        .kafka
        .as_ref()
        .and_then(|k| k.options.get("session.timeout.ms"))
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(45), Duration::from_millis)
}
