//! The registry-backed client certificate verifier.
//!
//! rustls asks a [`ClientCertVerifier`] to judge the certificate a client
//! presents. certmq's answer comes from the [`Registry`], read live on every
//! handshake, so CAs can be registered, activated and inactivated while the
//! broker runs without rebuilding anything:
//!
//! 1. the certificate's issuer names a registered CA (subject match), and the
//!    chain verifies to that CA's key (webpki: signature, validity period,
//!    clientAuth where the certificate has an EKU, not itself a CA);
//! 2. that CA is active;
//! 3. the device certificate is not inactive (an unknown one is fine: it is
//!    registered after the handshake, in `admission`).
//!
//! One [`ConnectionVerifier`] is made per connection so that its verdict,
//! including the [`DeviceIdentity`] it established, can be read by that
//! connection after the handshake without verifying a second time.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::identity::{CertParseError, DeviceCert, DeviceIdentity};
use crate::registry::{CertStatus, Registry};
use crate::serial::{CaSn, DeviceSn};

/// A device certificate that passed verification, and who it is.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: DeviceIdentity,
    pub cert: DeviceCert,
}

/// Why a client certificate was refused. Logged once per refused handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("unreadable certificate: {0}")]
    Malformed(#[from] CertParseError),
    #[error(
        "the issuer is not a registered CA, or the signature does not verify with any registered CA's key"
    )]
    UnknownCa,
    #[error("the issuing CA {0} is inactive")]
    CaInactive(CaSn),
    #[error("the device certificate {0} is inactive")]
    DeviceInactive(DeviceIdentity),
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotValidYet,
    #[error("the certificate's extended key usage does not include clientAuth")]
    WrongUsage,
    #[error("a CA certificate was presented as a device certificate")]
    CaAsDevice,
    #[error("the certificate uses an unsupported signature algorithm")]
    UnsupportedAlgorithm,
    #[error("the certificate chain is invalid: {0}")]
    Invalid(String),
    #[error("the device could not be registered: {0}")]
    Unregistered(String),
    #[error("this node admits no connections now ({0}); connect to another node")]
    NodeFenced(String),
    #[error("the client sent {0} certificates; at most {MAX_CHAIN} are accepted")]
    ChainTooLong(usize),
    #[error("the certificate is {0} bytes; at most {MAX_CERT_BYTES} are accepted")]
    TooLarge(usize),
}

impl Refusal {
    /// The `reason` label of `certmq_handshakes_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no_certificate",
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownCa => "unknown_ca",
            Refusal::CaInactive(_) => "inactive_ca",
            Refusal::DeviceInactive(_) => "inactive_device",
            Refusal::Expired => "expired",
            Refusal::NotValidYet => "not_yet_valid",
            Refusal::WrongUsage => "wrong_usage",
            Refusal::CaAsDevice => "ca_as_device",
            Refusal::UnsupportedAlgorithm => "unsupported_algorithm",
            Refusal::Invalid(_) => "invalid_chain",
            Refusal::Unregistered(_) => "unregistered",
            Refusal::NodeFenced(_) => "node_fenced",
            Refusal::ChainTooLong(_) => "chain_too_long",
            Refusal::TooLarge(_) => "too_large",
        }
    }
}

/// Most certificates a client may present (its own and intermediates);
/// certmq only needs the first, the rest is parsed by nobody.
pub const MAX_CHAIN: usize = 4;

/// Signature algorithms a device certificate may be signed with (those the
/// crypto provider verifies): ECDSA with SHA-256/384/512, RSA PKCS#1 v1.5
/// with SHA-256/384/512, RSA-PSS, Ed25519.
const SIGNATURE_ALGORITHMS: &[&str] = &[
    "1.2.840.10045.4.3.2",
    "1.2.840.10045.4.3.3",
    "1.2.840.10045.4.3.4",
    "1.2.840.113549.1.1.11",
    "1.2.840.113549.1.1.12",
    "1.2.840.113549.1.1.13",
    "1.2.840.113549.1.1.10",
    "1.3.101.112",
];

/// Largest device certificate accepted, in DER bytes. Real device
/// certificates are well under 2 KiB; huge extensions only cost parsing.
pub const MAX_CERT_BYTES: usize = 16 * 1024;

impl Refusal {
    /// The TLS alert family rustls sends for this refusal.
    fn to_rustls(&self) -> rustls::Error {
        let e = match self {
            Refusal::NoCertificate => return rustls::Error::NoCertificatesPresented,
            Refusal::Malformed(_) => CertificateError::BadEncoding,
            Refusal::UnknownCa => CertificateError::UnknownIssuer,
            Refusal::CaInactive(_) | Refusal::DeviceInactive(_) => CertificateError::Revoked,
            Refusal::Expired => CertificateError::Expired,
            Refusal::NotValidYet => CertificateError::NotValidYet,
            Refusal::WrongUsage | Refusal::CaAsDevice => CertificateError::InvalidPurpose,
            Refusal::UnsupportedAlgorithm => CertificateError::BadSignature,
            Refusal::Invalid(_) | Refusal::Unregistered(_) | Refusal::NodeFenced(_) => {
                CertificateError::ApplicationVerificationFailure
            }
            Refusal::ChainTooLong(_) | Refusal::TooLarge(_) => CertificateError::BadEncoding,
        };
        rustls::Error::InvalidCertificate(e)
    }
}

/// The shared part of verification: the registry and the algorithms.
#[derive(Debug)]
pub struct VerifierCore {
    registry: Registry,
    algorithms: WebPkiSupportedAlgorithms,
}

impl VerifierCore {
    pub fn new(registry: Registry, algorithms: WebPkiSupportedAlgorithms) -> Self {
        VerifierCore {
            registry,
            algorithms,
        }
    }

    /// Verifies a device certificate against the registry at time `now`.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<Verified, Refusal> {
        if end_entity.len() > MAX_CERT_BYTES {
            return Err(Refusal::TooLarge(end_entity.len()));
        }
        let cert = DeviceCert::parse(end_entity)?;
        // Checks webpki makes too, made first so the refusal says which.
        if cert.is_ca {
            return Err(Refusal::CaAsDevice);
        }
        if !cert.digital_signature_allowed {
            return Err(Refusal::WrongUsage);
        }
        if !SIGNATURE_ALGORITHMS.contains(&cert.signature_algorithm.as_str()) {
            return Err(Refusal::UnsupportedAlgorithm);
        }
        let candidates = self.registry.issuers_of(&cert.issuer_raw);
        if candidates.is_empty() {
            return Err(Refusal::UnknownCa);
        }
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| Refusal::Malformed(CertParseError::Malformed(e.to_string())))?;
        let mut refusal = Refusal::UnknownCa;
        for candidate in candidates {
            let verdict = ee.verify_for_usage(
                self.algorithms.all,
                std::slice::from_ref(&*candidate.anchor),
                &[],
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            );
            match verdict {
                Ok(_) => {
                    if candidate.status == CertStatus::Inactive {
                        return Err(Refusal::CaInactive(candidate.sn));
                    }
                    let identity = DeviceIdentity {
                        ca_sn: candidate.sn,
                        device_sn: cert.device_sn,
                    };
                    if self.registry.device_status(&identity) == Some(CertStatus::Inactive) {
                        return Err(Refusal::DeviceInactive(identity));
                    }
                    return Ok(Verified { identity, cert });
                }
                Err(e) => refusal = refusal_from_webpki(e),
            }
        }
        Err(refusal)
    }

    pub fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.algorithms
    }
}

fn refusal_from_webpki(e: webpki::Error) -> Refusal {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } => Refusal::Expired,
        W::CertNotValidYet { .. } => Refusal::NotValidYet,
        W::RequiredEkuNotFoundContext(_) => Refusal::WrongUsage,
        W::CaUsedAsEndEntity => Refusal::CaAsDevice,
        W::UnknownIssuer | W::InvalidSignatureForPublicKey => Refusal::UnknownCa,
        W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => Refusal::UnsupportedAlgorithm,
        other => Refusal::Invalid(other.to_string()),
    }
}

/// The verifier of one connection: shared core, private verdict.
#[derive(Debug)]
pub struct ConnectionVerifier {
    core: Arc<VerifierCore>,
    verdict: OnceLock<Result<Verified, Refusal>>,
    /// The serial of a refused certificate, for the log.
    presented: OnceLock<DeviceSn>,
}

impl ConnectionVerifier {
    pub fn new(core: Arc<VerifierCore>) -> Self {
        ConnectionVerifier {
            core,
            verdict: OnceLock::new(),
            presented: OnceLock::new(),
        }
    }

    /// The verdict of this connection's handshake, if rustls asked for one.
    /// A resumed TLS session has none: rustls skips the verifier on
    /// resumption, so the caller must verify the stored certificate itself.
    pub fn verdict(&self) -> Option<&Result<Verified, Refusal>> {
        self.verdict.get()
    }

    /// The serial of the certificate presented, when it was refused and
    /// readable.
    pub fn presented(&self) -> Option<DeviceSn> {
        match self.verdict.get() {
            Some(Ok(v)) => Some(v.cert.device_sn),
            _ => self.presented.get().copied(),
        }
    }

    pub fn core(&self) -> &Arc<VerifierCore> {
        &self.core
    }
}

impl ClientCertVerifier for ConnectionVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names are sent in the CertificateRequest: the set of registered
    /// CAs changes at run time, and clients (OpenSSL, rustls) send their
    /// certificate when the list is empty.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = if intermediates.len() + 1 > MAX_CHAIN {
            Err(Refusal::ChainTooLong(intermediates.len() + 1))
        } else {
            self.core.verify(end_entity, now)
        };
        let result = match &verdict {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(refusal) => {
                if end_entity.len() <= MAX_CERT_BYTES {
                    if let Ok(cert) = DeviceCert::parse(end_entity) {
                        let _ = self.presented.set(cert.device_sn);
                    }
                }
                Err(refusal.to_rustls())
            }
        };
        // A handshake calls this at most once; a second value is ignored.
        let _ = self.verdict.set(verdict);
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.core.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.core.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algorithms.supported_schemes()
    }
}
