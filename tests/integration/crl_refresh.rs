//! CRL refresh (issue 14 point 2): a `[[tls.crl]]` source on a local HTTP
//! server, refreshed every second. A device the new CRL lists loses its
//! session within refresh_secs + 1 s; with the server down the last state
//! stays (the device stays out, the others stay in), the failure is
//! counted and, with `fail_closed`, `/readyz` says so until the server is
//! back. A file source is read again the same way; without `fail_closed`
//! its failure leaves the broker ready.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certmq::crl::refresh::CrlSourceSettings;

use crate::crl::{openssl_crl, openssl_missing};
use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, Device, TestBroker, metric, readyz, scrape, wait_until};

/// A local HTTP server answering `GET /fleet.crl` with what `crl` holds
/// (404 while it holds nothing).
struct CrlServer {
    addr: SocketAddr,
    crl: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CrlServer {
    async fn start_at(addr: SocketAddr, crl: Arc<Mutex<Option<String>>>) -> CrlServer {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = crl.clone();
        let app = axum::Router::new().route(
            "/fleet.crl",
            axum::routing::get(move || {
                let shared = shared.clone();
                async move {
                    match shared.lock().unwrap().clone() {
                        Some(pem) => (axum::http::StatusCode::OK, pem),
                        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CrlServer { addr, crl, task }
    }

    fn url(&self) -> String {
        format!("http://{}/fleet.crl", self.addr)
    }

    fn serve(&self, pem: String) {
        *self.crl.lock().unwrap() = Some(pem);
    }

    /// Stops listening: connections are refused.
    async fn stop(self) -> (SocketAddr, Arc<Mutex<Option<String>>>) {
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.crl)
    }
}

async fn counter(tb: &TestBroker, series: &str) -> f64 {
    metric(&scrape(tb).await, series)
}

fn source(ca: &Ca) -> CrlSourceSettings {
    CrlSourceSettings {
        ca_file: None,
        ca_sn: Some(ca.sn.to_string()),
        url: None,
        file: None,
        refresh_secs: 1,
        timeout_secs: 5,
        fail_closed: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_crl_cuts_a_newly_listed_device_off_and_an_outage_keeps_the_last_state() {
    if openssl_missing() {
        return;
    }
    let ca = Ca::new("refreshed CA");
    let dir = tempfile::tempdir().unwrap();
    let server =
        CrlServer::start_at("127.0.0.1:0".parse().unwrap(), Arc::new(Mutex::new(None))).await;
    server.serve(openssl_crl(dir.path(), &ca, &[]));
    let url = server.url();
    let tb = support::start_with(&[&ca], |s| {
        s.tls.crl = vec![CrlSourceSettings {
            url: Some(url),
            fail_closed: true,
            ..source(&ca)
        }];
    })
    .await;
    let ca_sn = ca.sn.to_string();
    let changed = format!(r#"certmq_crl_refreshes_total{{ca_sn="{ca_sn}",changed="true"}}"#);
    let unchanged = format!(r#"certmq_crl_refreshes_total{{ca_sn="{ca_sn}",changed="false"}}"#);
    let failures = format!(r#"certmq_crl_refresh_failures_total{{ca_sn="{ca_sn}"}}"#);
    wait_until(
        Duration::from_secs(10),
        "the first CRL imported",
        async || counter(&tb, &changed).await >= 1.0,
    )
    .await;

    let lost = ca.device("lost");
    let kept = ca.device("kept");
    let mut lost_client = connect(&tb, &lost, "lost", Version::V5).await.unwrap();
    let mut kept_client = connect(&tb, &kept, "kept", Version::V4).await.unwrap();
    // The same CRL again: verified, not imported again.
    wait_until(
        Duration::from_secs(10),
        "an unchanged refresh",
        async || counter(&tb, &unchanged).await >= 1.0,
    )
    .await;

    let listed: [&Device; 1] = [&lost];
    server.serve(openssl_crl(dir.path(), &ca, &listed));
    let published = Instant::now();
    assert_eq!(
        lost_client.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    let took = published.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the newly listed device's session ended {took:?} after the new CRL was published (refresh_secs = 1)"
    );
    assert!(connect(&tb, &lost, "lost", Version::V4).await.is_err());
    kept_client.expect_quiet(Duration::from_millis(100)).await;

    // Each import of a changed CRL has its record in the audit trail, by
    // crl-refresh, with what it did; the unchanged refresh has none.
    let audit_file = tb.broker.settings().storage.data_dir.join("audit.jsonl");
    let refreshes = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["action"] == "CrlRefresh")
            .collect()
    };
    wait_until(
        Duration::from_secs(10),
        "the refresh's audit record",
        async || refreshes().len() >= 2,
    )
    .await;
    let records = refreshes();
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        assert_eq!(record["by"], "crl-refresh", "{record}");
        assert_eq!(record["code"], "Success", "{record}");
        assert_eq!(record["targets"]["CaSn"], ca_sn.as_str(), "{record}");
        let source = record["targets"]["Source"].as_str().unwrap();
        assert!(
            source.starts_with("tls.crl[0] http://127.0.0.1:"),
            "{record}"
        );
    }
    assert_eq!(records[0]["outcome"]["serials"], 0, "{records:#?}");
    assert_eq!(records[1]["outcome"]["serials"], 1, "{records:#?}");
    assert_eq!(records[1]["outcome"]["inactivated"], 1, "{records:#?}");

    // The server goes away: failures are counted, the last state stays,
    // and (fail_closed) the broker says it is not ready.
    let (addr, crl) = server.stop().await;
    let before = counter(&tb, &failures).await;
    wait_until(
        Duration::from_secs(10),
        "a failed refresh counted",
        async || counter(&tb, &failures).await > before,
    )
    .await;
    let (status, body) = readyz(&tb).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&ca_sn) && body.contains("fail_closed"),
        "{body}"
    );
    assert!(connect(&tb, &lost, "lost", Version::V4).await.is_err());
    kept_client.expect_quiet(Duration::from_millis(100)).await;
    assert_eq!(tb.broker.sessions().sessions_of(&kept.identity), 1);

    // Back: ready again; the device stays inactive (a CRL never
    // re-activates, and this one still lists it).
    let _server = CrlServer::start_at(addr, crl).await;
    wait_until(Duration::from_secs(10), "ready again", async || {
        readyz(&tb).await.0 == 200
    })
    .await;
    assert!(connect(&tb, &lost, "lost", Version::V4).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_file_is_read_again_and_its_failure_alone_leaves_the_broker_ready() {
    if openssl_missing() {
        return;
    }
    let ca = Ca::new("file CRL CA");
    let other = Ca::new("other CA");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.crl");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (file, ca_path) = (path.clone(), ca_file.clone());
    let tb = support::start_with(&[&ca, &other], |s| {
        s.tls.crl = vec![CrlSourceSettings {
            ca_sn: None,
            ca_file: Some(ca_path),
            file: Some(file),
            ..source(&ca)
        }];
    })
    .await;
    let failures = format!(r#"certmq_crl_refresh_failures_total{{ca_sn="{}"}}"#, ca.sn);
    // No file yet: failing, counted, and still ready (not fail_closed).
    wait_until(
        Duration::from_secs(10),
        "a failed refresh counted",
        async || counter(&tb, &failures).await >= 1.0,
    )
    .await;
    assert_eq!(readyz(&tb).await.0, 200);

    let device = ca.device("filed");
    let mut client = connect(&tb, &device, "filed", Version::V5).await.unwrap();
    // A CRL of another CA in that file: refused (this source is for `ca`).
    let other_dir = tempfile::tempdir().unwrap();
    std::fs::write(&path, openssl_crl(other_dir.path(), &other, &[])).unwrap();
    let before = counter(&tb, &failures).await;
    wait_until(
        Duration::from_secs(10),
        "the foreign CRL refused",
        async || counter(&tb, &failures).await > before,
    )
    .await;
    client.expect_quiet(Duration::from_millis(100)).await;

    let crl_dir = tempfile::tempdir().unwrap();
    std::fs::write(&path, openssl_crl(crl_dir.path(), &ca, &[&device])).unwrap();
    assert_eq!(
        client.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    assert!(connect(&tb, &device, "filed", Version::V4).await.is_err());
}
