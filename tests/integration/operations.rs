//! What operators watch: Prometheus metrics, health and readiness.

use std::time::Duration;

use crate::support::mqtt::{Version, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::{self, Ca, TestBroker};

/// Scrapes `/metrics`.
async fn scrape(tb: &TestBroker) -> String {
    let response = reqwest::get(format!("http://{}/metrics", tb.broker.admin_addr()))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "not the text exposition format"
    );
    response.text().await.unwrap()
}

/// How much each series moved between two scrapes.
fn moved(before: &str, after: &str, series: &str) -> f64 {
    support::metric(after, series) - support::metric(before, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connects_refusals_drops_and_admin_calls() {
    let ca = Ca::new("fleet CA");
    let stranger = Ca::new("unregistered CA");
    let tb = support::start(&[&ca]).await;
    let before = scrape(&tb).await;

    let (a, b) = (ca.device("a"), ca.device("b"));
    let mut sub = connect(&tb, &a, "a", Version::V5).await.unwrap();
    sub.subscribe("m/#").await;
    let publisher = connect(&tb, &b, "b", Version::V4).await.unwrap();
    publisher.publish("m/1", b"x", 1).await;
    sub.expect_publish("m/1").await;
    assert!(
        connect(&tb, &stranger.device("s"), "s", Version::V4)
            .await
            .is_err()
    );
    let anonymous = client_config(&tb.server_ca, None);
    assert!(
        connect_with(tb.port(), anonymous, "anon", Version::V4, |_| {})
            .await
            .is_err()
    );
    tb.inactivate(&a).await;
    sub.expect_closed().await;
    assert!(connect(&tb, &a, "a", Version::V4).await.is_err());
    let (status, _) = tb
        .admin(&[
            ("Action", "GetCaCertificate"),
            ("MqttInstanceId", &tb.instance()),
        ])
        .await;
    assert_eq!(status, 400);
    // A client learns of its refusal or close a moment before the broker's
    // task counts it: wait for the counts that lag.
    support::wait_until(
        Duration::from_secs(5),
        "the refusals and a's end to be counted",
        async || {
            let now = scrape(&tb).await;
            support::metric(&now, "certmq_sessions_live") == 1.0
                && ["unknown_ca", "no_certificate", "inactive_device"]
                    .iter()
                    .all(|reason| {
                        let series =
                            format!(r#"certmq_handshakes_refused_total{{reason="{reason}"}}"#);
                        moved(&before, &now, &series) >= 1.0
                    })
        },
    )
    .await;

    let after = scrape(&tb).await;
    let m = |series: &str| moved(&before, &after, series);
    assert_eq!(m("certmq_connects_accepted_total"), 2.0);
    assert_eq!(
        support::metric(&after, "certmq_sessions_live"),
        1.0,
        "b stays connected"
    );
    assert_eq!(m("certmq_auto_registrations_total"), 2.0);
    assert_eq!(
        m(r#"certmq_handshakes_refused_total{reason="unknown_ca"}"#),
        1.0
    );
    assert_eq!(
        m(r#"certmq_handshakes_refused_total{reason="no_certificate"}"#),
        1.0
    );
    assert_eq!(
        m(r#"certmq_handshakes_refused_total{reason="inactive_device"}"#),
        1.0
    );
    assert_eq!(
        m(r#"certmq_sessions_dropped_total{reason="administrative"}"#),
        1.0
    );
    assert_eq!(
        m(r#"certmq_admin_calls_total{action="InactivateDeviceCertificate",code="Success"}"#),
        1.0
    );
    assert_eq!(
        m(
            r#"certmq_admin_calls_total{action="GetCaCertificate",code="ParameterFieldCheckFailed"}"#
        ),
        1.0
    );
    assert_eq!(
        m(r#"certmq_admin_call_duration_seconds_count{action="InactivateDeviceCertificate"}"#),
        1.0
    );
    assert_eq!(m("certmq_messages_received_total"), 1.0);
    assert_eq!(m("certmq_messages_sent_total"), 1.0);
    assert_eq!(support::metric(&after, "certmq_registry_cas"), 1.0);
    assert_eq!(support::metric(&after, "certmq_registry_devices"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let tb = support::start(&[]).await;
    for (path, body) in [("healthz", "ok"), ("readyz", "ready")] {
        let response = reqwest::get(format!("http://{}/{path}", tb.broker.admin_addr()))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        assert_eq!(response.text().await.unwrap().trim(), body);
    }
}
