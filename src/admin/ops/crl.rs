//! `ImportCrl` (a certmq extension): every serial a CRL of a registered
//! CA lists becomes inactive, exactly as InactivateDeviceCertificate would
//! make it (sessions closed before the answer), and serials never seen are
//! recorded as blocked, so that their first connection is refused.
//!
//! The CRL must be signed by a registered CA and current (see `crl`).
//! Importing the same CRL again changes nothing. A serial that leaves a
//! later CRL is not activated again by it: ActiveDeviceCertificate does
//! that (for a blocked serial it removes the block).

use rustls_pki_types::UnixTime;
use serde_json::{Map, Value, json};
use tracing::info;

use super::device::{drop_sessions, not_found, release_client_ids};
use super::fields;
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::identity::DeviceIdentity;
use crate::registry::{CertStatus, RegistryError};

/// What importing one serial did.
enum Outcome {
    Inactivated,
    Blocked,
    AlreadyInactive,
}

pub(super) async fn import(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let content = req.required("CrlContent")?;
    let crl =
        crate::crl::verify(content.as_bytes(), &ctx.registry, UnixTime::now()).map_err(|e| {
            ApiError::InvalidParameter {
                name: "CrlContent",
                reason: e.to_string(),
            }
        })?;
    let (mut inactivated, mut blocked, mut already) = (0usize, 0usize, 0usize);
    for (done, device_sn) in crl.serials.iter().enumerate() {
        let id = DeviceIdentity {
            ca_sn: crl.ca_sn,
            device_sn: *device_sn,
        };
        let outcome = import_one(ctx, &id).await.map_err(|e| {
            ApiError::Internal(format!(
                "{e}; {done} of the CRL's {} serials were applied before it: importing the CRL again is safe",
                crl.serials.len()
            ))
        })?;
        match outcome {
            Outcome::Inactivated => inactivated += 1,
            Outcome::Blocked => blocked += 1,
            Outcome::AlreadyInactive => already += 1,
        }
    }
    info!(request_id = %req.request_id, ca_sn = %crl.ca_sn, inactivated, blocked, already_inactive = already, "CRL imported");
    Ok(fields([
        ("CaSn", json!(crl.ca_sn.to_string())),
        ("Inactivated", json!(inactivated)),
        ("Blocked", json!(blocked)),
        ("AlreadyInactive", json!(already)),
    ]))
}

/// Inactivates a stored device; `None`: not stored (after all).
async fn inactivate(ctx: &Context, id: &DeviceIdentity) -> Result<Option<Outcome>, String> {
    match ctx
        .registry
        .set_device_status(id, CertStatus::Inactive)
        .await
    {
        Ok(()) => Ok(Some(Outcome::Inactivated)),
        Err(RegistryError::DeviceNotFound(_)) => Ok(None),
        Err(e) => Err(not_found(e).to_string()),
    }
}

/// Makes one listed serial inactive; its sessions are closed before this
/// returns.
async fn import_one(ctx: &Context, id: &DeviceIdentity) -> Result<Outcome, String> {
    let as_text = |e: ApiError| e.to_string();
    // A device being registered right now may move between "unknown" and
    // "stored" under us: look again, a few times.
    for _ in 0..3 {
        let outcome = match ctx.registry.device_status(id) {
            Some(CertStatus::Inactive) => return Ok(Outcome::AlreadyInactive),
            Some(CertStatus::Active) => match inactivate(ctx, id).await? {
                Some(outcome) => outcome,
                None => continue,
            },
            None => match ctx.registry.block_device(id).await {
                Ok(true) => Outcome::Blocked,
                // Stored, not yet in this node's index.
                Ok(false) => match inactivate(ctx, id).await? {
                    Some(outcome) => outcome,
                    None => continue,
                },
                Err(e) => return Err(as_text(not_found(e))),
            },
        };
        drop_sessions(ctx, id, "the device is inactive")
            .await
            .map_err(as_text)?;
        release_client_ids(ctx, id).await;
        return Ok(outcome);
    }
    Err(format!(
        "the device {id} kept changing while it was being inactivated"
    ))
}
