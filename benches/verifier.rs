//! The cost of certmq's certificate checks on the handshake path: the
//! registry-backed verifier (parse, issuer lookup, webpki chain check,
//! status reads), and the device status lookup alone in a large registry.
//!
//! `cargo bench --bench verifier`. Results and the machine go in
//! docs/BENCHMARKS.md.

use std::hint::black_box;

use certmq::identity::{DeviceCert, DeviceIdentity};
use certmq::pki::{self, CaSigner, KeyKind};
use certmq::registry::{CaCert, Registry};
use certmq::store::sqlite::SqliteStore;
use certmq::tls::VerifierCore;
use certmq::{CaSn, DeviceSn};
use criterion::{Criterion, criterion_group, criterion_main};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn bench_verifier(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for other_cas in [0usize, 99] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("registry.db"), 0).unwrap();
        let (registry, _) = Registry::open(std::sync::Arc::new(store)).unwrap();
        let ca = pki::create_ca("bench CA", 30, KeyKind::P256).unwrap();
        rt.block_on(async {
            for i in 0..other_cas {
                let other = pki::create_ca(&format!("other CA {i}"), 30, KeyKind::P256).unwrap();
                let cert = CaCert::parse(der(&other.cert_pem), UnixTime::now()).unwrap();
                registry
                    .register_ca(certmq::registry::CaRegistration::declared(cert))
                    .await
                    .unwrap();
            }
            let cert = CaCert::parse(der(&ca.cert_pem), UnixTime::now()).unwrap();
            registry
                .register_ca(certmq::registry::CaRegistration::declared(cert))
                .await
                .unwrap();
        });
        let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let device = der(&signer
            .issue_device("bench-device", 30, KeyKind::P256)
            .unwrap()
            .cert_pem);
        let core = VerifierCore::new(
            registry,
            certmq::tls::provider().signature_verification_algorithms,
        );
        let now = UnixTime::now();
        c.bench_function(
            &format!("verify device cert, {} registered CAs", other_cas + 1),
            |b| b.iter(|| core.verify(black_box(&device), now).unwrap()),
        );
    }
}

fn bench_status_lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("registry.db"), 0).unwrap();
    let (registry, _) = Registry::open(std::sync::Arc::new(store)).unwrap();
    let ca = pki::create_ca("bench CA", 30, KeyKind::P256).unwrap();
    let ca_sn = rt.block_on(async {
        let cert = CaCert::parse(der(&ca.cert_pem), UnixTime::now()).unwrap();
        registry
            .register_ca(certmq::registry::CaRegistration::declared(cert))
            .await
            .unwrap()
    });
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let template = DeviceCert::parse(&der(&signer
        .issue_device("d", 30, KeyKind::P256)
        .unwrap()
        .cert_pem))
    .unwrap();
    const DEVICES: u64 = 100_000;
    let identity = |n: u64| DeviceIdentity {
        ca_sn: CaSn(ca_sn.0),
        device_sn: DeviceSn::parse(&format!("{:016X}", n + 1)).unwrap(),
    };
    rt.block_on(async {
        for n in 0..DEVICES {
            registry
                .admit_device(&identity(n), &template)
                .await
                .unwrap();
        }
    });
    let ids: Vec<DeviceIdentity> = (0..DEVICES).map(identity).collect();
    let mut n = 0;
    c.bench_function("device status lookup, 100k devices", |b| {
        b.iter(|| {
            n = (n + 7919) % ids.len();
            black_box(registry.device_status(&ids[n]))
        })
    });
}

criterion_group!(benches, bench_verifier, bench_status_lookup);
criterion_main!(benches);
