//! The durable registry's numbers: auto-registration throughput (group
//! commit under concurrent first connections), start-up load time of a
//! large store, and resident memory of the in-memory index per device.
//!
//! `cargo bench --bench store` (optionally `-- 1000000` for the device
//! count of the load test). Prints one JSON object; the figures go in
//! docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certmq::identity::{DeviceCert, DeviceIdentity};
use certmq::pki::{self, CaSigner, KeyKind};
use certmq::registry::{CaCert, CaRegistration, Registry};
use certmq::store::sqlite::SqliteStore;
use certmq::{CaSn, DeviceSn};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn trim() {
    // Give freed memory back so that RSS shows what is live.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn identity(ca: CaSn, n: u64) -> DeviceIdentity {
    DeviceIdentity {
        ca_sn: ca,
        device_sn: DeviceSn::parse(&format!("{:016X}", n + 1)).unwrap(),
    }
}

/// A registry alone on its store: nothing to wait for.
struct NoOtherNodes;

impl certmq::registry::Propagation for NoOtherNodes {
    fn settle(&self, _seq: u64) -> certmq::registry::SettleFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}

/// Concurrent first connections, as the admission step runs them.
fn auto_registration(
    runtime: &tokio::runtime::Runtime,
    store: Arc<dyn certmq::store::Store>,
) -> serde_json::Value {
    const DEVICES: u64 = 30_000;
    const CONCURRENCY: u64 = 256;
    let location = store.location();
    let (registry, _) = Registry::open(store).unwrap();
    // On PostgreSQL the CA registration below waits for the nodes of the
    // cluster; there is none here, and first connections (measured) never
    // wait for other nodes.
    registry.set_propagation(Arc::new(NoOtherNodes));
    let ca = pki::create_ca("bench CA", 30, KeyKind::P256).unwrap();
    let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
    let ca_sn = runtime
        .block_on(registry.register_ca(CaRegistration::declared(
            CaCert::parse(der, UnixTime::now()).unwrap(),
        )))
        .unwrap();
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let template = DeviceCert::parse(
        &CertificateDer::from_pem_slice(
            signer
                .issue_device("d", 30, KeyKind::P256)
                .unwrap()
                .cert_pem
                .as_bytes(),
        )
        .unwrap(),
    )
    .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let (registry, template) = (registry.clone(), template.clone());
                tokio::spawn(async move {
                    let mut n = t;
                    while n < DEVICES {
                        registry
                            .admit_device(&identity(ca_sn, n), &template)
                            .await
                            .unwrap();
                        n += CONCURRENCY;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    assert_eq!(registry.device_count() as u64, DEVICES);
    serde_json::json!({
        "store": location.split_whitespace().next().unwrap_or(""),
        "devices": DEVICES,
        "concurrency": CONCURRENCY,
        "seconds": elapsed.as_secs_f64(),
        "devices_per_second": DEVICES as f64 / elapsed.as_secs_f64(),
    })
}

/// Builds a store of `count` devices directly (as an import would), then
/// measures opening it: integrity check, load, index.
fn load(count: u64) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let ca = pki::create_ca("bench CA", 30, KeyKind::P256).unwrap();
    let ca_cert = CaCert::parse(
        CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap(),
        UnixTime::now(),
    )
    .unwrap();
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let body = signer
        .issue_device("bench-device", 30, KeyKind::P256)
        .unwrap()
        .cert_pem;
    drop(SqliteStore::open(&path, 0).unwrap());
    let build = Instant::now();
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO ca (sn, name, status, valid_begin_ms, valid_end_ms, pem, registered_at_ms, updated_at_ms)
             VALUES (?1, 'bench', 1, 0, 0, ?2, 0, 0)",
            rusqlite::params![ca_cert.sn.to_string(), ca.cert_pem],
        )
        .unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO device (ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem,
                                         first_seen_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, 0, 0, ?5, 0, 0)",
                )
                .unwrap();
            let ca_sn = ca_cert.sn.to_string();
            for n in 0..count {
                let id = identity(ca_cert.sn, n);
                insert
                    .execute(rusqlite::params![
                        ca_sn,
                        id.device_sn.to_string(),
                        format!("device-{n}"),
                        i64::from(n % 50 != 0),
                        body
                    ])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let build_seconds = build.elapsed().as_secs_f64();
    let file_bytes = std::fs::metadata(&path).unwrap().len();

    trim();
    let rss_before = rss_bytes();
    let started = Instant::now();
    let store = SqliteStore::open(&path, 0).unwrap();
    let opened = started.elapsed();
    let (registry, _) = Registry::open(Arc::new(store)).unwrap();
    let loaded = started.elapsed();
    assert_eq!(registry.device_count() as u64, count);
    trim();
    let rss_after = rss_bytes();
    serde_json::json!({
        "devices": count,
        "database_bytes": file_bytes,
        "build_seconds": build_seconds,
        "open_and_check_seconds": opened.as_secs_f64(),
        "load_seconds_total": loaded.as_secs_f64(),
        "index_rss_bytes": rss_after.saturating_sub(rss_before),
        "index_bytes_per_device": rss_after.saturating_sub(rss_before) as f64 / count as f64,
    })
}

fn main() {
    let count: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // With POSTGRES_URL (an empty database; benches/pg-store.sh makes a
    // throwaway one): first connections on the PostgreSQL store only.
    if let Ok(url) = std::env::var("POSTGRES_URL") {
        let store = runtime
            .block_on(certmq::store::postgres::PgStore::connect(&url, "bench"))
            .unwrap();
        let registration = auto_registration(&runtime, Arc::new(store));
        println!(
            "{}",
            serde_json::json!({ "auto_registration": registration })
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("registry.db"), 0).unwrap();
    let registration = auto_registration(&runtime, Arc::new(store));
    eprintln!("auto-registration: {registration}");
    let load = load(count);
    eprintln!("load: {load}");
    println!(
        "{}",
        serde_json::json!({"auto_registration": registration, "load": load})
    );
    std::thread::sleep(Duration::from_millis(10));
}
