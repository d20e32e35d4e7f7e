//! Counters of what the broker did, read by tests and operators (the
//! Prometheus exporter will publish them).

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters; relaxed atomics, read for reporting only.
#[derive(Debug, Default)]
pub struct Stats {
    sessions_started: AtomicU64,
    handshakes_refused: AtomicU64,
    refused_after_handshake: AtomicU64,
    resumptions_refused: AtomicU64,
}

impl Stats {
    /// Sessions that got CONNACK.
    pub fn sessions_started(&self) -> u64 {
        self.sessions_started.load(Ordering::Relaxed)
    }

    /// Handshakes the verifier refused.
    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Connections whose certificate the verifier accepted during the
    /// handshake, refused by the re-check right after it: the certificate
    /// lost its access while the handshake was in flight.
    pub fn refused_after_handshake(&self) -> u64 {
        self.refused_after_handshake.load(Ordering::Relaxed)
    }

    /// Resumed TLS sessions (no verifier call) refused by the re-check.
    pub fn resumptions_refused(&self) -> u64 {
        self.resumptions_refused.load(Ordering::Relaxed)
    }

    pub(crate) fn session_started(&self) {
        self.sessions_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn admission_refused(&self, resumed: bool) {
        let counter = if resumed {
            &self.resumptions_refused
        } else {
            &self.refused_after_handshake
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
