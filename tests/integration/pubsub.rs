//! Devices with certificates from a registered CA exchange messages.

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca};

async fn exchange(publisher: Version, subscriber: Version) {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let sensor = ca.device("sensor-1");
    let panel = ca.device("panel-1");

    let mut sub = connect(&tb, &panel, "panel-1", subscriber).await.unwrap();
    sub.subscribe("fleet/+/temp").await;
    let publisher_client = connect(&tb, &sensor, "sensor-1", publisher).await.unwrap();
    for qos in [0, 1] {
        let payload = format!("21.5 at qos {qos}");
        publisher_client
            .publish("fleet/sensor-1/temp", payload.as_bytes(), qos)
            .await;
        assert_eq!(
            sub.expect_publish("fleet/sensor-1/temp").await,
            payload.as_bytes()
        );
    }
    // Both devices were registered on first connection, active.
    for device in [&sensor, &panel] {
        let record = tb
            .broker
            .registry()
            .device(&device.identity)
            .await
            .unwrap()
            .expect("auto-registered");
        assert_eq!(record.status, certmq::CertStatus::Active);
        assert_eq!(&*record.name, device.name.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_to_mqtt311() {
    exchange(Version::V4, Version::V4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_to_mqtt5() {
    exchange(Version::V5, Version::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_to_mqtt311_and_back() {
    // A 5 PUBLISH carries properties; a 3.1.1 subscriber must get it
    // without them (rumqttd's 3.1.1 encoder panics on properties).
    exchange(Version::V5, Version::V4).await;
    exchange(Version::V4, Version::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_delivered_exactly_once() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    for (publisher, subscriber) in [
        (Version::V4, Version::V4),
        (Version::V5, Version::V5),
        (Version::V5, Version::V4),
    ] {
        let tag = format!("{publisher:?}-{subscriber:?}");
        let mut sub = connect(
            &tb,
            &ca.device("panel"),
            &format!("panel-{tag}"),
            subscriber,
        )
        .await
        .unwrap();
        sub.subscribe_qos("orders/#", 2).await;
        let publisher = connect(&tb, &ca.device("till"), &format!("till-{tag}"), publisher)
            .await
            .unwrap();
        for n in 0..20 {
            publisher
                .publish("orders/new", format!("order {n}").as_bytes(), 2)
                .await;
        }
        for n in 0..20 {
            let (payload, qos) = sub.expect_publish_qos("orders/new").await;
            assert_eq!(payload, format!("order {n}").as_bytes(), "{tag}");
            assert_eq!(qos, 2, "{tag}");
        }
        // No duplicates behind them.
        sub.expect_quiet(std::time::Duration::from_millis(300))
            .await;
        publisher.disconnect().await;
        sub.disconnect().await;
    }
}
