//! Shared test support: a real broker on free loopback ports, real TLS
//! clients, real HTTP admin calls, and waits on the broker's state.

pub mod mqtt;
pub mod pki;
pub mod postgres;
pub mod python;
pub mod raw;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use certmq::admin::auth::AccessKey;
use certmq::admin::client::AdminClient;
use certmq::instance::Listening;
use certmq::{Broker, Settings};
use serde_json::Value;
use tempfile::TempDir;

pub use pki::{Ca, Device};

/// A running broker with its files.
pub struct TestBroker {
    pub broker: Broker,
    /// The CA that issued the broker's server certificate; clients trust it.
    pub server_ca: Ca,
    pub dir: TempDir,
    /// Signs with the test access key (all actions, the owner's account).
    pub client: AdminClient,
}

/// The access key of test brokers.
pub const TEST_KEY_ID: &str = "LTAI5tCertmqTestKey0001";
pub const TEST_KEY_SECRET: &str = "certmq-test-secret-0123456789";

/// Starts a broker trusting the device CAs `cas`, on free loopback ports.
pub async fn start(cas: &[&Ca]) -> TestBroker {
    start_with(cas, |_| {}).await
}

pub async fn start_with(cas: &[&Ca], tweak: impl FnOnce(&mut Settings)) -> TestBroker {
    init_tracing();
    certmq::fault::enable();
    // reqwest is built without a crypto provider of its own (certmq's
    // AdminClient hands it one); tests that call reqwest directly get the
    // broker's.
    let _ = rustls::crypto::CryptoProvider::install_default((*certmq::tls::provider()).clone());
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("certmq test server CA");
    let (server_cert, server_key) = server_ca.server();
    let write = |name: &str, contents: &str| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let server_cert = write("server.pem", &server_cert);
    let server_key = write("server.key", &server_key);
    let ca_files = cas
        .iter()
        .enumerate()
        .map(|(i, ca)| write(&format!("ca-{i}.pem"), &ca.cert_pem))
        .collect();

    let mut settings = Settings::embedded_defaults().unwrap();
    settings.mqtt.listen = "127.0.0.1:0".into();
    settings.admin.listen = "127.0.0.1:0".into();
    settings.mqtt.max_connections = 512;
    // Tests connect from one address far faster than a device fleet would;
    // the per-address limit has its own test.
    settings.mqtt.connections_per_second_per_ip = 0;
    settings.tls.server_cert = server_cert.display().to_string();
    settings.tls.server_key = server_key.display().to_string();
    settings.tls.ca_files = ca_files;
    settings.storage.data_dir = dir.path().join("data");
    settings.admin.access_keys = vec![AccessKey {
        id: TEST_KEY_ID.into(),
        secret: TEST_KEY_SECRET.into(),
        account: settings.instance.owner.clone(),
        actions: vec!["mq:*".into()],
    }];
    // Most tests are about other things than topic authorization: they get
    // every topic (authz.rs tests the embedded policies and others).
    settings
        .authz
        .policies
        .push(certmq::authz::set::PolicySettings {
            name: "allow-all".into(),
            rules: vec![certmq::authz::set::RuleSettings {
                effect: "allow".into(),
                actions: vec!["publish".into(), "subscribe".into()],
                topics: vec!["#".into()],
            }],
        });
    settings.authz.default_policies = vec!["allow-all".into()];
    tweak(&mut settings);
    TestBroker::launch(settings, server_ca, dir).await
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.broker.mqtt_addr().port()
    }

    /// Calls the admin API, signed (V3): `Action` names the operation, the
    /// rest are its parameters.
    pub async fn admin(&self, params: &[(&str, &str)]) -> (u16, Value) {
        let action = params
            .iter()
            .find(|(k, _)| *k == "Action")
            .map(|(_, v)| *v)
            .unwrap_or("");
        let rest: Vec<(String, String)> = params
            .iter()
            .filter(|(k, _)| *k != "Action")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.client.call(action, &rest).await.unwrap()
    }

    /// Starts a broker on `settings`, with an admin client for it.
    pub async fn launch(settings: Settings, server_ca: Ca, dir: TempDir) -> TestBroker {
        let broker = Broker::start(settings).await.unwrap();
        let client = AdminClient::new(
            &broker.admin_addr().to_string(),
            TEST_KEY_ID,
            TEST_KEY_SECRET,
        )
        .unwrap();
        TestBroker {
            broker,
            server_ca,
            dir,
            client,
        }
    }

    /// Stops the broker and starts it again on the same settings and data
    /// directory (on new ports).
    pub async fn restart(self) -> TestBroker {
        let settings = self.broker.settings().clone();
        self.broker.shutdown().await;
        TestBroker::launch(settings, self.server_ca, self.dir).await
    }

    /// Stops the broker; what it ran on, to launch another.
    pub async fn stop(self) -> (Settings, Ca, TempDir) {
        let settings = self.broker.settings().clone();
        self.broker.shutdown().await;
        (settings, self.server_ca, self.dir)
    }

    /// The instance id of this broker.
    pub fn instance(&self) -> String {
        self.broker.settings().instance.id.clone()
    }

    /// The device parameters of a device certificate operation.
    pub async fn device_call(&self, action: &str, device: &Device) -> (u16, Value) {
        let ca_sn = device.identity.ca_sn.to_string();
        let device_sn = device.identity.device_sn.to_string();
        let instance = self.broker.settings().instance.id.clone();
        self.admin(&[
            ("Action", action),
            ("MqttInstanceId", &instance),
            ("CaSn", &ca_sn),
            ("DeviceSn", &device_sn),
        ])
        .await
    }

    /// InactivateDeviceCertificate, asserting success.
    pub async fn inactivate(&self, device: &Device) {
        let (status, body) = self
            .device_call("InactivateDeviceCertificate", device)
            .await;
        assert_eq!(status, 200, "inactivate failed: {body}");
    }

    /// ActiveDeviceCertificate, asserting success.
    pub async fn activate(&self, device: &Device) {
        let (status, body) = self.device_call("ActiveDeviceCertificate", device).await;
        assert_eq!(status, 200, "activate failed: {body}");
    }
}

/// Polls `condition` until it holds; panics, naming `what`, if it still
/// does not after `within`. For waiting on the broker's state (a session
/// registered or gone, a counter moved) instead of sleeping.
pub async fn wait_until(within: Duration, what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}, in vain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the `certmq serve` process `pid`, whose data directory is
/// `data_dir`, has bound its listeners (started with port 0, it says where
/// in `listen.json`). `exited` tells whether the process has exited: if it
/// does first, that is the `Err`. Panics after 30 s.
pub fn wait_listening(
    data_dir: &Path,
    pid: u32,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> Result<Listening, ExitStatus> {
    let started = Instant::now();
    loop {
        // A file with another pid was left by a broker killed before this
        // one started; this one replaces it once it listens.
        match Listening::read(data_dir) {
            Ok(listening) if listening.pid == pid => return Ok(listening),
            _ => {}
        }
        if let Some(status) = exited() {
            return Err(status);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "certmq serve (pid {pid}) wrote no {} within 30 s",
            data_dir.join(certmq::instance::LISTEN_FILE).display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `/readyz`: status and body.
pub async fn readyz(tb: &TestBroker) -> (u16, String) {
    let response = reqwest::get(format!("http://{}/readyz", tb.broker.admin_addr()))
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The broker's `/metrics` text.
pub async fn scrape(tb: &TestBroker) -> String {
    reqwest::get(format!("http://{}/metrics", tb.broker.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample in a scrape, e.g.
/// `certmq_handshakes_refused_total{reason="timeout"}` (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}
