//! CA certificate operations, and the registration code they rest on.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Map, Value, json};
use tracing::info;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::device::not_found;
use super::{fields, paging};
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::identity::common_name;
use crate::registry::{CaCert, CaRecord, CaRegistration, CertStatus, RegistryError};
use crate::serial::CaSn;
use crate::session::table::wait_all;
use crate::session::{Cut, DropReason};

pub(super) fn get_register_code(ctx: &Context) -> Result<Map<String, Value>, ApiError> {
    Ok(fields([(
        "RegisterCode",
        json!(ctx.instance.registration_code),
    )]))
}

fn pem_certificate(
    req: &RpcRequest,
    name: &'static str,
) -> Result<CertificateDer<'static>, ApiError> {
    let pem = req.required(name)?;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| ApiError::InvalidParameter {
        name,
        reason: format!("it is not a PEM certificate ({e})"),
    })
}

/// RegisterCaCertificate, with proof of possession: the verification
/// certificate must be signed by the CA's key and name the instance's
/// registration code as its subject CN.
pub(super) async fn register(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let name = req.required("CaName")?.to_owned();
    let ca_der = pem_certificate(req, "CaContent")?;
    let verification_der = pem_certificate(req, "VerificationContent")?;
    let refused = |reason: String| ApiError::RegistrationRefused(reason);

    let ca = CaCert::parse(ca_der.clone(), UnixTime::now()).map_err(|e| refused(e.to_string()))?;
    let (_, ca_x509) =
        X509Certificate::from_der(ca_der.as_ref()).map_err(|e| refused(e.to_string()))?;
    let (_, verification) = X509Certificate::from_der(verification_der.as_ref()).map_err(|e| {
        refused(format!(
            "the verification certificate is not valid X.509: {e}"
        ))
    })?;
    verification.verify_signature(Some(ca_x509.public_key())).map_err(|_| {
        refused("the verification certificate is not signed by the CA's private key (proof of possession failed)".into())
    })?;
    let code = common_name(&verification);
    if code != ctx.instance.registration_code {
        return Err(refused(format!(
            "the verification certificate's subject CN is `{}`, not this instance's registration code (call GetRegisterCode)",
            code.chars().take(64).collect::<String>()
        )));
    }
    let verification_pem = req.required("VerificationContent")?.to_owned();
    let sn = ctx
        .registry
        .register_ca(CaRegistration {
            cert: ca,
            name: Some(name),
            verification_pem: Some(verification_pem),
            registration_code: Some(code),
        })
        .await
        .map_err(|e| match e {
            RegistryError::CaAlreadyRegistered(sn) => {
                refused(format!("a CA with serial {sn} is already registered"))
            }
            other => ApiError::Internal(other.to_string()),
        })?;
    info!(request_id = %req.request_id, ca_sn = %sn, "CA certificate registered");
    Ok(fields([("Sn", json!(sn.to_string()))]))
}

/// A CA certificate as the API shows it (a CaCertificateVO).
fn vo(ca: &CaRecord) -> Value {
    json!({
        "Sn": ca.sn.to_string(),
        "CaName": ca.name,
        "CaContent": &*ca.pem,
        "Status": ca.status.api_code(),
        "ValidBegin": ca.valid_begin_ms.to_string(),
        "ValidEnd": ca.valid_end_ms.to_string(),
        "RegistrationCode": ca.registration_code.as_deref().unwrap_or(""),
        "VerificationContent": ca.verification_pem.as_deref().unwrap_or(""),
    })
}

pub(super) fn ca_sn(req: &RpcRequest) -> Result<CaSn, ApiError> {
    req.serial("Sn", CaSn::parse)
}

pub(super) fn get(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let sn = ca_sn(req)?;
    let record = ctx
        .registry
        .ca(&sn)
        .ok_or_else(|| ApiError::CaNotFound(sn.to_string()))?;
    let mut data = vo(&record);
    // certmq's extension: this node's live sessions of the CA's devices
    // (what an inactivation or deletion would close here).
    data["LiveSessions"] = json!(ctx.sessions.sessions_of_ca(&sn));
    Ok(fields([("Data", data)]))
}

pub(super) fn list(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let (page_no, page_size, offset) = paging(req)?;
    let page = ctx.registry.list_cas(offset, page_size);
    let vos: Vec<Value> = page.items.iter().map(vo).collect();
    Ok(fields([(
        "Data",
        json!({
            "CaCertificateVOS": vos,
            "PageNo": page_no,
            "PageSize": page_size,
            "Total": page.total,
        }),
    )]))
}

fn sn_answer(sn: &CaSn) -> Map<String, Value> {
    fields([("Sn", json!(sn.to_string()))])
}

/// Closes every session of the CA's devices and waits for them.
async fn drop_ca_sessions(
    ctx: &Context,
    sn: &CaSn,
    cut: Cut,
    done: &str,
) -> Result<usize, ApiError> {
    let closings = ctx.sessions.kill_ca(sn, DropReason::Administrative(cut));
    wait_all(closings, ctx.settings.drop_timeout())
        .await
        .map_err(|e| ApiError::Internal(format!("{done} but {e}; retry the call")))
}

/// Frees the client ids the CA's devices' persistent sessions claimed
/// (see `device::release_client_ids`).
async fn release_ca_client_ids(ctx: &Context, sn: &CaSn) -> usize {
    ctx.sessions
        .release_ca(sn, |client_id| super::forget_session(ctx, client_id))
        .await
}

/// ActiveCaCertificate: the CA's devices are admitted again; their own
/// statuses are unchanged.
pub(super) async fn activate(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let sn = ca_sn(req)?;
    ctx.registry
        .set_ca_status(&sn, CertStatus::Active)
        .await
        .map_err(not_found)?;
    info!(request_id = %req.request_id, ca_sn = %sn, "CA certificate activated");
    Ok(sn_answer(&sn))
}

/// InactivateCaCertificate: every session of every device of the CA is
/// closed, and their handshakes refused, before this answers.
pub(super) async fn inactivate(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let sn = ca_sn(req)?;
    ctx.registry
        .set_ca_status(&sn, CertStatus::Inactive)
        .await
        .map_err(not_found)?;
    let dropped = drop_ca_sessions(ctx, &sn, Cut::CaInactivated, "the CA is inactive").await?;
    let released = release_ca_client_ids(ctx, &sn).await;
    info!(request_id = %req.request_id, ca_sn = %sn, dropped, released, "CA certificate inactivated");
    Ok(sn_answer(&sn))
}

/// DeleteCaCertificate: the CA and its device records go, and their
/// sessions are closed, before this answers.
pub(super) async fn delete(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
    let sn = ca_sn(req)?;
    let devices = ctx.registry.delete_ca(&sn).await.map_err(not_found)?;
    let dropped = drop_ca_sessions(ctx, &sn, Cut::CaDeleted, "the CA is deleted").await?;
    let released = release_ca_client_ids(ctx, &sn).await;
    info!(request_id = %req.request_id, ca_sn = %sn, devices, dropped, released, "CA certificate deleted");
    Ok(sn_answer(&sn))
}
