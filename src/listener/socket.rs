//! A device's TCP socket as the TLS layer sees it.
//!
//! A plain `TcpStream` would do, but for two costs paid on every connect:
//! - **The first-byte deadline** (`mqtt.first_byte_timeout_ms`) needs to know
//!   whether the client has sent anything yet. A peek before the handshake
//!   asked the kernel with a system call of its own; [`Socket`] notes the
//!   first byte the handshake reads ([`Heard`]).
//! - **The TLS 1.3 session ticket** is written by rustls as soon as the
//!   client's Finished is read, in a write of its own, right before the
//!   CONNACK. The client does not wait for tickets, so the socket holds that
//!   write back and sends it in the same `writev` as the next one (the
//!   CONNACK, a refusal, or close_notify): on loopback a write costs the
//!   server a system call and the receiving side's processing, about 2 % of
//!   the broker's CPU per connect (`docs/BENCHMARKS.md`, "CPU per
//!   connect").
//!
//! Only the one write that follows a good TLS 1.3 CertificateVerify is held,
//! and only during the handshake: the connection's verifier says when the
//! client has proved its key ([`ConnectionVerifier::proved_tls13`]), and in
//! TLS 1.3 all the server writes after that, until the handshake ends, is
//! its session tickets (or an alert for a bad Finished). A TLS 1.2 server
//! Finished, which the client waits for, or a resumed handshake (no
//! CertificateVerify) is never held. Whatever is held goes out with the
//! next write, a flush once the handshake is over, the shutdown, or
//! (best effort, without waiting) when the socket is dropped.
//!
//! The socket is closed when dropped, which sends the FIN; shutting it down
//! only writes what is held (see [`Socket::poll_shutdown`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::ConnectionVerifier;

/// Whether the client has sent a byte, shared with the listener, which
/// watches the first-byte deadline while the handshake owns the socket.
#[derive(Clone, Default)]
pub(crate) struct Heard(Arc<AtomicBool>);

impl Heard {
    pub(crate) fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The TCP stream under a connection's TLS.
pub(crate) struct Socket {
    tcp: TcpStream,
    /// Until the first byte is read.
    heard: Option<Heard>,
    /// The verifier to ask before each write, until a write is held or the
    /// handshake ends.
    watch: Option<Arc<ConnectionVerifier>>,
    /// Set by [`Socket::handshake_done`]: a flush writes what is held.
    established: bool,
    held: Vec<u8>,
}

impl Socket {
    pub(crate) fn new(tcp: TcpStream, verifier: Arc<ConnectionVerifier>, heard: Heard) -> Self {
        Socket {
            tcp,
            heard: Some(heard),
            watch: Some(verifier),
            established: false,
            held: Vec::new(),
        }
    }

    /// The handshake is over: nothing more is held (with session tickets
    /// off, the next write after a CertificateVerify is the CONNACK).
    pub(crate) fn handshake_done(&mut self) {
        self.watch = None;
        self.heard = None;
        self.established = true;
    }

    /// Writes what is held, alone. `Ready(Ok(()))` once there is nothing.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            if let Some(heard) = this.heard.take() {
                heard.0.store(true, Ordering::Relaxed);
            }
        }
        read
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.watch.as_ref().is_some_and(|v| v.proved_tls13()) {
            this.watch = None;
            for buf in bufs {
                this.held.extend_from_slice(buf);
            }
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        while !this.held.is_empty() {
            // What is held goes first, in the same system call.
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&this.held));
            slices.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let of_bufs = n - this.held.len();
            this.held = Vec::new();
            if of_bufs > 0 {
                return Poll::Ready(Ok(of_bufs));
            }
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.established {
            ready!(this.poll_write_held(cx))?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Writes what is held; the FIN is left to the close. The session drops
    /// its stream right after the TLS close_notify, and a `shutdown(2)`
    /// before that close would only cost a system call (most often failing:
    /// a client that sent DISCONNECT has usually closed already).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            // A handshake that failed after the client's CertificateVerify
            // (its alert), or a connection refused before it wrote anything.
            let _ = self.tcp.try_write(&self.held);
        }
    }
}
