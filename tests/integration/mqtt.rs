//! MQTT behaviour a broker user expects: wills, keepalive, retained messages,
//! persistent sessions, client id rules, protocol versions.

use std::time::Duration;

use crate::support::mqtt::{Ev, Version, WAIT, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::raw;
use crate::support::{self, Ca};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_session_ends_abnormally() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let watcher_device = ca.device("watcher");
    let mut watcher = connect(&tb, &watcher_device, "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("status/#").await;

    for version in [Version::V4, Version::V5] {
        let device = ca.device(&format!("willing-{version:?}"));
        let topic = format!("status/{version:?}");
        let will_topic = topic.clone();
        let tls = client_config(&tb.server_ca, Some(&device));
        // A normal DISCONNECT discards the will...
        let client = connect_with(tb.port(), tls.clone(), "willing", version, |o| {
            o.will = Some((will_topic.clone(), b"offline".to_vec()))
        })
        .await
        .unwrap();
        client.disconnect().await;
        watcher.expect_quiet(Duration::from_millis(300)).await;
        // ...a session the broker ends (here: taken over by a new
        // connection) publishes it. (An operator's drop does not: see
        // hardening.rs.)
        let _client = connect_with(tb.port(), tls.clone(), "willing", version, |o| {
            o.will = Some((will_topic.clone(), b"offline".to_vec()))
        })
        .await
        .unwrap();
        let _successor = connect_with(tb.port(), tls, "willing", version, |_| {})
            .await
            .unwrap();
        assert_eq!(watcher.expect_publish(&topic).await, b"offline");
        tb.inactivate(&device).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_is_enforced() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("silent");
    let tls = client_config(&tb.server_ca, Some(&device));
    for level in [4u8, 5] {
        let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
        let connack = raw::exchange(
            &mut stream,
            &raw::connect_packet(b"MQTT", level, "silent", 1),
            2,
        )
        .await
        .unwrap();
        assert_eq!(connack[0], 0x20);
        // Keepalive 1 s: the broker closes a silent client after 1.5 s.
        let goodbye = raw::until_closed(&mut stream, Duration::from_secs(10))
            .await
            .expect("the silent client was not disconnected");
        if level == 5 {
            // The rest of CONNACK, then DISCONNECT 0x8D (keep alive timeout).
            let disconnect = goodbye.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x8d);
            assert!(disconnect, "no DISCONNECT 0x8D in {goodbye:02x?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_persistent_sessions() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let (p, s) = (ca.device("publisher"), ca.device("subscriber"));
    let publisher = connect(&tb, &p, "publisher", Version::V4).await.unwrap();
    publisher.publish_retained("config/led", b"on").await;
    publisher.acknowledged().await;

    // Retained: a later subscriber gets the last value.
    let mut late = connect(&tb, &s, "late", Version::V5).await.unwrap();
    late.subscribe("config/#").await;
    assert_eq!(late.expect_publish("config/led").await, b"on");
    late.disconnect().await;

    // Persistent session: messages published while away are delivered on
    // return.
    let tls = client_config(&tb.server_ca, Some(&s));
    let mut sub = connect_with(tb.port(), tls.clone(), "persistent", Version::V4, |o| {
        o.clean = false
    })
    .await
    .unwrap();
    sub.subscribe("jobs/#").await;
    sub.disconnect().await;
    assert!(matches!(
        sub.next(Duration::from_secs(5)).await,
        Some(Ev::Closed { .. })
    ));
    support::wait_until(WAIT, "the broker to end the session", async || {
        !tb.broker.sessions().is_online("persistent")
    })
    .await;
    publisher.publish("jobs/1", b"update firmware", 1).await;
    publisher.acknowledged().await;
    let mut back = connect_with(tb.port(), tls, "persistent", Version::V4, |o| {
        o.clean = false
    })
    .await
    .unwrap();
    assert_eq!(back.expect_publish("jobs/1").await, b"update firmware");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_id_takes_the_session_over() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("twice");
    let mut first = connect(&tb, &device, "twice", Version::V5).await.unwrap();
    let mut second = connect(&tb, &device, "twice", Version::V5).await.unwrap();
    assert_eq!(
        first.expect_closed().await.as_deref(),
        Some("SessionTakenOver")
    );
    second.subscribe("t").await;
    assert!(tb.broker.sessions().is_online("twice"));
    assert_eq!(tb.broker.sessions().sessions_of(&device.identity), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_rules_and_protocol_levels() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("rules");
    let tls = client_config(&tb.server_ca, Some(&device));

    // Reserved characters: CONNACK "identifier rejected" (3.1.1 code 2).
    let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let connack = raw::exchange(&mut stream, &raw::connect_packet(b"MQTT", 4, "a/b", 30), 4)
        .await
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x02]);

    // MQTT 5: 0x85, client identifier not valid.
    let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let connack = raw::exchange(&mut stream, &raw::connect_packet(b"MQTT", 5, "a+b", 30), 4)
        .await
        .unwrap();
    assert_eq!(&connack[..4], [0x20, 0x03, 0x00, 0x85]);

    // An empty client id with a clean session gets one assigned.
    let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let connack = raw::exchange(&mut stream, &raw::connect_packet(b"MQTT", 4, "", 30), 4)
        .await
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);

    // MQTT 3.1 (MQIsdp, level 3): "unacceptable protocol version".
    let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let connack = raw::exchange(
        &mut stream,
        &raw::connect_packet(b"MQIsdp", 3, "old", 30),
        4,
    )
    .await
    .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_server_packets_end_only_that_connection() {
    // rumqttd's 5 decoder panics on a client-sent CONNACK or UNSUBACK; certmq
    // refuses them before decoding, with DISCONNECT 0x82 (protocol error).
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let bystander = ca.device("bystander");
    let mut watcher = connect(&tb, &bystander, "bystander", Version::V4)
        .await
        .unwrap();
    watcher.subscribe("t").await;
    let device = ca.device("rogue");
    let tls = client_config(&tb.server_ca, Some(&device));
    for (name, packet) in [
        ("CONNACK", [0x20u8, 0x03, 0x00, 0x00, 0x00]),
        ("UNSUBACK", [0xb0, 0x03, 0x00, 0x01, 0x00]),
    ] {
        let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
        let connack = raw::exchange(
            &mut stream,
            &raw::connect_packet(b"MQTT", 5, "rogue", 30),
            2,
        )
        .await
        .unwrap();
        assert_eq!(connack[0], 0x20);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &packet)
            .await
            .unwrap();
        let goodbye = raw::until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{name}: connection not closed"));
        assert!(
            goodbye.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x82),
            "{name}: no DISCONNECT 0x82 in {goodbye:02x?}"
        );
    }
    // The broker and the other session are fine.
    let publisher = connect(&tb, &ca.device("publisher"), "publisher", Version::V5)
        .await
        .unwrap();
    publisher.publish("t", b"alive", 0).await;
    assert_eq!(watcher.expect_publish("t").await, b"alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_path_frees_the_router_slot() {
    // The router holds max_connections + 64 links. Far more connections
    // than that come and go, ending every way a connection can end; if any
    // exit path leaked its router link, connections would start failing.
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_connections = 4).await;
    let device = ca.device("churn");
    let tls = client_config(&tb.server_ca, Some(&device));
    for round in 0..40 {
        // Clean DISCONNECT.
        let client = connect_with(
            tb.port(),
            tls.clone(),
            &format!("clean-{round}"),
            Version::V4,
            |_| {},
        )
        .await
        .unwrap();
        client.disconnect().await;
        // Abrupt close, no DISCONNECT.
        let mut stream = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
        raw::exchange(
            &mut stream,
            &raw::connect_packet(b"MQTT", 4, &format!("abrupt-{round}"), 30),
            4,
        )
        .await
        .unwrap();
        drop(stream);
        // Dropped by an admin call.
        if round % 10 == 0 {
            let _c = connect_with(
                tb.port(),
                tls.clone(),
                &format!("admin-{round}"),
                Version::V5,
                |_| {},
            )
            .await
            .unwrap();
            tb.inactivate(&device).await;
            tb.activate(&device).await;
        }
        // Wait for the broker to see the closes before the next round.
        support::wait_until(
            Duration::from_secs(5),
            &format!("round {round}'s sessions to end"),
            async || tb.broker.sessions().sessions_of(&device.identity) == 0,
        )
        .await;
    }
    connect(&tb, &device, "last", Version::V4).await.unwrap();
}
