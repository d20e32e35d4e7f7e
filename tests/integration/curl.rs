//! The documented curl example (`docs/examples/acs-curl.sh`: bash, openssl
//! and curl, signature V1) inactivates a connected device.

use std::process::Command;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, TestBroker};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/acs-curl.sh");

/// The script, signing with the test access key, aimed at `tb`.
fn script(tb: &TestBroker) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(SCRIPT);
    command
        .env("ACCESS_KEY_ID", support::TEST_KEY_ID)
        .env("ACCESS_KEY_SECRET", support::TEST_KEY_SECRET)
        .env("ENDPOINT", format!("http://{}", tb.broker.admin_addr()));
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_example_inactivates_a_device() {
    for tool in ["curl", "openssl", "bash"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{tool} is missing: apt-get install -y {tool}"
            );
            eprintln!("skipping: {tool} is not installed");
            return;
        }
    }
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("d1");
    let mut client = connect(&tb, &device, "d1", Version::V5).await.unwrap();
    let output = script(&tb)
        .arg("InactivateDeviceCertificate")
        .arg(format!("MqttInstanceId={}", tb.instance()))
        .arg(format!("CaSn={}", device.identity.ca_sn))
        .arg(format!("DeviceSn={}", device.identity.device_sn))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&device.identity.device_sn.to_string()),
        "{stdout}"
    );
    assert_eq!(
        client.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );

    // An error answer makes the script fail, printing it.
    let output = script(&tb)
        .arg("GetCaCertificate")
        .arg(format!("MqttInstanceId={}", tb.instance()))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("ParameterFieldCheckFailed"));
}
