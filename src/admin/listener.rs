//! The admin port over TLS: an accept loop that runs each handshake in its
//! own task, under a deadline, and hands finished TLS streams to axum
//! through [`TlsListener`] (axum's [`Listener`]).
//!
//! Handshakes run beside the accept loop, not in it, so that a client that
//! connects and says nothing delays nobody else; at most
//! [`MAX_HANDSHAKES`] run at once (further connections wait in the
//! kernel's backlog), and each has [`HANDSHAKE_TIMEOUT`]. Refused
//! handshakes are logged at most `log.refusals_per_second` lines a second.
//! Shutdown stops the accept loop and every handshake still running; axum
//! closes the established connections gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::tls::AdminTls;
use crate::log_limit::LogLimiter;

/// Time a client has to finish the TLS handshake after the TCP accept.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once, at most.
pub const MAX_HANDSHAKES: usize = 256;

/// Established TLS connections, ready for HTTP.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`, until `shutdown` fires or the listener
    /// is dropped.
    pub(crate) fn spawn(
        tcp: TcpListener,
        tls: Arc<AdminTls>,
        refusals_per_second: u32,
        shutdown: CancellationToken,
        vital: crate::health::Vital,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let accept = AcceptLoop {
            tcp,
            tls,
            ready: ready_tx,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            refusal_log: Arc::new(LogLimiter::new(refusals_per_second)),
            shutdown,
        };
        tokio::spawn(async move {
            // The admin API is gone if this loop ends before shutdown.
            let _vital = vital;
            accept.run().await
        });
        Ok(TlsListener { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): nothing more will come,
            // and axum's graceful shutdown ends the serve loop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

struct AcceptLoop {
    tcp: TcpListener,
    tls: Arc<AdminTls>,
    /// Where finished handshakes go; closed when axum drops the listener.
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    /// One permit per handshake in progress.
    handshakes: Arc<Semaphore>,
    refusal_log: Arc<LogLimiter>,
    shutdown: CancellationToken,
}

impl AcceptLoop {
    async fn run(self) {
        loop {
            let permit = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = self.ready.closed() => break,
                permit = self.handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = self.ready.closed() => break,
                accepted = self.tcp.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning on the error.
                    error!(error = %e, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = TlsAcceptor::from(self.tls.config());
            let (ready, shutdown) = (self.ready.clone(), self.shutdown.clone());
            let refusal_log = self.refusal_log.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    outcome = handshake => outcome,
                };
                drop(permit);
                let stream = match outcome {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return refused(&refusal_log, peer, &e.to_string()),
                    Err(_) => return refused(&refusal_log, peer, "handshake timed out"),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = ready.send((stream, peer)) => {}
                }
            });
        }
        debug!("admin API: TLS accept loop stopped");
    }
}

fn refused(log: &LogLimiter, peer: SocketAddr, reason: &str) {
    if let Some(suppressed) = log.admit() {
        warn!(%peer, reason, suppressed, "admin API: TLS handshake refused");
    }
}

/// Errors of one connection, not of the listener: go on at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
