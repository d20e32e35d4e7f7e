//! The hub's behaviour, spec section by section.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::router::message::{Passthrough, QoS};

fn hub() -> Hub {
    Hub::new(HubSettings {
        max_queued_messages: 5,
        max_session_expiry: Duration::from_secs(3600),
        max_retained_messages: 1000,
    })
}

fn message(topic: &str, qos: QoS, retain: bool, payload: &str) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Passthrough::default(),
        expires_at: None,
        origin: None,
    }
}

fn options(qos: QoS, id: Option<u32>) -> SubOptions {
    SubOptions {
        subscription_id: id,
        ..SubOptions::at(qos)
    }
}

fn taken(session: &HubSession) -> Vec<Delivery> {
    session.mailbox.take(usize::MAX, usize::MAX)
}

/// MQTT 5 section 3.3.4: overlapping subscriptions give one copy, at the
/// highest QoS (never above the published one), with every identifier.
#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let hub = hub();
    let now = Instant::now();
    let a = hub.attach("a", true, now);
    hub.subscribe(&a.session, "#", options(QoS::AtMostOnce, Some(1)), now);
    hub.subscribe(
        &a.session,
        "devices/d1/#",
        options(QoS::ExactlyOnce, Some(2)),
        now,
    );
    hub.subscribe(
        &a.session,
        "devices/+/t",
        options(QoS::AtLeastOnce, None),
        now,
    );
    let routed = hub.publish(message("devices/d1/t", QoS::AtLeastOnce, false, "x"), now);
    assert_eq!(routed.delivered, 1);
    let got = taken(&a.session);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "downgraded to the published QoS at most"
    );
    let mut ids = got[0].subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    // A shared subscription is delivered on its own.
    hub.subscribe(
        &a.session,
        "$share/g/devices/#",
        options(QoS::AtMostOnce, Some(9)),
        now,
    );
    hub.publish(message("devices/d1/t", QoS::ExactlyOnce, false, "y"), now);
    let got = taken(&a.session);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .any(|d| d.subscription_ids == [9] && d.qos == QoS::AtMostOnce)
    );
    assert!(got.iter().any(|d| d.qos == QoS::ExactlyOnce));
}

/// MQTT 5 section 3.8.3.1: no local, retain as published.
#[test]
fn no_local_and_retain_as_published() {
    let hub = hub();
    let now = Instant::now();
    let a = hub.attach("a", true, now);
    let b = hub.attach("b", true, now);
    let no_local = SubOptions {
        no_local: true,
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    hub.subscribe(&a.session, "t", no_local, now);
    hub.subscribe(
        &b.session,
        "t",
        SubOptions {
            retain_as_published: true,
            ..SubOptions::at(QoS::AtLeastOnce)
        },
        now,
    );
    let mut own = message("t", QoS::AtLeastOnce, true, "r");
    own.origin = Some(a.session.key());
    hub.publish(own, now);
    assert!(
        taken(&a.session).is_empty(),
        "its own message, with no local"
    );
    let got = taken(&b.session);
    assert!(got[0].retain, "retain as published keeps RETAIN");
    hub.publish(message("t", QoS::AtLeastOnce, true, "r2"), now);
    assert!(
        !taken(&a.session)[0].retain,
        "forwarded with RETAIN 0 by default"
    );
}

/// MQTT 5 section 3.3.1.3 and 3.8.3.1: retained messages, retain handling.
#[test]
fn retained_messages_follow_retain_handling() {
    let hub = hub();
    let now = Instant::now();
    hub.publish(message("r/1", QoS::ExactlyOnce, true, "one"), now);
    hub.publish(message("r/2", QoS::AtMostOnce, true, "two"), now);
    let s = hub.attach("s", true, now);
    let sent = hub.subscribe(&s.session, "r/+", SubOptions::at(QoS::AtLeastOnce), now);
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|d| d.retain), "sent with RETAIN 1");
    assert!(sent.iter().all(|d| d.qos <= QoS::AtLeastOnce));
    let if_new = SubOptions {
        retain_handling: RetainHandling::IfNew,
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    assert!(
        hub.subscribe(&s.session, "r/+", if_new, now).is_empty(),
        "1: not again"
    );
    assert_eq!(
        hub.subscribe(&s.session, "r/1", if_new, now).len(),
        1,
        "1: new"
    );
    let never = SubOptions {
        retain_handling: RetainHandling::Never,
        ..SubOptions::at(QoS::AtLeastOnce)
    };
    assert!(hub.subscribe(&s.session, "r/#", never, now).is_empty());
    assert!(
        hub.subscribe(
            &s.session,
            "$share/g/r/+",
            SubOptions::at(QoS::AtLeastOnce),
            now
        )
        .is_empty(),
        "none to a shared subscription"
    );
    // An empty retained payload deletes, and is still forwarded.
    taken(&s.session);
    hub.publish(message("r/1", QoS::AtLeastOnce, true, ""), now);
    assert_eq!(
        taken(&s.session).len(),
        2,
        "r/+ and r/1 and r/# merged, plus the share"
    );
    let t = hub.attach("t", true, now);
    assert_eq!(
        hub.subscribe(&t.session, "r/#", SubOptions::at(QoS::AtMostOnce), now)
            .len(),
        1
    );
}

/// MQTT 5 section 4.1 and 3.1.2.11.2: a persistent session keeps its
/// subscriptions and queues messages while offline (bounded, counted),
/// and what its connection left in flight; the next connection resumes.
#[test]
fn a_persistent_session_queues_while_offline_and_resumes() {
    let hub = hub();
    let now = Instant::now();
    let p = hub.attach("p", false, now);
    assert!(!p.present);
    hub.subscribe(&p.session, "q/+", SubOptions::at(QoS::AtLeastOnce), now);
    let parked = Parked {
        unacked: vec![Unacked {
            packet_id: 7,
            delivery: Delivery {
                message: std::sync::Arc::new(message("q/0", QoS::AtLeastOnce, false, "inflight")),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
            },
            released: false,
        }],
        incoming_qos2: vec![3],
    };
    hub.detach(p, Duration::from_secs(60), None, parked, now);
    for i in 0..8 {
        hub.publish(
            message(&format!("q/{i}"), QoS::AtLeastOnce, false, "m"),
            now,
        );
    }
    assert_eq!(hub.losses().0, 3, "5 queued, 3 dropped at the bound");
    let again = hub.attach("p", false, now);
    assert!(again.present);
    assert_eq!(again.parked.unacked[0].packet_id, 7);
    assert_eq!(again.parked.incoming_qos2, [3]);
    assert_eq!(taken(&again.session).len(), 5);
    assert_eq!(again.session.filters(), ["q/+"]);
    // Clean start discards it.
    hub.detach(again, Duration::from_secs(60), None, Parked::default(), now);
    let fresh = hub.attach("p", true, now);
    assert!(!fresh.present);
    assert!(fresh.session.filters().is_empty());
    assert_eq!(hub.footprint().subscriptions, 0);
}

/// MQTT 5 section 3.1.2.11.2: after the session expiry interval,
/// everything the session held is freed.
#[test]
fn expired_and_ended_sessions_leave_nothing() {
    let hub = hub();
    let now = Instant::now();
    for i in 0..20_000 {
        let s = hub.attach(&format!("device-{i}"), i % 2 == 0, now);
        hub.subscribe(
            &s.session,
            &format!("devices/{i}/cmd"),
            SubOptions::at(QoS::AtLeastOnce),
            now,
        );
        hub.subscribe(
            &s.session,
            &format!("devices/{i}/+/x"),
            SubOptions::at(QoS::AtLeastOnce),
            now,
        );
        let expiry = if i % 2 == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        };
        hub.detach(s, expiry, None, Parked::default(), now);
    }
    assert_eq!(
        hub.footprint().sessions,
        10_000,
        "the persistent half is kept"
    );
    assert_eq!(hub.tick(now + Duration::from_secs(5)).len(), 0);
    assert_eq!(hub.tick(now + Duration::from_secs(11)).len(), 10_000);
    assert_eq!(
        hub.footprint(),
        Footprint {
            trie_nodes: 1,
            ..Footprint::default()
        }
    );
    assert!(hub.session_of("device-1").is_none());
    // A 3.1.1 persistent session (no expiry of its own) lives at most
    // max_session_expiry.
    let s = hub.attach("old", false, now);
    hub.detach(s, Duration::MAX, None, Parked::default(), now);
    assert!(hub.tick(now + Duration::from_secs(3599)).is_empty());
    assert_eq!(&*hub.tick(now + Duration::from_secs(3601))[0], "old");
}

/// MQTT 5 section 3.1.3.2.2: the will delay interval; a resumption
/// within it cancels the will; the end of the session publishes it.
#[test]
fn a_delayed_will_is_cancelled_by_a_resumption_and_sent_at_the_session_end() {
    let hub = hub();
    let now = Instant::now();
    let watcher = hub.attach("w", true, now);
    hub.subscribe(
        &watcher.session,
        "wills/#",
        SubOptions::at(QoS::AtLeastOnce),
        now,
    );
    let will = || {
        (
            message("wills/d", QoS::AtLeastOnce, false, "gone"),
            Duration::from_secs(30),
        )
    };

    let d = hub.attach("d", false, now);
    hub.detach(
        d,
        Duration::from_secs(60),
        Some(will()),
        Parked::default(),
        now,
    );
    hub.tick(now + Duration::from_secs(10));
    assert!(taken(&watcher.session).is_empty(), "still within the delay");
    let d = hub.attach("d", false, now + Duration::from_secs(11));
    hub.tick(now + Duration::from_secs(40));
    assert!(
        taken(&watcher.session).is_empty(),
        "cancelled by the resumption"
    );

    hub.detach(
        d,
        Duration::from_secs(60),
        Some(will()),
        Parked::default(),
        now,
    );
    hub.tick(now + Duration::from_secs(31));
    assert_eq!(taken(&watcher.session).len(), 1, "after the delay");

    // The session ends first (expiry 10 s < delay 30 s): the will then.
    let d = hub.attach("d", false, now);
    hub.detach(
        d,
        Duration::from_secs(10),
        Some(will()),
        Parked::default(),
        now,
    );
    hub.tick(now + Duration::from_secs(11));
    assert_eq!(taken(&watcher.session).len(), 1);
    // Clean start ends the stored session: its will goes.
    let d = hub.attach("d", false, now);
    hub.detach(
        d,
        Duration::from_secs(60),
        Some(will()),
        Parked::default(),
        now,
    );
    hub.attach("d", true, now);
    assert_eq!(taken(&watcher.session).len(), 1);
    // Forget (an administrative removal): no will.
    let d = hub.attach("e", false, now);
    hub.detach(
        d,
        Duration::from_secs(60),
        Some(will()),
        Parked::default(),
        now,
    );
    assert!(hub.forget("e"));
    hub.tick(now + Duration::from_secs(100));
    assert!(taken(&watcher.session).is_empty());
}

/// A detach from an attachment that was taken over changes nothing.
#[test]
fn a_stale_detach_leaves_the_new_connection_its_session() {
    let hub = hub();
    let now = Instant::now();
    let old = hub.attach("x", false, now);
    hub.subscribe(&old.session, "a", SubOptions::at(QoS::AtMostOnce), now);
    let new = hub.attach("x", false, now);
    assert!(new.present);
    hub.detach(old, Duration::ZERO, None, Parked::default(), now);
    assert!(hub.session_of("x").is_some());
    assert_eq!(new.session.filters(), ["a"]);
}
