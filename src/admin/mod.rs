//! The admin API: HTTP (axum) in the ApsaraMQ for MQTT RPC dialect.
//!
//! The path of a call: HTTP -> [`rpc::RpcRequest`] (parameters, action) ->
//! the operation (registry change, then session drop) -> JSON answer.
//!
//! This first slice serves InactivateDeviceCertificate and
//! ActiveDeviceCertificate, without signatures or permissions: the listener
//! binds loopback by default and must not be exposed.

mod certificates;
pub mod rpc;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::any;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Context;
use rpc::{ApiError, RpcRequest};

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Context>,
    host: String,
}

/// Serves the admin API until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let host = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    let app = Router::new()
        .route("/", any(handle))
        .with_state(AdminState { ctx, host });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    info!("admin API stopped");
    Ok(())
}

async fn handle(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = match RpcRequest::parse(query.as_deref(), &headers, &body, &state.host) {
        Ok(req) => req,
        Err((request_id, error)) => return rpc::error_response(&request_id, &state.host, &error),
    };
    match dispatch(&state.ctx, &req).await {
        Ok(fields) => req.ok(fields),
        Err(error) => {
            info!(request_id = %req.request_id, action = ?req.action, code = error.code(), message = %error, "admin call failed");
            req.error(&error)
        }
    }
}

async fn dispatch(
    ctx: &Context,
    req: &RpcRequest,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let action = req.action.as_deref().ok_or(ApiError::MissingAction)?;
    match action {
        "InactivateDeviceCertificate" => certificates::inactivate_device(ctx, req).await,
        "ActiveDeviceCertificate" => certificates::activate_device(ctx, req).await,
        other => Err(ApiError::UnknownAction(other.chars().take(64).collect())),
    }
}
