//! The registry survives restarts; a store that is damaged, unwritable or
//! full is reported clearly and loses nothing; backups round-trip.

use std::io::Write;
use std::os::unix::process::CommandExt;

use certmq::pki::{CaSigner, KeyKind};
use certmq::store::backup;
use serde_json::Value;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, TestBroker};

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn call(tb: &TestBroker, action: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    tb.client.call(action, &p(pairs)).await.unwrap()
}

async fn register(tb: &TestBroker, ca: &Ca) -> (u16, Value) {
    let instance = tb.instance();
    let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
    let verification = signer
        .issue_verification(tb.broker.registration_code(), KeyKind::P256)
        .unwrap();
    call(
        tb,
        "RegisterCaCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaName", "registered by API"),
            ("CaContent", &ca.cert_pem),
            ("VerificationContent", &verification.cert_pem),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_cas_devices_inactivations_and_deletions() {
    keeps_everything_across_restarts(|_| {}).await;
}

/// CAs (declared and registered through the API), devices, inactivations
/// and deletions survive a restart, and the broker acts on them; run on
/// each store backend (PostgreSQL: `postgres.rs`).
pub(crate) async fn keeps_everything_across_restarts(tweak: impl FnOnce(&mut certmq::Settings)) {
    let declared = Ca::new("declared CA");
    let tb = support::start_with(&[&declared], tweak).await;
    let instance = tb.instance();
    let code_before = tb.broker.registration_code().to_owned();
    let api_ca = Ca::new("API CA");
    assert_eq!(register(&tb, &api_ca).await.0, 200);
    let (kept, inactive, deleted) = (
        api_ca.device("kept"),
        api_ca.device("inactive"),
        declared.device("deleted"),
    );
    for device in [&kept, &inactive, &deleted] {
        connect(&tb, device, &device.name, Version::V4)
            .await
            .unwrap()
            .disconnect()
            .await;
    }
    tb.inactivate(&inactive).await;
    let (status, _) = call(
        &tb,
        "DeleteDeviceCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("CaSn", &deleted.identity.ca_sn.to_string()),
            ("DeviceSn", &deleted.identity.device_sn.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &tb,
        "InactivateCaCertificate",
        &[
            ("MqttInstanceId", &instance),
            ("Sn", &declared.sn.to_string()),
        ],
    )
    .await;
    assert_eq!(status, 200);

    let tb = tb.restart().await;
    assert_eq!(
        tb.broker.registration_code(),
        code_before,
        "the registration code is kept"
    );
    let registry = tb.broker.registry();
    assert_eq!(
        registry.ca_status(&declared.sn),
        Some(certmq::CertStatus::Inactive)
    );
    let record = registry
        .ca(&api_ca.sn)
        .expect("the API-registered CA is kept");
    assert_eq!(record.name, "registered by API");
    assert_eq!(record.status, certmq::CertStatus::Active);
    assert!(record.verification_pem.is_some());
    assert_eq!(
        registry.device_status(&kept.identity),
        Some(certmq::CertStatus::Active)
    );
    assert_eq!(
        registry.device_status(&inactive.identity),
        Some(certmq::CertStatus::Inactive)
    );
    assert_eq!(registry.device_status(&deleted.identity), None);
    let stored = registry.device(&kept.identity).await.unwrap().unwrap();
    assert_eq!(&*stored.name, "kept");
    assert_eq!(stored.pem.trim(), kept.cert_pem.trim());

    // And the broker acts on it.
    connect(&tb, &kept, "kept", Version::V5).await.unwrap();
    let err = connect(&tb, &inactive, "inactive", Version::V4)
        .await
        .err()
        .expect("inactive after restart");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    assert!(
        connect(&tb, &deleted, "deleted", Version::V4)
            .await
            .is_err(),
        "its CA is inactive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_cannot_share_the_data_directory() {
    let tb = support::start(&[]).await;
    let err = certmq::Broker::start(tb.broker.settings().clone())
        .await
        .err()
        .expect("two brokers on one data directory");
    let message = err.to_string();
    assert!(
        message.contains("in use by another certmq process"),
        "{message}"
    );
    assert!(
        message.contains(&tb.broker.settings().storage.data_dir.display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_database_stops_start_up_naming_the_file() {
    // Garbage where the database should be.
    let tb = support::start(&[]).await;
    let mut settings = tb.broker.settings().clone();
    tb.broker.shutdown().await;
    let db = settings.storage.data_dir.join("registry.db");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            settings
                .storage
                .data_dir
                .join(format!("registry.db{suffix}")),
        );
    }
    std::fs::write(&db, vec![0x5a; 8192]).unwrap();
    let message = certmq::Broker::start(settings.clone())
        .await
        .err()
        .expect("started on garbage")
        .to_string();
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("not a database"), "{message}");

    // A real database with damaged pages fails its integrity check.
    let dir = tempfile::tempdir().unwrap();
    settings.storage.data_dir = dir.path().join("data");
    {
        let ca = Ca::new("fleet CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).unwrap();
        settings.tls.ca_files = vec![ca_file];
        let broker = certmq::Broker::start(settings.clone()).await.unwrap();
        broker.shutdown().await;
    }
    let db = settings.storage.data_dir.join("registry.db");
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 4096 * 3, "{} bytes", bytes.len());
    for b in &mut bytes[4096 + 100..4096 * 3 - 100] {
        *b = 0xa5;
    }
    std::fs::write(&db, &bytes).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(
            settings
                .storage
                .data_dir
                .join(format!("registry.db{suffix}")),
        );
    }
    let message = certmq::Broker::start(settings)
        .await
        .err()
        .expect("started on a damaged database")
        .to_string();
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(
        message.contains("integrity") || message.contains("malformed"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_data_directory_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let is_root = nix::unistd::geteuid().is_root();
    let message = if is_root {
        // Root writes anywhere: run the broker as `nobody` instead, on a
        // directory that belongs to root.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A copy of the binary `nobody` can reach (the build directory may
        // be under a private home).
        let binary = dir.path().join("certmq");
        std::fs::copy(env!("CARGO_BIN_EXE_certmq"), &binary).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut command = std::process::Command::new(&binary);
        command
            .arg("serve")
            .current_dir(dir.path())
            .env("CERTMQ__STORAGE__DATA_DIR", &data)
            .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
            .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
            .env("CERTMQ__TLS__DEV_PKI_DIR", dir.path().join("pki"))
            .uid(65534)
            .gid(65534);
        // The copy just written may still be open for writing in a child
        // another test is forking right now (ETXTBSY): try again until
        // that child has exec'd.
        let mut attempts = 0;
        let output = loop {
            match command.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o500)).unwrap();
        let mut settings = certmq::Settings::embedded_defaults().unwrap();
        settings.storage.data_dir = data.clone();
        settings.mqtt.listen = "127.0.0.1:0".into();
        settings.admin.listen = "127.0.0.1:0".into();
        settings.tls.dev_pki_dir = dir.path().join("pki");
        certmq::Broker::start(settings)
            .await
            .err()
            .expect("started")
            .to_string()
    };
    assert!(message.contains(&data.display().to_string()), "{message}");
    assert!(message.contains("ermission denied"), "{message}");
}

/// A device certificate line for a backup, with a body of about `size`.
fn device_line(ca_sn: &str, n: usize, size: usize) -> String {
    serde_json::json!({
        "kind": "device",
        "ca_sn": ca_sn,
        "device_sn": format!("{:08X}", n + 1),
        "name": format!("filler-{n}"),
        "status": "1",
        "valid_begin_ms": 0,
        "valid_end_ms": 4_000_000_000_000i64,
        "pem": "F".repeat(size),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_fails_writes_with_500_and_changes_nothing() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let mut settings = tb.broker.settings().clone();
    tb.broker.shutdown().await;
    // Fill the store past 1 MiB, then cap it at 1 MiB.
    let mut lines = Vec::new();
    for n in 0..1500 {
        lines.push(device_line(&ca.sn.to_string(), n, 1000));
    }
    let text = lines.join("\n");
    let db = settings.storage.data_dir.join("registry.db");
    let imported = backup::import(&db, &mut text.as_bytes()).unwrap();
    assert_eq!(imported.devices, 1500);
    settings.storage.max_size_mb = 1;
    let broker = certmq::Broker::start(settings).await.unwrap();
    let client = certmq::admin::client::AdminClient::new(
        &broker.admin_addr().to_string(),
        support::TEST_KEY_ID,
        support::TEST_KEY_SECRET,
    )
    .unwrap();
    let instance = broker.settings().instance.id.clone();
    // Register CAs until the store is full: the first refusal is a 500,
    // and the refused CA is nowhere; the ones before it are all there.
    let mut accepted = Vec::new();
    let mut refused = None;
    for n in 0..64 {
        let new_ca = Ca::new(&format!("CA number {n}"));
        let signer = CaSigner::from_pem(&new_ca.cert_pem, &new_ca.key_pem).unwrap();
        let verification = signer
            .issue_verification(broker.registration_code(), KeyKind::P256)
            .unwrap();
        let (status, body) = client
            .call(
                "RegisterCaCertificate",
                &p(&[
                    ("MqttInstanceId", &instance),
                    ("CaName", "one more"),
                    ("CaContent", &new_ca.cert_pem),
                    ("VerificationContent", &verification.cert_pem),
                ]),
            )
            .await
            .unwrap();
        if status == 200 {
            accepted.push(new_ca);
            continue;
        }
        assert_eq!(
            (status, body["Code"].as_str().unwrap_or("")),
            (500, "InternalError"),
            "{body}"
        );
        assert!(body["Message"].as_str().unwrap().contains("full"), "{body}");
        refused = Some(new_ca);
        break;
    }
    let refused = refused.expect("the capped store never filled up");
    assert!(broker.registry().ca(&refused.sn).is_none());
    let (status, body) = client
        .call(
            "GetCaCertificate",
            &p(&[
                ("MqttInstanceId", &instance),
                ("Sn", &refused.sn.to_string()),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["Code"].as_str().unwrap()),
        (500, "FindCaBySnError")
    );
    for ca in &accepted {
        assert!(broker.registry().ca(&ca.sn).is_some());
    }
    // New devices: admitted only with a durable record, refused once the
    // store has no room; the broker stays up throughout.
    let server_ca = tb.server_ca;
    let mut refused_device = None;
    for n in 0..200 {
        let newcomer = ca.device(&format!("newcomer-{n}"));
        let tls = crate::support::pki::client_config(&server_ca, Some(&newcomer));
        let attempt = crate::support::mqtt::connect_with(
            broker.mqtt_addr().port(),
            tls,
            &newcomer.name,
            Version::V4,
            |_| {},
        )
        .await;
        match attempt {
            Ok(client) => {
                client.disconnect().await;
                assert!(
                    broker
                        .registry()
                        .device(&newcomer.identity)
                        .await
                        .unwrap()
                        .is_some(),
                    "{} was admitted without a durable record",
                    newcomer.name
                );
            }
            Err(_) => {
                refused_device = Some(newcomer);
                break;
            }
        }
    }
    let refused_device = refused_device.expect("the capped store never refused a device");
    assert_eq!(
        broker.registry().device_status(&refused_device.identity),
        None
    );
    assert!(
        broker
            .registry()
            .device(&refused_device.identity)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let (a, b) = (ca.device("a"), ca.device("b"));
    for device in [&a, &b] {
        connect(&tb, device, &device.name, Version::V4)
            .await
            .unwrap()
            .disconnect()
            .await;
    }
    tb.inactivate(&b).await;
    let db = tb.broker.settings().storage.data_dir.join("registry.db");
    let mut exported = Vec::new();
    // While the broker runs.
    let lines = backup::export(&db, &mut exported).unwrap();
    assert_eq!(lines, 4, "instance, CA, two devices");
    let code = tb.broker.registration_code().to_owned();
    let server_ca = tb.server_ca;
    drop(tb.broker);

    // Into a fresh data directory; a broker there has the same state.
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("backup.jsonl")).unwrap();
    file.write_all(&exported).unwrap();
    let mut settings = certmq::Settings::embedded_defaults().unwrap();
    settings.storage.data_dir = dir.path().join("data");
    std::fs::create_dir_all(&settings.storage.data_dir).unwrap();
    let imported = backup::import(
        &settings.storage.data_dir.join("registry.db"),
        &mut exported.as_slice(),
    )
    .unwrap();
    assert_eq!((imported.cas, imported.devices), (1, 2));
    // Importing twice updates instead of duplicating.
    backup::import(
        &settings.storage.data_dir.join("registry.db"),
        &mut exported.as_slice(),
    )
    .unwrap();
    let (server_cert, server_key) = server_ca.server();
    std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key).unwrap();
    settings.tls.server_cert = dir.path().join("server.pem").display().to_string();
    settings.tls.server_key = dir.path().join("server.key").display().to_string();
    settings.mqtt.listen = "127.0.0.1:0".into();
    settings.admin.listen = "127.0.0.1:0".into();
    let broker = certmq::Broker::start(settings).await.unwrap();
    assert_eq!(broker.registration_code(), code);
    assert_eq!(broker.registry().device_count(), 2);
    assert_eq!(
        broker.registry().device_status(&a.identity),
        Some(certmq::CertStatus::Active)
    );
    assert_eq!(
        broker.registry().device_status(&b.identity),
        Some(certmq::CertStatus::Inactive)
    );
    assert_eq!(
        broker.registry().ca_status(&ca.sn),
        Some(certmq::CertStatus::Active)
    );

    // A broken line is named, and nothing of the file is imported.
    let broken = format!(
        "{}\n{{\"kind\": \"device\", \"oops\": 1}}\n",
        device_line(&ca.sn.to_string(), 99, 10)
    );
    let dir2 = tempfile::tempdir().unwrap();
    let err = backup::import(&dir2.path().join("registry.db"), &mut broken.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1") || err.contains("line 2"), "{err}");

    // A permission is checked as the API checks it.
    for (line, needle) in [
        (
            r#"{"kind":"permission","identity_type":"USER","identity":"u","topic":"a","permit_action":"PUB","effect":"ALLOW"}"#,
            "identity_type must be CLIENT, DEVICE or CA",
        ),
        (
            r#"{"kind":"permission","identity_type":"CLIENT","identity":"c","topic":"a/#/b","permit_action":"PUB","effect":"ALLOW"}"#,
            "Topic:",
        ),
        (
            r#"{"kind":"permission","identity_type":"DEVICE","identity":"01","topic":"a","permit_action":"PUB","effect":"ALLOW"}"#,
            "<CaSn>:<DeviceSn>",
        ),
        (
            r#"{"kind":"permission","identity_type":"CA","identity":"01","topic":"a","permit_action":"ALL","effect":"ALLOW"}"#,
            "permit_action must be",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let err = backup::import(&dir.path().join("registry.db"), &mut line.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains(needle), "{err}");
    }
}
