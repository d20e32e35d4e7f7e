//! `ImportCrl` (a certmq extension): a CRL of a registered CA, verified
//! (see `crl`), put in force (see `crl::import`): listed devices inactive
//! and their sessions closed before the answer, serials never seen
//! blocked.

use rustls_pki_types::UnixTime;
use serde_json::{Map, Value, json};
use tracing::info;

use super::fields;
use crate::Context;
use crate::admin::auth::Caller;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::events::Change;

pub(super) async fn import(
    ctx: &Context,
    caller: &Caller,
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
    let change = Change {
        by: caller.access_key_id.clone(),
        via: "crl",
        request_id: Some(req.request_id.clone()),
    };
    let done = ctx
        .revoker()
        .import(&crl, &change, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    info!(request_id = %req.request_id, ca_sn = %done.ca_sn, inactivated = done.inactivated, blocked = done.blocked, already_inactive = done.already_inactive, "CRL imported");
    Ok(fields([
        ("CaSn", json!(done.ca_sn.to_string())),
        ("Inactivated", json!(done.inactivated)),
        ("Blocked", json!(done.blocked)),
        ("AlreadyInactive", json!(done.already_inactive)),
    ]))
}
