//! Which certificates get through the handshake, and which do not.

use certmq::pki::KeyKind;
use rustls::version::{TLS12, TLS13};

use crate::support::mqtt::{Version, connect, connect_with};
use crate::support::pki::{
    ca_as_device, client_config, client_config_versions, expired, self_signed,
};
use crate::support::{self, Ca, Device, TestBroker};

async fn refused(tb: &TestBroker, device: &Device) -> String {
    let err = connect(tb, device, &device.name, Version::V4)
        .await
        .err()
        .unwrap_or_else(|| panic!("{} was admitted", device.name));
    assert!(
        tb.broker
            .registry()
            .device(&device.identity)
            .await
            .unwrap()
            .is_none(),
        "a refused certificate must not be registered"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_certificates_without_an_active_registered_issuer() {
    let ca = Ca::new("registered CA");
    let stranger = Ca::new("unregistered CA");
    let tb = support::start(&[&ca]).await;

    let err = refused(&tb, &stranger.device("from-unregistered-ca")).await;
    assert!(
        err.contains("UnknownCA") || err.contains("unknown"),
        "{err}"
    );
    refused(&tb, &self_signed("self-signed")).await;
    let err = refused(&tb, &expired(&ca, "expired")).await;
    assert!(err.to_lowercase().contains("expired"), "{err}");

    // No client certificate at all.
    let tls = client_config(&tb.server_ca, None);
    let err = connect_with(tb.port(), tls, "anonymous", Version::V4, |_| {})
        .await
        .err()
        .expect("a client without certificate was admitted");
    assert!(!err.is_empty());

    // A CA that is registered but inactive.
    let good = ca.device("good");
    connect(&tb, &good, "good", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    tb.broker
        .registry()
        .set_ca_status(&ca.sn, certmq::CertStatus::Inactive)
        .await
        .unwrap();
    let err = connect(&tb, &good, "good", Version::V4)
        .await
        .err()
        .expect("inactive CA admitted");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    refused(&tb, &ca.device("new-under-inactive-ca")).await;
    // ...and admitted again once active, without a restart.
    tb.broker
        .registry()
        .set_ca_status(&ca.sn, certmq::CertStatus::Active)
        .await
        .unwrap();
    connect(&tb, &good, "good", Version::V4).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_wrong_usage_and_ca_certificates() {
    let ca = Ca::new("registered CA");
    let tb = support::start(&[&ca]).await;
    let server_only = ca.custom("server-usage", |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    refused(&tb, &server_only).await;
    refused(&tb, &ca_as_device(&ca, "sub-ca")).await;

    // No EKU at all is fine: clientAuth is required only where an EKU exists.
    let no_eku = ca.custom("no-eku", |p| p.extended_key_usages.clear());
    connect(&tb, &no_eku, "no-eku", Version::V4).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admits_every_supported_key_type_on_tls12_and_tls13() {
    let ca = Ca::new("registered CA");
    let tb = support::start(&[&ca]).await;
    for key in [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
        KeyKind::Rsa2048,
    ] {
        let device = ca.device_with(&format!("{key:?}"), key);
        for version in [&TLS13, &TLS12] {
            let tls = client_config_versions(&tb.server_ca, Some(&device), &[version]);
            let client = connect_with(tb.port(), tls, &device.name, Version::V5, |_| {})
                .await
                .unwrap_or_else(|e| panic!("{key:?} over {version:?} refused: {e}"));
            client.disconnect().await;
        }
        assert!(
            tb.broker
                .registry()
                .device(&device.identity)
                .await
                .unwrap()
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_registered_at_run_time_is_trusted_without_restart() {
    let ca = Ca::new("first CA");
    let later = Ca::new("later CA");
    let tb = support::start(&[&ca]).await;
    let device = later.device("late-device");
    refused(&tb, &device).await;
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(later.cert_pem.as_bytes()).unwrap();
    let cert = certmq::registry::CaCert::parse(der, rustls_pki_types::UnixTime::now()).unwrap();
    tb.broker
        .registry()
        .register_ca(certmq::registry::CaRegistration::declared(cert))
        .await
        .unwrap();
    connect(&tb, &device, "late-device", Version::V4)
        .await
        .unwrap();
}
