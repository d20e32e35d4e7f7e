//! Expiry ends sessions (issue 14 point 3): a session ends when its device
//! certificate passes NotAfter, not at the next reconnect: MQTT 5 clients
//! receive DISCONNECT 0xA0 (maximum connect time), 3.1.1 clients see the
//! socket close; no will is published; the device is refused afterwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::mqtt::{Version, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::{self, Ca};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_within_a_second_of_its_certificate_s_not_after() {
    let ca = Ca::new("expiry CA");
    let tb = support::start(&[&ca]).await;
    // Whole seconds, five or six from now.
    let not_after_s = now_ms() / 1000 + 6;
    let not_after = time::OffsetDateTime::from_unix_timestamp(not_after_s).unwrap();
    let device = ca.device_until("short-lived", not_after);
    let watcher_device = ca.device("watcher");
    let mut watcher = connect(&tb, &watcher_device, "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("wills/#").await;
    let mut v5 = connect_with(
        tb.port(),
        client_config(&tb.server_ca, Some(&device)),
        "short-5",
        Version::V5,
        |o| o.will = Some(("wills/short-5".into(), b"gone".to_vec())),
    )
    .await
    .unwrap();
    let mut v4 = connect(&tb, &device, "short-4", Version::V4).await.unwrap();
    assert_eq!(tb.broker.sessions().expiring(), 3);

    let reason = tokio::time::timeout(Duration::from_secs(15), v5.expect_closed())
        .await
        .expect("closed");
    let closed_at = now_ms();
    assert_eq!(reason.as_deref(), Some("MaximumConnectTime"));
    let late = closed_at - not_after_s * 1000;
    assert!(
        (-50..=1000).contains(&late),
        "closed {late} ms after NotAfter (within 1 s, not before)"
    );
    tokio::time::timeout(Duration::from_secs(2), v4.expect_closed())
        .await
        .expect("the 3.1.1 session too");
    // No will: the certificate's time is up, its last word is not sent.
    watcher.expect_quiet(Duration::from_millis(300)).await;
    assert_eq!(
        tb.broker.sessions().expiring(),
        1,
        "only the watcher's is left"
    );
    // And refused from now on, as before.
    assert!(
        connect(&tb, &device, "short-again", Version::V4)
            .await
            .is_err(),
        "an expired certificate is refused"
    );
    let text = support::scrape(&tb).await;
    assert_eq!(
        support::metric(&text, r#"certmq_sessions_dropped_total{reason="expired"}"#),
        2.0
    );
}

/// The same when the CA certificate that issued the device's expires
/// first: every session of its devices ends at the CA's NotAfter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_their_ca_certificate_expires() {
    let not_after_s = now_ms() / 1000 + 5;
    let ca = Ca::new_until(
        "short-lived CA",
        time::OffsetDateTime::from_unix_timestamp(not_after_s).unwrap(),
    );
    let tb = support::start(&[&ca]).await;
    let devices: Vec<_> = (0..2)
        .map(|i| ca.device(&format!("ca-bound-{i}")))
        .collect();
    let mut clients = Vec::new();
    for d in &devices {
        clients.push(connect(&tb, d, &d.name, Version::V5).await.unwrap());
    }
    for client in &mut clients {
        let reason = tokio::time::timeout(Duration::from_secs(15), client.expect_closed())
            .await
            .expect("closed");
        assert_eq!(reason.as_deref(), Some("MaximumConnectTime"));
        let late = now_ms() - not_after_s * 1000;
        assert!(
            (-50..=1000).contains(&late),
            "closed {late} ms after the CA's NotAfter"
        );
    }
    assert!(
        connect(&tb, &devices[0], "again", Version::V4)
            .await
            .is_err()
    );
}
