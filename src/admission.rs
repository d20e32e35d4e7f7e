//! Admission: the step between a completed TLS handshake and a session.
//!
//! The verifier judged the certificate during the handshake, but the answer
//! may be stale by the time the handshake ends (an inactivation can land in
//! between), and a resumed TLS session skips the verifier altogether. So
//! every connection, after its handshake:
//!
//! 1. takes its identity from the verifier's verdict, or, on resumption,
//!    verifies the stored peer certificate now;
//! 2. enters the session table (from here an inactivation kills it);
//! 3. re-reads the registry: CA active, device not inactive; an unknown
//!    device is registered here, active, and durably, before it gets any
//!    further (auto-registration); and, on a shared registry, checks that
//!    this node is not fenced (a node without its lease cannot know of the
//!    latest inactivations);
//!
//! and only then becomes a session. Step 2 before step 3 is what makes
//! InactivateDeviceCertificate exact (see `Registry::set_device_status`).

use rustls::server::ServerConnection;
use rustls_pki_types::UnixTime;
use tracing::info;

use crate::Context;
use crate::registry::{Admission, CertStatus};
use crate::session::SessionGuard;
use crate::tls::{ConnectionVerifier, Refusal, Verified};

/// A refused admission. The session guard, when there is one, must be
/// dropped only after the socket is closed, so that nobody waiting for this
/// device's sessions to close is told "closed" too early.
pub(crate) struct Refused {
    pub refusal: Refusal,
    pub guard: Option<SessionGuard>,
}

/// Admits a connection whose handshake completed, or says why not.
pub(crate) async fn admit(
    ctx: &Context,
    tls: &ServerConnection,
    verifier: &ConnectionVerifier,
) -> Result<(Verified, SessionGuard), Refused> {
    let refused = |refusal| Refused {
        refusal,
        guard: None,
    };
    let verified = match verifier.verdict() {
        Some(verdict) => verdict.clone().map_err(refused)?,
        None => {
            // Resumed session: verify the certificate it was made with.
            let chain = tls
                .peer_certificates()
                .ok_or(refused(Refusal::NoCertificate))?;
            let end_entity = chain.first().ok_or(refused(Refusal::NoCertificate))?;
            verifier
                .core()
                .verify(end_entity, UnixTime::now())
                .map_err(refused)?
        }
    };
    let identity = verified.identity;
    let mut guard = ctx.sessions.register(identity);
    // The session ends when NotAfter (whole seconds) of the certificate or
    // its CA's begins (see `SessionGuard::expires_at`); a handshake in that
    // last second is refused too, so that an ended session cannot come
    // straight back.
    let expires_ms = ctx
        .registry
        .ca_valid_end_ms(&identity.ca_sn)
        .map_or(verified.cert.valid_end_ms, |ca| {
            ca.min(verified.cert.valid_end_ms)
        });
    if expires_ms <= crate::store::sqlite::now_ms() {
        return Err(Refused {
            refusal: Refusal::Expired,
            guard: Some(guard),
        });
    }

    let refusal = match ctx.registry.ca_status(&identity.ca_sn) {
        Some(CertStatus::Active) => {
            match ctx.registry.admit_device(&identity, &verified.cert).await {
                Ok(Admission::Registered) => {
                    ctx.metrics.auto_registered();
                    info!(device = %identity, name = %verified.cert.common_name, "device auto-registered");
                    let cert = &verified.cert;
                    ctx.events.emit(crate::events::Event::Registered {
                        device: identity,
                        common_name: cert.common_name.clone(),
                        subject_o: cert.subject_o.clone(),
                        subject_ou: cert.subject_ou.clone(),
                        valid_begin_ms: cert.valid_begin_ms,
                        valid_end_ms: cert.valid_end_ms,
                    });
                    None
                }
                Ok(Admission::Known(CertStatus::Active)) => None,
                Ok(Admission::Known(CertStatus::Inactive)) => {
                    Some(Refusal::DeviceInactive(identity))
                }
                // Not durably registered (the store failed, or the CA was
                // deleted meanwhile): not admitted.
                Err(e) => Some(Refusal::Unregistered(e.to_string())),
            }
        }
        Some(CertStatus::Inactive) => Some(Refusal::CaInactive(identity.ca_sn)),
        None => Some(Refusal::UnknownCa),
    };
    // After the session entered the table: a fence raised from here on
    // drops it.
    let refusal = refusal.or_else(|| ctx.fence.refusal().map(Refusal::NodeFenced));
    match refusal {
        None => {
            if let Some(memo) = verified.remember {
                ctx.registry.remember_verified(&identity, memo);
            }
            guard.expires_at(expires_ms);
            Ok((verified, guard))
        }
        Some(refusal) => Err(Refused {
            refusal,
            guard: Some(guard),
        }),
    }
}
