//! Hostile clients and bad input: stalls, floods, identity theft, protocol
//! abuse and certificate abuse each end the offender's connection (or
//! refuse it) and nothing else; the broker keeps serving everyone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::mqtt::{Version, WAIT, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::raw::{self, closed_by_server};
use crate::support::{self, Ca, Device, TestBroker, metric, scrape};

/// The bytes of a TLS ClientHello.
fn client_hello(tls: Arc<ClientConfig>) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(tls, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_and_keep_no_device_out() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| {
        s.mqtt.max_connections = 2000;
        s.mqtt.first_byte_timeout_ms = 500;
        s.mqtt.handshake_timeout_ms = 3000;
    })
    .await;
    // 1,000 connections that never start TLS, 200 that stop mid-handshake.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap());
    }
    let hello = client_hello(client_config(&tb.server_ca, Some(&ca.device("stalled"))));
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
        tcp.write_all(&hello).await.unwrap();
        stalled.push(tcp);
    }
    // A legitimate device connects and exchanges messages meanwhile.
    let (a, b) = (ca.device("legit-a"), ca.device("legit-b"));
    let started = Instant::now();
    let mut sub = connect(&tb, &a, "legit-a", Version::V5).await.unwrap();
    println!(
        "legitimate connect among 1,200 stalled connections: {:?}",
        started.elapsed()
    );
    sub.subscribe("ok/#").await;
    let publisher = connect(&tb, &b, "legit-b", Version::V4).await.unwrap();
    publisher.publish("ok/1", b"through", 1).await;
    assert_eq!(sub.expect_publish("ok/1").await, b"through");

    // Every stalled connection is closed by its timeout.
    let closes: Vec<_> = idle
        .into_iter()
        .chain(stalled)
        .map(|tcp| tokio::spawn(closed_by_server(tcp, Duration::from_secs(30))))
        .collect();
    let mut open = 0;
    for close in closes {
        if !close.await.unwrap() {
            open += 1;
        }
    }
    assert_eq!(open, 0, "stalled connections still open");
    // The silent ones by mqtt.first_byte_timeout_ms, the ones that stopped
    // mid-handshake by mqtt.handshake_timeout_ms (a ClientHello delayed past
    // the first-byte timeout on a loaded machine counts in the first).
    let metrics = scrape(&tb).await;
    let first_byte = metric(
        &metrics,
        r#"certmq_handshakes_refused_total{reason="first_byte_timeout"}"#,
    );
    let handshake = metric(
        &metrics,
        r#"certmq_handshakes_refused_total{reason="timeout"}"#,
    );
    assert!(first_byte >= 1000.0, "{metrics}");
    assert_eq!(first_byte + handshake, 1200.0, "{metrics}");
    // The legitimate session outlived them all.
    publisher.publish("ok/2", b"still", 1).await;
    assert_eq!(sub.expect_publish("ok/2").await, b"still");
}

/// A TCP probe (a port scan, a load balancer's health check) that closes
/// without sending a byte is no refused handshake; garbage is one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_says_nothing_is_not_a_refused_handshake() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let tls_errors = async || {
        metric(
            &scrape(&tb).await,
            r#"certmq_handshakes_refused_total{reason="tls_error"}"#,
        )
    };
    let before = tls_errors().await;
    let mut probe = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    probe.shutdown().await.unwrap();
    // The server saw the probe's end: it closed its side.
    assert!(closed_by_server(probe, Duration::from_secs(5)).await);
    let mut garbage = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    garbage.write_all(&[0x47; 64]).await.unwrap();
    assert!(closed_by_server(garbage, Duration::from_secs(5)).await);
    support::wait_until(WAIT, "the garbage to be counted", async || {
        tls_errors().await == before + 1.0
    })
    .await;
    assert_eq!(tls_errors().await, before + 1.0, "the probe was counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_sends_connect_is_closed() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.connect_timeout_ms = 500).await;
    let device = ca.device("mute");
    let tls = client_config(&tb.server_ca, Some(&device));
    // Handshake done, then silence; and a CONNECT cut off half way.
    let mut silent = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let mut partial = raw::tls_connect(tb.port(), tls.clone()).await.unwrap();
    let connect = raw::connect_packet(b"MQTT", 4, "half", 30);
    partial
        .write_all(&connect[..connect.len() / 2])
        .await
        .unwrap();
    partial.flush().await.unwrap();
    for (name, stream) in [("silent", &mut silent), ("partial CONNECT", &mut partial)] {
        let sent = raw::until_closed(stream, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{name}: still open after mqtt.connect_timeout_ms"));
        assert!(sent.is_empty(), "{name}: {sent:02x?}");
    }
    // The socket closes just before the connection leaves the table.
    support::wait_until(WAIT, "both connections to leave the table", async || {
        tb.broker.sessions().sessions_of(&device.identity) == 0
    })
    .await;
    // The same certificate connects properly afterwards.
    connect_with(tb.port(), tls, "mute", Version::V4, |_| {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.send_timeout_ms = 500).await;
    let (stuck, reader) = (ca.device("stuck"), ca.device("reader"));
    // A raw subscriber that subscribes to flood/# and then never reads.
    let mut stream = raw::tls_connect(tb.port(), client_config(&tb.server_ca, Some(&stuck)))
        .await
        .unwrap();
    raw::exchange(&mut stream, &raw::connect_packet(b"MQTT", 4, "stuck", 0), 4)
        .await
        .unwrap();
    let filter = b"flood/#";
    let mut subscribe = vec![0x82, (2 + 2 + filter.len() + 1) as u8, 0x00, 0x01];
    subscribe.extend((filter.len() as u16).to_be_bytes());
    subscribe.extend(filter);
    subscribe.push(0x00);
    let suback = raw::exchange(&mut stream, &subscribe, 5).await.unwrap();
    assert_eq!(suback[0], 0x90, "{suback:02x?}");
    let mut watcher = connect(&tb, &reader, "reader", Version::V5).await.unwrap();
    watcher.subscribe("flood/#").await;

    // Far more than the socket buffers hold: 32 MiB in 8 KiB messages.
    let publisher = connect(&tb, &ca.device("publisher"), "publisher", Version::V4)
        .await
        .unwrap();
    let payload = vec![b'x'; 8 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while tb.broker.sessions().sessions_of(&stuck.identity) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the subscriber that stopped reading is still connected after {sent} messages"
        );
        if sent < 4096 {
            // The reader's client reads all the while.
            publisher.publish("flood/data", &payload, 0).await;
            sent += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The others go on.
    publisher.publish("flood/after", b"fine", 1).await;
    assert_eq!(watcher.expect_publish("flood/after").await, b"fine");
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_are_refused_per_address_and_beyond_the_maximum() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.connections_per_second_per_ip = 5).await;
    let mut flood = Vec::new();
    for _ in 0..30 {
        flood.push(TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap());
    }
    let mut refused = 0;
    for tcp in flood {
        if closed_by_server(tcp, Duration::from_millis(300)).await {
            refused += 1;
        }
    }
    assert!(refused >= 20, "only {refused} of 30 refused");
    let metrics = scrape(&tb).await;
    assert!(
        metric(
            &metrics,
            r#"certmq_handshakes_refused_total{reason="rate_limited"}"#
        ) >= 20.0
    );
    // The refill is the behaviour under test, so time has to pass: at 5 a
    // second the limiter gives back a whole burst within a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    connect(&tb, &ca.device("patient"), "patient", Version::V4)
        .await
        .unwrap();

    // mqtt.max_connections: the connection beyond it is closed at once.
    // The held connections finish their TLS handshakes: proof that the
    // broker has accepted them, so they hold their slots.
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_connections = 3).await;
    let tls = client_config(&tb.server_ca, Some(&ca.device("holder")));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw::tls_connect(tb.port(), tls.clone()).await.unwrap());
    }
    let extra = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    assert!(closed_by_server(extra, Duration::from_secs(2)).await);
    let metrics = scrape(&tb).await;
    assert!(
        metric(
            &metrics,
            r#"certmq_handshakes_refused_total{reason="max_connections"}"#
        ) >= 1.0
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_belongs_to_one_certificate() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let (owner, thief) = (ca.device("owner"), ca.device("thief"));

    for version in [Version::V5, Version::V4] {
        let mut held = connect(&tb, &owner, "shared-id", version).await.unwrap();
        let err = connect(&tb, &thief, "shared-id", version)
            .await
            .err()
            .expect("the thief took the id");
        assert!(
            err.contains("ClientIdentifierNotValid")
                || err.contains("IdentifierRejected")
                || err.contains("BadClientId"),
            "{err}"
        );
        held.expect_quiet(Duration::from_millis(200)).await;
        assert!(tb.broker.sessions().is_online("shared-id"));
        // The owner may take its own session over.
        let _again = connect(&tb, &owner, "shared-id", version).await.unwrap();
        assert!(
            held.expect_closed()
                .await
                .is_none_or(|r| r == "SessionTakenOver")
        );
    }

    // A persistent session keeps the id reserved for its owner while it is
    // away; a clean session of the owner releases it.
    let tls = client_config(&tb.server_ca, Some(&owner));
    let away = connect_with(tb.port(), tls.clone(), "keeper", Version::V4, |o| {
        o.clean = false
    })
    .await
    .unwrap();
    away.disconnect().await;
    support::wait_until(WAIT, "the persistent session to go away", async || {
        !tb.broker.sessions().is_online("keeper")
    })
    .await;
    assert!(connect(&tb, &thief, "keeper", Version::V4).await.is_err());
    let clean = connect_with(tb.port(), tls, "keeper", Version::V4, |_| {})
        .await
        .unwrap();
    clean.disconnect().await;
    // Released once the clean session is gone; what shows that is the
    // thief's connection being accepted.
    support::wait_until(WAIT, "the client id to be released", async || {
        connect(&tb, &thief, "keeper", Version::V4).await.is_ok()
    })
    .await;

    // mqtt.client_id_policy.
    let tb = support::start_with(&[&ca], |s| {
        s.mqtt.client_id_policy = certmq::config::ClientIdPolicy::EqualsCn
    })
    .await;
    connect(&tb, &owner, "owner", Version::V4).await.unwrap();
    assert!(connect(&tb, &owner, "owner-2", Version::V5).await.is_err());
    let tb = support::start_with(&[&ca], |s| {
        s.mqtt.client_id_policy = certmq::config::ClientIdPolicy::StartsWithCn
    })
    .await;
    connect(&tb, &owner, "owner-2", Version::V5).await.unwrap();
    assert!(connect(&tb, &owner, "x-owner", Version::V4).await.is_err());
}

/// Sends `packet` on an MQTT 5 session and returns what the server sent
/// before closing (None if it stayed open).
async fn abuse(tb: &TestBroker, device: &Device, level: u8, packet: &[u8]) -> Option<Vec<u8>> {
    let tls = client_config(&tb.server_ca, Some(device));
    let mut stream = raw::tls_connect(tb.port(), tls).await.unwrap();
    // CONNACK: type, remaining length (one byte here), the rest.
    let head = raw::exchange(
        &mut stream,
        &raw::connect_packet(b"MQTT", level, &device.name, 30),
        2,
    )
    .await
    .unwrap();
    assert_eq!(head[0], 0x20);
    let mut rest = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut rest).await.unwrap();
    stream.write_all(packet).await.unwrap();
    stream.flush().await.unwrap();
    raw::until_closed(&mut stream, Duration::from_secs(5)).await
}

fn disconnect_reason(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= 3 && bytes[0] == 0xe0).then(|| bytes[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_ends_only_the_offending_connection() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_packet_size = 1024).await;
    let bystander = ca.device("bystander");
    let mut watcher = connect(&tb, &bystander, "bystander", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("t/#").await;
    let rogue = ca.device("rogue");

    // PUBLISH t/x, QoS 0, payload p: 30 len 00 03 't' '/' 'x' [props] p
    let oversized = {
        let mut p = vec![0x30, 0x88, 0x27]; // remaining length 5000
        p.extend([0x00, 0x03, b't', b'/', b'x', 0x00]);
        p.extend(vec![b'a'; 4994]);
        p
    };
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        ("oversized packet", oversized, 0x95),
        (
            "reserved QoS 3",
            vec![0x36, 0x07, 0x00, 0x03, b't', b'/', b'x', 0x00, 0x01],
            0x81,
        ),
        (
            "invalid UTF-8 topic",
            vec![0x30, 0x06, 0x00, 0x03, b't', 0xff, b'x', 0x00],
            0x81,
        ),
        (
            "wildcard in a PUBLISH topic",
            vec![0x30, 0x06, 0x00, 0x03, b't', b'/', b'#', 0x00],
            0x90,
        ),
        (
            "second CONNECT",
            raw::connect_packet(b"MQTT", 5, "again", 30),
            0x82,
        ),
        (
            "client-sent SUBACK",
            vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
            0x82,
        ),
        ("client-sent PINGRESP", vec![0xd0, 0x00], 0x82),
        (
            "client-sent CONNACK",
            vec![0x20, 0x03, 0x00, 0x00, 0x00],
            0x82,
        ),
    ];
    for (name, packet, reason) in &cases {
        let goodbye = abuse(&tb, &rogue, 5, packet)
            .await
            .unwrap_or_else(|| panic!("{name}: the connection stayed open"));
        assert_eq!(
            disconnect_reason(&goodbye),
            Some(*reason),
            "{name}: {goodbye:02x?}"
        );
    }
    // 3.1.1 has no server DISCONNECT: the connection just closes.
    for (name, packet, _) in cases
        .iter()
        .filter(|(n, _, _)| !n.contains("second CONNECT"))
    {
        let mut packet = packet.clone();
        // 3.1.1 PUBLISH has no property length byte.
        if packet[0] & 0xf0 == 0x30 && *name != "oversized packet" {
            packet.remove(7.min(packet.len() - 1));
            packet[1] -= 1;
        }
        let goodbye = abuse(&tb, &rogue, 4, &packet).await;
        assert!(
            goodbye.is_some(),
            "3.1.1 {name}: the connection stayed open"
        );
    }
    // Nobody else noticed.
    watcher.expect_quiet(Duration::from_millis(200)).await;
    let speaker = connect(&tb, &ca.device("speaker"), "speaker", Version::V4)
        .await
        .unwrap();
    speaker.publish("t/ok", b"fine", 1).await;
    assert_eq!(watcher.expect_publish("t/ok").await, b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_task_ends_only_its_connection() {
    // The router holds max_connections + 64 = 68 links: 96 sessions whose
    // task panics would fill it if a panic left its link held (a reused
    // client id frees a leaked link, so most ids are new).
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.mqtt.max_connections = 4).await;
    let mut watcher = connect(&tb, &ca.device("bystander"), "bystander", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("t/#").await;
    let (crasher, other) = (ca.device("crasher"), ca.device("other"));
    for round in 0..96 {
        let version = if round % 2 == 0 {
            Version::V4
        } else {
            Version::V5
        };
        let client_id = format!("crasher-{round}");
        let mut client = connect(&tb, &crasher, &client_id, version)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        client.publish(certmq::fault::PANIC_TOPIC, b"boom", 0).await;
        client.expect_closed().await;
        support::wait_until(
            Duration::from_secs(5),
            &format!("round {round}: the session table to let go of the panicked session"),
            async || tb.broker.sessions().sessions_of(&crasher.identity) == 0,
        )
        .await;
        // Its client id is free for another certificate.
        if round % 12 == 0 {
            connect(&tb, &other, &client_id, version)
                .await
                .unwrap_or_else(|e| panic!("round {round}: client id still held: {e}"))
                .disconnect()
                .await;
        }
    }
    // Nobody else noticed; the live-session gauge counts only the watcher.
    watcher.expect_quiet(Duration::from_millis(200)).await;
    support::wait_until(
        Duration::from_secs(5),
        "certmq_sessions_live to be 1",
        async || metric(&scrape(&tb).await, "certmq_sessions_live") == 1.0,
    )
    .await;
    let speaker = connect(&tb, &crasher, "crasher-0", Version::V4)
        .await
        .unwrap();
    speaker.publish("t/ok", b"fine", 1).await;
    assert_eq!(watcher.expect_publish("t/ok").await, b"fine");
}

/// A client configuration presenting an arbitrary chain and key.
fn presenting(
    tb: &TestBroker,
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tb.server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(certmq::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_abuse_is_refused_at_the_handshake() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let before = scrape(&tb).await;
    let refused = |tls: Arc<ClientConfig>, name: &'static str| {
        let port = tb.port();
        async move {
            let attempt = connect_with(port, tls, name, Version::V4, |_| {}).await;
            assert!(attempt.is_err(), "{name} was admitted");
        }
    };

    // A chain longer than certmq accepts.
    let device = ca.device("long-chain");
    let chain = vec![
        der(&device.cert_pem),
        der(&ca.cert_pem),
        der(&ca.cert_pem),
        der(&ca.cert_pem),
        der(&ca.cert_pem),
    ];
    refused(presenting(&tb, chain, &device.key_pem), "long-chain").await;

    // A keyUsage without digitalSignature.
    let wrong_ku = ca.custom("key-encipherment-only", |p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment];
    });
    refused(client_config(&tb.server_ca, Some(&wrong_ku)), "wrong-ku").await;

    // A signature algorithm certmq does not accept: ecdsa-with-SHA224 (the
    // OID patched in the signed certificate, both places).
    let unsupported = ca.device("sha224");
    let mut bytes = der(&unsupported.cert_pem).to_vec();
    let sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let mut patched = 0;
    let mut i = 0;
    while i + sha256.len() <= bytes.len() {
        if bytes[i..i + sha256.len()] == sha256 {
            bytes[i + sha256.len() - 1] = 0x01;
            patched += 1;
        }
        i += 1;
    }
    assert_eq!(patched, 2, "signature algorithm OIDs in the certificate");
    refused(
        presenting(&tb, vec![CertificateDer::from(bytes)], &unsupported.key_pem),
        "sha224",
    )
    .await;

    // A huge extension.
    let huge = ca.custom("huge", |p| {
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 55555, 1],
                vec![0x04; 20_000],
            ));
    });
    refused(client_config(&tb.server_ca, Some(&huge)), "huge").await;

    // A CA certificate presented as a device certificate.
    refused(
        client_config(
            &tb.server_ca,
            Some(&crate::support::pki::ca_as_device(&ca, "sub-ca")),
        ),
        "ca-as-device",
    )
    .await;

    // A refused client hears of it a moment before the broker counts it:
    // wait until all five refusals are counted.
    let all_refusals = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("certmq_handshakes_refused_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    support::wait_until(WAIT, "the five refusals to be counted", async || {
        all_refusals(&scrape(&tb).await) - all_refusals(&before) >= 5.0
    })
    .await;
    let after = scrape(&tb).await;
    let moved = |reason: &str| {
        let series = format!("certmq_handshakes_refused_total{{reason=\"{reason}\"}}");
        metric(&after, &series) - metric(&before, &series)
    };
    // Each refusal was recorded under its own reason.
    for reason in [
        "chain_too_long",
        "wrong_usage",
        "unsupported_algorithm",
        "too_large",
        "ca_as_device",
    ] {
        assert!(moved(reason) >= 1.0, "{reason}: {after}");
    }
    for d in [&wrong_ku, &huge] {
        assert!(tb.broker.registry().device_status(&d.identity).is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_collisions_across_cas_are_different_devices() {
    let (east, west) = (Ca::new("east CA"), Ca::new("west CA"));
    let tb = support::start(&[&east, &west]).await;
    let serial = rcgen::SerialNumber::from_slice(&[0x42, 0x42, 0x42, 0x42]);
    let a = east.custom("east-42", |p| p.serial_number = Some(serial.clone()));
    let b = west.custom("west-42", |p| p.serial_number = Some(serial.clone()));
    assert_eq!(a.identity.device_sn, b.identity.device_sn);
    assert_ne!(a.identity, b.identity);
    let mut client_a = connect(&tb, &a, "east-42", Version::V5).await.unwrap();
    let mut client_b = connect(&tb, &b, "west-42", Version::V5).await.unwrap();
    assert_eq!(tb.broker.registry().device_count(), 2);
    tb.inactivate(&a).await;
    assert_eq!(
        client_a.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );
    client_b.expect_quiet(Duration::from_millis(200)).await;
    assert!(connect(&tb, &a, "east-42", Version::V4).await.is_err());
    connect(&tb, &b, "west-42b", Version::V4).await.unwrap();
}
