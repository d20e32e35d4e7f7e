//! CRL import (issue 14 point 1): a CRL made with `openssl ca -gencrl` for
//! a CA with three connected devices and two never-seen serials. After
//! ImportCrl the three sessions are closed before the answer (3.1.1: EOF;
//! 5: DISCONNECT 0x98), the two unknown devices are refused at their first
//! connection, a second import changes nothing, and a CRL signed by
//! another key under the same name is refused. ActiveDeviceCertificate
//! unblocks a blocked serial.

use std::process::Command;
use std::time::Duration;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, Device, TestBroker};

/// `openssl ca -gencrl` for `ca` listing `revoked`, in a scratch directory.
pub(crate) fn openssl_crl(dir: &std::path::Path, ca: &Ca, revoked: &[&Device]) -> String {
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("ca.key"), &ca.key_pem).unwrap();
    let index: String = revoked
        .iter()
        .map(|d| {
            format!(
                "R\t351231000000Z\t260101000000Z\t{}\tunknown\t/CN={}\n",
                d.identity.device_sn, d.name
            )
        })
        .collect();
    std::fs::write(dir.join("index.txt"), index).unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        "[ ca ]\ndefault_ca = test\n[ test ]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 7\n",
    )
    .unwrap();
    let output = Command::new("openssl")
        .current_dir(dir)
        .args([
            "ca", "-gencrl", "-batch", "-config", "ca.cnf", "-keyfile", "ca.key", "-cert",
            "ca.pem", "-out", "crl.pem",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl ca -gencrl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(dir.join("crl.pem")).unwrap()
}

/// Whether `openssl` is missing (the test is then skipped; under CI it
/// must be there).
pub(crate) fn openssl_missing() -> bool {
    if Command::new("openssl").arg("version").output().is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "openssl is missing: apt-get install -y openssl"
    );
    eprintln!("skipping: openssl is not installed");
    true
}

async fn import(tb: &TestBroker, crl: &str) -> (u16, serde_json::Value) {
    let instance = tb.instance();
    tb.admin(&[
        ("Action", "ImportCrl"),
        ("MqttInstanceId", &instance),
        ("CrlContent", crl),
    ])
    .await
}

fn counts(body: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| body[k].as_u64().unwrap_or(u64::MAX);
    (n("Inactivated"), n("Blocked"), n("AlreadyInactive"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_of_a_registered_ca_cuts_its_devices_off_and_blocks_unknown_serials() {
    if openssl_missing() {
        return;
    }
    let ca = Ca::new("crl CA");
    let tb = support::start(&[&ca]).await;
    let connected: Vec<_> = (0..3).map(|i| ca.device(&format!("listed-{i}"))).collect();
    let unseen: Vec<_> = (0..2).map(|i| ca.device(&format!("unseen-{i}"))).collect();
    let bystander = ca.device("not-listed");
    let mut v4 = connect(&tb, &connected[0], "listed-0", Version::V4)
        .await
        .unwrap();
    let mut v5a = connect(&tb, &connected[1], "listed-1", Version::V5)
        .await
        .unwrap();
    let mut v5b = connect(&tb, &connected[2], "listed-2", Version::V5)
        .await
        .unwrap();
    let mut fine = connect(&tb, &bystander, "bystander", Version::V5)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let listed: Vec<&Device> = connected.iter().chain(&unseen).collect();
    let crl = openssl_crl(dir.path(), &ca, &listed);
    let (status, body) = import(&tb, &crl).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["CaSn"], ca.sn.to_string());
    assert_eq!(counts(&body), (3, 2, 0), "{body}");
    // Closed before the answer.
    for d in &connected {
        assert_eq!(
            tb.broker.sessions().sessions_of(&d.identity),
            0,
            "{}",
            d.name
        );
    }
    assert_eq!(v4.expect_closed().await, None);
    assert_eq!(
        v5a.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    assert_eq!(
        v5b.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    fine.expect_quiet(Duration::from_millis(200)).await;
    // The never-seen serials are refused at their first connection.
    for d in &unseen {
        assert!(
            connect(&tb, d, &d.name, Version::V4).await.is_err(),
            "{}",
            d.name
        );
    }
    for d in &connected {
        assert!(
            connect(&tb, d, "again", Version::V4).await.is_err(),
            "{}",
            d.name
        );
    }
    // Again: nothing changes; with the V1 signature (the SDKs'
    // CommonRequest) as with V3.
    let (status, body) = import(&tb, &crl).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), (0, 0, 5), "{body}");
    let v1: Vec<(String, String)> = [
        ("Action", "ImportCrl"),
        ("MqttInstanceId", tb.instance().as_str()),
        ("CrlContent", crl.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (status, body) = tb.client.call_v1(&v1, &Default::default()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), (0, 0, 5), "{body}");
    // And from the command line, DER this time.
    let der = dir.path().join("crl.der");
    let converted = Command::new("openssl")
        .args([
            "crl",
            "-in",
            dir.path().join("crl.pem").to_str().unwrap(),
            "-outform",
            "DER",
        ])
        .args(["-out", der.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(converted.success());
    let output = Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["registry", "import-crl", der.to_str().unwrap()])
        .env(
            "CERTMQ_ADMIN_ENDPOINT",
            format!("http://{}", tb.broker.admin_addr()),
        )
        .env("CERTMQ_ACCESS_KEY_ID", support::TEST_KEY_ID)
        .env("CERTMQ_ACCESS_KEY_SECRET", support::TEST_KEY_SECRET)
        .env("CERTMQ__INSTANCE__ID", tb.instance())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"AlreadyInactive\": 5"), "{stdout}");
    // A large CRL (400 serials, ~18 KB of PEM) goes as a signed form body,
    // not in the URL.
    let many: Vec<Device> = (0..400).map(|i| ca.device(&format!("bulk-{i}"))).collect();
    let bulk_dir = tempfile::tempdir().unwrap();
    let bulk = openssl_crl(bulk_dir.path(), &ca, &many.iter().collect::<Vec<_>>());
    assert!(bulk.len() > 8192, "{} bytes", bulk.len());
    let (status, body) = import(&tb, &bulk).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&body), (0, 400, 0), "{body}");

    // Signed by another key under the same name: refused, nothing done.
    let impostor = Ca::new("crl CA");
    let victim = ca.device("victim");
    connect(&tb, &victim, "victim", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let forged = openssl_crl(elsewhere.path(), &impostor, &[&victim]);
    let (status, body) = import(&tb, &forged).await;
    assert_eq!(status, 400, "{body}");
    let message = body["Message"].as_str().unwrap_or_default();
    assert!(message.contains("signature does not verify"), "{message}");
    connect(&tb, &victim, "victim", Version::V4)
        .await
        .expect("untouched by a forged CRL")
        .disconnect()
        .await;
    // Not a CRL at all.
    let (status, body) = import(&tb, &ca.cert_pem).await;
    assert_eq!(status, 400, "{body}");

    // ActiveDeviceCertificate unblocks a blocked serial: it registers on
    // its next connection.
    tb.activate(&unseen[0]).await;
    connect(&tb, &unseen[0], "unblocked", Version::V4)
        .await
        .expect("unblocked")
        .disconnect()
        .await;
    assert!(
        connect(&tb, &unseen[1], "still", Version::V4)
            .await
            .is_err()
    );
}
