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
use crate::session::DropReason;
use crate::session::table::{SessionTable, wait_all};
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
    /// Applies one change of the feed.
    pub(super) async fn apply(&self, entry: &FeedEntry) {
        if let Err(e) = self.registry.apply(&entry.change) {
            error!(seq = entry.seq, error = %e, "a registry change could not be applied to this node's index");
        }
        match &entry.change {
            FeedChange::CaStatus(sn, CertStatus::Inactive) | FeedChange::CaDeleted(sn) => {
                let closings = self.sessions.kill_ca(sn, DropReason::Administrative);
                self.waited(wait_all(closings, self.drop_timeout).await, entry.seq);
                self.sessions
                    .release_ca(sn, |client_id| self.forget(client_id))
                    .await;
            }
            FeedChange::DeviceStatus(id, CertStatus::Inactive) | FeedChange::DeviceDeleted(id) => {
                let dropped = self
                    .sessions
                    .drop_device(id, DropReason::Administrative, self.drop_timeout)
                    .await;
                self.waited(dropped, entry.seq);
                self.sessions
                    .release_device(id, |client_id| self.forget(client_id))
                    .await;
            }
            FeedChange::Permissions => self.reload_permissions(entry.seq).await,
            _ => {}
        }
    }

    fn waited<E: std::fmt::Display>(&self, dropped: Result<usize, E>, seq: u64) {
        if let Err(e) = dropped {
            warn!(seq, error = %e, "sessions ended by a registry change did not close in time");
        }
    }

    async fn forget(&self, client_id: Arc<str>) -> bool {
        self.hub.forget(&client_id);
        true
    }

    /// Reads the custom permissions again and puts them in force: live
    /// sessions re-judge their subscriptions under them.
    async fn reload_permissions(&self, seq: u64) {
        if let Err(e) = self.authz.refresh_custom().await {
            error!(seq, error = %e, "custom permissions changed on another node could not be read");
        }
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
