//! Certificates an operator needs on day one, made with rcgen: CAs, device
//! certificates, server certificates, the verification certificate that CA
//! registration asks for, and the development PKI of a first start.
//!
//! Nothing here is on the connection path; the broker only reads PEM files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not usable: {reason}")]
    BadInput { path: PathBuf, reason: String },
    #[error("invalid argument: {0}")]
    Argument(String),
}

/// The key algorithm of a generated certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyKind {
    /// ECDSA on P-256 with SHA-256 (the default: small and fast)
    #[default]
    P256,
    /// ECDSA on P-384 with SHA-384
    P384,
    /// Ed25519
    Ed25519,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256
    Rsa2048,
}

impl KeyKind {
    fn generate(self) -> Result<KeyPair, PkiError> {
        let alg = match self {
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
            KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        Ok(KeyPair::generate_for(alg)?)
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<stem>.pem` and `<stem>.key` (the key with mode 0600).
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_file(cert_path, self.cert_pem.as_bytes(), 0o644)?;
        write_file(key_path, self.key_pem.as_bytes(), 0o600)
    }
}

/// A CA able to sign: its certificate and key.
pub struct CaSigner {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CaSigner {
    /// Loads a CA from its PEM certificate and PEM (PKCS#8) key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            PkiError::BadInput { reason, .. } => PkiError::BadInput {
                path: cert_path.to_path_buf(),
                reason: format!("{reason} (key file {})", key_path.display()),
            },
            other => other,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadInput {
            path: PathBuf::new(),
            reason: format!("the CA key is not a PEM PKCS#8 private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| PkiError::BadInput {
            path: PathBuf::new(),
            reason: format!("the CA certificate is not a PEM certificate: {e}"),
        })?;
        Ok(CaSigner {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a device certificate: subject CN, clientAuth usage.
    pub fn issue_device(
        &self,
        common_name: &str,
        days: u32,
        key: KeyKind,
    ) -> Result<Issued, PkiError> {
        let mut params = leaf_params(common_name, days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, key)
    }

    /// Issues a device certificate that expires at `not_after` (for
    /// rotation drills and tests of expiry).
    pub fn issue_device_until(
        &self,
        common_name: &str,
        not_after: OffsetDateTime,
        key: KeyKind,
    ) -> Result<Issued, PkiError> {
        let mut params = leaf_params(common_name, 1)?;
        if not_after <= params.not_before {
            return Err(PkiError::Argument(
                "the certificate would expire before it is valid".into(),
            ));
        }
        params.not_after = not_after;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, key)
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(
        &self,
        names: &[String],
        days: u32,
        key: KeyKind,
    ) -> Result<Issued, PkiError> {
        let first = names.first().ok_or_else(|| {
            PkiError::Argument("a server certificate needs at least one name".into())
        })?;
        let mut params = leaf_params(first, days)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        self.sign(params, key)
    }

    /// Issues the verification certificate of CA registration: a leaf whose
    /// subject CN is the instance's registration code, signed by this CA's
    /// key, which proves the registrant holds that key.
    pub fn issue_verification(
        &self,
        registration_code: &str,
        key: KeyKind,
    ) -> Result<Issued, PkiError> {
        if registration_code.trim().is_empty() {
            return Err(PkiError::Argument(
                "the registration code is empty (get it with the GetRegisterCode admin call)"
                    .into(),
            ));
        }
        let params = leaf_params(registration_code.trim(), 30)?;
        self.sign(params, key)
    }

    fn sign(&self, params: CertificateParams, key: KeyKind) -> Result<Issued, PkiError> {
        let key_pair = key.generate()?;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key_pair.serialize_pem(),
        })
    }
}

/// Creates a self-signed CA able to issue device certificates.
pub fn create_ca(common_name: &str, days: u32, key: KeyKind) -> Result<Issued, PkiError> {
    let params = base_params(common_name, days)?;
    self_signed_ca(params, key)
}

/// Creates a self-signed CA that expires at `not_after` (for drills and
/// tests of CA expiry).
pub fn create_ca_until(
    common_name: &str,
    not_after: OffsetDateTime,
    key: KeyKind,
) -> Result<Issued, PkiError> {
    let mut params = base_params(common_name, 1)?;
    if not_after <= params.not_before {
        return Err(PkiError::Argument(
            "the CA would expire before it is valid".into(),
        ));
    }
    params.not_after = not_after;
    self_signed_ca(params, key)
}

fn self_signed_ca(mut params: CertificateParams, key: KeyKind) -> Result<Issued, PkiError> {
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key_pair = key.generate()?;
    let cert = params.self_signed(&key_pair)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
    })
}

fn leaf_params(common_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let mut params = base_params(common_name, days)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn base_params(common_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    if common_name.is_empty() {
        return Err(PkiError::Argument("the common name (CN) is empty".into()));
    }
    if days == 0 {
        return Err(PkiError::Argument(
            "the validity must be at least one day".into(),
        ));
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    // Back-date an hour so that devices with a slightly slow clock accept it.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// A random positive 16-byte serial (RFC 5280 asks for unpredictable ones).
fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a redundant leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// PEM-encodes DER bytes under the given label, with `\n` line endings.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// Every certificate of a PEM file; an error (as text, for the caller to
/// put after the file's name) when it cannot be read or holds none.
pub fn pem_certificates(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file holds no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

pub(crate) fn read_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    file.write_all(contents).map_err(err)
}

pub mod dev;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let issued = create_ca("test", 1, KeyKind::P256).unwrap();
        let parsed = pem::parse(&issued.cert_pem).unwrap();
        assert_eq!(
            der_to_pem("CERTIFICATE", parsed.contents()).trim(),
            issued.cert_pem.trim()
        );
    }
}
