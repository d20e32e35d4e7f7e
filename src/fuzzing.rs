//! Entry points for fuzzing: what the network, a certificate and an admin
//! request feed into certmq, as functions of raw bytes that must never
//! panic. The cargo-fuzz targets in `fuzz/` call them, and the integration
//! tests replay the kept corpus (`fuzz/regressions/`) through them on
//! stable Rust, so every finding stays fixed.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::BytesMut;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::admin::auth::{AccessKey, Authenticator};
use crate::admin::rpc::RpcRequest;
use crate::identity::DeviceCert;
use crate::registry::{CaCert, CaRegistration, Registry};
use crate::session::codec::{Codec, Version, detect_version};
use crate::store::sqlite::SqliteStore;
use crate::tls::VerifierCore;

/// MQTT bytes into the connection loop's decoder: the first byte picks the
/// protocol version, the rest is the stream. Every decoded packet is
/// encoded back, as the loop would for the other side.
pub fn mqtt_decode(data: &[u8]) {
    let Some((selector, stream)) = data.split_first() else {
        return;
    };
    let _ = detect_version(stream);
    let version = if selector & 1 == 0 {
        Version::V4
    } else {
        Version::V5
    };
    let codec = Codec::new(version, 64 * 1024);
    let mut buf = BytesMut::from(stream);
    let mut out = BytesMut::new();
    for _ in 0..64 {
        match codec.decode(&mut buf) {
            Ok(Some(packet)) => {
                let _ = codec.encode(packet, &mut out);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

fn verifier() -> &'static VerifierCore {
    static CORE: OnceLock<VerifierCore> = OnceLock::new();
    CORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("certmq-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let store = SqliteStore::open(&dir.join("registry.db"), 0).expect("a fuzzing store");
        let (registry, _) = Registry::open(Arc::new(store)).expect("a fuzzing registry");
        let ca = crate::pki::create_ca("fuzz CA", 30, crate::pki::KeyKind::P256).expect("a CA");
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(ca.cert_pem.as_bytes())
            .expect("its PEM");
        let cert = CaCert::parse(der, UnixTime::now()).expect("a valid CA");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime
            .block_on(registry.register_ca(CaRegistration::declared(cert)))
            .expect("registered");
        VerifierCore::new(
            registry,
            crate::tls::provider().signature_verification_algorithms,
        )
    })
}

/// A DER certificate into identity extraction and verification, as a
/// device certificate and as a CA certificate.
pub fn device_cert(data: &[u8]) {
    let der = CertificateDer::from(data.to_vec());
    if let Ok(cert) = DeviceCert::parse(&der) {
        let _ = cert.pem();
    }
    let _ = verifier().verify(&der, UnixTime::now());
    let _ = CaCert::parse(der.into_owned(), UnixTime::now());
}

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(
            vec![AccessKey {
                id: "LTAIFuzz".into(),
                secret: "fuzz-secret-0123456789".into(),
                account: "local".into(),
                actions: vec!["mq:*".into()],
            }],
            std::time::Duration::from_secs(900),
        )
    })
}

/// An HTTP request into the admin API's parsing and signature checks. The
/// input is `method \0 path?query \0 headers (name: value lines) \0 body`.
pub fn admin_request(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == 0);
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let header_text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default().to_vec();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target.as_ref(), None),
    };
    let mut headers = HeaderMap::new();
    for line in header_text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.trim()),
            HeaderValue::try_from(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let Ok(req) = RpcRequest::parse(&method, path, query, headers, body, "fuzz") else {
        return;
    };
    let _ = req.claimed_action();
    let _ = req.list("ClientIdList");
    let _ = req.serial("DeviceSn", crate::serial::DeviceSn::parse);
    let _ = Authenticator::claimed_key_id(&req);
    let _ = authenticator().authenticate(&req);
}
