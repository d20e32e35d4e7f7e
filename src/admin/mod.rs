//! The admin API: HTTP (axum) in the RPC dialect of the ApsaraMQ for MQTT
//! API (version 2020-04-20), so the official SDKs work by changing only the
//! endpoint.
//!
//! The path of a call, top to bottom in [`handle`]:
//! HTTP -> [`rpc::RpcRequest`] -> [`auth`] (signature, timestamp, nonce) ->
//! [`authz`] (the access key's actions) -> [`ratelimit`] -> [`ops`]
//! (instance checks, registry change, session drop) -> JSON answer, and an
//! [`audit`] record for every mutating call.
//!
//! The transport: plain HTTP, or HTTPS (and mutual TLS) with [`tls`]
//! (the configuration, reloadable) and `listener` (the handshakes).

pub mod audit;
pub mod auth;
pub mod authz;
pub mod client;
pub mod keys;
mod listener;
pub mod ops;
pub mod ratelimit;
pub mod rpc;
pub mod sign;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{any, get};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Context;
use crate::config::{ConfigError, Settings};
use auth::{Authenticator, Caller};
use ops::Operation;
use ratelimit::RateLimits;
use rpc::{ApiError, RpcRequest};

/// The admin API's own state: who may call, and how often.
pub struct AdminApi {
    auth: Authenticator,
    limits: RateLimits,
}

impl AdminApi {
    pub fn new(settings: &Settings, keys: Vec<auth::AccessKey>) -> Result<Self, ConfigError> {
        Ok(AdminApi {
            auth: Authenticator::new(keys, settings.timestamp_window()),
            limits: RateLimits::new(&settings.admin.rate_limits)?,
        })
    }
}

#[derive(Clone)]
struct AdminState {
    ctx: Arc<Context>,
    api: Arc<AdminApi>,
    host: String,
}

/// Serves the admin API until `shutdown` fires: over TLS with `tls`,
/// else plain HTTP.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    api: AdminApi,
    tls: Option<Arc<tls::AdminTls>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let host = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    let refusals_per_second = ctx.settings.log.refusals_per_second;
    let state = AdminState {
        ctx,
        api: Arc::new(api),
        host,
    };
    let app = Router::new()
        .route("/", any(handle))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let stop = shutdown.clone();
    let stop = async move { stop.cancelled().await };
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await?
        }
        Some(tls) => {
            let listener =
                listener::TlsListener::spawn(listener, tls, refusals_per_second, shutdown)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    info!("admin API stopped");
    Ok(())
}

async fn handle(
    State(state): State<AdminState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let parsed = RpcRequest::parse(
        method.as_str(),
        uri.path(),
        uri.query(),
        headers,
        body.to_vec(),
        &state.host,
    );
    let req = match parsed {
        Ok(req) => req,
        Err((request_id, error)) => return rpc::error_response(&request_id, &state.host, &error),
    };
    let mut caller = None;
    let outcome = call(&state, &req, &mut caller).await;

    let op = req.action().and_then(Operation::from_name);
    state.ctx.metrics.admin_call(
        op.map_or("unknown", Operation::name),
        outcome.as_ref().map_or_else(|e| e.code(), |_| "Success"),
        started.elapsed().as_secs_f64(),
    );
    if op.is_some_and(Operation::is_mutating) {
        let claimed = Authenticator::claimed_key_id(&req);
        audit::write(audit::AuditRecord {
            req: &req,
            action: req.action().unwrap_or_default(),
            access_key_id: caller
                .as_ref()
                .map(|c: &Caller| c.access_key_id.as_str())
                .or(claimed.as_deref()),
            account: caller.as_ref().map(|c| c.account.as_str()),
            code: outcome.as_ref().map_or_else(|e| e.code(), |_| "Success"),
            duration: started.elapsed(),
        });
    }
    match outcome {
        Ok(fields) => req.ok(fields),
        Err(error) => {
            debug!(request_id = %req.request_id, action = ?req.action(), code = error.code(), message = %error, "admin call failed");
            req.error(&error)
        }
    }
}

/// Prometheus metrics (text exposition format). Unauthenticated, like the
/// rest of a management listener's observability endpoints.
async fn metrics(State(state): State<AdminState>) -> Response {
    let body = state.ctx.metrics.render(
        state.ctx.registry.ca_count(),
        state.ctx.registry.device_count(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to serve: the listeners are bound (they are, once this answers)
/// and the registry store accepts writes.
async fn readyz(State(state): State<AdminState>) -> Response {
    if state.ctx.registry.store_healthy() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the registry store is not available\n",
        )
            .into_response()
    }
}

/// Authenticate, authorize, rate-limit, run.
async fn call(
    state: &AdminState,
    req: &RpcRequest,
    caller_slot: &mut Option<Caller>,
) -> Result<Map<String, Value>, ApiError> {
    let (caller, _scheme) = state.api.auth.authenticate(req)?;
    let caller = caller_slot.insert(caller);
    let action = req.action().ok_or(ApiError::MissingAction)?;
    let op = Operation::from_name(action)
        .ok_or_else(|| ApiError::UnknownAction(action.chars().take(64).collect()))?;
    authz::authorize(caller, op)?;
    state.api.limits.check(op, &caller.account)?;
    ops::run(&state.ctx, caller, op, req).await
}
