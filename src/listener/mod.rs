//! The MQTT listener: accepts TCP connections and gives each its own task
//! for the TLS handshake, admission and session.
//!
//! The accept loop does nothing slow: no handshake, no registry lookup. A
//! semaphore bounds concurrent connections (`mqtt.max_connections`), a
//! keyed limiter bounds new connections per source address
//! (`mqtt.connections_per_second_per_ip`); connections beyond either are
//! closed at once, counted, and logged (rate-limited).
//!
//! Every stage a client could stall has a deadline: the first byte after
//! accept (or the PROXY header, see `proxy`), the TLS handshake, CONNECT
//! (in `session`), keepalive. The TLS layer reads and writes through
//! [`socket::Socket`], which notes the first byte and sends the session
//! ticket with the CONNACK. Behind a load balancer (`mqtt.proxy_protocol`)
//! the per-address limit is applied once the header has said whose
//! connection it is, in the connection's task.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

mod socket;

use crate::admission::{Refused, admit};
use crate::serial::DeviceSn;
use crate::session;
use crate::{Context, tls::Refusal};
use socket::{Heard, Socket};

/// A connection's TLS stream, from the handshake to the session's end.
pub(crate) type Stream = tokio_rustls::server::TlsStream<Socket>;

/// New connections per second per source address.
type PerIp = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// The accept queue. The standard library's and tokio's 128 overflowed in
/// every reconnect burst measured (1,000 connects in flight: 17-193 SYNs
/// dropped, each retried by the client a second later; `benches/burst.sh`,
/// `docs/BENCHMARKS.md` "A reconnect burst"). Linux caps it at
/// `net.core.somaxconn` (4096 by default since 5.4).
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds the MQTT listener. TCP_NODELAY is set on the listening socket:
/// every MQTT packet is a complete message, and on Linux accepted sockets
/// inherit the option, which saves a system call per connection.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Accepts until `shutdown` fires.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.settings.mqtt.max_connections));
    let per_ip = NonZeroU32::new(ctx.settings.mqtt.connections_per_second_per_ip)
        .map(|rate| Arc::new(PerIp::keyed(Quota::per_second(rate))));
    let behind_proxy = ctx.settings.mqtt.proxy_protocol;
    let mut accepted_count: u64 = 0;
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
        accepted_count += 1;
        if let Some(limiter) = &per_ip {
            if accepted_count % 4096 == 0 {
                // Forget addresses that have been quiet: the limiter's
                // memory stays bounded by the recent sources.
                limiter.retain_recent();
            }
            if !behind_proxy && limiter.check_key(&peer.ip()).is_err() {
                refuse_at_accept(
                    &ctx,
                    peer,
                    "rate_limited",
                    "mqtt.connections_per_second_per_ip exceeded",
                );
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse_at_accept(
                &ctx,
                peer,
                "max_connections",
                "mqtt.max_connections reached",
            );
            continue;
        };
        // On Linux an accepted socket inherits TCP_NODELAY from the
        // listener (`bind`): no system call per connection.
        #[cfg(not(target_os = "linux"))]
        let _ = tcp.set_nodelay(true);
        let per_proxied_ip = if behind_proxy { per_ip.clone() } else { None };
        tokio::spawn(connection(ctx.clone(), tcp, peer, permit, per_proxied_ip));
    }
    info!("MQTT listener stopped");
}

/// A connection closed at accept (the socket is dropped by the caller).
fn refuse_at_accept(ctx: &Context, peer: SocketAddr, reason: &'static str, why: &str) {
    ctx.metrics.handshake_refused(reason);
    if let Some(suppressed) = ctx.refusal_log.admit() {
        warn!(%peer, reason = why, suppressed, "connection refused");
    }
}

/// One connection: handshake (under `mqtt.handshake_timeout_ms`),
/// admission, session.
///
/// The handshake and admission run in a future of their own on the heap,
/// freed once the session starts: a task's future is as large as its
/// largest state, and the handshake's (the TLS acceptor, its verifier, the
/// rustls connection in the making) would otherwise stay reserved for the
/// whole life of every idle connection.
async fn connection(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    per_proxied_ip: Option<Arc<PerIp>>,
) {
    let Some((stream, guard, principal, peer)) =
        Box::pin(handshake(&ctx, tcp, peer, per_proxied_ip)).await
    else {
        return;
    };
    session::run(&ctx, stream, guard, peer, principal).await
}

/// Behind a load balancer: reads the PROXY header (within
/// `mqtt.first_byte_timeout_ms`) and answers the device's address, then
/// applies the per-address limit to it. `None`: refused (counted, logged).
async fn proxied_peer(
    ctx: &Context,
    tcp: &mut TcpStream,
    peer: SocketAddr,
    per_ip: Option<&PerIp>,
    deadline: tokio::time::Instant,
) -> Option<SocketAddr> {
    let device = match tokio::time::timeout_at(deadline, crate::proxy::read_header(tcp)).await {
        Ok(Ok(source)) => source.unwrap_or(peer),
        Ok(Err(e)) => {
            ctx.metrics.handshake_refused("proxy_header");
            if let Some(suppressed) = ctx.refusal_log.admit() {
                warn!(%peer, reason = %e, suppressed, "connection refused");
            }
            return None;
        }
        Err(_) => {
            ctx.metrics.handshake_refused("proxy_header");
            if let Some(suppressed) = ctx.refusal_log.admit() {
                warn!(%peer, reason = "no complete PROXY header within mqtt.first_byte_timeout_ms", suppressed, "connection refused");
            }
            return None;
        }
    };
    if per_ip.is_some_and(|limiter| limiter.check_key(&device.ip()).is_err()) {
        refuse_at_accept(
            ctx,
            device,
            "rate_limited",
            "mqtt.connections_per_second_per_ip exceeded",
        );
        return None;
    }
    Some(device)
}

/// The PROXY header (behind a balancer), the TLS handshake and admission:
/// the session's stream, table entry, principal and the device's address,
/// or `None` (refused, counted and logged).
async fn handshake(
    ctx: &Context,
    mut tcp: TcpStream,
    peer: SocketAddr,
    per_proxied_ip: Option<Arc<PerIp>>,
) -> Option<(
    Stream,
    crate::session::table::SessionGuard,
    crate::authz::Principal,
    SocketAddr,
)> {
    let accepted = tokio::time::Instant::now();
    // The first bytes (the PROXY header, if any, and the start of the TLS
    // handshake) are due within mqtt.first_byte_timeout_ms of accept.
    let first_bytes_by = accepted
        + ctx
            .settings
            .first_byte_timeout()
            .min(ctx.settings.handshake_timeout());
    let peer = if ctx.settings.mqtt.proxy_protocol {
        proxied_peer(
            ctx,
            &mut tcp,
            peer,
            per_proxied_ip.as_deref(),
            first_bytes_by,
        )
        .await?
    } else {
        peer
    };
    let (acceptor, verifier) = match ctx.tls.acceptor() {
        Ok(a) => a,
        Err(e) => {
            error!(%peer, error = %e, "cannot build the TLS configuration");
            return None;
        }
    };
    // Both deadlines count from accept: a client that trickles its first
    // byte in late does not get a longer handshake for it. One timer: at
    // the first-byte deadline it is moved on to the handshake's.
    let heard = Heard::default();
    let mut accept = acceptor
        .accept(Socket::new(tcp, verifier.clone(), heard.clone()))
        .into_fallible();
    let deadline = tokio::time::sleep_until(first_bytes_by);
    tokio::pin!(deadline);
    let mut first_byte_due = true;
    let handshake = loop {
        tokio::select! {
            done = &mut accept => break Some(done),
            _ = &mut deadline => {
                if !first_byte_due {
                    break None;
                }
                if !heard.get() {
                    ctx.metrics.handshake_refused("first_byte_timeout");
                    if let Some(suppressed) = ctx.refusal_log.admit() {
                        info!(%peer, reason = "no byte within mqtt.first_byte_timeout_ms", suppressed, "connection closed");
                    }
                    return None;
                }
                first_byte_due = false;
                deadline.as_mut().reset(accepted + ctx.settings.handshake_timeout());
            }
        }
    };
    let mut stream = match handshake {
        Some(Ok(stream)) => stream,
        // The socket closes when this returns, after the counting.
        Some(Err((e, _socket))) => {
            if !heard.get() {
                // Closed (or failed) before saying anything: a port probe
                // or a health check, not a refused handshake.
                debug!(%peer, error = %e, "connection closed before its first byte");
                return None;
            }
            let no_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|inner| matches!(inner, rustls::Error::NoCertificatesPresented));
            match verifier.verdict() {
                Some(Err(refusal)) => refused(ctx, peer, refusal, verifier.presented()),
                _ if no_certificate => refused(ctx, peer, &Refusal::NoCertificate, None),
                _ => {
                    ctx.metrics.handshake_refused("tls_error");
                    debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
            return None;
        }
        None => {
            ctx.metrics.handshake_refused("timeout");
            if let Some(suppressed) = ctx.refusal_log.admit() {
                info!(%peer, reason = "no TLS handshake within mqtt.handshake_timeout_ms", suppressed, "handshake refused");
            }
            return None;
        }
    };
    stream.get_mut().0.handshake_done();
    let admitted = admit(ctx, stream.get_ref().1, &verifier).await;
    match admitted {
        Ok((verified, guard)) => {
            let identity = guard.identity();
            let principal = crate::authz::Principal {
                common_name: verified.cert.common_name,
                device_sn: identity.device_sn.to_string(),
                ca_sn: identity.ca_sn.to_string(),
                client_id: String::new(),
                subject_o: verified.cert.subject_o,
                subject_ou: verified.cert.subject_ou,
            };
            Some((stream, guard, principal, peer))
        }
        Err(Refused { refusal, guard }) => {
            match verifier.verdict() {
                Some(Ok(_)) => ctx.metrics.admission_refused(false),
                Some(Err(_)) => {}
                None => ctx.metrics.admission_refused(true),
            }
            refused(ctx, peer, &refusal, verifier.presented());
            drop(stream);
            drop(guard);
            None
        }
    }
}

/// Counts a refused handshake, and logs it once, unless refusals are
/// flooding in (then the next logged one says how many were not).
fn refused(ctx: &Context, peer: SocketAddr, refusal: &Refusal, presented: Option<DeviceSn>) {
    ctx.metrics.handshake_refused(refusal.label());
    if let Some(suppressed) = ctx.refusal_log.admit() {
        let device_sn = presented
            .map(|sn| sn.to_string())
            .unwrap_or_else(|| "-".into());
        info!(%peer, reason = %refusal, %device_sn, suppressed, "handshake refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection `set_nodelay` is gone on Linux because accepted
    /// sockets inherit TCP_NODELAY from the listener set up here (elsewhere
    /// the accept loop still sets it on each).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
