//! This node's lease: a row of `node_lease`, renewed about three times per
//! `cluster.lease_ms`, and the heartbeat that rides on the renewal.
//!
//! Expiry is judged by the database's clock (`clock_timestamp()`), fencing
//! by this node's monotonic clock from the moment it *sent* its last
//! successful renewal, a margin before the lease could have run out: by
//! the time another node sees the lease expired, this one has fenced
//! itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Cluster, ClusterError, Local};
use crate::session::DropReason;
use crate::store::StoreError;
use crate::store::feed;
use crate::store::postgres::{connect, db_message};

/// What renews the lease.
pub(super) struct LeaseTask {
    client: Option<Client>,
    /// When the last renewal that succeeded was sent.
    renewed_at: Instant,
    /// When the change log was last pruned.
    pruned_at: Instant,
}

/// How a renewal went.
enum Renewal {
    /// Held until the database's clock passes `lease_ms` from now; the
    /// store's last change number, read after the renewal committed.
    Held { head: u64 },
    /// Another process took this node id's lease.
    Lost,
}

/// Takes or renews the lease; `None` when another process holds it.
async fn upsert(client: &Client, cluster: &Cluster) -> Result<Renewal, tokio_postgres::Error> {
    let shared = &cluster.shared;
    let rows = client
        .query(
            "INSERT INTO node_lease AS l (node_id, incarnation, applied_seq, expires_at, renewed_at)
             VALUES ($1, $2, $3, clock_timestamp() + $4::bigint * interval '1 millisecond', clock_timestamp())
             ON CONFLICT (node_id) DO UPDATE SET
                 applied_seq = CASE WHEN l.incarnation = excluded.incarnation
                                    THEN GREATEST(l.applied_seq, excluded.applied_seq)
                                    ELSE excluded.applied_seq END,
                 incarnation = excluded.incarnation,
                 expires_at = excluded.expires_at,
                 renewed_at = excluded.renewed_at
             WHERE l.incarnation = excluded.incarnation OR l.expires_at < clock_timestamp()
             RETURNING 1",
            &[
                &&*shared.node_id,
                &shared.incarnation,
                &(cluster.applied().min(i64::MAX as u64) as i64),
                &(shared.lease.as_millis().min(i64::MAX as u128) as i64),
            ],
        )
        .await?;
    if rows.is_empty() {
        return Ok(Renewal::Lost);
    }
    // A separate statement, after the lease is visible to everyone: any
    // change whose settling did not see this lease committed before it,
    // so its number is at most this.
    Ok(Renewal::Held {
        head: feed::head(client).await?,
    })
}

fn store_error(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Read(db_message(e))
}

/// Takes the lease at start. A lease of this node id held by an earlier
/// process (one that was killed) is waited out, up to one lease period.
pub(super) async fn take(cluster: &Cluster) -> Result<LeaseTask, ClusterError> {
    let shared = &cluster.shared;
    let client = connect(&shared.config).await?;
    let started = Instant::now();
    let patience = shared.lease + Duration::from_secs(1);
    let mut said = false;
    loop {
        let sent = Instant::now();
        match upsert(&client, cluster)
            .await
            .map_err(|e| store_error(&e))?
        {
            Renewal::Held { head } => {
                cluster.renewed(sent, head);
                if let Err(e) = prune(&client).await {
                    warn!(node_id = %shared.node_id, error = %db_message(&e), "could not prune the change log");
                }
                return Ok(LeaseTask {
                    client: Some(client),
                    renewed_at: sent,
                    pruned_at: Instant::now(),
                });
            }
            Renewal::Lost if started.elapsed() < patience => {
                if !said {
                    info!(node_id = %shared.node_id, "the lease of this node id is held by another process; waiting for it to run out");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Renewal::Lost => {
                return Err(ClusterError::NodeIdTaken {
                    node_id: shared.node_id.to_string(),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
        }
    }
}

/// The nodes with a live lease that have not applied change `seq`.
pub(super) async fn lagging(cluster: &Cluster, seq: u64) -> Result<Vec<String>, StoreError> {
    let query = async {
        let client = cluster.shared.settle_conn.client().await?;
        let rows = client
            .query(
                "SELECT node_id, applied_seq FROM node_lease
                 WHERE expires_at > clock_timestamp() AND applied_seq < $1 ORDER BY node_id",
                &[&(seq.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(|e| store_error(&e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let node: String = row.get(0);
                let applied: i64 = row.get(1);
                format!("{node} (applied {applied} of {seq})")
            })
            .collect())
    };
    match tokio::time::timeout(QUERY_TIMEOUT, query).await {
        Ok(answer) => {
            if answer.is_err() {
                cluster.shared.settle_conn.reset().await;
            }
            answer
        }
        Err(_) => {
            cluster.shared.settle_conn.reset().await;
            Err(StoreError::Read(format!(
                "the registry database did not answer within {} ms",
                QUERY_TIMEOUT.as_millis()
            )))
        }
    }
}

/// The nodes with a live lease now.
pub(super) async fn live_nodes(cluster: &Cluster) -> Result<Vec<String>, StoreError> {
    let answer = async {
        let client = cluster.shared.settle_conn.client().await?;
        let rows = client
            .query(
                "SELECT node_id FROM node_lease WHERE expires_at > clock_timestamp()",
                &[],
            )
            .await
            .map_err(|e| store_error(&e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
    .await;
    if answer.is_err() {
        cluster.shared.settle_conn.reset().await;
    }
    answer
}

/// How often a node prunes the change log.
const PRUNE_EVERY: Duration = Duration::from_secs(300);

/// Log entries younger than this are kept whatever the leases say: a node
/// starting now read its snapshot a moment ago and has no lease row yet.
const PRUNE_AFTER_MS: i64 = 10 * 60 * 1000;

/// Lease rows that ran out this long ago are a node that is gone (or
/// renamed); they stop holding the log back.
const FORGET_LEASES_AFTER: &str = "1 day";

/// Removes the log entries every node has applied (the smallest applied
/// number over every lease row, live or not: a node cut off for a while
/// catches up from its own) that are older than [`PRUNE_AFTER_MS`], and
/// lease rows long run out. A node started later loads a snapshot and
/// needs no old entry.
pub(super) async fn prune(client: &Client) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "DELETE FROM node_lease WHERE expires_at < clock_timestamp() - interval '{FORGET_LEASES_AFTER}'"
            ),
            &[],
        )
        .await?;
    client
        .execute(
            &format!(
                "DELETE FROM change_log
                 WHERE seq <= (SELECT COALESCE(MIN(applied_seq), 0) FROM node_lease)
                   AND at_ms < {} - $1",
                feed::DB_NOW_MS
            ),
            &[&PRUNE_AFTER_MS],
        )
        .await
}

/// The longest one lease-table query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the fence deadline is checked while a renewal is pending.
const FENCE_CHECK: Duration = Duration::from_millis(50);

/// Renews the lease until `shutdown`, then gives it up. Fences the node
/// when a renewal is overdue or the lease was taken, and lets the fence
/// down (through the feed) once it holds the lease again.
pub(super) async fn run(
    cluster: Cluster,
    mut task: LeaseTask,
    local: Local,
    shutdown: CancellationToken,
) {
    let shared = cluster.shared.clone();
    let every = shared.lease / 3;
    // Fence this long before the lease could run out.
    let margin = cluster.margin();
    // However this task ends (a panic included), the feed stops after it.
    let _left = shared.left.clone().drop_guard();
    let overdue = |last_ok: Instant| last_ok.elapsed() + margin >= shared.lease;
    let node = shared.node_id.clone();
    let fence_if_overdue = |last_ok: Instant| {
        if overdue(last_ok) {
            cluster.fence(overdue_reason(&node, shared.lease), &local);
        }
    };
    loop {
        let pause = tokio::time::sleep(every);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Nobody is admitted and every session is gone before
                    // the lease goes: from then on the others stop
                    // waiting for this node.
                    cluster.stop();
                    local.drop_all(DropReason::ShuttingDown, shared.drop_timeout).await;
                    release(&shared.node_id, &shared.incarnation, task.client.as_ref()).await;
                    return;
                }
                _ = &mut pause => break,
                _ = tokio::time::sleep(FENCE_CHECK) => fence_if_overdue(task.renewed_at),
            }
        }
        let (sent, last_ok) = (Instant::now(), task.renewed_at);
        let outcome = {
            let attempt = tokio::time::timeout(every, renew(&cluster, &mut task.client));
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    outcome = &mut attempt => break outcome,
                    _ = tokio::time::sleep(FENCE_CHECK) => fence_if_overdue(last_ok),
                }
            }
        };
        match outcome {
            Ok(Ok(Renewal::Held { head })) => {
                task.renewed_at = sent;
                if cluster.leased_at_head().is_none() {
                    info!(node_id = %node, head, "lease held again; catching up before admitting connections");
                }
                cluster.renewed(sent, head);
                if head > cluster.applied() {
                    shared.behind.notify_one();
                }
                cluster.lift_fence_if_caught_up();
                if task.pruned_at.elapsed() >= PRUNE_EVERY
                    && let Some(client) = task.client.as_ref()
                {
                    task.pruned_at = Instant::now();
                    match tokio::time::timeout(every, prune(client)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            warn!(node_id = %node, error = %db_message(&e), "could not prune the change log")
                        }
                        Err(_) => {
                            warn!(node_id = %node, "pruning the change log did not answer in time")
                        }
                    }
                }
            }
            Ok(Ok(Renewal::Lost)) => {
                cluster.fence(
                    format!(
                        "the lease of node {node} was taken over by another process with the same cluster.node_id"
                    ),
                    &local,
                );
            }
            Ok(Err(e)) => {
                warn!(node_id = %node, error = %e, "lease renewal failed");
                task.client = None;
            }
            Err(_) => {
                warn!(node_id = %node, "lease renewal did not answer in time");
                task.client = None;
            }
        }
        fence_if_overdue(task.renewed_at);
    }
}

fn overdue_reason(node: &Arc<str>, lease: Duration) -> String {
    format!(
        "node {node} could not renew its lease on the registry database within cluster.lease_ms ({} ms)",
        lease.as_millis()
    )
}

/// One renewal, reconnecting first when the connection was lost.
async fn renew(cluster: &Cluster, client: &mut Option<Client>) -> Result<Renewal, StoreError> {
    if client.as_ref().is_none_or(Client::is_closed) {
        *client = Some(connect(&cluster.shared.config).await?);
    }
    let Some(client) = client.as_ref() else {
        return Err(StoreError::Closed);
    };
    upsert(client, cluster).await.map_err(|e| store_error(&e))
}

/// Gives up the lease a failed start took.
pub(super) async fn give_up(cluster: &Cluster, task: &LeaseTask) {
    let shared = &cluster.shared;
    release(&shared.node_id, &shared.incarnation, task.client.as_ref()).await;
}

/// Gives the lease up at shutdown, so that the other nodes stop waiting
/// for this one at once.
async fn release(node_id: &str, incarnation: &str, client: Option<&Client>) {
    let Some(client) = client else {
        return;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        client.execute(
            "DELETE FROM node_lease WHERE node_id = $1 AND incarnation = $2",
            &[&node_id, &incarnation],
        ),
    )
    .await;
}
