//! Test certificates: real ones, made with certmq's own `pki` module and,
//! for the malformed or unusual cases, with rcgen directly.

use std::sync::Arc;

use certmq::pki::{self, CaSigner, KeyKind};
use certmq::{CaSn, DeviceIdentity, DeviceSn};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A CA that can issue test certificates.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
    pub sn: CaSn,
    signer: CaSigner,
}

/// A device certificate with its key.
#[derive(Clone)]
pub struct Device {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub identity: DeviceIdentity,
}

pub fn serial_of(pem: &str) -> certmq::serial::Serial {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
    certmq::serial::Serial::from_der_content(cert.raw_serial()).unwrap()
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let issued = pki::create_ca(cn, 365, KeyKind::P256).unwrap();
        let signer = CaSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        Ca {
            sn: CaSn(serial_of(&issued.cert_pem)),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            signer,
        }
    }

    /// A CA that expires at `not_after`.
    pub fn new_until(cn: &str, not_after: time::OffsetDateTime) -> Ca {
        let issued = pki::create_ca_until(cn, not_after, KeyKind::P256).unwrap();
        let signer = CaSigner::from_pem(&issued.cert_pem, &issued.key_pem).unwrap();
        Ca {
            sn: CaSn(serial_of(&issued.cert_pem)),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            signer,
        }
    }

    pub fn from_files(cert: &std::path::Path, key: &std::path::Path) -> Ca {
        let cert_pem = std::fs::read_to_string(cert).unwrap();
        let key_pem = std::fs::read_to_string(key).unwrap();
        let signer = CaSigner::from_pem(&cert_pem, &key_pem).unwrap();
        Ca {
            sn: CaSn(serial_of(&cert_pem)),
            cert_pem,
            key_pem,
            signer,
        }
    }

    pub fn device(&self, name: &str) -> Device {
        self.device_with(name, KeyKind::P256)
    }

    pub fn device_with(&self, name: &str, key: KeyKind) -> Device {
        let issued = self.signer.issue_device(name, 30, key).unwrap();
        self.wrap(name, issued.cert_pem, issued.key_pem)
    }

    pub fn server(&self) -> (String, String) {
        let names = ["localhost", "127.0.0.1"].map(String::from);
        let issued = self.signer.issue_server(&names, 30, KeyKind::P256).unwrap();
        (issued.cert_pem, issued.key_pem)
    }

    /// A device certificate made from explicit parameters, signed by this CA.
    pub fn custom(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> Device {
        let key = KeyPair::from_pem(&self.key_pem).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
        edit(&mut params);
        let device_key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&device_key, &issuer).unwrap();
        self.wrap(name, cert.pem(), device_key.serialize_pem())
    }

    /// A device certificate that expires at `not_after` (whole seconds:
    /// X.509 times have no finer resolution).
    pub fn device_until(&self, name: &str, not_after: time::OffsetDateTime) -> Device {
        let issued = self
            .signer
            .issue_device_until(name, not_after, KeyKind::P256)
            .unwrap();
        self.wrap(name, issued.cert_pem, issued.key_pem)
    }

    fn wrap(&self, name: &str, cert_pem: String, key_pem: String) -> Device {
        let identity = DeviceIdentity {
            ca_sn: self.sn,
            device_sn: DeviceSn(serial_of(&cert_pem)),
        };
        Device {
            name: name.to_owned(),
            cert_pem,
            key_pem,
            identity,
        }
    }
}

/// An expired device certificate.
pub fn expired(ca: &Ca, name: &str) -> Device {
    ca.custom(name, |p| {
        p.not_before = OffsetDateTime::now_utc() - Duration::days(10);
        p.not_after = OffsetDateTime::now_utc() - Duration::days(1);
    })
}

/// A self-signed certificate presented as a device certificate.
pub fn self_signed(name: &str) -> Device {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).unwrap();
    let sn = serial_of(&cert.pem());
    Device {
        name: name.into(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        identity: DeviceIdentity {
            ca_sn: CaSn(sn),
            device_sn: DeviceSn(sn),
        },
    }
}

/// A certificate with CA:TRUE, issued by `ca`, presented as a device.
pub fn ca_as_device(ca: &Ca, name: &str) -> Device {
    ca.custom(name, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        p.extended_key_usages = vec![];
    })
}

/// A TLS client configuration trusting `server_ca`, presenting `device`
/// (or no certificate).
pub fn client_config(server_ca: &Ca, device: Option<&Device>) -> Arc<ClientConfig> {
    client_config_versions(server_ca, device, rustls::DEFAULT_VERSIONS)
}

pub fn client_config_versions(
    server_ca: &Ca,
    device: Option<&Device>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(certmq::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match device {
        Some(d) => {
            let chain = vec![CertificateDer::from_pem_slice(d.cert_pem.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(d.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}
