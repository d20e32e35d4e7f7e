//! Device certificate operations: InactivateDeviceCertificate and
//! ActiveDeviceCertificate.
//!
//! Inactivation follows the one order that makes it exact: change the
//! registry, then drop the device's sessions and wait until their sockets
//! are closed, then answer. See `admission` for the connection's half.

use serde_json::{Map, Value};
use tracing::info;

use super::rpc::{ApiError, RpcRequest};
use crate::Context;
use crate::identity::DeviceIdentity;
use crate::registry::{CertStatus, RegistryError};
use crate::serial::{CaSn, DeviceSn};
use crate::session::DropReason;

/// `MqttInstanceId` must name the instance this broker serves.
pub(super) fn check_instance(ctx: &Context, req: &RpcRequest) -> Result<(), ApiError> {
    let instance = req.required("MqttInstanceId")?;
    if instance != ctx.settings.instance.id {
        return Err(ApiError::InstanceNotFound(instance.to_owned()));
    }
    Ok(())
}

fn device_identity(req: &RpcRequest) -> Result<DeviceIdentity, ApiError> {
    // All parameters are checked for presence before any lookup, so a
    // caller learns about a missing parameter first.
    req.required("MqttInstanceId")?;
    let ca_sn = req.serial("CaSn", CaSn::parse)?;
    let device_sn = req.serial("DeviceSn", DeviceSn::parse)?;
    Ok(DeviceIdentity { ca_sn, device_sn })
}

fn not_found(e: RegistryError) -> ApiError {
    match e {
        RegistryError::DeviceNotFound(id) => ApiError::DeviceNotFound {
            ca_sn: id.ca_sn.to_string(),
            device_sn: id.device_sn.to_string(),
        },
        RegistryError::CaNotFound(sn) => ApiError::CaNotFound(sn.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

fn device_sn_answer(identity: &DeviceIdentity) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert(
        "DeviceSn".into(),
        Value::String(identity.device_sn.to_string()),
    );
    fields
}

/// InactivateDeviceCertificate: the device's sessions are closed and its
/// handshakes refused before this answers.
pub(super) async fn inactivate_device(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let identity = device_identity(req)?;
    check_instance(ctx, req)?;
    ctx.registry
        .set_device_status(&identity, CertStatus::Inactive)
        .await
        .map_err(not_found)?;
    let dropped = ctx
        .sessions
        .drop_device(
            &identity,
            DropReason::Administrative,
            ctx.settings.drop_timeout(),
        )
        .await
        .map_err(|e| {
            ApiError::Internal(format!("the device is inactive but {e}; retry the call"))
        })?;
    info!(
        request_id = %req.request_id,
        device = %identity,
        dropped,
        "device certificate inactivated"
    );
    Ok(device_sn_answer(&identity))
}

/// ActiveDeviceCertificate: the device may connect again.
pub(super) async fn activate_device(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let identity = device_identity(req)?;
    check_instance(ctx, req)?;
    ctx.registry
        .set_device_status(&identity, CertStatus::Active)
        .await
        .map_err(not_found)?;
    info!(request_id = %req.request_id, device = %identity, "device certificate activated");
    Ok(device_sn_answer(&identity))
}
