//! MQTT 5 conformance with the Eclipse Paho Python client (`paho-mqtt`
//! 2.x, pinned in `tests/paho/requirements.txt`): `tests/paho/
//! mqtt5_conformance.py` runs one check per feature against a real
//! `certmq serve` over mutual TLS, each naming the section of the MQTT 5
//! specification it checks (QoS and downgrade, overlapping subscriptions,
//! subscription identifiers and options, retained messages, shared
//! subscriptions, `$` topics, topic aliases both ways, receive maximum,
//! maximum packet size, message expiry, passed-through properties,
//! offline queueing, session expiry, clean start, assigned client id,
//! server keep alive, wills and will delay, take-over, redelivery).

use std::path::Path;
use std::process::Command;

use crate::support::python;

const PAHO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho");

#[test]
fn eclipse_paho_mqtt5_conformance() {
    if !python::tools_available() {
        return;
    }
    let venv = python::venv("paho-venv", &Path::new(PAHO_DIR).join("requirements.txt"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(PAHO_DIR).join("certmq.toml"),
        dir.path().join("certmq.toml"),
    )
    .unwrap();
    let broker = crate::sdk::spawn(dir);
    let certs = broker.path().join("certs/dev");
    let output = Command::new(venv.join("bin/python"))
        .arg(Path::new(PAHO_DIR).join("mqtt5_conformance.py"))
        .env("CERTMQ_MQTT_PORT", broker.mqtt.to_string())
        .env("CERTMQ_CA", certs.join("ca.pem"))
        .env("CERTMQ_CERTS", &certs)
        .env("CERTMQ_DEVICES", "device-1,device-2,app")
        .output()
        .unwrap();
    drop(broker);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "Paho MQTT 5 checks failed:\n{}\n{}",
        failed.join("\n"),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("PASS")).count() >= 26,
        "{stdout}"
    );
}
