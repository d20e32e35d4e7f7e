//! Lifecycle events (issue 14 point 4): a back end subscribed to
//! `$certmq/events/#` (allowed by an explicit policy rule) receives a
//! device's registration, connection, disconnection by inactivation and
//! the status change, in that order, at QoS 1; devices without that rule
//! cannot subscribe, nobody can publish there, and a back end that stops
//! reading costs drops (counted), not the broker's pace.

use std::time::Duration;

use certmq::Settings;
use certmq::authz::set::{AttachSettings, PolicySettings, RuleSettings};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::authz::{raw_session, read_packet, suback_codes, subscribe};
use crate::support::mqtt::{Client, Ev, Version, connect};
use crate::support::{self, Ca, TEST_KEY_ID, TestBroker, metric, scrape, wait_until};

/// The embedded policies (each device in its own namespace), and the CN
/// `backend` allowed to subscribe to, and (to show that it makes no
/// difference) publish on, the event topics.
fn with_event_backend(s: &mut Settings) {
    s.authz = Settings::embedded_defaults().unwrap().authz;
    s.authz.attach.clear();
    event_backend_rule(s, &["publish", "subscribe"]);
}

/// Adds the policy `event-backend` (`actions` on `$certmq/events/#`),
/// attached to the CN `backend`.
fn event_backend_rule(s: &mut Settings, actions: &[&str]) {
    s.authz.policies.push(PolicySettings {
        name: "event-backend".into(),
        rules: vec![RuleSettings {
            effect: "allow".into(),
            actions: actions.iter().map(|a| a.to_string()).collect(),
            topics: vec!["$certmq/events/#".into()],
        }],
    });
    s.authz.attach.push(AttachSettings {
        policies: vec!["event-backend".into()],
        common_name: Some("backend".into()),
        ..Default::default()
    });
}

/// `device` (CN `backend`) connected as `client_id`, subscribed to every
/// event.
async fn subscribed_back_end(
    tb: &TestBroker,
    device: &crate::support::Device,
    client_id: &str,
) -> Client {
    let mut events = connect(tb, device, client_id, Version::V5).await.unwrap();
    events.subscribe("$certmq/events/#").await;
    events
}

/// The next event received, as (topic, JSON, QoS), skipping those about
/// the back end's own certificate (its own connection's events are
/// published after it subscribed, or not: they race its SUBSCRIBE);
/// panics on anything else or after 10 s.
async fn next_event(client: &mut Client) -> (String, Value, u8) {
    loop {
        match client.next(Duration::from_secs(10)).await {
            Some(Ev::Publish {
                topic,
                payload,
                qos,
            }) => {
                let json: Value = serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("event on {topic} is not JSON ({e})"));
                if json["client_id"] == "backend" || json["common_name"] == "backend" {
                    continue;
                }
                return (topic, json, qos);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn metrics_value(tb: &TestBroker, series: &str) -> f64 {
    metric(&scrape(tb).await, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_end_follows_a_device_through_its_life_in_order() {
    let ca = Ca::new("events CA");
    let tb = support::start_with(&[&ca], with_event_backend).await;
    let backend = ca.device("backend");
    let mut events = subscribed_back_end(&tb, &backend, "backend").await;

    let device = ca.device("sensor-7");
    let ca_sn = device.identity.ca_sn.to_string();
    let device_sn = device.identity.device_sn.to_string();
    let mut client = connect(&tb, &device, "sensor-7", Version::V5)
        .await
        .unwrap();
    tb.inactivate(&device).await;
    assert_eq!(
        client.expect_closed().await.as_deref(),
        Some("AdministrativeAction")
    );

    let mut seen = Vec::new();
    for expected in ["registered", "connected", "disconnected", "status"] {
        let (topic, json, qos) = next_event(&mut events).await;
        assert_eq!(
            topic,
            format!("$certmq/events/{expected}/{ca_sn}/{device_sn}"),
            "events so far: {seen:?}"
        );
        assert_eq!(json["event"], expected, "{json}");
        assert_eq!(json["ca_sn"], ca_sn.as_str());
        assert_eq!(json["device_sn"], device_sn.as_str());
        assert!(json["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
        assert_eq!(qos, 1, "events go out at QoS 1");
        seen.push(json);
    }
    let [registered, connected, disconnected, status] = &seen[..] else {
        unreachable!()
    };
    assert_eq!(registered["common_name"], "sensor-7");
    assert!(registered["valid_end"].as_i64() > registered["valid_begin"].as_i64());
    assert_eq!(connected["client_id"], "sensor-7");
    assert_eq!(connected["protocol"], "5");
    assert!(
        connected["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{connected}"
    );
    assert_eq!(disconnected["reason"], "inactivated");
    assert_eq!(disconnected["client_id"], "sensor-7");
    assert_eq!(status["status"], "inactive");
    assert_eq!(status["by"], TEST_KEY_ID);
    assert_eq!(status["via"], "api");

    // Activated again, connected again, then a normal DISCONNECT and a
    // CloseConnection: each says why it ended.
    tb.activate(&device).await;
    let (_, json, _) = next_event(&mut events).await;
    assert_eq!(
        (json["event"].as_str(), json["status"].as_str()),
        (Some("status"), Some("active"))
    );
    let client = connect(&tb, &device, "sensor-7", Version::V4)
        .await
        .unwrap();
    let (_, json, _) = next_event(&mut events).await;
    assert_eq!(
        (json["event"].as_str(), json["protocol"].as_str()),
        (Some("connected"), Some("3.1.1"))
    );
    client.disconnect().await;
    let (_, json, _) = next_event(&mut events).await;
    assert_eq!(
        (json["event"].as_str(), json["reason"].as_str()),
        (Some("disconnected"), Some("normal"))
    );
    let mut client = connect(&tb, &device, "sensor-7", Version::V5)
        .await
        .unwrap();
    next_event(&mut events).await;
    let instance = tb.instance();
    let (code, body) = tb
        .admin(&[
            ("Action", "CloseConnection"),
            ("InstanceId", &instance),
            ("ClientId", "sensor-7"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    client.expect_closed().await;
    let (_, json, _) = next_event(&mut events).await;
    assert_eq!(
        (json["event"].as_str(), json["reason"].as_str()),
        (Some("disconnected"), Some("kicked"))
    );
    // sensor-7's three; the back end's own came before its subscription,
    // when nobody could receive it, and was not made.
    assert_eq!(
        metrics_value(&tb, r#"certmq_events_published_total{event="connected"}"#).await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_explicit_rule_reaches_the_events_and_nobody_publishes_there() {
    let ca = Ca::new("events CA");
    // The test broker's usual `allow-all` policy (`#`) does not reach
    // `$`-topics: without `event-backend` nobody sees the events.
    let tb = support::start(&[&ca]).await;
    let snoop = ca.device("snoop");
    let mut stream = raw_session(&tb, &snoop, 5, "snoop").await;
    stream
        .write_all(&subscribe(5, 1, &["$certmq/events/#", "#", "+/events/#"]))
        .await
        .unwrap();
    let suback = read_packet(&mut stream).await;
    assert_eq!(
        suback_codes(5, &suback),
        [0x87, 0x01, 0x01],
        "only the $-topic filter is refused"
    );
    let device = ca.device("d1");
    let c = connect(&tb, &device, "d1", Version::V4).await.unwrap();
    c.disconnect().await;
    drop(stream);
    tb.broker.shutdown().await;

    // With the rule: the back end may subscribe, but what it publishes
    // there is refused (MQTT 5 PUBACK 0x87), never routed to itself.
    let tb = support::start_with(&[&ca], with_event_backend).await;
    let backend = ca.device("backend");
    let mut events = subscribed_back_end(&tb, &backend, "backend").await;
    events
        .publish("$certmq/events/status/forged", b"{\"event\":\"status\"}", 1)
        .await;
    let device = ca.device("d2");
    let c = connect(&tb, &device, "d2", Version::V5).await.unwrap();
    let (topic, json, _) = next_event(&mut events).await;
    assert!(
        topic.starts_with("$certmq/events/registered/"),
        "{topic}: {json}"
    );
    c.disconnect().await;
    assert_eq!(
        metrics_value(&tb, r#"certmq_authz_denied_total{action="publish"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_end_that_stops_reading_costs_counted_drops_not_connections() {
    let ca = Ca::new("events CA");
    let tb = support::start_with(&[&ca], |s| {
        with_event_backend(s);
        s.mqtt.max_queued_messages = 10;
        s.mqtt.max_inflight_messages = 8;
    })
    .await;
    // Subscribes, then never reads again (nor acknowledges).
    let backend = ca.device("backend");
    let mut stalled = raw_session(&tb, &backend, 5, "backend").await;
    stalled
        .write_all(&subscribe(5, 1, &["$certmq/events/#"]))
        .await
        .unwrap();
    let suback = read_packet(&mut stalled).await;
    assert_eq!(suback_codes(5, &suback), [0x01]);

    // 30 devices, 3 events each: far beyond 8 in flight + 10 queued.
    for i in 0..30 {
        let device = ca.device(&format!("burst-{i}"));
        let id = format!("burst-{i}");
        let c = connect(&tb, &device, &id, Version::V4)
            .await
            .unwrap_or_else(|e| panic!("device {i} could not connect: {e}"));
        c.disconnect().await;
    }
    wait_until(
        Duration::from_secs(10),
        "dropped events counted",
        async || {
            metrics_value(
                &tb,
                r#"certmq_events_dropped_total{reason="subscriber_full"}"#,
            )
            .await
                >= 90.0 - 18.0 - 3.0
        },
    )
    .await;
    drop(stalled);
}

/// The next `disconnected` event of `client_id`, skipping the rest.
async fn next_disconnect(events: &mut Client, client_id: &str) -> Value {
    loop {
        let (_, json, _) = next_event(events).await;
        if json["event"] == "disconnected" && json["client_id"] == client_id {
            return json;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_session_ends_is_named() {
    let ca = Ca::new("events CA");
    let other = Ca::new("watcher CA");
    let tb = support::start_with(&[&ca, &other], with_event_backend).await;
    let backend = ca.device("backend");
    let mut events = subscribed_back_end(&tb, &backend, "backend").await;
    let instance = tb.instance();

    // Taken over: another connection with the same client id.
    let twin = ca.device("twin");
    let _first = connect(&tb, &twin, "twin", Version::V5).await.unwrap();
    let _second = connect(&tb, &twin, "twin", Version::V5).await.unwrap();
    assert_eq!(
        next_disconnect(&mut events, "twin").await["reason"],
        "taken_over"
    );

    // Keepalive: 1 s, then silence.
    let silent = ca.device("silent");
    let mut stream = crate::support::raw::tls_connect(
        tb.port(),
        crate::support::pki::client_config(&tb.server_ca, Some(&silent)),
    )
    .await
    .unwrap();
    stream
        .write_all(&crate::support::raw::connect_packet(
            b"MQTT", 4, "silent", 1,
        ))
        .await
        .unwrap();
    assert_eq!(read_packet(&mut stream).await[0], 0x20);
    assert_eq!(
        next_disconnect(&mut events, "silent").await["reason"],
        "keepalive"
    );

    // Deleted.
    let gone = ca.device("gone");
    let _c = connect(&tb, &gone, "gone", Version::V5).await.unwrap();
    let (code, body) = tb.device_call("DeleteDeviceCertificate", &gone).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        next_disconnect(&mut events, "gone").await["reason"],
        "deleted"
    );
    let (_, status, _) = next_event(&mut events).await;
    assert_eq!(
        (status["event"].as_str(), status["status"].as_str()),
        (Some("status"), Some("deleted"))
    );

    // Expired: a certificate valid for 2 more seconds.
    let not_after = time::OffsetDateTime::from_unix_timestamp(
        time::OffsetDateTime::now_utc().unix_timestamp() + 2,
    )
    .unwrap();
    let brief = ca.device_until("brief", not_after);
    let _c = connect(&tb, &brief, "brief", Version::V5).await.unwrap();
    assert_eq!(
        next_disconnect(&mut events, "brief").await["reason"],
        "expired"
    );

    // The CA inactivated (the back end's own session goes too: it is a
    // device of that CA; a second back end, of another CA, watches).
    let watcher_device = other.device("backend");
    let mut watcher = subscribed_back_end(&tb, &watcher_device, "watcher").await;
    let last = ca.device("last");
    let _c = connect(&tb, &last, "last", Version::V5).await.unwrap();
    let ca_sn = ca.sn.to_string();
    let (code, body) = tb
        .admin(&[
            ("Action", "InactivateCaCertificate"),
            ("MqttInstanceId", &instance),
            ("Sn", &ca_sn),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        next_disconnect(&mut watcher, "last").await["reason"],
        "ca_inactivated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_task_panics_is_still_reported_disconnected() {
    let ca = Ca::new("events CA");
    // The test brokers' `allow-all` (the crasher may publish the fault
    // topic), and the back end's rule.
    let tb = support::start_with(&[&ca], |s| event_backend_rule(s, &["subscribe"])).await;
    let mut events = subscribed_back_end(&tb, &ca.device("backend"), "backend").await;
    let mut crasher = connect(&tb, &ca.device("crasher"), "crasher", Version::V4)
        .await
        .unwrap();
    crasher
        .publish(certmq::fault::PANIC_TOPIC, b"boom", 0)
        .await;
    crasher.expect_closed().await;
    assert_eq!(
        next_disconnect(&mut events, "crasher").await["reason"],
        "internal_error"
    );
}
