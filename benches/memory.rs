//! Where an idle connection's memory goes: resident memory per router
//! session with one subscription (no TLS, no socket), and per rustls server connection after
//! a mutual-TLS handshake (no router, no socket). The load generator's
//! `hold` mode measures the whole broker; the difference is certmq's own
//! share (tasks, buffers, session table) and the kernel's socket.
//!
//! `cargo bench --bench memory [--features jemalloc]`

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;

use certmq::pki::{self, CaSigner, KeyKind};
use std::time::{Duration, Instant};

use certmq::router::hub::HubSettings;
use certmq::router::message::QoS;
use certmq::router::{Hub, SubOptions};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const N: usize = 5000;

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn router_sessions() -> f64 {
    let hub = Hub::new(HubSettings {
        max_queued_messages: 1000,
        max_session_expiry: Duration::from_secs(3600),
        max_retained_messages: 1000,
    });
    let now = Instant::now();
    // One session first, so the router's own start-up allocations are out
    // of the measurement.
    let warm = hub.attach("warm", true, now);
    let before = rss();
    let mut sessions = Vec::with_capacity(N);
    for i in 0..N {
        let attached = hub.attach(&format!("device-{i}"), true, now);
        hub.subscribe(
            &attached.session,
            &format!("devices/device-{i}/cmd"),
            SubOptions::at(QoS::AtLeastOnce),
            now,
        );
        sessions.push(attached);
    }
    let per = (rss() - before) as f64 / N as f64;
    drop(warm);
    std::mem::forget(sessions); // measured; tearing down is not
    per
}

fn rustls_connections() -> f64 {
    let server_ca = pki::create_ca("server CA", 30, KeyKind::P256).unwrap();
    let signer = CaSigner::from_pem(&server_ca.cert_pem, &server_ca.key_pem).unwrap();
    let server = signer
        .issue_server(&["localhost".to_string()], 30, KeyKind::P256)
        .unwrap();
    let device = signer.issue_device("device", 30, KeyKind::P256).unwrap();
    let mut device_roots = rustls::RootCertStore::empty();
    device_roots
        .add(CertificateDer::from_pem_slice(server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = certmq::tls::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(device_roots.clone()),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_config = Arc::new(
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let client_config = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(device_roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    );
    let before = rss();
    let mut kept = Vec::with_capacity(N);
    for _ in 0..N {
        let mut client = ClientConnection::new(
            client_config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut server = ServerConnection::new(server_config.clone()).unwrap();
        let mut buf = Vec::new();
        while client.is_handshaking() || server.is_handshaking() {
            buf.clear();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
        }
        kept.push(server);
    }
    let per = (rss() - before) as f64 / N as f64;
    std::mem::forget(kept);
    per
}

fn main() {
    let allocator = if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system (glibc)"
    };
    let router = router_sessions();
    let tls = rustls_connections();
    println!(
        "{}",
        serde_json::json!({
            "allocator": allocator,
            "connections": N,
            "router_session_bytes": router,
            "rustls_server_connection_bytes": tls,
        })
    );
}
