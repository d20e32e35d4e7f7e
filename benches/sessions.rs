//! The session table's per-device and per-CA questions, among many other
//! devices: what InactivateDeviceCertificate (and each serial of a CRL
//! import) pays to release the device's persistent client ids, and what
//! GetCaCertificate pays for its live-session count. Neither should grow
//! with the rest of the fleet.
//!
//! `cargo bench --bench sessions`. Results go in docs/BENCHMARKS.md.

use std::hint::black_box;

use certmq::serial::Serial;
use certmq::{CaSn, DeviceIdentity, DeviceSn, SessionTable};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn ca(n: u8) -> CaSn {
    CaSn(Serial::from_der_content(&[0x40, n]).unwrap())
}

fn device(ca_sn: CaSn, n: u32) -> DeviceIdentity {
    DeviceIdentity {
        ca_sn,
        device_sn: DeviceSn(
            Serial::from_der_content(&[&[0x40][..], &n.to_be_bytes()].concat()).unwrap(),
        ),
    }
}

/// `others` devices, each with a persistent session it has left (its
/// client id stays claimed), then one device more that does the same and
/// loses its access: the time to release its claim.
fn bench_release(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("release one device's client ids");
    for others in [1_000u32, 100_000] {
        let table = SessionTable::new();
        for n in 0..others {
            let mut guard = table.register(device(ca(1), n));
            guard.claim_client_id(&format!("device-{n}"), true).unwrap();
        }
        assert_eq!(table.claimed_client_ids(), others as usize);
        let target = device(ca(1), u32::MAX);
        group.bench_with_input(
            BenchmarkId::new("among claimed client ids", others),
            &others,
            |b, _| {
                b.iter(|| {
                    let mut guard = table.register(target);
                    guard.claim_client_id("target", true).unwrap();
                    drop(guard);
                    let released = rt.block_on(table.release_device(&target, |_| async { true }));
                    assert_eq!(released, 1);
                })
            },
        );
    }
    group.finish();
}

/// `live` sessions under two CAs: the live-session count of one.
fn bench_sessions_of_ca(c: &mut Criterion) {
    let mut group = c.benchmark_group("live sessions of one CA");
    for live in [1_000u32, 100_000] {
        let table = SessionTable::new();
        let guards: Vec<_> = (0..live)
            .map(|n| table.register(device(ca((n % 2) as u8), n)))
            .collect();
        group.bench_with_input(
            BenchmarkId::new("among live sessions", live),
            &live,
            |b, _| {
                b.iter(|| assert_eq!(black_box(table.sessions_of_ca(&ca(1))), live as usize / 2))
            },
        );
        drop(guards);
    }
    group.finish();
}

criterion_group!(benches, bench_release, bench_sessions_of_ca);
criterion_main!(benches);
