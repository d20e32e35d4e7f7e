//! Who a connection is: the device identity established by mutual TLS.
//!
//! A device is named by the pair `(CaSn, DeviceSn)`: device serials are only
//! unique per issuing CA. The identity is computed once, when the handshake
//! is verified, and then travels with the connection as a value of type
//! [`DeviceIdentity`]; nothing downstream looks a string up again.
//!
//! [`DeviceCert`] is the part of a presented certificate that certmq reads:
//! enough to find the issuing CA, name the device, and auto-register it.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::serial::{CaSn, DeviceSn, Serial, SerialError};

/// The identity of a device certificate: its issuing CA and its own serial.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIdentity {
    pub ca_sn: CaSn,
    pub device_sn: DeviceSn,
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaSn={} DeviceSn={}", self.ca_sn, self.device_sn)
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceIdentity({self})")
    }
}

/// Why a presented certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertParseError {
    #[error("the certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("the certificate's serial number is unusable: {0}")]
    Serial(#[from] SerialError),
}

/// What certmq reads from a device certificate.
#[derive(Clone)]
pub struct DeviceCert {
    /// The certificate's own serial.
    pub device_sn: DeviceSn,
    /// The raw DER of the issuer name, compared byte for byte with the
    /// subjects of registered CAs (RFC 5280 name chaining).
    pub issuer_raw: Vec<u8>,
    /// The subject common name, the DeviceName of auto-registration.
    pub common_name: String,
    /// The first subject organization and organizational unit, empty when
    /// absent (`${Subject.O}`, `${Subject.OU}` in authorization policies).
    pub subject_o: String,
    pub subject_ou: String,
    /// notBefore and notAfter, Unix milliseconds.
    pub valid_begin_ms: i64,
    pub valid_end_ms: i64,
    /// The DER itself, kept for DeviceContent.
    pub der: Arc<[u8]>,
    /// False when a keyUsage extension exists without digitalSignature: the
    /// key may not sign the TLS handshake.
    pub digital_signature_allowed: bool,
    /// basicConstraints CA:TRUE: a CA certificate, not a device's.
    pub is_ca: bool,
    /// The certificate's signature algorithm (dotted OID).
    pub signature_algorithm: String,
}

impl fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCert")
            .field("device_sn", &self.device_sn)
            .field("common_name", &self.common_name)
            .finish_non_exhaustive()
    }
}

impl DeviceCert {
    /// Reads a certificate. This does not verify anything; see
    /// `tls::verifier` for that.
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, CertParseError> {
        let (rest, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| CertParseError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertParseError::Malformed(
                "trailing bytes after the certificate".into(),
            ));
        }
        let device_sn = DeviceSn(Serial::from_der_content(cert.raw_serial())?);
        let digital_signature_allowed = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.digital_signature(),
            Ok(None) => true,
            Err(e) => return Err(CertParseError::Malformed(format!("keyUsage: {e}"))),
        };
        Ok(DeviceCert {
            digital_signature_allowed,
            is_ca: cert.is_ca(),
            signature_algorithm: cert.signature_algorithm.algorithm.to_id_string(),
            device_sn,
            issuer_raw: cert.issuer().as_raw().to_vec(),
            common_name: common_name(&cert),
            subject_o: first_str(cert.subject().iter_organization()),
            subject_ou: first_str(cert.subject().iter_organizational_unit()),
            valid_begin_ms: cert.validity().not_before.timestamp().saturating_mul(1000),
            valid_end_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
            der: Arc::from(der.as_ref()),
        })
    }

    /// The PEM text of the certificate (DeviceContent in the API).
    pub fn pem(&self) -> String {
        crate::pki::der_to_pem("CERTIFICATE", &self.der)
    }
}

/// The first of some subject attributes as text, or an empty string.
fn first_str<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> String {
    values
        .next()
        .and_then(|v| v.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The first subject CN, or an empty string when the subject has none.
pub(crate) fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}
