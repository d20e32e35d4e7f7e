//! Lifecycle events: what happened to a device, published by certmq itself
//! as MQTT messages that back ends subscribe to.
//!
//! Topics live under `$certmq/events/`, out of reach of `#` and `+/...`
//! (MQTT 5 section 4.7.2): a client sees them only by subscribing to them
//! by name, which topic authorization allows only with an explicit rule
//! (a pattern starting `$certmq/`). No client may publish there.
//!
//! | topic                                            | when                          |
//! |--------------------------------------------------|-------------------------------|
//! | `$certmq/events/registered/<CaSn>/<DeviceSn>`    | registered on first connection|
//! | `$certmq/events/connected/<CaSn>/<DeviceSn>`     | a session started (CONNACK)   |
//! | `$certmq/events/disconnected/<CaSn>/<DeviceSn>`  | that session ended            |
//! | `$certmq/events/status/<CaSn>/<DeviceSn>`        | a device certificate's status |
//! | `$certmq/events/status/<CaSn>`                   | a CA certificate's status     |
//! | `$certmq/events/crl/<CaSn>`                      | a CRL was imported            |
//!
//! Payloads are JSON objects with `event`, `timestamp` (Unix ms) and `node`
//! (see `docs/OPERATIONS.md` for every field). Messages go out at QoS 1,
//! never retained.
//!
//! A slow back end cannot slow the broker down. Events are queued for one
//! publishing task in a bounded queue ([`QUEUE`]): a connection that finds
//! it full drops its event rather than wait (counted,
//! `certmq_events_dropped_total{reason="backlog"}`); the task delivers
//! without waiting for room in a subscriber's mailbox (a full one drops,
//! `reason="subscriber_full"`). Admin calls, which are not on a device's
//! path, wait for room in the queue instead, so that a status change is
//! never lost to a burst of connections.
//!
//! An event nobody can receive is not made: while no session (online or
//! parked) holds a subscription whose filter starts with `$`, emitting is
//! one atomic load ([`Hub::has_dollar_subscriptions`]). Events are never
//! retained, so no later subscriber misses one it could have had.
//!
//! Ordering: events enter the queue in the order they happen on this node,
//! and one task publishes them in that order, so a subscriber receives
//! them in that order (MQTT 5 section 4.6). A session's `disconnected`
//! enters before the session counts as closed, hence before the
//! `status` event of the inactivation that closed it.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntCounterVec;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::identity::DeviceIdentity;
use crate::router::message::{Passthrough, QoS};
use crate::router::{Hub, Message};
use crate::serial::CaSn;

/// The prefix of every event topic, reserved to the broker.
pub const PREFIX: &str = "$certmq/events/";

/// Events waiting for the publishing task, at most.
pub const QUEUE: usize = 16_384;

/// Whether a client's PUBLISH topic is reserved to the broker.
pub fn is_reserved(topic: &str) -> bool {
    topic.starts_with("$certmq/")
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A device certificate was registered on its first connection.
    Registered {
        device: DeviceIdentity,
        common_name: String,
        subject_o: String,
        subject_ou: String,
        valid_begin_ms: i64,
        valid_end_ms: i64,
    },
    /// A session started (CONNACK sent).
    Connected {
        device: DeviceIdentity,
        client_id: String,
        peer: SocketAddr,
        protocol: &'static str,
        clean_start: bool,
        session_present: bool,
    },
    /// The session ended, and why (see `docs/OPERATIONS.md`).
    Disconnected {
        device: DeviceIdentity,
        client_id: String,
        peer: SocketAddr,
        reason: &'static str,
    },
    /// A device certificate's status changed: `active`, `inactive`,
    /// `deleted`, or `blocked` (a CRL listed a serial never seen).
    DeviceStatus {
        device: DeviceIdentity,
        status: &'static str,
        change: Change,
    },
    /// A CA certificate's status changed (`active`, `inactive`,
    /// `deleted`, `registered`).
    CaStatus {
        ca_sn: CaSn,
        status: &'static str,
        change: Change,
    },
    /// A CRL was imported.
    CrlImported {
        ca_sn: CaSn,
        inactivated: usize,
        blocked: usize,
        already_inactive: usize,
        change: Change,
    },
}

/// Who made a change, and through what.
#[derive(Debug, Clone)]
pub struct Change {
    /// The access key id of the call, or `crl-refresh` for a CRL fetched
    /// on the broker's own schedule.
    pub by: String,
    /// `api` (an admin call), `crl` (a CRL import) or `crl-refresh`.
    pub via: &'static str,
    /// The admin call's RequestId, if a call made it.
    pub request_id: Option<String>,
}

impl Event {
    /// The event's name, its topic's first level after the prefix.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Registered { .. } => "registered",
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
            Event::DeviceStatus { .. } | Event::CaStatus { .. } => "status",
            Event::CrlImported { .. } => "crl",
        }
    }

    pub fn topic(&self) -> String {
        let name = self.name();
        match self {
            Event::Registered { device, .. }
            | Event::Connected { device, .. }
            | Event::Disconnected { device, .. }
            | Event::DeviceStatus { device, .. } => {
                format!("{PREFIX}{name}/{}/{}", device.ca_sn, device.device_sn)
            }
            Event::CaStatus { ca_sn, .. } | Event::CrlImported { ca_sn, .. } => {
                format!("{PREFIX}{name}/{ca_sn}")
            }
        }
    }

    /// The JSON payload, stamped with `timestamp` and `node`.
    pub fn payload(&self, timestamp_ms: i64, node: &str) -> Value {
        let mut m = Map::new();
        m.insert("event".into(), json!(self.name()));
        m.insert("timestamp".into(), json!(timestamp_ms));
        m.insert("node".into(), json!(node));
        let device_fields = |m: &mut Map<String, Value>, device: &DeviceIdentity| {
            m.insert("ca_sn".into(), json!(device.ca_sn.to_string()));
            m.insert("device_sn".into(), json!(device.device_sn.to_string()));
        };
        let change_fields = |m: &mut Map<String, Value>, change: &Change| {
            m.insert("by".into(), json!(change.by));
            m.insert("via".into(), json!(change.via));
            if let Some(id) = &change.request_id {
                m.insert("request_id".into(), json!(id));
            }
        };
        match self {
            Event::Registered {
                device,
                common_name,
                subject_o,
                subject_ou,
                valid_begin_ms,
                valid_end_ms,
            } => {
                device_fields(&mut m, device);
                m.insert("common_name".into(), json!(common_name));
                m.insert("subject_o".into(), json!(subject_o));
                m.insert("subject_ou".into(), json!(subject_ou));
                m.insert("valid_begin".into(), json!(valid_begin_ms));
                m.insert("valid_end".into(), json!(valid_end_ms));
            }
            Event::Connected {
                device,
                client_id,
                peer,
                protocol,
                clean_start,
                session_present,
            } => {
                device_fields(&mut m, device);
                m.insert("client_id".into(), json!(client_id));
                m.insert("peer".into(), json!(peer.to_string()));
                m.insert("protocol".into(), json!(protocol));
                m.insert("clean_start".into(), json!(clean_start));
                m.insert("session_present".into(), json!(session_present));
            }
            Event::Disconnected {
                device,
                client_id,
                peer,
                reason,
            } => {
                device_fields(&mut m, device);
                m.insert("client_id".into(), json!(client_id));
                m.insert("peer".into(), json!(peer.to_string()));
                m.insert("reason".into(), json!(reason));
            }
            Event::DeviceStatus {
                device,
                status,
                change,
            } => {
                device_fields(&mut m, device);
                m.insert("status".into(), json!(status));
                change_fields(&mut m, change);
            }
            Event::CaStatus {
                ca_sn,
                status,
                change,
            } => {
                m.insert("ca_sn".into(), json!(ca_sn.to_string()));
                m.insert("status".into(), json!(status));
                change_fields(&mut m, change);
            }
            Event::CrlImported {
                ca_sn,
                inactivated,
                blocked,
                already_inactive,
                change,
            } => {
                m.insert("ca_sn".into(), json!(ca_sn.to_string()));
                m.insert("inactivated".into(), json!(inactivated));
                m.insert("blocked".into(), json!(blocked));
                m.insert("already_inactive".into(), json!(already_inactive));
                change_fields(&mut m, change);
            }
        }
        Value::Object(m)
    }
}

/// The counters of events (`certmq_events_*_total`).
#[derive(Clone)]
pub struct EventCounters {
    /// By event name.
    pub published: IntCounterVec,
    /// By reason: `backlog`, `subscriber_full`, `shutdown`.
    pub dropped: IntCounterVec,
}

/// The handle that emits events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<(i64, Event)>,
    dropped: IntCounterVec,
    /// Asked before an event is queued: with no subscription that can
    /// match a `$` topic, nobody can receive it (events are never
    /// retained), and it is not made at all.
    hub: Hub,
}

/// The task that publishes what [`Events`] emit.
pub struct Publisher {
    rx: mpsc::Receiver<(i64, Event)>,
    hub: Hub,
    node: Arc<str>,
    counters: EventCounters,
}

impl Events {
    pub fn new(hub: Hub, node: Arc<str>, counters: EventCounters) -> (Events, Publisher) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = Events {
            tx,
            dropped: counters.dropped.clone(),
            hub: hub.clone(),
        };
        (
            events,
            Publisher {
                rx,
                hub,
                node,
                counters,
            },
        )
    }

    /// Emits from a device's path: never waits; a full queue drops it.
    pub fn emit(&self, event: Event) {
        if !self.hub.has_dollar_subscriptions() {
            return;
        }
        match self.tx.try_send((crate::store::sqlite::now_ms(), event)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.with_label_values(&["backlog"]).inc()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped.with_label_values(&["shutdown"]).inc()
            }
        }
    }

    /// Emits from an admin call: waits for room in the queue (the
    /// publisher never waits for subscribers, so the wait is short).
    pub async fn emit_waiting(&self, event: Event) {
        if !self.hub.has_dollar_subscriptions() {
            return;
        }
        if self
            .tx
            .send((crate::store::sqlite::now_ms(), event))
            .await
            .is_err()
        {
            // Only a stopped publisher refuses a waiting send.
            self.dropped.with_label_values(&["shutdown"]).inc();
        }
    }
}

impl Publisher {
    /// Publishes events in the order they were emitted until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // What is still queued is not published: counted.
                    self.rx.close();
                    let mut left = 0u64;
                    while self.rx.try_recv().is_ok() {
                        left += 1;
                    }
                    self.counters.dropped.with_label_values(&["shutdown"]).inc_by(left);
                    return;
                }
                next = self.rx.recv() => next,
            };
            let Some((at_ms, event)) = next else { return };
            self.publish(at_ms, &event);
        }
    }

    fn publish(&self, at_ms: i64, event: &Event) {
        let payload = event.payload(at_ms, &self.node).to_string();
        let message = Message {
            topic: Arc::from(event.topic()),
            payload: payload.into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Passthrough {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                ..Passthrough::default()
            },
            expires_at: None,
            origin: None,
        };
        let routed = self.hub.publish(message, std::time::Instant::now());
        self.counters
            .published
            .with_label_values(&[event.name()])
            .inc();
        if routed.dropped > 0 {
            self.counters
                .dropped
                .with_label_values(&["subscriber_full"])
                .inc_by(routed.dropped as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::message::SubOptions;
    use crate::serial::{DeviceSn, Serial};

    fn device() -> DeviceIdentity {
        DeviceIdentity {
            ca_sn: CaSn(Serial::from_der_content(&[0x2b]).unwrap()),
            device_sn: DeviceSn(Serial::from_der_content(&[0x5f, 0xc9]).unwrap()),
        }
    }

    fn counters() -> EventCounters {
        let opts = |n: &str| prometheus::Opts::new(n, "test");
        EventCounters {
            published: IntCounterVec::new(opts("p"), &["event"]).unwrap(),
            dropped: IntCounterVec::new(opts("d"), &["reason"]).unwrap(),
        }
    }

    fn registered() -> Event {
        Event::Registered {
            device: device(),
            common_name: "d".into(),
            subject_o: String::new(),
            subject_ou: String::new(),
            valid_begin_ms: 0,
            valid_end_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_a_stop_counts_what_was_left() {
        let hub = Hub::new(crate::router::hub::HubSettings {
            max_queued_messages: 10,
            max_session_expiry: std::time::Duration::from_secs(1),
            max_retained_messages: 10,
        });
        let back_end = hub.attach("back-end", true, std::time::Instant::now());
        hub.subscribe(
            &back_end.session,
            "$certmq/events/#",
            SubOptions::at(QoS::AtLeastOnce),
            std::time::Instant::now(),
        );
        let c = counters();
        let (events, publisher) = Events::new(hub, Arc::from("n"), c.clone());
        for _ in 0..QUEUE + 5 {
            events.emit(registered());
        }
        assert_eq!(c.dropped.with_label_values(&["backlog"]).get(), 5);
        let stop = CancellationToken::new();
        stop.cancel();
        publisher.run(stop).await;
        assert_eq!(
            c.dropped.with_label_values(&["shutdown"]).get(),
            QUEUE as u64
        );
        events.emit(registered());
        assert_eq!(
            c.dropped.with_label_values(&["shutdown"]).get(),
            QUEUE as u64 + 1
        );
    }

    /// Without a subscription that can match a `$` topic nothing is
    /// queued (nor dropped); from the subscription on, events flow; and
    /// they stop again once it is gone (unsubscribed, or its session
    /// ended).
    #[tokio::test]
    async fn events_are_made_only_while_someone_can_receive_them() {
        let hub = Hub::new(crate::router::hub::HubSettings {
            max_queued_messages: 100,
            max_session_expiry: std::time::Duration::from_secs(1),
            max_retained_messages: 10,
        });
        let c = counters();
        let (events, mut publisher) = Events::new(hub.clone(), Arc::from("n"), c.clone());
        let now = std::time::Instant::now;
        // `#` does not reach `$` topics (MQTT 5 section 4.7.2).
        let fleet = hub.attach("fleet", true, now());
        hub.subscribe(&fleet.session, "#", SubOptions::at(QoS::AtMostOnce), now());
        for _ in 0..QUEUE + 5 {
            events.emit(registered());
        }
        events.emit_waiting(registered()).await;
        assert!(publisher.rx.try_recv().is_err(), "nothing was queued");
        assert_eq!(c.dropped.with_label_values(&["backlog"]).get(), 0);

        let back_end = hub.attach("back-end", true, now());
        let filter = "$share/b/$certmq/events/#";
        hub.subscribe(
            &back_end.session,
            filter,
            SubOptions::at(QoS::AtLeastOnce),
            now(),
        );
        events.emit(registered());
        let (at, _) = publisher.rx.try_recv().expect("queued for the subscriber");
        publisher.publish(at, &registered());
        assert_eq!(back_end.session.mailbox.take(10, usize::MAX).len(), 1);

        assert!(hub.unsubscribe(&back_end.session, filter));
        events.emit(registered());
        assert!(publisher.rx.try_recv().is_err());

        let second = hub.attach("second", true, now());
        hub.subscribe(
            &second.session,
            "$certmq/events/#",
            SubOptions::at(QoS::AtLeastOnce),
            now(),
        );
        events.emit(registered());
        assert!(publisher.rx.try_recv().is_ok());
        assert!(hub.forget("second"));
        events.emit(registered());
        assert!(publisher.rx.try_recv().is_err());
    }

    #[test]
    fn topics_and_payloads() {
        let e = Event::Disconnected {
            device: device(),
            client_id: "c1".into(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            reason: "inactivated",
        };
        assert_eq!(e.topic(), "$certmq/events/disconnected/2B/5FC9");
        let p = e.payload(7, "n1");
        assert_eq!(p["event"], "disconnected");
        assert_eq!(p["reason"], "inactivated");
        assert_eq!(p["timestamp"], 7);
        assert_eq!(p["node"], "n1");
        assert_eq!(p["device_sn"], "5FC9");
        let crl = Event::CrlImported {
            ca_sn: device().ca_sn,
            inactivated: 3,
            blocked: 2,
            already_inactive: 0,
            change: Change {
                by: "LTAI1".into(),
                via: "crl",
                request_id: None,
            },
        };
        assert_eq!(crl.topic(), "$certmq/events/crl/2B");
        assert_eq!(crl.payload(0, "n")["by"], "LTAI1");
        assert!(is_reserved("$certmq/events/x"));
        assert!(!is_reserved("$SYS/x"));
        assert!(!is_reserved("devices/$certmq/x"));
    }
}
