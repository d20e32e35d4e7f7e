//! Reading and checking a CA certificate before it is registered.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::common_name;
use crate::serial::{CaSn, Serial, SerialError};

/// Why a certificate cannot be registered as a CA.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaCertError {
    #[error("the CA certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("the CA certificate's serial number is unusable: {0}")]
    Serial(#[from] SerialError),
    #[error(
        "the certificate is not a CA: it lacks basicConstraints CA:TRUE (issue it with `certmq pki create-ca`)"
    )]
    NotACa,
    #[error("the CA certificate is not yet valid (notBefore is {0} ms since the epoch)")]
    NotYetValid(i64),
    #[error("the CA certificate has expired (notAfter was {0} ms since the epoch)")]
    Expired(i64),
    #[error("the CA certificate cannot serve as a trust anchor: {0}")]
    Anchor(String),
}

/// A parsed, checked CA certificate, ready to be registered.
#[derive(Clone)]
pub struct CaCert {
    pub sn: CaSn,
    /// Subject CN, the default CaName.
    pub common_name: String,
    /// The raw DER of the subject name; device certificates name it as issuer.
    pub subject_raw: Vec<u8>,
    pub valid_begin_ms: i64,
    pub valid_end_ms: i64,
    pub der: CertificateDer<'static>,
    pub anchor: Arc<TrustAnchor<'static>>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("sn", &self.sn)
            .field("common_name", &self.common_name)
            .finish_non_exhaustive()
    }
}

impl CaCert {
    /// Reads a CA certificate the registry stored (checked when it was
    /// registered; it may have expired since, which the verifier handles).
    pub fn from_stored(pem: &str) -> Result<Self, CaCertError> {
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CaCertError::Malformed(e.to_string()))?;
        Self::read(der, None)
    }

    /// Parses a CA certificate and checks that it is a CA and valid at `now`.
    pub fn parse(der: CertificateDer<'static>, now: UnixTime) -> Result<Self, CaCertError> {
        Self::read(der, Some(now))
    }

    fn read(der: CertificateDer<'static>, now: Option<UnixTime>) -> Result<Self, CaCertError> {
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CaCertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CaCertError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(CaCertError::NotACa);
        }
        let valid_begin_ms = cert.validity().not_before.timestamp().saturating_mul(1000);
        let valid_end_ms = cert.validity().not_after.timestamp().saturating_mul(1000);
        if let Some(now) = now {
            let now_ms = i64::try_from(now.as_secs())
                .unwrap_or(i64::MAX)
                .saturating_mul(1000);
            if now_ms < valid_begin_ms {
                return Err(CaCertError::NotYetValid(valid_begin_ms));
            }
            if now_ms > valid_end_ms {
                return Err(CaCertError::Expired(valid_end_ms));
            }
        }
        let sn = CaSn(Serial::from_der_content(cert.raw_serial())?);
        let common_name = common_name(&cert);
        let subject_raw = cert.subject().as_raw().to_vec();
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| CaCertError::Anchor(e.to_string()))?
            .to_owned();
        Ok(CaCert {
            sn,
            common_name,
            subject_raw,
            valid_begin_ms,
            valid_end_ms,
            der,
            anchor: Arc::new(anchor),
        })
    }

    /// The PEM text of the certificate (CaContent in the API).
    pub fn pem(&self) -> String {
        crate::pki::der_to_pem("CERTIFICATE", &self.der)
    }
}
