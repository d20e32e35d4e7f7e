//! Putting a verified CRL in force: every serial it lists becomes inactive,
//! exactly as InactivateDeviceCertificate would make it (sessions closed
//! before this returns), and serials never seen are recorded as blocked,
//! so that their first connection is refused.
//!
//! Importing the same CRL again changes nothing. A serial that leaves a
//! later CRL is not activated again by it: ActiveDeviceCertificate does
//! that (for a blocked serial it removes the block). Used by the admin
//! API's `ImportCrl` and by the scheduled refresh (`refresh`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::VerifiedCrl;
use crate::events::{Change, Event, Events};
use crate::identity::DeviceIdentity;
use crate::registry::{CertStatus, Registry, RegistryError};
use crate::router::Hub;
use crate::serial::CaSn;
use crate::session::{Cut, DropReason, SessionTable};

/// The parts of the broker an import reaches.
#[derive(Clone)]
pub struct Revoker {
    pub registry: Registry,
    pub sessions: SessionTable,
    pub hub: Hub,
    pub events: Events,
    /// `mqtt.drop_timeout_ms`.
    pub drop_timeout: Duration,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub ca_sn: CaSn,
    /// Known devices made inactive now.
    pub inactivated: usize,
    /// Serials never seen, now blocked.
    pub blocked: usize,
    /// Serials already inactive (or blocked).
    pub already_inactive: usize,
}

/// An import stopped part of the way (the registry or a session drop
/// failed); what it applied stays applied, and importing again is safe.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{reason}; {done} of the CRL's {total} serials were applied before it: importing the CRL again is safe"
)]
pub struct ImportError {
    pub reason: String,
    pub done: usize,
    pub total: usize,
    /// What the serials before it did.
    pub applied: Imported,
}

/// What importing one serial did.
enum Outcome {
    Inactivated,
    Blocked,
    AlreadyInactive,
}

impl Revoker {
    /// Makes every serial of `crl` inactive; `change` says who asked, for
    /// the events. With `stop`, it stops between two serials once `stop`
    /// is cancelled (an [`ImportError`] saying how far it got).
    pub async fn import(
        &self,
        crl: &VerifiedCrl,
        change: &Change,
        stop: Option<&CancellationToken>,
    ) -> Result<Imported, ImportError> {
        let mut imported = Imported {
            ca_sn: crl.ca_sn,
            inactivated: 0,
            blocked: 0,
            already_inactive: 0,
        };
        for (done, device_sn) in crl.serials.iter().enumerate() {
            let id = DeviceIdentity {
                ca_sn: crl.ca_sn,
                device_sn: *device_sn,
            };
            let stopped = |reason: String| ImportError {
                reason,
                done,
                total: crl.serials.len(),
                applied: imported,
            };
            if stop.is_some_and(CancellationToken::is_cancelled) {
                return Err(stopped("the broker is shutting down".into()));
            }
            let outcome = self.import_one(&id).await.map_err(stopped)?;
            let status = match outcome {
                Outcome::Inactivated => {
                    imported.inactivated += 1;
                    "inactive"
                }
                Outcome::Blocked => {
                    imported.blocked += 1;
                    "blocked"
                }
                Outcome::AlreadyInactive => {
                    imported.already_inactive += 1;
                    continue;
                }
            };
            self.events
                .emit_waiting(Event::DeviceStatus {
                    device: id,
                    status,
                    change: change.clone(),
                })
                .await;
        }
        self.events
            .emit_waiting(Event::CrlImported {
                ca_sn: crl.ca_sn,
                inactivated: imported.inactivated,
                blocked: imported.blocked,
                already_inactive: imported.already_inactive,
                change: change.clone(),
            })
            .await;
        Ok(imported)
    }

    /// Inactivates a stored device; `None`: not stored (after all).
    async fn inactivate(&self, id: &DeviceIdentity) -> Result<Option<Outcome>, String> {
        match self
            .registry
            .set_device_status(id, CertStatus::Inactive)
            .await
        {
            Ok(()) => Ok(Some(Outcome::Inactivated)),
            Err(RegistryError::DeviceNotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Makes one listed serial inactive; its sessions are closed before
    /// this returns.
    async fn import_one(&self, id: &DeviceIdentity) -> Result<Outcome, String> {
        // A device being registered right now may move between "unknown"
        // and "stored" under us: look again, a few times.
        for _ in 0..3 {
            let outcome = match self.registry.device_status(id) {
                Some(CertStatus::Inactive) => return Ok(Outcome::AlreadyInactive),
                Some(CertStatus::Active) => match self.inactivate(id).await? {
                    Some(outcome) => outcome,
                    None => continue,
                },
                None => match self.registry.block_device(id).await {
                    Ok(true) => Outcome::Blocked,
                    // Stored, not yet in this node's index.
                    Ok(false) => match self.inactivate(id).await? {
                        Some(outcome) => outcome,
                        None => continue,
                    },
                    Err(e) => return Err(e.to_string()),
                },
            };
            self.sessions
                .drop_device(
                    id,
                    DropReason::Administrative(Cut::Inactivated),
                    self.drop_timeout,
                )
                .await
                .map_err(|e| format!("the device {id} is inactive but {e}"))?;
            let hub = &self.hub;
            self.sessions
                .release_device(id, |client_id| async move {
                    hub.forget(&client_id);
                    true
                })
                .await;
            return Ok(outcome);
        }
        Err(format!(
            "the device {id} kept changing while it was being inactivated"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::serial::{DeviceSn, Serial};

    async fn revoker(dir: &std::path::Path) -> (Revoker, CaSn) {
        let (registry, ca_sn, _) = crate::registry::with_one_ca(dir, "CRL CA").await;
        let hub = Hub::new(crate::router::hub::HubSettings {
            max_queued_messages: 10,
            max_session_expiry: Duration::from_secs(1),
            max_retained_messages: 10,
        });
        let metrics = crate::metrics::Metrics::new();
        let (events, _publisher) =
            Events::new(hub.clone(), Arc::from("n"), metrics.event_counters());
        let revoker = Revoker {
            registry,
            sessions: SessionTable::new(),
            hub,
            events,
            drop_timeout: Duration::from_secs(1),
        };
        (revoker, ca_sn)
    }

    fn change() -> Change {
        Change {
            by: "test".into(),
            via: "crl-refresh",
            request_id: None,
        }
    }

    /// A refresh stopped by the broker's shutdown ends between two serials
    /// and says how far it got, so that its audit record can say it; a
    /// later import finishes the work.
    #[tokio::test]
    async fn a_stopped_import_says_how_far_it_got() {
        let dir = tempfile::tempdir().unwrap();
        let (revoker, ca_sn) = revoker(dir.path()).await;
        let crl = VerifiedCrl {
            ca_sn,
            serials: (1..=3u8)
                .map(|n| DeviceSn(Serial::from_der_content(&[0x10, n]).unwrap()))
                .collect(),
        };
        let stop = CancellationToken::new();
        stop.cancel();
        let stopped = revoker
            .import(&crl, &change(), Some(&stop))
            .await
            .unwrap_err();
        assert_eq!(stopped.reason, "the broker is shutting down");
        assert_eq!((stopped.done, stopped.total), (0, 3));
        assert_eq!(stopped.applied.blocked, 0);
        let done = revoker
            .import(&crl, &change(), Some(&CancellationToken::new()))
            .await
            .unwrap();
        assert_eq!((done.blocked, done.already_inactive), (3, 0));
        // Again: nothing more to do.
        let again = revoker.import(&crl, &change(), None).await.unwrap();
        assert_eq!((again.blocked, again.already_inactive), (0, 3));
    }
}
