//! HTTPS for the admin API: the rustls configuration of the admin port,
//! built from `admin.tls_cert`, `admin.tls_key` and, for mutual TLS,
//! `admin.tls_client_ca`; replaced as a whole on reload (SIGHUP).
//!
//! The rule on plain HTTP lives here too ([`validate`]): it is allowed on a
//! loopback address, and elsewhere only with `admin.allow_plaintext`.
//! The accept loop that runs the handshakes is [`super::listener`].
//!
//! Unlike the MQTT port, client certificates here are judged by plain
//! WebPKI path validation against one CA file: they say which operators'
//! machines may reach the API at all; the access key signature still says
//! who calls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls_pki_types::CertificateDer;

use crate::config::{AdminSettings, ConfigError, invalid};
use crate::tls::TlsError;

/// Why the admin port's TLS configuration cannot be built. Each message
/// names the configuration key to fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    #[error("admin.tls_cert: cannot read the certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("admin.tls_key: cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error(
        "admin.tls_key: {key} is not the private key of the certificate {cert} (admin.tls_cert): {reason}"
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("admin.tls_client_ca: {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("the admin TLS configuration is inconsistent: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<TlsError> for AdminTlsError {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::ServerCert { path, reason } => AdminTlsError::Cert { path, reason },
            TlsError::ServerKey { path, reason } => AdminTlsError::Key { path, reason },
            TlsError::KeyMismatch { cert, key, reason } => {
                AdminTlsError::KeyMismatch { cert, key, reason }
            }
            TlsError::Rustls(e) => AdminTlsError::Rustls(e),
        }
    }
}

/// Checks the admin transport keys: cert and key together, a client CA
/// only with them, and plain HTTP only where it is safe or allowed.
/// Called by [`crate::Settings::validate`].
pub(crate) fn validate(admin: &AdminSettings, listen: SocketAddr) -> Result<(), ConfigError> {
    match (admin.tls_cert.is_empty(), admin.tls_key.is_empty()) {
        (true, false) => {
            return Err(invalid(
                "admin.tls_cert",
                "is empty while admin.tls_key is set; set both for HTTPS, or neither for plain HTTP",
            ));
        }
        (false, true) => {
            return Err(invalid(
                "admin.tls_key",
                "is empty while admin.tls_cert is set; set both for HTTPS, or neither for plain HTTP",
            ));
        }
        _ => {}
    }
    let https = !admin.tls_cert.is_empty();
    if !https && !admin.tls_client_ca.is_empty() {
        return Err(invalid(
            "admin.tls_client_ca",
            "needs admin.tls_cert and admin.tls_key: client certificates are asked for only over HTTPS",
        ));
    }
    if !https && !admin.allow_plaintext && !listen.ip().to_canonical().is_loopback() {
        return Err(invalid(
            "admin.listen",
            format!(
                "{listen} is not a loopback address, and the admin API would serve it plain HTTP; \
                 set admin.tls_cert and admin.tls_key (HTTPS), listen on 127.0.0.1 or [::1], \
                 or set admin.allow_plaintext = true to accept plain HTTP on this address"
            ),
        ));
    }
    Ok(())
}

/// The files of the admin port's TLS configuration.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The admin port's TLS configuration, replaceable at run time.
pub struct AdminTls {
    files: Files,
    /// What new handshakes use. A std lock: it is held only to clone or
    /// swap an `Arc`, never across an await.
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl AdminTls {
    /// Reads the configured files: `None` when the admin API is plain
    /// HTTP (`admin.tls_cert` empty). Blocking file reads: call at start.
    pub fn from_settings(admin: &AdminSettings) -> Result<Option<AdminTls>, AdminTlsError> {
        if admin.tls_cert.is_empty() {
            return Ok(None);
        }
        let files = Files {
            cert: PathBuf::from(&admin.tls_cert),
            key: PathBuf::from(&admin.tls_key),
            client_ca: (!admin.tls_client_ca.is_empty())
                .then(|| PathBuf::from(&admin.tls_client_ca)),
        };
        let config = build(&files)?;
        Ok(Some(AdminTls {
            files,
            current: RwLock::new(config),
        }))
    }

    /// Whether clients must present a certificate (`admin.tls_client_ca`).
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The certificate chain file (`admin.tls_cert`).
    pub fn cert_file(&self) -> &Path {
        &self.files.cert
    }

    /// Re-reads every file; new handshakes use the result, open
    /// connections keep theirs. On error nothing changes. Blocking file
    /// reads: call from a signal handler's loop, not a request.
    pub fn reload(&self) -> Result<(), AdminTlsError> {
        let config = build(&self.files)?;
        // A poisoned lock only means a panic elsewhere held it; the value
        // is a plain Arc and always consistent.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The configuration for the next handshake.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn build(files: &Files) -> Result<Arc<ServerConfig>, AdminTlsError> {
    let provider = crate::tls::provider();
    let certified = crate::tls::load_certified_key(&provider, &files.cert, &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => builder.with_client_cert_verifier(client_verifier(&provider, path)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // axum serves HTTP/1.1; say so, so that clients offering h2 pick it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads the CA certificates of `path` (PEM).
fn read_client_cas(path: &Path) -> Result<Vec<CertificateDer<'static>>, AdminTlsError> {
    let fail = |reason: String| AdminTlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    crate::pki::pem_certificates(path).map_err(fail)
}

fn client_verifier(
    provider: &Arc<CryptoProvider>,
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, AdminTlsError> {
    let fail = |reason: String| AdminTlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for der in read_client_cas(path)? {
        roots
            .add(der)
            .map_err(|e| fail(format!("not a usable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| fail(e.to_string()))
}

/// `certmq check-config`: every problem with the admin TLS files, each
/// naming its key (the pairing rules are [`validate`]'s).
pub fn check(admin: &AdminSettings) -> Vec<String> {
    let mut problems = Vec::new();
    if admin.tls_cert.is_empty() || admin.tls_key.is_empty() {
        return problems;
    }
    let provider = crate::tls::provider();
    if let Err(e) = crate::tls::load_certified_key(
        &provider,
        Path::new(&admin.tls_cert),
        Path::new(&admin.tls_key),
    ) {
        problems.push(AdminTlsError::from(e).to_string());
    }
    if !admin.tls_client_ca.is_empty() {
        if let Err(e) = client_verifier(&provider, Path::new(&admin.tls_client_ca)) {
            problems.push(e.to_string());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    fn admin(edit: impl FnOnce(&mut AdminSettings)) -> AdminSettings {
        let mut admin = Settings::embedded_defaults().unwrap().admin;
        edit(&mut admin);
        admin
    }

    fn check_listen(a: &AdminSettings, listen: &str) -> Result<(), String> {
        validate(a, listen.parse().unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_http_only_on_loopback_unless_allowed() {
        let plain = admin(|_| {});
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.2:0",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(check_listen(&plain, ok), Ok(()), "{ok}");
        }
        for refused in ["0.0.0.0:8080", "[::]:8080", "10.0.0.5:8080"] {
            let err = check_listen(&plain, refused).unwrap_err();
            for named in [
                "admin.listen",
                "admin.tls_cert",
                "admin.tls_key",
                "admin.allow_plaintext",
            ] {
                assert!(err.contains(named), "{refused}: {err}");
            }
        }
        let allowed = admin(|a| a.allow_plaintext = true);
        assert_eq!(check_listen(&allowed, "0.0.0.0:8080"), Ok(()));
        let https = admin(|a| {
            a.tls_cert = "admin.pem".into();
            a.tls_key = "admin.key".into();
        });
        assert_eq!(check_listen(&https, "0.0.0.0:8080"), Ok(()));
    }

    #[test]
    fn cert_and_key_go_together_and_client_ca_needs_them() {
        let err = check_listen(&admin(|a| a.tls_cert = "a.pem".into()), "127.0.0.1:1");
        assert!(err.unwrap_err().contains("admin.tls_key"));
        let err = check_listen(&admin(|a| a.tls_key = "a.key".into()), "127.0.0.1:1");
        assert!(err.unwrap_err().contains("admin.tls_cert"));
        let err = check_listen(&admin(|a| a.tls_client_ca = "ca.pem".into()), "127.0.0.1:1");
        assert!(err.unwrap_err().contains("admin.tls_client_ca"));
    }

    #[test]
    fn the_embedded_default_is_plain_http_on_loopback() {
        let s = Settings::embedded_defaults().unwrap();
        assert!(s.admin.tls_cert.is_empty() && !s.admin.allow_plaintext);
        assert!(AdminTls::from_settings(&s.admin).unwrap().is_none());
    }

    #[test]
    fn file_errors_name_the_key_and_reload_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::create_ca("admin test CA", 30, crate::pki::KeyKind::P256).unwrap();
        let signer = crate::pki::CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let server = signer
            .issue_server(&["localhost".into()], 30, crate::pki::KeyKind::P256)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("admin.pem"), &server.cert_pem).unwrap();
        std::fs::write(path("admin.key"), &server.key_pem).unwrap();
        std::fs::write(path("clients.pem"), &ca.cert_pem).unwrap();
        let files = |cert: &str, key: &str, client_ca: &str| {
            admin(|a| {
                a.tls_cert = path(cert).display().to_string();
                a.tls_key = path(key).display().to_string();
                a.tls_client_ca = if client_ca.is_empty() {
                    String::new()
                } else {
                    path(client_ca).display().to_string()
                };
            })
        };
        let error = |a: &AdminSettings| AdminTls::from_settings(a).unwrap_err().to_string();

        let tls = AdminTls::from_settings(&files("admin.pem", "admin.key", "clients.pem"))
            .unwrap()
            .unwrap();
        assert!(tls.requires_client_cert());
        assert!(check(&files("admin.pem", "admin.key", "clients.pem")).is_empty());

        let err = error(&files("nope.pem", "admin.key", ""));
        assert!(
            err.contains("admin.tls_cert") && err.contains("nope.pem"),
            "{err}"
        );
        let err = error(&files("admin.pem", "nope.key", ""));
        assert!(
            err.contains("admin.tls_key") && err.contains("nope.key"),
            "{err}"
        );
        std::fs::write(path("other.key"), ca.key_pem.as_bytes()).unwrap();
        let err = error(&files("admin.pem", "other.key", ""));
        assert!(
            err.contains("admin.tls_key") && err.contains("not the private key"),
            "{err}"
        );
        let err = error(&files("admin.pem", "admin.key", "nope-ca.pem"));
        assert!(
            err.contains("admin.tls_client_ca") && err.contains("nope-ca.pem"),
            "{err}"
        );
        std::fs::write(path("empty.pem"), "").unwrap();
        let err = error(&files("admin.pem", "admin.key", "empty.pem"));
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");
        // check-config lists both problems at once.
        assert_eq!(
            check(&files("nope.pem", "admin.key", "nope-ca.pem")).len(),
            2
        );

        // A broken file on reload: an error, and the old configuration stays.
        let before = tls.config();
        std::fs::write(path("clients.pem"), "garbage").unwrap();
        let err = tls.reload().unwrap_err().to_string();
        assert!(err.contains("admin.tls_client_ca"), "{err}");
        assert!(Arc::ptr_eq(&before, &tls.config()));
        std::fs::write(path("clients.pem"), &ca.cert_pem).unwrap();
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }
}
