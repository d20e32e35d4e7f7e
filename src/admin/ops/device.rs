//! Device certificate operations.

use serde_json::{Map, Value, json};
use tracing::info;

use super::{fields, paging};
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::identity::DeviceIdentity;
use crate::registry::{CertStatus, DeviceRecord, RegistryError};
use crate::serial::{CaSn, DeviceSn};
use crate::session::{Cut, DropReason};

pub(super) fn identity(req: &RpcRequest) -> Result<DeviceIdentity, ApiError> {
    let ca_sn = req.serial("CaSn", CaSn::parse)?;
    let device_sn = req.serial("DeviceSn", DeviceSn::parse)?;
    Ok(DeviceIdentity { ca_sn, device_sn })
}

pub(super) fn not_found(e: RegistryError) -> ApiError {
    match e {
        RegistryError::DeviceNotFound(id) => ApiError::DeviceNotFound {
            ca_sn: id.ca_sn.to_string(),
            device_sn: id.device_sn.to_string(),
        },
        RegistryError::CaNotFound(sn) => ApiError::CaNotFound(sn.to_string()),
        RegistryError::Store(e) => ApiError::Internal(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A device certificate as the API shows it (a DeviceCertificateVO).
fn vo(d: &DeviceRecord) -> Value {
    json!({
        "CaSn": d.identity.ca_sn.to_string(),
        "DeviceSn": d.identity.device_sn.to_string(),
        "DeviceName": &*d.name,
        "DeviceContent": &*d.pem,
        "Status": d.status.api_code(),
        "ValidBegin": d.valid_begin_ms.to_string(),
        "ValidEnd": d.valid_end_ms.to_string(),
    })
}

fn device_sn_answer(identity: &DeviceIdentity) -> Map<String, Value> {
    fields([("DeviceSn", Value::String(identity.device_sn.to_string()))])
}

pub(super) async fn get(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let identity = identity(req)?;
    let record = ctx
        .registry
        .device(&identity)
        .await
        .map_err(not_found)?
        .ok_or(RegistryError::DeviceNotFound(identity))
        .map_err(not_found)?;
    Ok(fields([("Data", vo(&record))]))
}

pub(super) async fn list(
    ctx: &Context,
    req: &RpcRequest,
    by_ca: bool,
) -> Result<Map<String, Value>, ApiError> {
    let ca = if by_ca {
        let sn = req.serial("CaSn", CaSn::parse)?;
        if ctx.registry.ca(&sn).is_none() {
            return Err(ApiError::CaNotFound(sn.to_string()));
        }
        Some(sn)
    } else {
        None
    };
    let (page_no, page_size, offset) = paging(req)?;
    // certmq's extension: only devices whose serial or name contains it.
    let keyword = match req.param("Keyword").map(str::trim) {
        None | Some("") => None,
        Some(k) if k.chars().count() > 128 => {
            return Err(ApiError::InvalidParameter {
                name: "Keyword",
                reason: "longer than 128 characters".into(),
            });
        }
        Some(k) => Some(k),
    };
    let page = ctx
        .registry
        .list_devices(ca.as_ref(), keyword, offset, page_size)
        .await
        .map_err(not_found)?;
    let vos: Vec<Value> = page
        .items
        .iter()
        .map(|d| {
            let mut v = vo(d);
            // certmq's extension: this node's live sessions of it.
            v["LiveSessions"] = json!(ctx.sessions.sessions_of(&d.identity));
            v
        })
        .collect();
    Ok(fields([(
        "Data",
        json!({
            "DeviceCertificateVOS": vos,
            "PageNo": page_no,
            "PageSize": page_size,
            "Total": page.total,
        }),
    )]))
}

/// Closes every session of the device and waits until their sockets are
/// closed; `done` says what already happened, for the error message.
pub(super) async fn drop_sessions(
    ctx: &Context,
    identity: &DeviceIdentity,
    cut: Cut,
    done: &str,
) -> Result<usize, ApiError> {
    ctx.sessions
        .drop_device(
            identity,
            DropReason::Administrative(cut),
            ctx.settings.drop_timeout(),
        )
        .await
        .map_err(|e| ApiError::Internal(format!("{done} but {e}; retry the call")))
}

/// Frees the client ids the device's persistent sessions claimed, with
/// what the router kept for them: a certificate without access keeps no
/// session, and whoever takes the id next inherits nothing.
pub(super) async fn release_client_ids(ctx: &Context, identity: &DeviceIdentity) -> usize {
    ctx.sessions
        .release_device(identity, |client_id| super::forget_session(ctx, client_id))
        .await
}

/// InactivateDeviceCertificate: the device's sessions are closed and its
/// handshakes refused before this answers.
pub(super) async fn inactivate(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let identity = identity(req)?;
    ctx.registry
        .set_device_status(&identity, CertStatus::Inactive)
        .await
        .map_err(not_found)?;
    let dropped = drop_sessions(ctx, &identity, Cut::Inactivated, "the device is inactive").await?;
    let released = release_client_ids(ctx, &identity).await;
    info!(request_id = %req.request_id, device = %identity, dropped, released, "device certificate inactivated");
    Ok(device_sn_answer(&identity))
}

/// ActiveDeviceCertificate: the device may connect again.
pub(super) async fn activate(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let identity = identity(req)?;
    // A serial blocked by a CRL before it was ever seen has no
    // certificate on record: unblocking removes the placeholder, and the
    // device registers (active) on its next connection.
    let blocked = ctx
        .registry
        .device(&identity)
        .await
        .map_err(not_found)?
        .is_some_and(|d| d.pem.is_empty());
    if blocked {
        ctx.registry
            .delete_device(&identity)
            .await
            .map_err(not_found)?;
        info!(request_id = %req.request_id, device = %identity, "blocked serial unblocked");
        return Ok(device_sn_answer(&identity));
    }
    ctx.registry
        .set_device_status(&identity, CertStatus::Active)
        .await
        .map_err(not_found)?;
    info!(request_id = %req.request_id, device = %identity, "device certificate activated");
    Ok(device_sn_answer(&identity))
}

/// DeleteDeviceCertificate: the record goes and the device's sessions are
/// closed. It registers again on its next connection while its CA is
/// active; inactivation is the way to keep a device out.
pub(super) async fn delete(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let identity = identity(req)?;
    ctx.registry
        .delete_device(&identity)
        .await
        .map_err(not_found)?;
    let dropped =
        drop_sessions(ctx, &identity, Cut::Deleted, "the device record is deleted").await?;
    let released = release_client_ids(ctx, &identity).await;
    info!(request_id = %req.request_id, device = %identity, dropped, released, "device certificate deleted");
    Ok(device_sn_answer(&identity))
}
