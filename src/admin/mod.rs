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
mod console;
pub mod keys;
mod listener;
pub mod ops;
pub mod ratelimit;
pub mod rpc;
pub mod sign;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{any, get};
use axum::serve::IncomingStream;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::Context;
use crate::config::{ConfigError, Settings};
use audit::AuditLog;
use auth::{Authenticated, Authenticator};
use ops::Operation;
use ratelimit::RateLimits;
use rpc::{ApiError, RpcRequest};

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
}

/// The admin API's own state: who may call, how often, and the audit trail.
pub struct AdminApi {
    auth: Authenticator,
    limits: RateLimits,
    audit: Arc<AuditLog>,
}

impl AdminApi {
    /// `data_dir` holds the audit file.
    pub fn new(
        settings: &Settings,
        keys: Vec<auth::AccessKey>,
        data_dir: &Path,
    ) -> Result<Self, AdminError> {
        Ok(AdminApi {
            auth: Authenticator::new(keys, settings.timestamp_window()),
            limits: RateLimits::new(&settings.admin.rate_limits)?,
            audit: Arc::new(AuditLog::open(
                data_dir,
                settings.admin.audit_file_max_mb * 1024 * 1024,
                settings.admin.audit_files_kept,
            )?),
        })
    }

    /// The audit trail, for the changes certmq makes on its own.
    pub fn audit(&self) -> Arc<AuditLog> {
        self.audit.clone()
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
    let state_health = ctx.health.clone();
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
        .merge(console::routes())
        .with_state(state);
    let stop = shutdown.clone();
    let stop = async move { stop.cancelled().await };
    match tls {
        None => {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stop)
                .await?
        }
        Some(tls) => {
            let vital = state_health.vital("admin API TLS accept loop", shutdown.clone());
            let listener =
                listener::TlsListener::spawn(listener, tls, refusals_per_second, shutdown, vital)?;
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(stop)
                .await?
        }
    }
    info!("admin API stopped");
    Ok(())
}

/// The TCP peer of an admin call (for the audit trail), whether the
/// listener speaks TLS or not.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, listener::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, listener::TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

async fn handle(
    State(state): State<AdminState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
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
    // The call runs in a task of its own: a caller that hangs up must not
    // cancel it half way (registry changed, sessions not yet dropped, no
    // audit record). Dropping this handler only detaches the task.
    let request_id = req.request_id.clone();
    match tokio::spawn(run_call(state.clone(), req, peer, started)).await {
        Ok(response) => response,
        Err(e) => {
            error!(%request_id, error = %e, "admin call task failed");
            rpc::error_response(
                &request_id,
                &state.host,
                &ApiError::Internal("the call failed inside the broker; see its log".into()),
            )
        }
    }
}

/// Authenticates and runs one call, audits it, and answers.
async fn run_call(
    state: AdminState,
    req: RpcRequest,
    peer: SocketAddr,
    started: Instant,
) -> Response {
    let mut caller = None;
    let outcome = call(&state, &req, &mut caller).await;

    // What ran, if the signature checked out; else what the request claimed.
    let action = caller
        .as_ref()
        .map(|a: &Authenticated| a.action.as_str())
        .or(req.claimed_action());
    let op = action.and_then(Operation::from_name);
    state.ctx.metrics.admin_call(
        op.map_or("unknown", Operation::name),
        outcome.as_ref().map_or_else(|e| e.code(), |_| "Success"),
        started.elapsed().as_secs_f64(),
    );
    if op.is_some_and(Operation::is_mutating) {
        let claimed = Authenticator::claimed_key_id(&req);
        let written = state.api.audit.write(audit::AuditRecord {
            req: &req,
            peer,
            node: &state.ctx.node_id,
            action: action.unwrap_or_default(),
            access_key_id: caller
                .as_ref()
                .map(|a| a.caller.access_key_id.as_str())
                .or(claimed.as_deref()),
            account: caller.as_ref().map(|a| a.caller.account.as_str()),
            code: outcome.as_ref().map_or_else(|e| e.code(), |_| "Success"),
            message: outcome.as_ref().err().map(ToString::to_string),
            duration: started.elapsed(),
        });
        match written.await {
            Ok(audit::Written::Recorded) => {}
            Ok(audit::Written::Suppressed) => state.ctx.metrics.audit_suppressed(),
            Err(e) => {
                // The change itself is done (or refused); the answer says so.
                // A trail that cannot be written is an operator's emergency.
                state.ctx.metrics.audit_failed();
                error!(request_id = %req.request_id, error = %e, "audit record not written");
            }
        }
    }
    match outcome {
        Ok(fields) => req.ok(fields),
        Err(error) => {
            debug!(request_id = %req.request_id, action = ?action, code = error.code(), message = %error, "admin call failed");
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

/// Ready to serve: the listeners are bound (they are, once this answers),
/// the router and the store writer run, and nothing vital has stopped.
async fn readyz(State(state): State<AdminState>) -> Response {
    let not_ready = |why: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    };
    if let Some(failure) = state.ctx.health.failure() {
        return not_ready(failure.to_owned());
    }
    if !state.ctx.registry.store_healthy() {
        return not_ready("the registry store is not available".into());
    }
    if let Some(why) = state.ctx.fence.refusal() {
        return not_ready(format!("this node refuses connections: {why}"));
    }
    if let Some(why) = state.ctx.crl_health.failure() {
        return not_ready(why);
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Authenticate, authorize, rate-limit, run.
async fn call(
    state: &AdminState,
    req: &RpcRequest,
    authenticated: &mut Option<Authenticated>,
) -> Result<Map<String, Value>, ApiError> {
    let signed = authenticated.insert(state.api.auth.authenticate(req)?);
    let op = Operation::from_name(&signed.action)
        .ok_or_else(|| ApiError::UnknownAction(signed.action.chars().take(64).collect()))?;
    let caller = &signed.caller;
    authz::authorize(caller, op)?;
    state.api.limits.check(op, &caller.account)?;
    ops::run(&state.ctx, caller, op, req).await
}
