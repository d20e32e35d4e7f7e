//! Real MQTT clients (rumqttc, 3.1.1 and 5) over real TLS, with their event
//! loops driven in a task and turned into a stream of test events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};
use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};

use super::{Device, TestBroker, pki::client_config};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// What a test sees of a client.
#[derive(Debug, Clone)]
pub enum Ev {
    ConnAck,
    SubAck,
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
    },
    /// The connection ended. `reason` is the MQTT 5 DISCONNECT reason code
    /// the server sent, if any.
    Closed {
        reason: Option<String>,
        error: String,
    },
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub struct Client {
    handle: Handle,
    events: mpsc::UnboundedReceiver<Ev>,
    /// QoS 1 and 2 PUBLISH packets sent, and acknowledged by the broker
    /// (PUBACK, PUBCOMP; counted by the event loop, not shown as events).
    sent: AtomicU64,
    acked: watch::Receiver<u64>,
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Connects `device` as `client_id`; `Err` with the error text if the
/// connection fails before CONNACK.
pub async fn connect(
    tb: &TestBroker,
    device: &Device,
    client_id: &str,
    version: Version,
) -> Result<Client, String> {
    let tls = client_config(&tb.server_ca, Some(device));
    connect_with(tb.port(), tls, client_id, version, |_| {}).await
}

pub async fn connect_with(
    port: u16,
    tls: Arc<ClientConfig>,
    client_id: &str,
    version: Version,
    edit: impl FnOnce(&mut Options),
) -> Result<Client, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (acks, acked) = watch::channel(0u64);
    let mut options = Options::default();
    edit(&mut options);
    let transport = Transport::tls_with_config(TlsConfiguration::Rustls(tls));
    let handle = match version {
        Version::V4 => {
            let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
            opts.set_transport(transport)
                .set_keep_alive(options.keep_alive)
                .set_clean_session(options.clean);
            if let Some((topic, payload)) = &options.will {
                opts.set_last_will(rumqttc::LastWill::new(
                    topic,
                    payload.clone(),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                ));
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
            tokio::spawn(async move {
                loop {
                    use rumqttc::{Event, Packet};
                    let ev = match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                        Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                        Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                            acks.send_modify(|n| *n += 1);
                            continue;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                            topic: p.topic,
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                        },
                        Ok(_) => continue,
                        Err(e) => {
                            let _ = tx.send(Ev::Closed {
                                reason: None,
                                error: e.to_string(),
                            });
                            return;
                        }
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            });
            Handle::V4(client)
        }
        Version::V5 => {
            let mut opts = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
            opts.set_transport(transport)
                .set_keep_alive(options.keep_alive)
                .set_clean_start(options.clean);
            if !options.clean {
                // MQTT 5 section 3.1.2.11.2: without a session expiry
                // interval the session ends with the connection.
                opts.set_session_expiry_interval(Some(3600));
            }
            if let Some((topic, payload)) = &options.will {
                opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    topic,
                    payload.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    None,
                ));
            }
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 64);
            tokio::spawn(async move {
                loop {
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    use rumqttc::v5::{ConnectionError, Event, StateError};
                    let ev = match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                        Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                        Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                            acks.send_modify(|n| *n += 1);
                            continue;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => Ev::Publish {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            qos: p.qos as u8,
                        },
                        Ok(_) => continue,
                        Err(e) => {
                            let reason = match &e {
                                ConnectionError::MqttState(StateError::ServerDisconnect {
                                    reason_code,
                                    ..
                                }) => Some(format!("{reason_code:?}")),
                                _ => None,
                            };
                            let _ = tx.send(Ev::Closed {
                                reason,
                                error: e.to_string(),
                            });
                            return;
                        }
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            });
            Handle::V5(client)
        }
    };
    let mut client = Client {
        handle,
        events: rx,
        sent: AtomicU64::new(0),
        acked,
    };
    match client.next(WAIT).await {
        Some(Ev::ConnAck) => Ok(client),
        Some(Ev::Closed { error, .. }) => Err(error),
        other => Err(format!("expected CONNACK, got {other:?}")),
    }
}

/// Client options the tests vary.
pub struct Options {
    pub keep_alive: Duration,
    pub clean: bool,
    pub will: Option<(String, Vec<u8>)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive: Duration::from_secs(30),
            clean: true,
            will: None,
        }
    }
}

impl Client {
    /// The next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Ev> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.subscribe_qos(filter, 1).await
    }

    pub async fn subscribe_qos(&mut self, filter: &str, qos: u8) {
        match &self.handle {
            Handle::V4(c) => c
                .subscribe(filter, rumqttc::qos(qos).unwrap())
                .await
                .unwrap(),
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::qos(qos).unwrap())
                .await
                .unwrap(),
        }
        loop {
            match self.next(WAIT).await {
                Some(Ev::SubAck) => return,
                Some(Ev::Publish { .. }) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], qos: u8) {
        if qos > 0 {
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
        match &self.handle {
            Handle::V4(c) => {
                let qos = rumqttc::qos(qos).unwrap();
                c.publish(topic, qos, false, payload.to_vec())
                    .await
                    .unwrap()
            }
            Handle::V5(c) => {
                // Always with properties, so that 5 -> 3.1.1 delivery is
                // exercised with something to strip.
                let qos = rumqttc::v5::mqttbytes::qos(qos).unwrap();
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    content_type: Some("text/plain".into()),
                    user_properties: vec![("sent-by".into(), "certmq-test".into())],
                    ..Default::default()
                };
                c.publish_with_properties(topic, qos, false, payload.to_vec(), props)
                    .await
                    .unwrap()
            }
        }
    }

    /// Publishes a retained message, QoS 1.
    pub async fn publish_retained(&self, topic: &str, payload: &[u8]) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        match &self.handle {
            Handle::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, true, payload.to_vec())
                .await
                .unwrap(),
            Handle::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    payload.to_vec(),
                )
                .await
                .unwrap(),
        }
    }

    /// Waits until the broker has acknowledged every QoS 1 and 2 PUBLISH
    /// sent so far. rumqttd acknowledges once its router has taken the
    /// message: a retained one is stored, offline sessions will get it.
    pub async fn acknowledged(&self) {
        let sent = self.sent.load(Ordering::SeqCst);
        let mut acked = self.acked.clone();
        tokio::time::timeout(WAIT, acked.wait_for(|n| *n >= sent))
            .await
            .unwrap_or_else(|_| panic!("{sent} PUBLISH packets sent, not all acknowledged"))
            .expect("the connection ended before the acknowledgements");
    }

    pub async fn disconnect(&self) {
        let _ = match &self.handle {
            Handle::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Handle::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }

    /// Waits for a PUBLISH on `topic`, skipping others.
    pub async fn expect_publish(&mut self, topic: &str) -> Vec<u8> {
        self.expect_publish_qos(topic).await.0
    }

    /// Waits for a PUBLISH on `topic`, skipping others; its payload and QoS.
    pub async fn expect_publish_qos(&mut self, topic: &str) -> (Vec<u8>, u8) {
        loop {
            match self.next(WAIT).await {
                Some(Ev::Publish {
                    topic: t,
                    payload,
                    qos,
                }) if t == topic => return (payload, qos),
                Some(Ev::Publish { .. }) => continue,
                other => panic!("expected PUBLISH on {topic}, got {other:?}"),
            }
        }
    }

    /// Waits for the connection to end; returns the MQTT 5 reason, if any.
    pub async fn expect_closed(&mut self) -> Option<String> {
        loop {
            match self.next(WAIT).await {
                Some(Ev::Closed { reason, .. }) => return reason,
                Some(Ev::Publish { .. }) => continue,
                other => panic!("expected the connection to close, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives (no message, no close) for `quiet`.
    pub async fn expect_quiet(&mut self, quiet: Duration) {
        if let Some(ev) = self.next(quiet).await {
            panic!("expected silence, got {ev:?}");
        }
    }
}
