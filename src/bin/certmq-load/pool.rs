//! Device certificates for the load: issued from a CA the broker trusts,
//! cached on disk so that repeated runs reuse them (and certmq's registry
//! sees the same devices).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use certmq::pki::{CaSigner, KeyKind};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One device: its TLS client configuration and identity.
pub struct Device {
    /// Its subject CN, `load-NNNNNN`.
    pub common_name: String,
    pub ca_sn: String,
    pub device_sn: String,
    pub tls: Arc<ClientConfig>,
}

/// A pool of devices.
pub struct Pool {
    pub devices: Vec<Device>,
}

fn serial_of(pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("not a PEM certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).context("not X.509")?;
    Ok(certmq::serial::Serial::from_der_content(cert.raw_serial())?.to_string())
}

/// A TLS 1.3 client configuration (no resumption: every connection pays a
/// full handshake, the case being measured).
fn client_config(server_ca: &Path, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server_ca)
        .with_context(|| format!("{}", server_ca.display()))?
    {
        roots.add(cert?)?;
    }
    let mut provider = certmq::tls::provider().as_ref().clone();
    // The key exchange both brokers support; Mosquitto (OpenSSL 3.0) has
    // no post-quantum group.
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

impl Pool {
    /// Loads or issues `size` devices in `dir` from the CA.
    pub fn load(
        dir: &Path,
        size: usize,
        ca_cert: &Path,
        ca_key: &Path,
        server_ca: &Path,
    ) -> Result<Pool> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_pem =
            std::fs::read_to_string(ca_cert).with_context(|| format!("{}", ca_cert.display()))?;
        let ca_sn = serial_of(&ca_pem)?;
        let mut signer: Option<CaSigner> = None;
        let mut devices = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("load-{i:06}");
            let (cert_path, key_path): (PathBuf, PathBuf) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            if !cert_path.exists() || !key_path.exists() {
                if signer.is_none() {
                    signer = Some(CaSigner::load(ca_cert, ca_key)?);
                }
                let issued = signer
                    .as_ref()
                    .map(|s| s.issue_device(&name, 365, KeyKind::P256))
                    .transpose()?;
                if let Some(issued) = issued {
                    issued.write(&cert_path, &key_path)?;
                }
            }
            let cert_pem = std::fs::read_to_string(&cert_path)?;
            let key_pem = std::fs::read_to_string(&key_path)?;
            devices.push(Device {
                common_name: name,
                device_sn: serial_of(&cert_pem)?,
                ca_sn: ca_sn.clone(),
                tls: client_config(server_ca, &cert_pem, &key_pem)?,
            });
        }
        Ok(Pool { devices })
    }
}
