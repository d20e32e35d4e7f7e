//! Interoperability with the real mosquitto clients (Debian package
//! `mosquitto-clients`; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support::{self, Ca, Device, TestBroker};

/// Whether the mosquitto clients are installed. Under CI they must be.
pub(crate) fn mosquitto_available() -> bool {
    let found = std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto_pub is not installed: apt-get install -y mosquitto-clients"
        );
        eprintln!(
            "skipping: mosquitto-clients is not installed (apt-get install -y mosquitto-clients)"
        );
    }
    found
}

struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(tb: &TestBroker, device: &Device) -> Files {
    let dir: &Path = tb.dir.path();
    let write = |name: String, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    Files {
        ca: write("server-ca.pem".into(), &tb.server_ca.cert_pem),
        cert: write(format!("{}.pem", device.name), &device.cert_pem),
        key: write(format!("{}.key", device.name), &device.key_pem),
    }
}

fn mosquitto(program: &str, tb: &TestBroker, f: &Files, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-h", "localhost", "-p", &tb.port().to_string()])
        .arg("--cafile")
        .arg(&f.ca)
        .arg("--cert")
        .arg(&f.cert)
        .arg("--key")
        .arg(&f.key)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Waits for a mosquitto client to exit; returns its stdout. (Its stdout is
/// a pipe, so it is block-buffered: lines arrive at exit, not before.)
async fn finished(child: Child) -> String {
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("the mosquitto client did not exit")
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn wait_connected(tb: &TestBroker, device: &Device, connacks_before: u64) {
    // In the table right after the TLS handshake, CONNACKed a moment later:
    // an admin drop in between would end the session before the client
    // ever saw it open.
    crate::support::wait_until(
        Duration::from_secs(10),
        &format!("{} to connect", device.name),
        async || {
            tb.broker.sessions().sessions_of(&device.identity) > 0
                && tb.broker.metrics().sessions_started() > connacks_before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_exchange_a_message() {
    if !mosquitto_available() {
        return;
    }
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let (d1, d2) = (ca.device("mosq-sub"), ca.device("mosq-pub"));
    let (f1, f2) = (files(&tb, &d1), files(&tb, &d2));

    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("interop/{version}");
        let connacks = tb.broker.metrics().sessions_started();
        let mut sub = mosquitto(
            "mosquitto_sub",
            &tb,
            &f1,
            &[
                "-V", version, "-v", "-t", &topic, "-C", "1", "-i", "mosq-sub",
            ],
        )
        .spawn()
        .expect("mosquitto_sub");
        wait_connected(&tb, &d1, connacks).await;
        // The subscription lands just after the connection: publish until
        // the subscriber has its one message and exits.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sub.try_wait().unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto_sub never got the message"
            );
            let publish = mosquitto(
                "mosquitto_pub",
                &tb,
                &f2,
                &[
                    "-V",
                    version,
                    "-t",
                    &topic,
                    "-m",
                    "hello from mosquitto",
                    "-q",
                    "1",
                ],
            )
            .output()
            .await
            .unwrap();
            assert!(
                publish.status.success(),
                "mosquitto_pub failed: {}",
                String::from_utf8_lossy(&publish.stderr)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let out = finished(sub).await;
        assert_eq!(out.trim(), format!("{topic} hello from mosquitto"));
        assert!(
            tb.broker
                .registry()
                .device(&d2.identity)
                .await
                .unwrap()
                .is_some(),
            "the publisher was auto-registered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_v5_subscriber_sees_administrative_disconnect() {
    if !mosquitto_available() {
        return;
    }
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("mosq-lost");
    let f = files(&tb, &device);
    let connacks = tb.broker.metrics().sessions_started();
    let sub = mosquitto(
        "mosquitto_sub",
        &tb,
        &f,
        &["-V", "mqttv5", "-d", "-t", "x/#", "-i", "mosq-lost"],
    )
    .spawn()
    .unwrap();
    wait_connected(&tb, &device, connacks).await;
    tb.inactivate(&device).await;
    let out = finished(sub).await;
    assert!(out.contains("DISCONNECT (152)"), "{out}");

    // mosquitto_pub is refused at the handshake with a certificate_revoked
    // alert (its -d output shows OpenSSL's error).
    let publish = mosquitto("mosquitto_pub", &tb, &f, &["-d", "-t", "x/y", "-m", "z"])
        .output()
        .await
        .unwrap();
    assert!(!publish.status.success());
    let stdout = String::from_utf8_lossy(&publish.stdout);
    assert!(stdout.contains("certificate revoked"), "{stdout}");
}
