//! Following the change feed: one connection that LISTENs for the store's
//! notifications and reads the change log after the number this node has
//! applied, applying each change in order (see `store::feed`).
//!
//! A notification only says "look": the log is read from the applied
//! number on, so a notification lost, or a burst of them, never skips or
//! repeats a change. After each read the node records what it applied in
//! its lease row and notifies [`APPLIED_CHANNEL`](super::APPLIED_CHANNEL),
//! which wakes the nodes waiting for it in `Cluster::settle`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::sessions::{REPLIES, REQUESTS};
use super::{APPLIED_CHANNEL, Cluster, ClusterError, Local};
use crate::store::StoreError;
use crate::store::feed::{self, CHANNEL};
use crate::store::postgres::{db_message, describe};

/// Changes read from the log at once.
const BATCH: u32 = 512;

/// The longest one read of the log, or one report, may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait before connecting again after the connection failed.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// What arrived on the LISTEN connection.
enum Note {
    /// Changes up to this number are committed.
    Change(u64),
    /// Some node applied changes.
    Applied,
    /// A node asks about sessions (see `sessions`).
    SessionRequest(String),
    /// A node answers this one's question.
    SessionReply(String),
}

/// The LISTEN connection and what it heard.
pub(super) struct FeedTask {
    client: Client,
    notes: mpsc::UnboundedReceiver<Note>,
}

/// Why following the feed stopped.
enum Stop {
    Shutdown,
    Lost(String),
    /// The log has a gap: it cannot be followed (see [`CatchUpError::Gap`]).
    Broken(String),
}

/// Why a catch-up stopped.
enum CatchUpError {
    /// The database did not answer (the connection is taken to be lost).
    Failed(String),
    /// A number is missing from the log: rows were deleted by hand. The
    /// node cannot know what it missed without reloading everything.
    Gap(String),
}

impl std::fmt::Display for CatchUpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatchUpError::Failed(why) | CatchUpError::Gap(why) => f.write_str(why),
        }
    }
}

/// Connects, LISTENs and catches up from the applied number (at start:
/// the snapshot's).
pub(super) async fn start(cluster: &Cluster, local: Local) -> Result<FeedTask, ClusterError> {
    let task = listen(cluster).await?;
    catch_up(cluster, &task.client, &local, "reconnect")
        .await
        .map_err(|e| ClusterError::CatchUp(e.to_string()))?;
    Ok(task)
}

async fn listen(cluster: &Cluster) -> Result<FeedTask, StoreError> {
    let mut config = cluster.shared.config.clone();
    config.application_name(format!("certmq feed {}", cluster.shared.node_id));
    let open_err = |e: tokio_postgres::Error| StoreError::Open {
        path: describe(&config).into(),
        reason: db_message(&e),
    };
    let (client, mut connection) = config.connect(NoTls).await.map_err(open_err)?;
    let (tx, notes) = mpsc::unbounded_channel();
    let node = cluster.shared.node_id.clone();
    tokio::spawn(async move {
        // Polls the connection (which runs the client's queries too) and
        // passes notifications on; ends, dropping `tx`, when it closes.
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            let note = match message {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    match n.payload().parse() {
                        Ok(seq) => Note::Change(seq),
                        Err(_) => continue,
                    }
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == REQUESTS => {
                    Note::SessionRequest(n.payload().to_owned())
                }
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == REPLIES => {
                    Note::SessionReply(n.payload().to_owned())
                }
                Some(Ok(AsyncMessage::Notification(_))) => Note::Applied,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    warn!(node_id = %node, error = %e, "the change feed's connection failed");
                    return;
                }
                None => return,
            };
            if tx.send(note).is_err() {
                return;
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {CHANNEL}; LISTEN {APPLIED_CHANNEL}; LISTEN {REQUESTS}; LISTEN {REPLIES};"
        ))
        .await
        .map_err(open_err)?;
    Ok(FeedTask { client, notes })
}

/// Applies every change after the applied number, in order, reporting
/// progress after each read.
async fn catch_up(
    cluster: &Cluster,
    client: &Client,
    local: &Local,
    trigger: &'static str,
) -> Result<(), CatchUpError> {
    let metrics = &cluster.shared.metrics;
    metrics.catch_ups.with_label_values(&[trigger]).inc();
    loop {
        let from = cluster.applied();
        let entries = tokio::time::timeout(QUERY_TIMEOUT, feed::after(client, from, BATCH))
            .await
            .map_err(|_| CatchUpError::Failed("reading the change log timed out".into()))?
            .map_err(|e| CatchUpError::Failed(e.to_string()))?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(());
        };
        for (expected, entry) in (from + 1..).zip(&entries) {
            if entry.seq != expected {
                return Err(CatchUpError::Gap(format!(
                    "the change log skips from {} to {}: changes were removed from change_log; restart this node to reload the registry",
                    expected - 1,
                    entry.seq
                )));
            }
            if let Err(e) = local.apply(entry).await {
                // What came before it is applied; it is tried again.
                if entry.seq > from + 1 {
                    cluster.set_applied(entry.seq - 1);
                }
                return Err(CatchUpError::Failed(e));
            }
            metrics.changes_applied.inc();
        }
        cluster.set_applied(last);
        report(cluster, client, last)
            .await
            .map_err(CatchUpError::Failed)?;
        if entries.len() < BATCH as usize {
            return Ok(());
        }
    }
}

/// Records `applied` in this node's lease row and wakes the nodes waiting
/// for it.
async fn report(cluster: &Cluster, client: &Client, applied: u64) -> Result<(), String> {
    let shared = &cluster.shared;
    let applied = applied.min(i64::MAX as u64) as i64;
    let payload = format!("{} {applied}", shared.node_id);
    tokio::time::timeout(
        QUERY_TIMEOUT,
        client.execute(
            "WITH report AS (
                 UPDATE node_lease SET applied_seq = GREATEST(applied_seq, $3)
                 WHERE node_id = $1 AND incarnation = $2
             )
             SELECT pg_notify($4, $5)",
            &[
                &&*shared.node_id,
                &shared.incarnation,
                &applied,
                &APPLIED_CHANNEL,
                &payload,
            ],
        ),
    )
    .await
    .map_err(|_| "reporting the applied change timed out".to_owned())?
    .map_err(|e| db_message(&e))?;
    Ok(())
}

/// Follows the feed until `shutdown`, connecting again (and catching up)
/// whenever the connection is lost.
pub(super) async fn run(
    cluster: Cluster,
    task: FeedTask,
    local: Local,
    shutdown: CancellationToken,
) {
    let mut task = Some(task);
    loop {
        let mut current = match task.take() {
            Some(current) => current,
            None => {
                let joined = async {
                    let current = listen(&cluster)
                        .await
                        .map_err(|e| CatchUpError::Failed(e.to_string()))?;
                    catch_up(&cluster, &current.client, &local, "reconnect").await?;
                    Ok::<_, CatchUpError>(current)
                };
                match joined.await {
                    Ok(current) => current,
                    Err(CatchUpError::Gap(why)) => {
                        broken(&cluster, &local, why);
                        return;
                    }
                    Err(e) => {
                        warn!(node_id = %cluster.shared.node_id, error = %e, "cannot follow the registry's change feed; trying again");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(RETRY_AFTER) => continue,
                        }
                    }
                }
            }
        };
        match follow(&cluster, &mut current, &local, &shutdown).await {
            Stop::Shutdown => return,
            Stop::Lost(why) => {
                warn!(node_id = %cluster.shared.node_id, reason = %why, "lost the registry's change feed; connecting again");
            }
            Stop::Broken(why) => {
                broken(&cluster, &local, why);
                return;
            }
        }
    }
}

/// The feed cannot be followed: the node stays fenced until restarted.
fn broken(cluster: &Cluster, local: &Local, why: String) {
    error!(node_id = %cluster.shared.node_id, reason = %why, "the registry's change feed cannot be followed; this node refuses connections until it is restarted");
    cluster.fence(why, local);
}

async fn follow(
    cluster: &Cluster,
    task: &mut FeedTask,
    local: &Local,
    shutdown: &CancellationToken,
) -> Stop {
    let shared = &cluster.shared;
    loop {
        let trigger = tokio::select! {
            _ = shutdown.cancelled() => return Stop::Shutdown,
            note = task.notes.recv() => {
                let Some(note) = note else {
                    return Stop::Lost("the LISTEN connection closed".into());
                };
                // Everything already queued, at once.
                let mut newest = None;
                let mut note = Some(note);
                while let Some(n) = note {
                    match n {
                        Note::Change(seq) => {
                            #[cfg(feature = "fault-injection")]
                            if crate::fault::loses_change_notification(&shared.node_id) {
                                note = task.notes.try_recv().ok();
                                continue;
                            }
                            newest = newest.max(Some(seq));
                        }
                        Note::Applied => {
                            shared.others_applied.send_modify(|n| *n = n.wrapping_add(1));
                        }
                        Note::SessionRequest(payload) => cluster.on_request(&payload),
                        Note::SessionReply(payload) => cluster.on_reply(&payload),
                    }
                    note = task.notes.try_recv().ok();
                }
                match newest {
                    Some(seq) if seq > cluster.applied() => "notification",
                    _ => continue,
                }
            }
            _ = shared.behind.notified() => "heartbeat",
        };
        if task.client.is_closed() {
            return Stop::Lost("the LISTEN connection closed".into());
        }
        #[cfg(feature = "fault-injection")]
        if crate::fault::feed_stalled(&shared.node_id) {
            continue;
        }
        match catch_up(cluster, &task.client, local, trigger).await {
            Ok(()) => {}
            Err(CatchUpError::Failed(why)) => return Stop::Lost(why),
            Err(CatchUpError::Gap(why)) => return Stop::Broken(why),
        }
    }
}
