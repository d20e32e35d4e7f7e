//! Certificate revocation lists: reading one (PEM or DER) and checking
//! that a registered CA signed it and that it is current, before any
//! serial in it takes effect; putting it in force (`import`); fetching it
//! on a schedule (`refresh`).

pub mod import;
pub mod refresh;

use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::registry::Registry;
use crate::serial::{CaSn, DeviceSn, Serial};

/// Largest CRL accepted, in bytes (a million serials fit in ~40 MB; a
/// fleet's CRL is far smaller).
pub const MAX_CRL_BYTES: usize = 16 * 1024 * 1024;

/// Why a CRL was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    #[error("the CRL is {0} bytes; at most {MAX_CRL_BYTES} are accepted")]
    TooLarge(usize),
    #[error("not a CRL: {0} (expected PEM `-----BEGIN X509 CRL-----` or DER)")]
    Unreadable(String),
    #[error(
        "the CRL's issuer is not a registered CA certificate ({0}); register the CA that signs it first"
    )]
    UnknownIssuer(String),
    #[error(
        "the CRL's signature does not verify with the key of any registered CA named {0}: it was not signed by that CA"
    )]
    BadSignature(String),
    #[error(
        "the CRL's issuer ({issuer}) is not the CA {wanted} it is configured for (or that CA is not registered)"
    )]
    OtherIssuer { issuer: String, wanted: CaSn },
    #[error("the CRL is not valid yet (thisUpdate {0})")]
    NotYetValid(String),
    #[error("the CRL has expired (nextUpdate {0}); import a current one")]
    Expired(String),
    #[error("the CRL lists a serial that is not a valid certificate serial: {0}")]
    BadSerial(String),
}

/// A CRL that a registered CA signed and that is current.
#[derive(Debug, Clone)]
pub struct VerifiedCrl {
    /// The CA that signed it.
    pub ca_sn: CaSn,
    /// The serials it lists, in its order, without repeats.
    pub serials: Vec<DeviceSn>,
}

/// The DER of a PEM or DER CRL.
fn der_of(content: &[u8]) -> Result<Vec<u8>, CrlError> {
    let trimmed = content.trim_ascii_start();
    if trimmed.starts_with(b"-----BEGIN") {
        let parsed = pem::parse(trimmed).map_err(|e| CrlError::Unreadable(e.to_string()))?;
        if parsed.tag() != "X509 CRL" {
            return Err(CrlError::Unreadable(format!(
                "a PEM `{}` block",
                parsed.tag().chars().take(40).collect::<String>()
            )));
        }
        return Ok(parsed.into_contents());
    }
    Ok(content.to_vec())
}

/// Reads `content` and checks it against the registry's CAs at `now`.
pub fn verify(content: &[u8], registry: &Registry, now: UnixTime) -> Result<VerifiedCrl, CrlError> {
    verify_signed_by(content, registry, now, None)
}

/// [`verify`], and when `ca_sn` is given, the CRL must be signed by that
/// registered CA (a CRL source configured for one CA takes no other's).
pub fn verify_signed_by(
    content: &[u8],
    registry: &Registry,
    now: UnixTime,
    ca_sn: Option<&CaSn>,
) -> Result<VerifiedCrl, CrlError> {
    if content.len() > MAX_CRL_BYTES {
        return Err(CrlError::TooLarge(content.len()));
    }
    let der = der_of(content)?;
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| CrlError::Unreadable(e.to_string()))?;
    let issuer = crl.issuer().to_string();
    let mut candidates = registry.issuers_of(crl.issuer().as_raw());
    if let Some(wanted) = ca_sn {
        candidates.retain(|candidate| candidate.sn == *wanted);
        if candidates.is_empty() {
            return Err(CrlError::OtherIssuer {
                issuer,
                wanted: *wanted,
            });
        }
    }
    if candidates.is_empty() {
        return Err(CrlError::UnknownIssuer(issuer));
    }
    let signer = candidates.iter().find(|candidate| {
        let Some(record) = registry.ca(&candidate.sn) else {
            return false;
        };
        let Ok(ca_der) = pem::parse(record.pem.as_bytes()) else {
            return false;
        };
        let Ok((_, ca)) = X509Certificate::from_der(ca_der.contents()) else {
            return false;
        };
        crl.verify_signature(ca.public_key()).is_ok()
    });
    let Some(signer) = signer else {
        return Err(CrlError::BadSignature(issuer));
    };
    let now_s = now.as_secs() as i64;
    let this_update = crl.last_update();
    if this_update.timestamp() > now_s {
        return Err(CrlError::NotYetValid(this_update.to_string()));
    }
    if let Some(next) = crl.next_update()
        && next.timestamp() < now_s
    {
        return Err(CrlError::Expired(next.to_string()));
    }
    let mut serials = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for revoked in crl.iter_revoked_certificates() {
        let serial = Serial::from_der_content(revoked.raw_serial())
            .map_err(|e| CrlError::BadSerial(e.to_string()))?;
        let sn = DeviceSn(serial);
        if seen.insert(sn) {
            serials.push(sn);
        }
    }
    Ok(VerifiedCrl {
        ca_sn: signer.sn,
        serials,
    })
}
