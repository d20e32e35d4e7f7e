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
use crate::session;
use crate::{Context, tls::Refusal};

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
                Some(Err(refusal)) => {
                    ctx.stats.handshake_refused();
                    log_refusal(peer, refusal)
                }
                _ if no_certificate => {
                    ctx.stats.handshake_refused();
                    log_refusal(peer, &Refusal::NoCertificate)
                }
                _ => debug!(%peer, error = %e, "TLS handshake failed"),
            }
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let admitted = admit(&ctx, stream.get_ref().1, &verifier).await;
    match admitted {
        Ok((_verified, guard)) => session::run(&ctx, stream, guard, peer).await,
        Err(Refused { refusal, guard }) => {
            match verifier.verdict() {
                Some(Ok(_)) => ctx.stats.admission_refused(false),
                Some(Err(_)) => {}
                None => ctx.stats.admission_refused(true),
            }
            log_refusal(peer, &refusal);
            drop(stream);
            drop(guard);
        }
    }
}

fn log_refusal(peer: SocketAddr, refusal: &Refusal) {
    info!(%peer, reason = %refusal, "handshake refused");
}
