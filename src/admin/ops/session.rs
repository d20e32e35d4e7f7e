//! Session operations: close a client's connection, query who is online.

use serde_json::{Map, Value, json};
use tracing::info;

use super::fields;
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::session::DropReason;
use crate::session::table::wait_all;

/// At most this many client ids per BatchQuerySessionByClientIds call, as
/// on the hosted service.
const MAX_BATCH: usize = 10;

/// CloseConnection: the session holding the client id is closed (MQTT 5
/// clients receive DISCONNECT 0x98) before this answers. A client id that
/// is not online is already closed: success.
pub(super) async fn close(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let client_id = req.required("ClientId")?;
    let closing: Vec<_> = ctx
        .sessions
        .kill_client(client_id, DropReason::Administrative)
        .into_iter()
        .collect();
    let closed = wait_all(closing, ctx.settings.drop_timeout())
        .await
        .map_err(|e| ApiError::Internal(format!("{e}; retry the call")))?;
    info!(request_id = %req.request_id, client_id, closed, "connection closed");
    Ok(fields([
        ("Code", json!(200)),
        ("Message", json!("operation success.")),
        ("Success", json!(true)),
    ]))
}

pub(super) fn query(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let client_id = req.required("ClientId")?;
    Ok(fields([(
        "OnlineStatus",
        json!(ctx.sessions.is_online(client_id)),
    )]))
}

pub(super) fn batch_query(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let ids = req.list("ClientIdList");
    if ids.is_empty() {
        return Err(ApiError::MissingParameter("ClientIdList"));
    }
    if ids.len() > MAX_BATCH {
        return Err(ApiError::InvalidParameter {
            name: "ClientIdList",
            reason: format!(
                "{} client ids given, at most {MAX_BATCH} per call",
                ids.len()
            ),
        });
    }
    let statuses: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({"ClientId": id, "OnlineStatus": ctx.sessions.is_online(id)}))
        .collect();
    Ok(fields([("OnlineStatusList", Value::Array(statuses))]))
}
