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
//! Step 1's signature check is the dearest part of a handshake that is
//! not the handshake's own (one ECDSA verification, about a fifth of a
//! connect's CPU). A device reconnects with the certificate it had, so the
//! registry remembers, for each active device, the certificate whose chain
//! was last verified in full, as a keyed MAC over the CA's key and the
//! certificate's bytes ([`ChainVerified`], key random per process). The
//! same bytes under the same CA key carry the same signature, which
//! verified: such a handshake skips the signature check. Everything that
//! can change is still checked every time: the validity period, the CA's
//! and the device's status. A new certificate, another CA key, a status
//! change or a restart means a full verification again.
//!
//! One [`ConnectionVerifier`] is made per connection so that its verdict,
//! including the [`DeviceIdentity`] it established, can be read by that
//! connection after the handshake without verifying a second time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use aws_lc_rs::hmac;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::identity::{CertParseError, DeviceCert, DeviceIdentity};
use crate::registry::{CertStatus, ChainVerified, Registry};
use crate::serial::{CaSn, DeviceSn};

/// A device certificate that passed verification, and who it is.
#[derive(Debug, Clone)]
pub struct Verified {
    pub identity: DeviceIdentity,
    pub cert: DeviceCert,
    /// Set when the chain was verified in full this time: for the
    /// registry to remember once the device is admitted
    /// ([`Registry::remember_verified`]).
    pub remember: Option<ChainVerified>,
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

/// The shared part of verification: the registry, the algorithms and the
/// key of the verified-chain memo.
pub struct VerifierCore {
    registry: Registry,
    algorithms: WebPkiSupportedAlgorithms,
    /// Random per process: nobody can compute a [`ChainVerified`] for
    /// bytes of their choosing.
    memo_key: hmac::Key,
}

impl std::fmt::Debug for VerifierCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierCore")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl VerifierCore {
    pub fn new(registry: Registry, algorithms: WebPkiSupportedAlgorithms) -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        VerifierCore {
            registry,
            algorithms,
            memo_key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// What the registry remembers of `end_entity` verified under `anchor`:
    /// its bytes and everything of the anchor that verification used.
    fn chain_memo(&self, anchor: &TrustAnchor<'_>, end_entity: &[u8]) -> ChainVerified {
        let mut mac = hmac::Context::with_key(&self.memo_key);
        let constraints = anchor.name_constraints.as_deref().unwrap_or_default();
        for part in [
            &anchor.subject[..],
            &anchor.subject_public_key_info[..],
            constraints,
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.update(end_entity);
        let tag = mac.sign();
        let mut memo = [0u8; 16];
        memo.copy_from_slice(&tag.as_ref()[..16]);
        ChainVerified(memo)
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
        // Parsed for webpki only when a full verification is needed.
        let mut ee: Option<webpki::EndEntityCert<'_>> = None;
        let mut refusal = Refusal::UnknownCa;
        for candidate in candidates {
            let identity = DeviceIdentity {
                ca_sn: candidate.sn,
                device_sn: cert.device_sn,
            };
            let memo = self.chain_memo(&candidate.anchor, end_entity);
            let verdict = if self.registry.verified_before(&identity, &memo) {
                within_validity(&cert, now).map(|()| None)
            } else {
                let ee = match &mut ee {
                    Some(ee) => ee,
                    None => {
                        ee.insert(webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
                            Refusal::Malformed(CertParseError::Malformed(e.to_string()))
                        })?)
                    }
                };
                ee.verify_for_usage(
                    self.algorithms.all,
                    std::slice::from_ref(&*candidate.anchor),
                    &[],
                    now,
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                )
                .map(|_| Some(memo))
                .map_err(refusal_from_webpki)
            };
            match verdict {
                Ok(remember) => {
                    if candidate.status == CertStatus::Inactive {
                        return Err(Refusal::CaInactive(candidate.sn));
                    }
                    if self.registry.device_status(&identity) == Some(CertStatus::Inactive) {
                        return Err(Refusal::DeviceInactive(identity));
                    }
                    return Ok(Verified {
                        identity,
                        cert,
                        remember,
                    });
                }
                Err(e) => refusal = e,
            }
        }
        Err(refusal)
    }

    pub fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.algorithms
    }
}

/// The validity period, as webpki checks it (both ends inclusive, whole
/// seconds): all of a remembered certificate's chain that time can change.
fn within_validity(cert: &DeviceCert, now: UnixTime) -> Result<(), Refusal> {
    let now_ms = i64::try_from(now.as_secs())
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    if now_ms < cert.valid_begin_ms {
        Err(Refusal::NotValidYet)
    } else if now_ms > cert.valid_end_ms {
        Err(Refusal::Expired)
    } else {
        Ok(())
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
    /// The client proved its key in a TLS 1.3 CertificateVerify: what the
    /// server writes next in this handshake is only its session tickets
    /// (see `listener::socket`).
    proved_tls13: AtomicBool,
}

impl ConnectionVerifier {
    pub fn new(core: Arc<VerifierCore>) -> Self {
        ConnectionVerifier {
            core,
            verdict: OnceLock::new(),
            presented: OnceLock::new(),
            proved_tls13: AtomicBool::new(false),
        }
    }

    /// Whether the client's TLS 1.3 CertificateVerify was checked and good.
    pub fn proved_tls13(&self) -> bool {
        self.proved_tls13.load(Ordering::Acquire)
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
        let valid =
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.core.algorithms)?;
        self.proved_tls13.store(true, Ordering::Release);
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.core.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls_pki_types::pem::PemObject;

    use super::*;
    use crate::pki::{self, CaSigner, KeyKind};

    struct Setup {
        _dir: tempfile::TempDir,
        registry: Registry,
        core: VerifierCore,
        ca: CaSigner,
        ca_sn: CaSn,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (registry, ca_sn, issued) = crate::registry::with_one_ca(dir.path(), "fleet CA").await;
        let ca = CaSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        let core = VerifierCore::new(
            registry.clone(),
            crate::tls::provider().signature_verification_algorithms,
        );
        Setup {
            _dir: dir,
            registry,
            core,
            ca,
            ca_sn,
        }
    }

    fn der(signer: &CaSigner, name: &str) -> CertificateDer<'static> {
        let issued = signer.issue_device(name, 30, KeyKind::P256).unwrap();
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
    }

    /// Verifies and admits like a first connection does: the chain
    /// verified in full is remembered once the device is registered.
    async fn admit(s: &Setup, cert: &CertificateDer<'_>) -> DeviceIdentity {
        let verified = s.core.verify(cert, UnixTime::now()).unwrap();
        let memo = verified.remember.expect("verified in full");
        s.registry
            .admit_device(&verified.identity, &verified.cert)
            .await
            .unwrap();
        s.registry.remember_verified(&verified.identity, memo);
        verified.identity
    }

    fn at(secs_from_now: i64) -> UnixTime {
        let now = UnixTime::now().as_secs() as i64;
        UnixTime::since_unix_epoch(Duration::from_secs((now + secs_from_now) as u64))
    }

    #[tokio::test]
    async fn a_remembered_certificate_skips_the_signature_check_and_nothing_else() {
        let s = setup().await;
        let cert = der(&s.ca, "device-1");
        // Unknown device: nothing to remember it in, verified in full again.
        assert!(
            s.core
                .verify(&cert, UnixTime::now())
                .unwrap()
                .remember
                .is_some()
        );
        assert!(
            s.core
                .verify(&cert, UnixTime::now())
                .unwrap()
                .remember
                .is_some()
        );
        let id = admit(&s, &cert).await;
        assert_eq!(id.ca_sn, s.ca_sn);

        let again = s.core.verify(&cert, UnixTime::now()).unwrap();
        assert!(again.remember.is_none(), "the chain was remembered");
        assert_eq!(again.identity, id);

        // The validity period, still checked (device certificates here run
        // from an hour ago for 30 days).
        assert_eq!(
            s.core.verify(&cert, at(31 * 86_400)).unwrap_err(),
            Refusal::Expired
        );
        assert_eq!(
            s.core.verify(&cert, at(-2 * 3600)).unwrap_err(),
            Refusal::NotValidYet
        );

        // The device's status: an inactivation refuses it, and a status
        // change forgets the chain.
        s.registry
            .set_device_status(&id, CertStatus::Inactive)
            .await
            .unwrap();
        assert_eq!(
            s.core.verify(&cert, UnixTime::now()).unwrap_err(),
            Refusal::DeviceInactive(id)
        );
        s.registry
            .set_device_status(&id, CertStatus::Active)
            .await
            .unwrap();
        let verified = s.core.verify(&cert, UnixTime::now()).unwrap();
        assert!(
            verified.remember.is_some(),
            "verified in full after a change"
        );
        s.registry
            .remember_verified(&id, verified.remember.unwrap());

        // The CA's status.
        s.registry
            .set_ca_status(&s.ca_sn, CertStatus::Inactive)
            .await
            .unwrap();
        assert_eq!(
            s.core.verify(&cert, UnixTime::now()).unwrap_err(),
            Refusal::CaInactive(s.ca_sn)
        );
    }

    /// Another certificate with the remembered one's serial and issuer
    /// name gets no credit for it: one whose bytes were altered, and one
    /// signed by another key under the registered CA's name.
    #[tokio::test]
    async fn only_the_very_bytes_verified_under_the_ca_key_are_remembered() {
        let s = setup().await;
        let cert = der(&s.ca, "device-1");
        let id = admit(&s, &cert).await;
        assert!(
            s.core
                .verify(&cert, UnixTime::now())
                .unwrap()
                .remember
                .is_none()
        );

        // The last byte is the signature's: same serial, same issuer.
        let mut altered = cert.to_vec();
        *altered.last_mut().unwrap() ^= 0x01;
        let altered = CertificateDer::from(altered);
        assert_eq!(DeviceCert::parse(&altered).unwrap().device_sn, id.device_sn);
        assert_eq!(
            s.core.verify(&altered, UnixTime::now()).unwrap_err(),
            Refusal::UnknownCa
        );

        // A CA of the same name and another key.
        let shadow_issued = pki::create_ca("fleet CA", 30, KeyKind::P256).unwrap();
        let shadow = CaSigner::from_pem(&shadow_issued.cert_pem, &shadow_issued.key_pem).unwrap();
        let forged = der(&shadow, "device-1");
        assert_eq!(
            s.core.verify(&forged, UnixTime::now()).unwrap_err(),
            Refusal::UnknownCa
        );
        // The genuine one is still remembered.
        assert!(
            s.core
                .verify(&cert, UnixTime::now())
                .unwrap()
                .remember
                .is_none()
        );
    }

    /// Two verifiers (two processes) do not share memos: the key is random.
    #[tokio::test]
    async fn another_process_verifies_in_full() {
        let s = setup().await;
        let cert = der(&s.ca, "device-1");
        admit(&s, &cert).await;
        let other = VerifierCore::new(
            s.registry.clone(),
            crate::tls::provider().signature_verification_algorithms,
        );
        assert!(
            other
                .verify(&cert, UnixTime::now())
                .unwrap()
                .remember
                .is_some()
        );
    }
}
