//! What applying a change of the feed means on this node: the registry's
//! index first, then the sessions the change ends (closed before the
//! change counts as applied, so that the node that made it answers only
//! once they are gone), then the client ids their persistent sessions
//! held. Custom permissions are read again whole and put in force.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, warn};

use crate::authz::LivePolicies;
use crate::record::CertStatus;
use crate::registry::Registry;
use crate::router::Hub;
use crate::session::table::{Closing, SessionTable, wait_all};
use crate::session::{Cut, DropReason};
use crate::store::feed::{FeedChange, FeedEntry};

/// The parts of this node a change reaches.
#[derive(Clone)]
pub struct Local {
    pub registry: Registry,
    pub sessions: SessionTable,
    pub hub: Hub,
    pub authz: Arc<LivePolicies>,
    pub drop_timeout: Duration,
}

impl Local {
    /// Applies one change of the feed. An error (the database did not
    /// answer) leaves the change unapplied: the feed tries it again.
    pub(super) async fn apply(&self, entry: &FeedEntry) -> Result<(), String> {
        if let Err(e) = self.registry.apply(&entry.change) {
            // A stored record this certmq cannot use: no retry helps.
            error!(seq = entry.seq, error = %e, "a registry change could not be applied to this node's index");
        }
        match &entry.change {
            FeedChange::CaStatus(sn, CertStatus::Inactive) | FeedChange::CaDeleted(sn) => {
                let cut = match &entry.change {
                    FeedChange::CaDeleted(_) => Cut::CaDeleted,
                    _ => Cut::CaInactivated,
                };
                self.until_closed(entry.seq, || {
                    self.sessions.kill_ca(sn, DropReason::Administrative(cut))
                })
                .await;
                self.sessions
                    .release_ca(sn, |client_id| self.forget(client_id))
                    .await;
            }
            FeedChange::DeviceStatus(id, CertStatus::Inactive) | FeedChange::DeviceDeleted(id) => {
                let cut = match &entry.change {
                    FeedChange::DeviceDeleted(_) => Cut::Deleted,
                    _ => Cut::Inactivated,
                };
                self.until_closed(entry.seq, || {
                    self.sessions
                        .kill_device(id, DropReason::Administrative(cut))
                })
                .await;
                self.sessions
                    .release_device(id, |client_id| self.forget(client_id))
                    .await;
            }
            FeedChange::Permissions => {
                self.authz.refresh_custom().await.map_err(|e| {
                    format!("custom permissions changed on another node could not be read: {e}")
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Kills the sessions a change ends and waits until they are closed,
    /// however long that takes: the change does not count as applied here
    /// (and the node that made it does not answer success) before.
    async fn until_closed(&self, seq: u64, kill: impl Fn() -> Vec<Closing>) {
        while let Err(e) = wait_all(kill(), self.drop_timeout).await {
            warn!(seq, error = %e, "sessions ended by a registry change are not closed yet; still waiting");
        }
    }

    async fn forget(&self, client_id: Arc<str>) -> bool {
        self.hub.forget(&client_id);
        true
    }

    /// Drops every session of this node (it is fenced, or stopping) and
    /// waits for them.
    pub(super) async fn drop_all(&self, reason: DropReason, timeout: Duration) {
        let closings = self.sessions.kill_all(reason);
        if let Err(e) = wait_all(closings, timeout).await {
            warn!(error = %e, reason = reason.label(), "sessions did not close in time");
        }
    }
}
