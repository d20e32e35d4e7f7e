//! Session operations: close a client's connection, query who is online.
//!
//! On a shared registry (several nodes) they look at every node: a client
//! id may be connected to any of them (`cluster::sessions`). A node that
//! does not answer makes the call fail, naming it, rather than report a
//! client offline that may be online there.

use serde_json::{Map, Value, json};
use tracing::info;

use super::fields;
use crate::Context;
use crate::admin::rpc::{ApiError, RpcRequest};
use crate::session::table::wait_all;
use crate::session::{Cut, DropReason};

/// At most this many client ids per BatchQuerySessionByClientIds call, as
/// on the hosted service.
const MAX_BATCH: usize = 10;

/// CloseConnection: the session holding the client id is closed (MQTT 5
/// clients receive DISCONNECT 0x98) before this answers. A client id that
/// is not online is already closed: success.
pub(super) async fn close(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let client_id = req.required("ClientId")?;
    let closed = match &ctx.cluster {
        Some(cluster) => {
            cluster
                .close_session(client_id)
                .await
                .map_err(|e| ApiError::Internal(format!("{e}; retry the call")))?
                .closed
        }
        None => {
            let closing: Vec<_> = ctx
                .sessions
                .kill_client(client_id, DropReason::Administrative(Cut::Kicked))
                .into_iter()
                .collect();
            wait_all(closing, ctx.settings.drop_timeout())
                .await
                .map_err(|e| ApiError::Internal(format!("{e}; retry the call")))?
        }
    };
    info!(request_id = %req.request_id, client_id, closed, "connection closed");
    Ok(fields([
        ("Code", json!(200)),
        ("Message", json!("operation success.")),
        ("Success", json!(true)),
    ]))
}

/// Whether each client id is online, on this node or (shared registry) on
/// any node.
async fn online(ctx: &Context, client_ids: &[&str]) -> Result<Vec<bool>, ApiError> {
    match &ctx.cluster {
        Some(cluster) => Ok(cluster
            .query_sessions(client_ids)
            .await
            .map_err(|e| {
                ApiError::Internal(format!(
                    "could not ask every node whether the client is online: {e}; retry the call"
                ))
            })?
            .online),
        None => Ok(client_ids
            .iter()
            .map(|id| ctx.sessions.is_online(id))
            .collect()),
    }
}

pub(super) async fn query(ctx: &Context, req: &RpcRequest) -> Result<Map<String, Value>, ApiError> {
    let client_id = req.required("ClientId")?;
    let online = online(ctx, &[client_id]).await?;
    Ok(fields([(
        "OnlineStatus",
        json!(online.first().copied().unwrap_or(false)),
    )]))
}

pub(super) async fn batch_query(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<Map<String, Value>, ApiError> {
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
    let online = online(ctx, &ids).await?;
    let statuses: Vec<Value> = ids
        .iter()
        .zip(online)
        .map(|(id, online)| json!({"ClientId": id, "OnlineStatus": online}))
        .collect();
    Ok(fields([("OnlineStatusList", Value::Array(statuses))]))
}
