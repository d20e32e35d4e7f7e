//! Topic authorization over real TLS: SUBSCRIBE filters refused with the
//! right SUBACK codes while the allowed ones in the same packet are
//! granted, refused PUBLISHes that reach nobody (and MQTT 5's PUBACK
//! 0x87), wills refused at CONNECT, attachments by CA, by certificate and
//! by subject, deny over allow, hostile common names.

use std::time::Duration;

use certmq::Settings;
use certmq::authz::set::{AttachSettings, PolicySettings, RuleSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::mqtt::{Ev, Version, connect, connect_with};
use crate::support::pki::client_config;
use crate::support::raw;
use crate::support::{self, Ca, Device, TestBroker};

fn rule(effect: &str, actions: &[&str], topics: &[&str]) -> RuleSettings {
    RuleSettings {
        effect: effect.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
    }
}

fn policy(name: &str, rules: Vec<RuleSettings>) -> PolicySettings {
    PolicySettings {
        name: name.into(),
        rules,
    }
}

/// The embedded policies (every device in its own namespace), and
/// `watcher` (by CN) with the fleet application's policy.
pub(crate) fn fleet_policies(s: &mut Settings) {
    s.authz = Settings::embedded_defaults().unwrap().authz;
    s.authz.attach = vec![AttachSettings {
        policies: vec!["fleet-application".into()],
        common_name: Some("watcher".into()),
        ..Default::default()
    }];
}

/// A remaining length of one byte (the packets here are small).
fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut p = vec![first, body.len() as u8];
    p.extend(body);
    p
}

fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

pub(crate) fn subscribe(level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    for f in filters {
        body.extend(string(f));
        body.push(1); // QoS 1
    }
    packet(0x82, body)
}

pub(crate) fn publish_qos1(level: u8, pkid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.extend(pkid.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend(payload);
    packet(0x32, body)
}

/// Reads one whole packet (one-byte remaining length).
pub(crate) async fn read_packet(stream: &mut raw::Stream) -> Vec<u8> {
    let mut head = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head))
        .await
        .expect("no packet from the broker")
        .unwrap();
    let mut body = vec![0u8; head[1] as usize];
    stream.read_exact(&mut body).await.unwrap();
    let mut all = head.to_vec();
    all.extend(body);
    all
}

pub(crate) async fn raw_session(
    tb: &TestBroker,
    device: &Device,
    level: u8,
    id: &str,
) -> raw::Stream {
    raw_session_at(tb.port(), &tb.server_ca, device, level, id).await
}

/// An MQTT session over TLS to the broker at `port` (whose certificate
/// `server_ca` issued), CONNACK checked.
pub(crate) async fn raw_session_at(
    port: u16,
    server_ca: &Ca,
    device: &Device,
    level: u8,
    id: &str,
) -> raw::Stream {
    let mut stream = raw::tls_connect(port, client_config(server_ca, Some(device)))
        .await
        .unwrap();
    stream
        .write_all(&raw::connect_packet(b"MQTT", level, id, 30))
        .await
        .unwrap();
    let connack = read_packet(&mut stream).await;
    assert_eq!(connack[0], 0x20, "{connack:02x?}");
    assert_eq!(connack[3], 0, "CONNACK refused: {connack:02x?}");
    stream
}

/// The reason code of a PUBACK (a success may come without one).
pub(crate) fn puback_reason(puback: &[u8]) -> u8 {
    assert_eq!(puback[0], 0x40, "{puback:02x?}");
    puback.get(4).copied().unwrap_or(0)
}

/// The SUBACK's return codes.
pub(crate) fn suback_codes(level: u8, suback: &[u8]) -> Vec<u8> {
    assert_eq!(suback[0], 0x90, "{suback:02x?}");
    let skip = if level == 5 { 5 } else { 4 }; // header, pkid, (properties)
    suback[skip..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_only_its_own_namespace() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let mut watcher = connect(&tb, &ca.device("watcher"), "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("devices/#").await;

    for (level, refused) in [(4u8, 0x80u8), (5, 0x87)] {
        let me = format!("device-{level}");
        let device = ca.device(&me);
        let mut stream = raw_session(&tb, &device, level, &me).await;
        let own = format!("devices/{me}/#");
        stream
            .write_all(&subscribe(
                level,
                7,
                &["#", "devices/other/#", &own, "devices/+/cmd"],
            ))
            .await
            .unwrap();
        let codes = suback_codes(level, &read_packet(&mut stream).await);
        assert_eq!(
            codes,
            [refused, refused, 0x01, refused],
            "MQTT level {level}"
        );
        // All refused: certmq answers the SUBACK itself.
        stream
            .write_all(&subscribe(level, 8, &["$SYS/#", "+/other/x"]))
            .await
            .unwrap();
        let codes = suback_codes(level, &read_packet(&mut stream).await);
        assert_eq!(codes, [refused, refused]);

        // A command into another device's namespace reaches nobody.
        stream
            .write_all(&publish_qos1(level, 9, "devices/other/cmd", b"reboot"))
            .await
            .unwrap();
        let puback = read_packet(&mut stream).await;
        assert_eq!(&puback[..4], &[0x40, puback[1], 0x00, 0x09]);
        if level == 5 {
            assert_eq!(puback[4], 0x87, "PUBACK not authorized: {puback:02x?}");
        }
        let own_topic = format!("devices/{me}/telemetry");
        stream
            .write_all(&publish_qos1(level, 10, &own_topic, b"21.5"))
            .await
            .unwrap();
        let puback = read_packet(&mut stream).await;
        assert_eq!(puback[0], 0x40);
        // The watcher sees the allowed message first: the refused one
        // never got to the router.
        match watcher.next(Duration::from_secs(10)).await {
            Some(Ev::Publish { topic, .. }) => assert_eq!(topic, own_topic),
            other => panic!("expected {own_topic}, got {other:?}"),
        }
    }
    let metrics = support::scrape(&tb).await;
    assert!(
        metrics.contains(r#"certmq_authz_denied_total{action="subscribe"} 10"#)
            && metrics.contains(r#"certmq_authz_denied_total{action="publish"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_outside_the_policy_is_refused_at_connect() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let device = ca.device("d1");
    let tls = client_config(&tb.server_ca, Some(&device));
    for version in [Version::V4, Version::V5] {
        let refused = connect_with(tb.port(), tls.clone(), "d1", version, |o| {
            o.will = Some(("devices/d2/status".into(), b"gone".to_vec()))
        })
        .await;
        let error = refused
            .err()
            .expect("a will into another namespace was accepted");
        assert!(
            error.contains("NotAuthorized") || error.contains("ot authorized"),
            "{error}"
        );
        let client = connect_with(tb.port(), tls.clone(), "d1", version, |o| {
            o.will = Some(("devices/d1/status".into(), b"gone".to_vec()))
        })
        .await
        .unwrap();
        client.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_attach_to_a_ca_and_to_one_certificate_and_deny_wins() {
    let (ca, other_ca) = (Ca::new("fleet CA"), Ca::new("lab CA"));
    let muted = ca.device("muted");
    let muted_identity = muted.identity;
    let tb = support::start_with(&[&ca, &other_ca], |s| {
        fleet_policies(s);
        s.authz.policies.push(policy(
            "fleet-telemetry",
            vec![rule("allow", &["publish"], &["telemetry/${DeviceSn}"])],
        ));
        s.authz
            .policies
            .push(policy("mute", vec![rule("deny", &["publish"], &["#"])]));
        s.authz.attach.push(AttachSettings {
            policies: vec!["fleet-telemetry".into()],
            ca_sn: Some(ca.sn.to_string()),
            ..Default::default()
        });
        s.authz.attach.push(AttachSettings {
            policies: vec!["mute".into()],
            ca_sn: Some(muted_identity.ca_sn.to_string()),
            device_sn: Some(muted_identity.device_sn.to_string()),
            ..Default::default()
        });
    })
    .await;
    let mut watcher = connect(&tb, &ca.device("watcher"), "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("devices/#").await;
    // The CA's devices may publish telemetry under their serial (and, with
    // an attachment of their own, no longer get the default policy).
    let sensor = ca.device("sensor");
    let mut stream = raw_session(&tb, &sensor, 5, "sensor").await;
    let topic = format!("telemetry/{}", sensor.identity.device_sn);
    stream
        .write_all(&publish_qos1(5, 1, &topic, b"1"))
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&read_packet(&mut stream).await),
        0x00,
        "CA policy allows it"
    );
    stream
        .write_all(&publish_qos1(5, 2, "devices/sensor/x", b"1"))
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&read_packet(&mut stream).await),
        0x87,
        "no default policy any more"
    );
    // The muted certificate: deny wins over the CA's allow.
    let mut stream = raw_session(&tb, &muted, 5, "muted").await;
    let topic = format!("telemetry/{}", muted.identity.device_sn);
    stream
        .write_all(&publish_qos1(5, 3, &topic, b"1"))
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&read_packet(&mut stream).await),
        0x87,
        "deny wins"
    );
    // A device of the other CA has the default policy only.
    let lab = other_ca.device("lab-1");
    let mut stream = raw_session(&tb, &lab, 5, "lab-1").await;
    stream
        .write_all(&publish_qos1(5, 4, "devices/lab-1/x", b"1"))
        .await
        .unwrap();
    assert_eq!(puback_reason(&read_packet(&mut stream).await), 0x00);
    match watcher.next(Duration::from_secs(10)).await {
        Some(Ev::Publish { topic, .. }) => assert_eq!(topic, "devices/lab-1/x"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_filters_get_nothing() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    // A CN that would widen devices/${CommonName}/# to the world.
    for (i, cn) in ["#", "+", "a/b"].into_iter().enumerate() {
        let device = ca.device(cn);
        let id = format!("hostile-{i}");
        let mut stream = raw_session(&tb, &device, 5, &id).await;
        stream
            .write_all(&subscribe(5, 1, &["#", "devices/#", "devices/+/#"]))
            .await
            .unwrap();
        assert_eq!(
            suback_codes(5, &read_packet(&mut stream).await),
            [0x87, 0x87, 0x87],
            "CN {cn:?}"
        );
    }
    // 10,000 distinct refused filters from one device: refused, nothing kept,
    // the session goes on.
    let device = ca.device("flooder");
    let mut stream = raw_session(&tb, &device, 4, "flooder").await;
    for pkid in 1..=10_000u16 {
        let filter = format!("devices/x{pkid}/#");
        stream
            .write_all(&subscribe(4, pkid, &[&filter]))
            .await
            .unwrap();
        assert_eq!(suback_codes(4, &read_packet(&mut stream).await), [0x80]);
    }
    // Malformed filters are refused too (or end the session as protocol
    // errors), and never reach a panic.
    stream
        .write_all(&subscribe(4, 9, &["devices/flooder/#/x"]))
        .await
        .unwrap();
    let answer = read_packet(&mut stream).await;
    assert_eq!(suback_codes(4, &answer), [0x80]);
    stream
        .write_all(&subscribe(4, 10, &["devices/flooder/#"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(4, &read_packet(&mut stream).await), [0x01]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_takes_away_live_subscriptions_it_no_longer_allows() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let watcher_device = ca.device("watcher");
    let mut watcher = connect(&tb, &watcher_device, "watcher", Version::V5)
        .await
        .unwrap();
    watcher.subscribe("devices/#").await;
    let device = ca.device("d1");
    let mut d1 = raw_session(&tb, &device, 5, "d1").await;
    d1.write_all(&subscribe(5, 1, &["devices/d1/cmd"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut d1).await), [0x01]);

    // A reload that does not validate changes nothing.
    let mut bad = Settings::embedded_defaults().unwrap().authz;
    bad.policies[0].rules[0].topics = vec!["devices/${Nope}/#".into()];
    let err = tb.broker.reload_authz(&bad).unwrap_err();
    assert!(err.to_string().contains("policy `own-namespace`"), "{err}");
    d1.write_all(&publish_qos1(5, 2, "devices/d1/telemetry", b"1"))
        .await
        .unwrap();
    assert_eq!(puback_reason(&read_packet(&mut d1).await), 0x00);
    match watcher.next(Duration::from_secs(10)).await {
        Some(Ev::Publish { topic, .. }) => assert_eq!(topic, "devices/d1/telemetry"),
        other => panic!("{other:?}"),
    }

    // Tightened: the application may now read telemetry only. Its
    // subscription to devices/# goes with its session (DISCONNECT 0x87);
    // the device keeps its own namespace.
    let mut tight = Settings::embedded_defaults().unwrap().authz;
    tight.policies[1].rules[0].topics = vec!["devices/+/telemetry".into()];
    tight.attach = vec![AttachSettings {
        policies: vec!["fleet-application".into()],
        common_name: Some("watcher".into()),
        ..Default::default()
    }];
    tb.broker.reload_authz(&tight).unwrap();
    assert_eq!(
        watcher.expect_closed().await.as_deref(),
        Some("NotAuthorized")
    );
    d1.write_all(&publish_qos1(5, 3, "devices/d1/telemetry", b"2"))
        .await
        .unwrap();
    assert_eq!(
        puback_reason(&read_packet(&mut d1).await),
        0x00,
        "d1 keeps its grant"
    );
    let mut again = raw_session(&tb, &watcher_device, 5, "watcher").await;
    again
        .write_all(&subscribe(5, 4, &["devices/#", "devices/+/telemetry"]))
        .await
        .unwrap();
    assert_eq!(
        suback_codes(5, &read_packet(&mut again).await),
        [0x87, 0x01]
    );
}

/// CONNECT, MQTT 5, clean start off, a session expiry of an hour; the
/// CONNACK's session-present flag.
async fn persistent_connect(tb: &TestBroker, device: &Device, id: &str) -> (raw::Stream, bool) {
    let mut stream = raw::tls_connect(tb.port(), client_config(&tb.server_ca, Some(device)))
        .await
        .unwrap();
    let connect = raw::persistent_connect_packet(id, 30, 3600);
    stream.write_all(&connect).await.unwrap();
    let connack = read_packet(&mut stream).await;
    assert_eq!((connack[0], connack[3]), (0x20, 0), "{connack:02x?}");
    (stream, connack[2] & 1 == 1)
}

/// A persistent session's stored subscriptions are judged when it comes
/// back: one the current policies refuse discards the stored session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_subscriptions_are_judged_when_a_persistent_session_returns() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], fleet_policies).await;
    let watcher = ca.device("watcher");
    let disconnect = [0xe0u8, 0x00];
    // Kept while the policies allow it.
    let (mut stream, present) = persistent_connect(&tb, &watcher, "watcher").await;
    assert!(!present);
    stream
        .write_all(&subscribe(5, 1, &["devices/#"]))
        .await
        .unwrap();
    assert_eq!(suback_codes(5, &read_packet(&mut stream).await), [0x01]);
    stream.write_all(&disconnect).await.unwrap();
    support::wait_until(
        Duration::from_secs(5),
        "the watcher to be offline",
        async || !tb.broker.sessions().is_online("watcher"),
    )
    .await;
    let (_stream, present) = persistent_connect(&tb, &watcher, "watcher").await;
    assert!(present, "the stored session was kept");
    // Taken over by a new connection while live: the session goes along.
    let (mut stream, present) = persistent_connect(&tb, &watcher, "watcher").await;
    assert!(present, "the session did not survive a take-over");
    stream.write_all(&disconnect).await.unwrap();
    support::wait_until(
        Duration::from_secs(5),
        "the watcher to be offline",
        async || !tb.broker.sessions().is_online("watcher"),
    )
    .await;

    // Tightened while it is away: it comes back without the stored session.
    let mut tight = Settings::embedded_defaults().unwrap().authz;
    tight.policies[1].rules[0].topics = vec!["devices/+/telemetry".into()];
    tight.attach = vec![AttachSettings {
        policies: vec!["fleet-application".into()],
        common_name: Some("watcher".into()),
        ..Default::default()
    }];
    tb.broker.reload_authz(&tight).unwrap();
    let (_stream, present) = persistent_connect(&tb, &watcher, "watcher").await;
    assert!(
        !present,
        "a stored subscription the policies refuse came back"
    );
}
