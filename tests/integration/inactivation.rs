//! InactivateDeviceCertificate drops a connected device's sessions, keeps it
//! out, and leaves everyone else alone; ActiveDeviceCertificate lets it back.

use std::time::Duration;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivation_drops_sessions_and_refuses_reconnects() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let lost = ca.device("lost-device");
    let bystander = ca.device("bystander");
    let talker = ca.device("talker");

    // The lost device holds two sessions, one per protocol version.
    let mut lost4 = connect(&tb, &lost, "lost-311", Version::V4).await.unwrap();
    let mut lost5 = connect(&tb, &lost, "lost-5", Version::V5).await.unwrap();
    let mut watcher = connect(&tb, &bystander, "bystander", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("fleet/#").await;
    let speaker = connect(&tb, &talker, "talker", Version::V4).await.unwrap();
    assert_eq!(tb.broker.sessions().sessions_of(&lost.identity), 2);

    tb.inactivate(&lost).await;
    // The answer came only after the sessions were gone.
    assert_eq!(tb.broker.sessions().sessions_of(&lost.identity), 0);
    assert_eq!(
        lost4.expect_closed().await,
        None,
        "3.1.1: the socket just closes"
    );
    assert_eq!(
        lost5.expect_closed().await.as_deref(),
        Some("AdministrativeAction"),
        "5: DISCONNECT 0x98 first"
    );
    assert_eq!(
        tb.broker.registry().device_status(&lost.identity),
        Some(certmq::CertStatus::Inactive)
    );

    // Both protocol versions are refused on reconnect.
    for (id, version) in [("lost-311", Version::V4), ("lost-5", Version::V5)] {
        let err = connect(&tb, &lost, id, version)
            .await
            .err()
            .expect("inactive device admitted");
        assert!(err.to_lowercase().contains("revoked"), "{err}");
    }

    // Other devices never noticed.
    speaker
        .publish("fleet/talker/status", b"still here", 1)
        .await;
    assert_eq!(
        watcher.expect_publish("fleet/talker/status").await,
        b"still here"
    );
    watcher.expect_quiet(Duration::from_millis(200)).await;
    assert_eq!(tb.broker.sessions().sessions_of(&bystander.identity), 1);

    // Activation lets it back in.
    tb.activate(&lost).await;
    let back = connect(&tb, &lost, "lost-5", Version::V5).await.unwrap();
    back.publish("fleet/lost/status", b"back", 1).await;
    assert_eq!(watcher.expect_publish("fleet/lost/status").await, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivation_is_idempotent_and_per_device() {
    let ca = Ca::new("fleet CA");
    let other_ca = Ca::new("other CA");
    let tb = support::start(&[&ca, &other_ca]).await;
    let a = ca.device("a");
    let b = other_ca.device("b");
    let _a_client = connect(&tb, &a, "a", Version::V4).await.unwrap();
    let mut b_client = connect(&tb, &b, "b", Version::V4).await.unwrap();

    tb.inactivate(&a).await;
    tb.inactivate(&a).await;
    assert_eq!(tb.broker.sessions().sessions_of(&a.identity), 0);
    b_client.expect_quiet(Duration::from_millis(200)).await;
    assert_eq!(tb.broker.sessions().sessions_of(&b.identity), 1);
}
