//! The mutual-TLS handshake in memory (rustls client and server over
//! buffers, no sockets): certmq's per-connection configuration and
//! registry-backed verifier, beside rustls' stock `WebPkiClientVerifier`.
//! The difference is the cost of certmq's checks. Only the server's side is
//! timed, to compare with the broker's CPU time per connect.
//!
//! Also: device status lookups under contention, and admin signature
//! verification (V3 and V1).
//!
//! `cargo bench --bench handshake`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certmq::admin::sign;
use certmq::identity::{DeviceCert, DeviceIdentity};
use certmq::pki::{self, CaSigner, KeyKind};
use certmq::registry::{CaCert, CaRegistration, Registry};
use certmq::store::sqlite::SqliteStore;
use certmq::tls::TlsContext;
use certmq::{CaSn, DeviceSn};
use criterion::{Criterion, criterion_group, criterion_main};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

struct Setup {
    _dir: tempfile::TempDir,
    /// Session tickets off (`tls.session_cache_size = 0`).
    tls: TlsContext,
    /// The broker's default (`tls.session_cache_size = 4096`): one TLS 1.3
    /// session ticket per full handshake.
    tls_tickets: TlsContext,
    stock: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    registry: Registry,
    ca_sn: CaSn,
    device: CertificateDer<'static>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = pki::create_ca("bench server CA", 30, KeyKind::P256).unwrap();
    let server_signer = CaSigner::from_pem(&server_ca.cert_pem, &server_ca.key_pem).unwrap();
    let server = server_signer
        .issue_server(&["localhost".to_string()], 30, KeyKind::P256)
        .unwrap();
    server
        .write(
            &dir.path().join("server.pem"),
            &dir.path().join("server.key"),
        )
        .unwrap();
    let device_ca = pki::create_ca("bench device CA", 30, KeyKind::P256).unwrap();
    let device_signer = CaSigner::from_pem(&device_ca.cert_pem, &device_ca.key_pem).unwrap();
    let device = device_signer
        .issue_device("bench-device", 30, KeyKind::P256)
        .unwrap();

    let store = SqliteStore::open(&dir.path().join("registry.db"), 0).unwrap();
    let (registry, _) = Registry::open(Arc::new(store)).unwrap();
    let ca_der = CertificateDer::from_pem_slice(device_ca.cert_pem.as_bytes()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ca_sn = runtime
        .block_on(registry.register_ca(CaRegistration::declared(
            CaCert::parse(ca_der.clone(), UnixTime::now()).unwrap(),
        )))
        .unwrap();
    let tls = TlsContext::new(
        registry.clone(),
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        0,
    )
    .unwrap();
    let tls_tickets = TlsContext::new(
        registry.clone(),
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        4096,
    )
    .unwrap();

    // The same handshake with rustls' stock verifier and a fixed root store.
    let mut device_roots = rustls::RootCertStore::empty();
    device_roots.add(ca_der).unwrap();
    let provider = certmq::tls::provider();
    let stock_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(device_roots), provider.clone())
            .build()
            .unwrap();
    let stock = Arc::new(
        ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(stock_verifier)
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    );

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut client_provider = provider.as_ref().clone();
    client_provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut client = ClientConfig::builder_with_provider(Arc::new(client_provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    Setup {
        _dir: dir,
        tls,
        tls_tickets,
        stock,
        client: Arc::new(client),
        registry,
        ca_sn,
        device: CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap(),
    }
}

/// One handshake over memory; returns the time spent in the server.
fn handshake(client_config: &Arc<ClientConfig>, server_config: Arc<ServerConfig>) -> Duration {
    let mut server_time = Duration::ZERO;
    let mut client = ClientConnection::new(
        client_config.clone(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let t = Instant::now();
    let mut server = ServerConnection::new(server_config).unwrap();
    server_time += t.elapsed();
    let mut buf = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        buf.clear();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            server_time += t.elapsed();
        }
        buf.clear();
        let t = Instant::now();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        server_time += t.elapsed();
        if !buf.is_empty() {
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
        }
    }
    server_time
}

/// Verifies the device's chain in full through `tls`'s verifier, admits
/// the device and has the registry remember the chain, as its first
/// connection would (the registry remembers chains of admitted devices
/// only).
fn remember_chain(s: &Setup, tls: &TlsContext) {
    let first = tls
        .verifier_core()
        .verify(&s.device, UnixTime::now())
        .unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(s.registry.admit_device(&first.identity, &first.cert))
        .unwrap();
    s.registry
        .remember_verified(&first.identity, first.remember.unwrap());
}

/// `iters` handshakes with certmq's per-connection configuration, timing
/// the server's side (building the configuration included) and checking
/// each verdict: admitted, and the chain taken from the memo when
/// `remembered`, verified in full otherwise.
fn certmq_handshakes(
    tls: &TlsContext,
    client: &Arc<ClientConfig>,
    iters: u64,
    remembered: bool,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        let (config, verifier) = tls.server_config().unwrap();
        total += t.elapsed();
        total += handshake(client, config);
        match verifier.verdict() {
            Some(Ok(v)) => assert_eq!(v.remember.is_none(), remembered),
            other => panic!("the handshake was not admitted: {other:?}"),
        }
    }
    total
}

fn bench_handshake(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("mutual TLS 1.3 handshake, server side");
    group.bench_function("certmq verifier, new device (full verification)", |b| {
        b.iter_custom(|iters| certmq_handshakes(&s.tls, &s.client, iters, false))
    });
    // The same device again once admitted: its chain was verified in full
    // at its first connection and is remembered (`tls::verifier`).
    remember_chain(&s, &s.tls);
    group.bench_function("certmq verifier, known device (chain remembered)", |b| {
        b.iter_custom(|iters| certmq_handshakes(&s.tls, &s.client, iters, true))
    });
    // The same with the broker's default session cache: the server also
    // issues (and encrypts) a session ticket, as the broker does at every
    // full handshake unless `tls.session_cache_size = 0`. Each TlsContext's
    // verifier keys its memo with its own secret (as two processes would):
    // this one remembers the chain in its own terms.
    remember_chain(&s, &s.tls_tickets);
    group.bench_function("certmq verifier, known device, one session ticket", |b| {
        b.iter_custom(|iters| certmq_handshakes(&s.tls_tickets, &s.client, iters, true))
    });
    group.bench_function("rustls WebPkiClientVerifier (fixed roots)", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| handshake(&s.client, s.stock.clone()))
                .sum()
        })
    });
    group.finish();
}

fn bench_contended_lookups(c: &mut Criterion) {
    let s = setup();
    // Any device certificate will do as the registration template.
    let template_ca = pki::create_ca("template CA", 1, KeyKind::P256).unwrap();
    let template_signer = CaSigner::from_pem(&template_ca.cert_pem, &template_ca.key_pem).unwrap();
    let template = DeviceCert::parse(
        &CertificateDer::from_pem_slice(
            template_signer
                .issue_device("t", 1, KeyKind::P256)
                .unwrap()
                .cert_pem
                .as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    const DEVICES: u64 = 10_000;
    let ids: Vec<DeviceIdentity> = (0..DEVICES)
        .map(|n| DeviceIdentity {
            ca_sn: s.ca_sn,
            device_sn: DeviceSn::parse(&format!("{:012X}", n + 1)).unwrap(),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for id in &ids {
            s.registry.admit_device(id, &template).await.unwrap();
        }
    });
    let ids = Arc::new(ids);
    c.bench_function("device status lookup, 2 threads, 10k devices", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            std::thread::scope(|scope| {
                for offset in 0..2u64 {
                    let (ids, registry) = (ids.clone(), s.registry.clone());
                    scope.spawn(move || {
                        for i in 0..iters {
                            let id = &ids[((i * 7919 + offset * 13) % DEVICES) as usize];
                            black_box(registry.device_status(id));
                        }
                    });
                }
            });
            t.elapsed() / 2
        })
    });
}

fn bench_signatures(c: &mut Criterion) {
    let secret = "a-thirty-character-secret-0123";
    let query: Vec<(String, String)> = [
        ("MqttInstanceId", "mqtt-certmq-local"),
        ("CaSn", "2B220B4E0475401381B3ACCB1F2FC9BD"),
        ("DeviceSn", "5FC9F1DB6B8F4517ABF275C915552BD5"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let headers: Vec<(String, String)> = [
        ("host", "127.0.0.1:8080"),
        ("x-acs-action", "InactivateDeviceCertificate"),
        (
            "x-acs-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("x-acs-date", "2026-11-26T01:02:03Z"),
        (
            "x-acs-signature-nonce",
            "4a1d1e43-1c0b-4f3e-9d9a-1f0c3c0c7e11",
        ),
        ("x-acs-version", "2020-04-20"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let signed: Vec<String> = headers.iter().map(|(k, _)| k.clone()).collect();
    let canonical = |q: &[(String, String)]| {
        sign::v3_canonical_request(
            "POST",
            "/",
            q,
            &signed,
            |n| {
                headers
                    .iter()
                    .filter(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
                    .collect()
            },
            &sign::sha256_hex(b""),
        )
    };
    let signature = sign::v3_signature(secret, &sign::v3_string_to_sign(&canonical(&query)));
    c.bench_function(
        "admin signature V3 (canonical request + HMAC-SHA256 verify)",
        |b| {
            b.iter(|| {
                let sts = sign::v3_string_to_sign(&canonical(black_box(&query)));
                assert!(sign::v3_verify(secret, &sts, &signature));
            })
        },
    );
    let mut v1 = query.clone();
    v1.extend(
        [
            ("Action", "InactivateDeviceCertificate"),
            ("Format", "JSON"),
            ("Version", "2020-04-20"),
            ("AccessKeyId", "LTAI5tFleetOps000000001"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "4a1d1e43-1c0b-4f3e-9d9a-1f0c3c0c7e11"),
            ("Timestamp", "2026-11-26T01:02:03Z"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let v1_signature = sign::v1_signature(secret, &sign::v1_string_to_sign("GET", &v1));
    c.bench_function(
        "admin signature V1 (string to sign + HMAC-SHA1 verify)",
        |b| {
            b.iter(|| {
                let sts = sign::v1_string_to_sign("GET", black_box(&v1));
                assert!(sign::v1_verify(secret, &sts, &v1_signature));
            })
        },
    );
}

criterion_group!(
    benches,
    bench_handshake,
    bench_contended_lookups,
    bench_signatures
);
criterion_main!(benches);
