//! The MQTT listener: accepts TCP connections and gives each its own task
//! for the TLS handshake, admission and session.
//!
//! The accept loop does nothing slow: no handshake, no registry lookup. A
//! semaphore bounds concurrent connections (`mqtt.max_connections`);
//! connections beyond it are closed at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::admission::{Refused, admit};
use crate::serial::DeviceSn;
use crate::session;
use crate::{Context, metrics, tls::Refusal};

/// Accepts until `shutdown` fires.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.settings.mqtt.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly
                // instead of spinning on the error.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, max = ctx.settings.mqtt.max_connections, "connection refused: mqtt.max_connections reached");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(ctx.clone(), tcp, peer, permit));
    }
    info!("MQTT listener stopped");
}

/// One connection: handshake (under `mqtt.handshake_timeout_ms`),
/// admission, session.
async fn connection(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let (acceptor, verifier) = match ctx.tls.acceptor() {
        Ok(a) => a,
        Err(e) => {
            error!(%peer, error = %e, "cannot build the TLS configuration");
            return;
        }
    };
    let handshake =
        tokio::time::timeout(ctx.settings.handshake_timeout(), acceptor.accept(tcp)).await;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let no_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|inner| matches!(inner, rustls::Error::NoCertificatesPresented));
            match verifier.verdict() {
                Some(Err(refusal)) => refused(&ctx, peer, refusal, verifier.presented()),
                _ if no_certificate => refused(&ctx, peer, &Refusal::NoCertificate, None),
                _ => {
                    ctx.metrics.handshake_refused("tls_error");
                    debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_refused("timeout");
            if let Some(suppressed) = ctx.refusal_log.admit() {
                info!(%peer, reason = "no TLS handshake within mqtt.handshake_timeout_ms", suppressed, "handshake refused");
            }
            return;
        }
    };
    let admitted = admit(&ctx, stream.get_ref().1, &verifier).await;
    match admitted {
        Ok((_verified, guard)) => session::run(&ctx, stream, guard, peer).await,
        Err(Refused { refusal, guard }) => {
            match verifier.verdict() {
                Some(Ok(_)) => ctx.metrics.admission_refused(false),
                Some(Err(_)) => {}
                None => ctx.metrics.admission_refused(true),
            }
            refused(&ctx, peer, &refusal, verifier.presented());
            drop(stream);
            drop(guard);
        }
    }
}

/// Counts a refused handshake, and logs it once, unless refusals are
/// flooding in (then the next logged one says how many were not).
fn refused(ctx: &Context, peer: SocketAddr, refusal: &Refusal, presented: Option<DeviceSn>) {
    ctx.metrics
        .handshake_refused(metrics::refusal_reason(refusal));
    if let Some(suppressed) = ctx.refusal_log.admit() {
        let device_sn = presented
            .map(|sn| sn.to_string())
            .unwrap_or_else(|| "-".into());
        info!(%peer, reason = %refusal, %device_sn, suppressed, "handshake refused");
    }
}
