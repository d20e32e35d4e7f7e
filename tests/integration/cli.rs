//! The `certmq` binary: `serve` on embedded defaults (development PKI),
//! configuration errors, and the `pki` subcommands.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::mqtt::{Version, connect_with};
use crate::support::pki::serial_of;
use crate::support::{self, Ca, Device};

const BIN: &str = env!("CARGO_BIN_EXE_certmq");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn certmq(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn device_from_files(dir: &Path, name: &str, ca: &str) -> Device {
    let cert_pem = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
    let key_pem = std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap();
    let ca_pem = std::fs::read_to_string(dir.join(ca)).unwrap();
    Device {
        name: name.into(),
        identity: certmq::DeviceIdentity {
            ca_sn: certmq::CaSn(serial_of(&ca_pem)),
            device_sn: certmq::DeviceSn(serial_of(&cert_pem)),
        },
        cert_pem,
        key_pem,
    }
}

/// Runs `certmq serve` in `dir` until it prints its banner; returns the child.
async fn serve(dir: &Path, mqtt: u16, admin: u16) -> (tokio::process::Child, String) {
    let mut child = certmq(dir)
        .arg("serve")
        .env("CERTMQ__MQTT__LISTEN", format!("127.0.0.1:{mqtt}"))
        .env("CERTMQ__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            banner.push_str(&line);
            banner.push('\n');
            if banner.lines().filter(|l| l.starts_with("=====")).count() == 2 {
                return;
            }
        }
    })
    .await;
    assert!(done.is_ok(), "no banner from certmq serve; got {banner}");
    (child, banner)
}

async fn sigterm_and_wait(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("certmq did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "certmq exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_embedded_defaults_with_a_development_pki() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, admin) = (free_port(), free_port());
    let (child, banner) = serve(dir.path(), mqtt, admin).await;
    assert!(banner.contains("DEVELOPMENT PKI"), "{banner}");
    assert!(banner.contains("mosquitto_sub"), "{banner}");
    assert!(banner.contains("InactivateDeviceCertificate"), "{banner}");
    let pki = dir.path().join("certs/dev");
    let readme = std::fs::read_to_string(pki.join("README.txt")).unwrap();
    assert!(readme.contains("DEVELOPMENT"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(pki.join("device-1.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "private keys are not world-readable");

    // A device of the development PKI connects; the dev CA was registered.
    let server_ca = Ca::from_files(&pki.join("ca.pem"), &pki.join("ca.key"));
    let device = device_from_files(&pki, "device-1", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    let client = connect_with(mqtt, tls, "device-1", Version::V5, |_| {})
        .await
        .unwrap();
    client.disconnect().await;
    let ca_before = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    sigterm_and_wait(child).await;

    // A second start reuses the PKI.
    let (mqtt, admin) = (free_port(), free_port());
    let (child, banner) = serve(dir.path(), mqtt, admin).await;
    assert!(banner.contains("DEVELOPMENT PKI"));
    assert_eq!(
        std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        ca_before
    );
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    connect_with(mqtt, tls, "device-1", Version::V4, |_| {})
        .await
        .unwrap();
    sigterm_and_wait(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str); 3] = [
        ("CERTMQ__MQTT__LISTEN", "not-an-address", "mqtt.listen"),
        (
            "CERTMQ__MQTT__HANDSHAKE_TIMEOUT_MS",
            "soon",
            "handshake_timeout_ms",
        ),
        (
            "CERTMQ__TLS__SERVER_CERT",
            "/nonexistent/server.pem",
            "tls.server_key",
        ),
    ];
    for (var, value, key) in cases {
        let output = certmq(dir.path())
            .arg("serve")
            .env(var, value)
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{var}={value}: {stderr}");
    }
    let missing = certmq(dir.path())
        .args(["serve", "--config", "missing.toml"])
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("missing.toml"));

    // A server certificate file that does not exist is named.
    let output = certmq(dir.path())
        .arg("serve")
        .env("CERTMQ__TLS__SERVER_CERT", "/nonexistent/server.pem")
        .env("CERTMQ__TLS__SERVER_KEY", "/nonexistent/server.key")
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/server.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_subcommands_make_certificates_the_broker_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(BIN)
            .current_dir(d)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "pki",
        "create-ca",
        "--cn",
        "Factory CA",
        "--out-cert",
        "ca.pem",
        "--out-key",
        "ca.key",
    ]);
    run(&[
        "pki",
        "issue-device",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--cn",
        "meter-7",
        "--out-cert",
        "meter-7.pem",
        "--out-key",
        "meter-7.key",
        "--key",
        "ed25519",
    ]);
    run(&[
        "pki",
        "issue-server",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
        "--out-cert",
        "server.pem",
        "--out-key",
        "server.key",
    ]);
    run(&[
        "pki",
        "verification-cert",
        "--ca-cert",
        "ca.pem",
        "--ca-key",
        "ca.key",
        "--code",
        "REG-CODE-42",
        "--out-cert",
        "verify.pem",
        "--out-key",
        "verify.key",
    ]);

    // The verification certificate names the code and is issued by the CA.
    let verify = std::fs::read_to_string(d.join("verify.pem")).unwrap();
    let der = pem::parse(&verify).unwrap();
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        _,
    >>::from_der(der.contents())
    .unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "REG-CODE-42"
    );
    assert!(cert.issuer().to_string().contains("Factory CA"));

    // The broker runs on the server certificate and admits the device.
    let server_ca = Ca::from_files(&d.join("ca.pem"), &d.join("ca.key"));
    let tb = support::start_with(&[&server_ca], |s| {
        s.tls.server_cert = d.join("server.pem").display().to_string();
        s.tls.server_key = d.join("server.key").display().to_string();
    })
    .await;
    let device = device_from_files(d, "meter-7", "ca.pem");
    let tls = crate::support::pki::client_config(&server_ca, Some(&device));
    connect_with(tb.port(), tls, "meter-7", Version::V4, |_| {})
        .await
        .unwrap();
    let record = tb.broker.registry().device(&device.identity).unwrap();
    assert_eq!(&*record.name, "meter-7");

    // --help explains the subcommands.
    let help = std::process::Command::new(BIN)
        .args(["pki", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for sub in [
        "create-ca",
        "issue-device",
        "issue-server",
        "verification-cert",
    ] {
        assert!(help.contains(sub), "{help}");
    }
}
