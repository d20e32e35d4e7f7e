//! TLS: the rustls server configuration of the MQTT listener.
//!
//! certmq speaks MQTT only over mutual TLS (1.3 and 1.2). The server
//! certificate comes from PEM files; client certificates are judged by the
//! registry-backed [`verifier`]. Each connection gets its own
//! `ServerConfig` around its own [`ConnectionVerifier`] (cheap: every heavy
//! part, the certificate, the key and the session cache, is shared), so the
//! connection can read the identity its handshake established.

pub mod verifier;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

use crate::registry::Registry;
pub use verifier::{ConnectionVerifier, Refusal, Verified, VerifierCore};

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the server certificate chain {path}: {reason}")]
    ServerCert { path: PathBuf, reason: String },
    #[error("cannot read the server private key {path}: {reason}")]
    ServerKey { path: PathBuf, reason: String },
    #[error("the server key {key} does not belong to the certificate {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the TLS configuration is inconsistent: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider of the whole broker: aws-lc-rs, rustls' default,
/// with the SHA-256 cipher suites first. The server picks by its own order:
/// SHA-256 has hardware support (SHA-NI) where SHA-384's SHA-512 core does
/// not, which made the SHA-384 suite's key schedule 7 % of a broker's CPU
/// under a connection storm.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// Everything a connection needs to run its TLS handshake.
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    cert: Arc<ServerCertResolver>,
    sessions: Arc<dyn StoresServerSessions>,
    /// TLS 1.3 resumption by stateless tickets (RFC 5077 construction,
    /// keys rotated every 6 hours): the broker keeps nothing per session,
    /// so memory does not grow with the devices that ever connected.
    ticketer: Option<Arc<dyn rustls::server::ProducesTickets>>,
    tls13_tickets: usize,
    core: Arc<VerifierCore>,
}

impl TlsContext {
    pub fn new(
        registry: Registry,
        server_cert: &Path,
        server_key: &Path,
        session_cache_size: usize,
    ) -> Result<Self, TlsError> {
        let provider = provider();
        let certified = load_certified_key(&provider, server_cert, server_key)?;
        let sessions: Arc<dyn StoresServerSessions> = if session_cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(session_cache_size)
        };
        let core = Arc::new(VerifierCore::new(
            registry,
            provider.signature_verification_algorithms,
        ));
        let ticketer = if session_cache_size == 0 {
            None
        } else {
            Some(rustls::crypto::aws_lc_rs::Ticketer::new()?)
        };
        let ctx = TlsContext {
            provider,
            cert: Arc::new(ServerCertResolver::new(certified)),
            sessions,
            ticketer,
            tls13_tickets: if session_cache_size == 0 { 0 } else { 1 },
            core,
        };
        // Build one configuration now so that a bad setting fails start-up,
        // not the first handshake.
        ctx.acceptor()?;
        Ok(ctx)
    }

    /// A fresh acceptor for one connection, and the verifier whose verdict
    /// that connection reads after its handshake.
    pub fn acceptor(&self) -> Result<(TlsAcceptor, Arc<ConnectionVerifier>), TlsError> {
        let (config, verifier) = self.server_config()?;
        Ok((TlsAcceptor::from(config), verifier))
    }

    /// The rustls configuration of one connection, and its verifier.
    pub fn server_config(&self) -> Result<(Arc<ServerConfig>, Arc<ConnectionVerifier>), TlsError> {
        let verifier = Arc::new(ConnectionVerifier::new(self.core.clone()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(self.cert.clone());
        config.session_storage = self.sessions.clone();
        if let Some(ticketer) = &self.ticketer {
            config.ticketer = ticketer.clone();
        }
        config.send_tls13_tickets = self.tls13_tickets;
        config.ignore_client_order = true;
        Ok((Arc::new(config), verifier))
    }

    pub fn verifier_core(&self) -> &Arc<VerifierCore> {
        &self.core
    }

    /// Replaces the server certificate for new handshakes; live sessions keep
    /// theirs.
    pub fn reload_server_cert(
        &self,
        server_cert: &Path,
        server_key: &Path,
    ) -> Result<(), TlsError> {
        let certified = load_certified_key(&self.provider, server_cert, server_key)?;
        self.cert.replace(certified);
        Ok(())
    }
}

/// Reads a PEM certificate chain and its private key, checking they match.
pub fn load_certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_err = |reason: String| TlsError::ServerCert {
        path: cert_path.to_path_buf(),
        reason,
    };
    let chain = crate::pki::pem_certificates(cert_path).map_err(cert_err)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::ServerKey {
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// Serves the one server certificate, replaceable at run time.
#[derive(Debug)]
struct ServerCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertResolver {
    fn new(key: Arc<CertifiedKey>) -> Self {
        ServerCertResolver {
            current: RwLock::new(key),
        }
    }

    fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere held it; the value is
        // a plain Arc and always consistent.
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        *guard = key;
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(guard.clone())
    }
}
