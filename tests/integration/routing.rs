//! certmq's router with real clients over mutual TLS: rumqttc's 3.1.1 and
//! 5 clients and the mosquitto clients, for what exists in 3.1.1 as well
//! as 5 (the MQTT 5-only features are in `paho.rs`). Each test names the
//! sections it checks (MQTT 3.1.1 / MQTT 5).

use std::time::Duration;

use crate::support::mqtt::{Ev, Version, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::{self, Ca};

/// Waits for `want` PUBLISHes on topics starting with `prefix`, then a
/// sentinel on `sentinel` (published after them by the same publisher:
/// nothing else can still be on its way); returns (topic, payload, qos).
async fn collect(
    client: &mut crate::support::mqtt::Client,
    sentinel: &str,
) -> Vec<(String, Vec<u8>, u8)> {
    let mut got = Vec::new();
    loop {
        match client.next(Duration::from_secs(10)).await {
            Some(Ev::Publish { topic, .. }) if topic == sentinel => return got,
            Some(Ev::Publish {
                topic,
                payload,
                qos,
            }) => got.push((topic, payload, qos)),
            other => panic!("expected PUBLISH, got {other:?} after {got:?}"),
        }
    }
}

/// 3.1.1 4.3 / 5 4.3: QoS 0, 1 and 2 end to end, each downgraded to the
/// subscription's QoS (3.1.1 3.8.4 / 5 3.8.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_end_to_end_with_downgrade() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    for version in [Version::V4, Version::V5] {
        let mut subs = Vec::new();
        for granted in 0..=2u8 {
            let mut s = connect(
                &tb,
                &ca.device(&format!("s{granted}")),
                &format!("s{granted}-{version:?}"),
                version,
            )
            .await
            .unwrap();
            s.subscribe_qos(&format!("q/{version:?}/#"), granted).await;
            subs.push((granted, s));
        }
        let publisher = connect(&tb, &ca.device("p"), &format!("p-{version:?}"), version)
            .await
            .unwrap();
        for qos in 0..=2u8 {
            publisher
                .publish(&format!("q/{version:?}/{qos}"), &[qos], qos)
                .await;
        }
        publisher
            .publish(&format!("q/{version:?}/end"), b"", 2)
            .await;
        publisher.acknowledged().await;
        for (granted, s) in &mut subs {
            let got = collect(s, &format!("q/{version:?}/end")).await;
            let qos: Vec<u8> = got.iter().map(|(_, _, q)| *q).collect();
            let expected: Vec<u8> = (0..=2u8).map(|q| q.min(*granted)).collect();
            assert_eq!(qos, expected, "{version:?}, granted {granted}");
        }
    }
}

/// 5 3.3.4 (and the same for 3.1.1): overlapping subscriptions of one
/// client give one copy, at the highest QoS granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_give_one_copy() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    for version in [Version::V4, Version::V5] {
        let mut s = connect(
            &tb,
            &ca.device("watcher"),
            &format!("w-{version:?}"),
            version,
        )
        .await
        .unwrap();
        s.subscribe_qos("#", 0).await;
        s.subscribe_qos("devices/device-1/#", 1).await;
        let p = connect(
            &tb,
            &ca.device("device-1"),
            &format!("d-{version:?}"),
            version,
        )
        .await
        .unwrap();
        p.publish("devices/device-1/t", b"once", 1).await;
        p.publish("devices/device-1/end", b"", 1).await;
        let got = collect(&mut s, "devices/device-1/end").await;
        assert_eq!(
            got,
            [("devices/device-1/t".to_owned(), b"once".to_vec(), 1)],
            "{version:?}"
        );
    }
}

/// 3.1.1 3.1.2.4 / 5 3.1.2.4, 4.1: a persistent session keeps its
/// subscriptions while offline and queues QoS 1 messages; the next
/// connection gets session present and the messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_queue_while_offline() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("sleeper");
    let publisher = connect(&tb, &ca.device("p"), "p", Version::V4)
        .await
        .unwrap();
    for version in [Version::V4, Version::V5] {
        let id = format!("sleeper-{version:?}");
        let persistent = |o: &mut crate::support::mqtt::Options| o.clean = false;
        let tls = client_config(&tb.server_ca, Some(&device));
        let mut first = connect_with(tb.port(), tls.clone(), &id, version, persistent)
            .await
            .unwrap();
        first
            .subscribe_qos(&format!("inbox/{version:?}/#"), 1)
            .await;
        first.disconnect().await;
        first.expect_closed().await;
        support::wait_until(Duration::from_secs(5), "offline", async || {
            !tb.broker.sessions().is_online(&id)
        })
        .await;
        for n in 0..3u8 {
            publisher
                .publish(&format!("inbox/{version:?}/{n}"), &[n], 1)
                .await;
        }
        publisher
            .publish(&format!("inbox/{version:?}/end"), b"", 1)
            .await;
        publisher.acknowledged().await;
        let mut again = connect_with(tb.port(), tls, &id, version, persistent)
            .await
            .unwrap();
        let got = collect(&mut again, &format!("inbox/{version:?}/end")).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p, _)| p).collect();
        assert_eq!(payloads, [vec![0], vec![1], vec![2]], "{version:?}");
    }
}

/// A 3.1.1 persistent session lives at most `mqtt.max_session_expiry_secs`
/// offline; after that everything it held is freed and its client id is
/// free again (MQTT 5 3.1.2.11.2 for the 5 interval, capped the same way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_expire_and_free_everything() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_session_expiry_secs = 1).await;
    let before = tb.broker.router_footprint();
    for (n, version) in [Version::V4, Version::V5].into_iter().enumerate() {
        let device = ca.device(&format!("ephemeral-{n}"));
        let id = format!("ephemeral-{version:?}");
        let tls = client_config(&tb.server_ca, Some(&device));
        let mut c = connect_with(tb.port(), tls, &id, version, |o| o.clean = false)
            .await
            .unwrap();
        c.subscribe_qos(&format!("e/{n}/+/x"), 1).await;
        c.disconnect().await;
    }
    support::wait_until(
        Duration::from_secs(10),
        "the sessions to expire",
        async || {
            tb.broker.router_footprint() == before && tb.broker.sessions().claimed_client_ids() == 0
        },
    )
    .await;
}

/// 5 4.8.2 (shared subscriptions, which 3.1.1 clients may use too):
/// each message goes to one member of the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_gives_each_message_to_one_member() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let mut members = Vec::new();
    for (i, version) in [Version::V4, Version::V5, Version::V4]
        .into_iter()
        .enumerate()
    {
        let mut m = connect(
            &tb,
            &ca.device(&format!("worker-{i}")),
            &format!("worker-{i}"),
            version,
        )
        .await
        .unwrap();
        m.subscribe_qos("$share/workers/jobs/+", 1).await;
        m.subscribe_qos("jobs/end", 1).await;
        members.push(m);
    }
    let p = connect(&tb, &ca.device("p"), "p", Version::V4)
        .await
        .unwrap();
    for n in 0..30u8 {
        p.publish(&format!("jobs/{n}"), &[n], 1).await;
    }
    p.publish("jobs/end", b"", 1).await;
    let mut all = Vec::new();
    for m in &mut members {
        let got = collect(m, "jobs/end").await;
        assert_eq!(got.len(), 10, "in turn: {got:?}");
        all.extend(got.into_iter().map(|(_, p, _)| p[0]));
    }
    all.sort();
    assert_eq!(all, (0..30u8).collect::<Vec<_>>(), "each once");
}

/// 3.1.1 3.3.1.3 / 5 3.3.1.3: a retained message is stored and sent
/// (RETAIN 1) to a new subscription; an empty retained message deletes it.
/// With the mosquitto clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_with_the_mosquitto_clients() {
    if !crate::support::python::available("mosquitto_pub", "--help") {
        assert!(
            std::env::var_os("CI").is_none(),
            "mosquitto-clients are missing"
        );
        eprintln!("skipping: mosquitto_pub is not installed");
        return;
    }
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let dir = tempfile::tempdir().unwrap();
    let device = ca.device("retainer");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key, server_ca) = (
        write("d.pem", &device.cert_pem),
        write("d.key", &device.key_pem),
        write("ca.pem", &tb.server_ca.cert_pem),
    );
    let port = tb.port().to_string();
    let mosquitto = |program: &str, args: &[&str]| {
        let output = std::process::Command::new(program)
            .args(["-h", "localhost", "-p", &port, "--cafile"])
            .arg(&server_ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    for (v, version) in [("mqttv311", "4"), ("mqttv5", "5")] {
        let topic = format!("status/{version}/lamp");
        mosquitto(
            "mosquitto_pub",
            &["-V", v, "-t", &topic, "-m", "on", "-r", "-q", "1"],
        );
        let got = mosquitto(
            "mosquitto_sub",
            &[
                "-V",
                v,
                "-t",
                &format!("status/{version}/+"),
                "-C",
                "1",
                "-W",
                "10",
                "-F",
                "%t %r %p",
            ],
        );
        assert_eq!(got.trim(), format!("{topic} 1 on"), "{v}");
        // Deleted by an empty retained message; a second retained topic
        // shows the subscription got what there is.
        mosquitto(
            "mosquitto_pub",
            &["-V", v, "-t", &topic, "-n", "-r", "-q", "1"],
        );
        let other = format!("status/{version}/fan");
        mosquitto(
            "mosquitto_pub",
            &["-V", v, "-t", &other, "-m", "off", "-r", "-q", "1"],
        );
        let got = mosquitto(
            "mosquitto_sub",
            &[
                "-V",
                v,
                "-t",
                &format!("status/{version}/+"),
                "-C",
                "1",
                "-W",
                "10",
                "-F",
                "%t %p",
            ],
        );
        assert_eq!(
            got.trim(),
            format!("{other} off"),
            "{v}: the deleted one came back"
        );
    }
}

/// A subscriber slower than its publishers loses nothing while it reads:
/// at its mailbox's bound (10 here) publishers wait for room, and TCP
/// slows them down to its pace (`router::mailbox`). (With
/// `mqtt.max_publish_wait_ms = 0` the same run loses messages.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_slows_publishers_down_instead_of_losing_messages() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_queued_messages = 10).await;
    let mut sink = connect(&tb, &ca.device("sink"), "sink", Version::V5)
        .await
        .unwrap();
    sink.subscribe_qos("burst/#", 1).await;
    let mut publishers = Vec::new();
    for i in 0..2 {
        publishers.push(
            connect(
                &tb,
                &ca.device(&format!("p{i}")),
                &format!("p{i}"),
                Version::V4,
            )
            .await
            .unwrap(),
        );
    }
    for n in 0..1000u16 {
        for (i, p) in publishers.iter().enumerate() {
            p.publish(
                &format!("burst/{i}"),
                &n.to_be_bytes(),
                if n % 2 == 0 { 0 } else { 1 },
            )
            .await;
        }
    }
    let mut next = [0u16; 2];
    while next.iter().any(|n| *n < 1000) {
        match sink.next(Duration::from_secs(30)).await {
            Some(Ev::Publish { topic, payload, .. }) => {
                let i: usize = topic.trim_start_matches("burst/").parse().unwrap();
                let n = u16::from_be_bytes([payload[0], payload[1]]);
                assert_eq!(n, next[i], "publisher {i}: in order, none lost");
                next[i] += 1;
            }
            other => panic!("after {next:?}: {other:?}"),
        }
    }
    let metrics = support::scrape(&tb).await;
    assert_eq!(
        support::metric(
            &metrics,
            "certmq_messages_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
}

/// The retained store is bounded (`mqtt.max_retained_messages`): a
/// retained message for a new topic beyond it is delivered to the
/// subscribers there are but not kept, and counted; kept ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_store_is_bounded() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_retained_messages = 1).await;
    let mut live = connect(&tb, &ca.device("live"), "live", Version::V5)
        .await
        .unwrap();
    live.subscribe_qos("r/#", 1).await;
    let p = connect(&tb, &ca.device("p"), "p", Version::V4)
        .await
        .unwrap();
    p.publish_retained("r/kept", b"1").await;
    p.publish_retained("r/refused", b"2").await;
    p.publish("r/end", b"", 1).await;
    let got = collect(&mut live, "r/end").await;
    assert_eq!(got.len(), 2, "both delivered live: {got:?}");
    let mut late = connect(&tb, &ca.device("late"), "late", Version::V5)
        .await
        .unwrap();
    late.subscribe_qos("r/+", 1).await;
    match late.next(Duration::from_secs(10)).await {
        Some(Ev::Publish { topic, .. }) => assert_eq!(topic, "r/kept"),
        other => panic!("{other:?}"),
    }
    p.publish("r/end", b"", 1).await;
    assert!(
        collect(&mut late, "r/end").await.is_empty(),
        "only the kept one"
    );
    let metrics = support::scrape(&tb).await;
    assert_eq!(
        support::metric(
            &metrics,
            "certmq_messages_dropped_total{reason=\"retained_full\"}"
        ),
        1.0
    );
}

/// 3.1.1 4.4 / 5 4.4: a QoS 1 message the client had not acknowledged when
/// its connection ended is sent again, first, when the persistent session
/// resumes: DUP set, the same packet identifier; then it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_redelivered_with_dup_on_resumption() {
    use crate::authz::{read_packet, subscribe};
    use crate::support::raw;
    use tokio::io::AsyncWriteExt;

    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("forgetful");
    let publisher = connect(&tb, &ca.device("p"), "p", Version::V4)
        .await
        .unwrap();
    for level in [4u8, 5] {
        let id = format!("forgetful-{level}");
        let open = async || {
            let mut stream =
                raw::tls_connect(tb.port(), client_config(&tb.server_ca, Some(&device)))
                    .await
                    .unwrap();
            let connect = if level == 5 {
                raw::persistent_connect_packet(&id, 30, 3600)
            } else {
                let mut c = raw::connect_packet(b"MQTT", 4, &id, 30);
                c[2 + 2 + 4 + 1] = 0x00; // clean session 0
                c
            };
            stream.write_all(&connect).await.unwrap();
            let connack = read_packet(&mut stream).await;
            assert_eq!(connack[0], 0x20, "{connack:02x?}");
            (stream, connack[2] & 1 == 1)
        };
        let (mut stream, present) = open().await;
        assert!(!present);
        stream
            .write_all(&subscribe(level, 1, &[&format!("dup/{level}")]))
            .await
            .unwrap();
        assert_eq!(read_packet(&mut stream).await[0], 0x90);
        publisher.publish(&format!("dup/{level}"), b"once", 1).await;
        let first = read_packet(&mut stream).await;
        assert_eq!(first[0] & 0xF6, 0x32, "a QoS 1 PUBLISH: {first:02x?}");
        assert_eq!(first[0] & 0x08, 0, "DUP clear the first time");
        let topic_len = usize::from(u16::from_be_bytes([first[2], first[3]]));
        let pkid = [first[4 + topic_len], first[5 + topic_len]];
        // Gone without PUBACK.
        drop(stream);
        support::wait_until(Duration::from_secs(5), "offline", async || {
            !tb.broker.sessions().is_online(&id)
        })
        .await;
        let (mut stream, present) = open().await;
        assert!(present, "MQTT {level}: the session was kept");
        let again = read_packet(&mut stream).await;
        assert_eq!(again[0] & 0xF6, 0x32, "{again:02x?}");
        assert_eq!(again[0] & 0x08, 0x08, "MQTT {level}: DUP set on redelivery");
        assert_eq!(
            [again[4 + topic_len], again[5 + topic_len]],
            pkid,
            "the same id"
        );
        // Acknowledged now: not sent a third time.
        stream
            .write_all(&[0x40, 0x02, pkid[0], pkid[1]])
            .await
            .unwrap();
        drop(stream);
        support::wait_until(Duration::from_secs(5), "offline", async || {
            !tb.broker.sessions().is_online(&id)
        })
        .await;
        let (mut stream, _) = open().await;
        publisher.publish(&format!("dup/{level}"), b"next", 1).await;
        let next = read_packet(&mut stream).await;
        assert_eq!(next[0] & 0x08, 0, "a new message, not the old one again");
        assert!(next.ends_with(b"next"), "{next:02x?}");
    }
}
