//! Several brokers (nodes) on one PostgreSQL registry, with revocation as
//! exact as on one: once an admin call that takes access away answers
//! success on any node, no node holds a session of that certificate and no
//! node admits it.
//!
//! Three parts, each in its file:
//! - [`feed`]: every node LISTENs for the store's change notifications and
//!   applies the change log to its in-memory index in number order (gapless,
//!   commit-ordered numbers: `store::feed`), dropping the local sessions a
//!   change ends before it records the number as applied;
//! - [`lease`]: every node holds a lease row in `node_lease`, renewed about
//!   three times per `cluster.lease_ms`, carrying the number it has applied.
//!   The renewal is also the heartbeat: it reads the store's last number,
//!   and a node found behind (a lost notification, a cut LISTEN connection)
//!   catches up. A node that cannot renew in time fences itself: it drops
//!   its sessions and refuses connections until it holds its lease again
//!   and has applied everything committed before it did;
//! - [`Cluster::settle`]: the node that made a change answers only once
//!   every node with a live lease has applied it. The set of live leases is
//!   read *after* the change committed, so a node that took its lease later
//!   read the store's last number after that and applies the change before
//!   it admits anyone; a node whose lease runs out has fenced itself first
//!   (it fences a margin before its lease ends by its own clock).
//!
//! [`local`] is what applying means on this node: the registry's index,
//! the sessions a change ends, the custom permissions in force.
//!
//! Messages are routed within a node; routing publishes to the nodes
//! holding the matching subscriptions belongs to the router (see
//! `router`'s module doc), not here.

mod feed;
mod lease;
pub(crate) mod local;
mod sessions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_postgres::Config;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::ClusterMetrics;
use crate::registry::{Propagation, SettleFuture};
use crate::session::DropReason;
use crate::store::StoreError;
use crate::store::postgres::Connection;

pub use local::Local;
pub use sessions::SessionAnswer;

/// Whether this node may admit connections. A node that does not share
/// its registry is never fenced.
#[derive(Clone, Default)]
pub struct Fence {
    inner: Arc<FenceInner>,
}

#[derive(Default)]
struct FenceInner {
    fenced: AtomicBool,
    why: Mutex<String>,
}

impl Fence {
    /// Why this node refuses connections now, if it does.
    pub fn refusal(&self) -> Option<String> {
        if !self.inner.fenced.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.inner
                .why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Fences with `why`; true if it was not fenced before.
    fn raise(&self, why: String) -> bool {
        *self.inner.why.lock().unwrap_or_else(|p| p.into_inner()) = why;
        !self.inner.fenced.swap(true, Ordering::AcqRel)
    }

    /// Lifts the fence; true if it was fenced.
    fn lower(&self) -> bool {
        self.inner.fenced.swap(false, Ordering::AcqRel)
    }
}

/// Why the node could not join the cluster at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(
        "cluster.node_id `{node_id}` is held by another running node (its lease did not run out within {waited_ms} ms); \
         give every node its own cluster.node_id"
    )]
    NodeIdTaken { node_id: String, waited_ms: u128 },
    #[error("could not catch up with the registry's changes at start: {0}")]
    CatchUp(String),
}

/// A task the node cannot run without, named for the health report.
pub type Task = (
    &'static str,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
);

/// How the cluster is set up.
pub struct ClusterSettings {
    pub node_id: String,
    pub lease: Duration,
    /// How long a change may take to be applied everywhere
    /// (`mqtt.drop_timeout_ms`).
    pub drop_timeout: Duration,
}

/// This node's view of the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

struct Shared {
    node_id: Arc<str>,
    /// Tells this process's lease from an earlier one's with the same
    /// node id.
    incarnation: String,
    lease: Duration,
    drop_timeout: Duration,
    config: Config,
    fence: Fence,
    /// The number of the last change this node applied.
    applied: watch::Sender<u64>,
    /// Bumped on every "applied" notification of any node: settling
    /// waits look again.
    others_applied: watch::Sender<u64>,
    /// Whether the lease is held, and since when; every change of the
    /// fence happens under this lock, so that a lift never undoes a
    /// fence raised meanwhile.
    lease_state: Mutex<LeaseState>,
    /// Cancelled once the lease is given up at shutdown: the feed keeps
    /// applying (and reporting) until then.
    left: CancellationToken,
    /// The heartbeat found the feed behind: the feed task catches up.
    behind: Notify,
    /// Reads the live leases for [`Cluster::settle`], sends session
    /// requests and answers.
    settle_conn: Connection,
    /// Session requests of this node waiting for the other nodes.
    waiters: sessions::Waiters,
    /// This node's sessions and index, for the session requests.
    local: Local,
    metrics: ClusterMetrics,
}

/// Whether this node holds its lease.
#[derive(Default)]
struct LeaseState {
    /// Set while this node holds its lease: the store's last number read
    /// right after the lease was taken. The fence lifts once `applied`
    /// reaches it.
    leased_at_head: Option<u64>,
    /// When the renewal that holds the lease now was sent: the lease is
    /// good (for lifting the fence) until `lease - margin` after it.
    renewal_sent: Option<Instant>,
    /// The node is stopping: the fence never lifts again.
    stopping: bool,
}

/// The notification channel of applied changes; the payload is
/// `<node id> <number>`.
const APPLIED_CHANNEL: &str = "certmq_applied";

impl Cluster {
    /// Joins the cluster: takes this node's lease and catches up from the
    /// snapshot the registry was loaded from (`snapshot_seq`). Returns once
    /// this node may admit connections, with the two tasks that keep the
    /// lease and the feed going until `shutdown` (the caller runs them).
    pub async fn join(
        settings: ClusterSettings,
        config: Config,
        snapshot_seq: u64,
        local: Local,
        fence: Fence,
        metrics: ClusterMetrics,
        shutdown: CancellationToken,
    ) -> Result<(Cluster, [Task; 2]), ClusterError> {
        fence.raise("this node is joining the cluster (taking its lease, catching up)".into());
        metrics.fenced.set(1);
        let cluster = Cluster {
            shared: Arc::new(Shared {
                node_id: Arc::from(settings.node_id.as_str()),
                incarnation: uuid::Uuid::new_v4().simple().to_string(),
                lease: settings.lease,
                drop_timeout: settings.drop_timeout,
                settle_conn: Connection::new(config.clone()),
                config,
                fence,
                applied: watch::Sender::new(snapshot_seq),
                others_applied: watch::Sender::new(0),
                lease_state: Mutex::new(LeaseState::default()),
                left: CancellationToken::new(),
                behind: Notify::new(),
                waiters: Default::default(),
                local: local.clone(),
                metrics,
            }),
        };
        cluster.shared.metrics.applied_seq.set(snapshot_seq as i64);
        let started = Instant::now();
        // The lease first (waiting out the lease of an earlier process
        // with this node id), then the catch-up, then the MQTT listener.
        let lease_task = lease::take(&cluster).await?;
        let feed_task = match feed::start(&cluster, local.clone()).await {
            Ok(task) => task,
            Err(e) => {
                lease::give_up(&cluster, &lease_task).await;
                return Err(e);
            }
        };
        let head = cluster.leased_at_head().unwrap_or(snapshot_seq);
        let mut applied = cluster.shared.applied.subscribe();
        let caught_up = tokio::time::timeout(
            settings.drop_timeout.max(Duration::from_secs(30)),
            applied.wait_for(|seq| *seq >= head),
        )
        .await;
        if !matches!(caught_up, Ok(Ok(_))) {
            return Err(ClusterError::CatchUp(format!(
                "applied change {} of {head} within {} s",
                *cluster.shared.applied.borrow(),
                settings.drop_timeout.max(Duration::from_secs(30)).as_secs()
            )));
        }
        cluster.lift_fence_if_caught_up();
        let tasks: [Task; 2] = [
            (
                "cluster lease",
                Box::pin(lease::run(
                    cluster.clone(),
                    lease_task,
                    local.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "cluster change feed",
                Box::pin(feed::run(
                    cluster.clone(),
                    feed_task,
                    local,
                    cluster.shared.left.clone(),
                )),
            ),
        ];
        info!(
            node_id = %cluster.shared.node_id,
            applied = *cluster.shared.applied.borrow(),
            took_ms = started.elapsed().as_millis() as u64,
            "joined the cluster"
        );
        Ok((cluster, tasks))
    }

    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The number of the last change this node applied.
    pub fn applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    fn lease_state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.shared
            .lease_state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn leased_at_head(&self) -> Option<u64> {
        self.lease_state().leased_at_head
    }

    /// Records a renewal sent at `sent` that held the lease; `head`: the
    /// store's last number read after it, when the lease was not held
    /// before (a fresh hold waits for the catch-up to that number).
    fn renewed(&self, sent: Instant, head: u64) {
        let mut state = self.lease_state();
        if state.leased_at_head.is_none() {
            state.leased_at_head = Some(head);
        }
        state.renewal_sent = Some(sent);
    }

    /// How far before the lease could run out this node fences itself.
    fn margin(&self) -> Duration {
        (self.shared.lease / 6).max(Duration::from_millis(100))
    }

    /// Records changes up to `seq` as applied here.
    fn set_applied(&self, seq: u64) {
        self.shared.applied.send_if_modified(|applied| {
            let newer = seq > *applied;
            if newer {
                *applied = seq;
            }
            newer
        });
        self.shared.metrics.applied_seq.set(seq as i64);
        self.lift_fence_if_caught_up();
    }

    /// Lifts the fence once the lease is held (and not about to run
    /// out), everything committed before it was taken is applied, and the
    /// node is not stopping.
    fn lift_fence_if_caught_up(&self) {
        let state = self.lease_state();
        let (Some(head), Some(sent)) = (state.leased_at_head, state.renewal_sent) else {
            return;
        };
        let fresh = sent.elapsed() + self.margin() < self.shared.lease;
        if !state.stopping && fresh && self.applied() >= head && self.shared.fence.lower() {
            self.shared.metrics.fenced.set(0);
            info!(node_id = %self.shared.node_id, applied = self.applied(), "lease held and caught up: admitting connections");
        }
    }

    /// Fences this node for good: it is stopping.
    fn stop(&self) {
        let mut state = self.lease_state();
        state.stopping = true;
        state.leased_at_head = None;
        self.shared.fence.raise("this node is stopping".into());
        self.shared.metrics.fenced.set(1);
    }

    /// Fences this node: it refuses connections from now on, then drops
    /// every session it holds (in the background: the caller goes on
    /// trying to renew the lease).
    fn fence(&self, why: String, local: &Local) {
        let mut state = self.lease_state();
        state.leased_at_head = None;
        state.renewal_sent = None;
        let raised = self.shared.fence.raise(why.clone());
        drop(state);
        if raised {
            self.shared.metrics.fenced.set(1);
            warn!(node_id = %self.shared.node_id, reason = %why, "fenced: dropping every session and refusing connections until the lease is back and the node has caught up");
            let (local, timeout) = (local.clone(), self.shared.drop_timeout);
            tokio::spawn(async move { local.drop_all(DropReason::Fenced, timeout).await });
        }
    }

    /// Waits until every node with a live lease (and this one) has applied
    /// change `seq`, or says which did not within `mqtt.drop_timeout_ms`.
    async fn settle_inner(&self, seq: u64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.shared.drop_timeout;
        let mut local = self.shared.applied.subscribe();
        let mut others = self.shared.others_applied.subscribe();
        let mut lagging;
        loop {
            others.mark_unchanged();
            lagging = match lease::lagging(self, seq).await {
                Ok(lagging) => lagging,
                Err(e) => vec![format!("the lease table could not be read ({e})")],
            };
            if *local.borrow_and_update() < seq {
                lagging.push(format!("{} (this node)", self.shared.node_id));
            }
            if lagging.is_empty() {
                return Ok(());
            }
            let poll = tokio::time::sleep(SETTLE_POLL);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = others.changed() => {}
                _ = local.changed() => {}
                _ = poll => {}
            }
        }
        lagging.dedup();
        Err(format!(
            "it was not applied on every node within mqtt.drop_timeout_ms ({} ms): waiting for {}; \
             sessions there may still be open: retry the call",
            self.shared.drop_timeout.as_millis(),
            lagging.join(", ")
        ))
    }
}

/// How often a settling wait looks at the lease table without a
/// notification (one lost, or a node whose lease runs out).
const SETTLE_POLL: Duration = Duration::from_millis(50);

impl Cluster {
    /// What the registry waits on after a change: this cluster, held
    /// weakly (the cluster holds the registry).
    pub fn propagation(&self) -> Arc<dyn Propagation> {
        Arc::new(Settler(Arc::downgrade(&self.shared)))
    }
}

struct Settler(std::sync::Weak<Shared>);

impl Propagation for Settler {
    fn settle(&self, seq: u64) -> SettleFuture<'_> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(shared) => Cluster { shared }.settle_inner(seq).await,
                None => Err("this node has left the cluster (it is stopping)".into()),
            }
        })
    }
}
