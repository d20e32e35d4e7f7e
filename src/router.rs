//! The rumqttd router, and links to it. Everything that touches rumqttd's
//! router API lives here.
//!
//! rumqttd's router runs on its own thread and talks to connections over
//! in-process links (`LinkTx`/`LinkRx`). Its channel type is not nameable
//! outside rumqttd, so [`RouterHandle`] keeps it inside closures. Two of the
//! link API's sharp edges are handled here:
//! - `LinkBuilder::build` blocks until the router answers; it runs on the
//!   blocking pool.
//! - `LinkTx::send` blocks when the router's channel is full; [`Link::send`]
//!   first waits *asynchronously* for room, so async workers do not stall
//!   behind a busy router.
//! - Dropping a link does not free the router's slot: the router must see a
//!   DISCONNECT. [`Link`] sends one on every exit path, drops included.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{Notification, RouterConfig};

/// Why a link to the router could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(
        "the router refused the connection (broker full, or the client id is not acceptable): {0}"
    )]
    Refused(String),
    #[error("the router is gone: {0}")]
    Gone(String),
}

impl From<LinkError> for RouterError {
    fn from(e: LinkError) -> Self {
        RouterError::Gone(e.to_string())
    }
}

/// What a new link asks of the router.
#[derive(Debug, Clone)]
pub struct LinkRequest {
    pub client_id: String,
    pub clean_session: bool,
    pub topic_alias_max: u16,
}

type Connect =
    dyn Fn(LinkRequest) -> Result<(LinkTx, LinkRx, Notification), RouterError> + Send + Sync;

/// A handle to the router thread; cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    connect: Arc<Connect>,
    is_full: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl RouterHandle {
    /// Starts the router thread for at most `max_connections` links.
    pub fn spawn(max_connections: usize, max_packet_size: usize) -> RouterHandle {
        let config = RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            // Retention per topic filter: segments of at least 1 MiB (and of
            // two maximum packets), four in memory.
            max_segment_size: (2 * max_packet_size).max(1 << 20),
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        };
        let router_tx = rumqttd::Router::new(0, config).spawn();
        let probe = router_tx.clone();
        RouterHandle {
            connect: Arc::new(move |req: LinkRequest| {
                LinkBuilder::new(&req.client_id, router_tx.clone())
                    .clean_session(req.clean_session)
                    .topic_alias_max(req.topic_alias_max)
                    .dynamic_filters(false)
                    .build()
                    .map_err(|e| match e {
                        // The router answers refusals by dropping the link's channel.
                        LinkError::Recv(e) => RouterError::Refused(e.to_string()),
                        e => RouterError::Gone(e.to_string()),
                    })
            }),
            is_full: Arc::new(move || probe.is_full()),
        }
    }

    /// Opens a link for a connection that sent CONNECT. The [`Link`] is
    /// made on the blocking thread, so that if the caller gives up waiting
    /// the link is still dropped properly (and the router told).
    pub async fn link(&self, req: LinkRequest) -> Result<Link, RouterError> {
        let connect = self.connect.clone();
        let router = self.clone();
        tokio::task::spawn_blocking(move || {
            connect(req).map(|(tx, rx, connack)| Link {
                tx,
                rx,
                connack: Some(connack),
                router,
                closed: false,
            })
        })
        .await
        .map_err(|e| RouterError::Gone(format!("link construction panicked: {e}")))?
    }

    /// Waits (without blocking the thread) until the router's channel has
    /// room.
    async fn room(&self) {
        while (self.is_full)() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// One connection's link to the router.
pub struct Link {
    tx: LinkTx,
    rx: LinkRx,
    connack: Option<Notification>,
    router: RouterHandle,
    closed: bool,
}

impl Link {
    /// The router's CONNACK for this link (taken once).
    pub fn take_connack(&mut self) -> Option<Packet> {
        self.connack.take().and_then(Option::<Packet>::from)
    }

    /// Hands packets from the client to the router, in order.
    pub async fn send(&mut self, mut packets: Vec<Packet>) -> Result<(), RouterError> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        self.router.room().await;
        self.tx.buffer().extend(packets);
        // One notification for the whole batch. `send` has no await point
        // inside: it completes on its first poll.
        self.tx.send(last).await?;
        Ok(())
    }

    /// Waits for the router's next batch of packets for the client. An empty
    /// batch with `reschedule` set means the router paused this link and
    /// waits to hear that the client has caught up ([`Link::ready`]).
    pub async fn recv(&mut self) -> Result<Outgoing, RouterError> {
        let mut out = Outgoing::default();
        let first = self.rx.next().await?;
        out.push(first);
        // Take whatever else is already there without waiting.
        loop {
            match poll_once(self.rx.next()) {
                Some(Ok(Some(n))) => out.push(Some(n)),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Tells the router the client has caught up.
    pub async fn ready(&self) -> Result<(), RouterError> {
        self.rx.wake().await?;
        Ok(())
    }

    /// Closes the link: optionally publishes the client's will first, then
    /// tells the router the connection is gone.
    pub async fn close(mut self, will: Option<Packet>) {
        let mut packets: Vec<Packet> = will.into_iter().collect();
        packets.push(disconnect_packet());
        let _ = self.send(packets).await;
        self.closed = true;
    }
}

impl Drop for Link {
    /// The exit path of last resort (a panic, a cancelled task): the router
    /// must hear that this link is gone or its slot stays taken.
    fn drop(&mut self) {
        if !self.closed {
            let _ = poll_once(self.tx.send(disconnect_packet()));
        }
    }
}

fn disconnect_packet() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// Polls a future once; `None` if it is not ready.
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Packets the router has for a client.
#[derive(Default)]
pub struct Outgoing {
    pub packets: Vec<Packet>,
    /// The router paused the link; call [`Link::ready`] after writing.
    pub reschedule: bool,
}

impl Outgoing {
    fn push(&mut self, notification: Option<Notification>) {
        match notification {
            Some(Notification::Unschedule) => self.reschedule = true,
            Some(n) => {
                if let Some(packet) = Option::<Packet>::from(n) {
                    self.packets.push(packet);
                }
            }
            None => {}
        }
    }
}

/// Builds a PUBLISH the router accepts with any QoS. rumqttd keeps the QoS
/// and packet id of its `Publish` crate-private; its own serialisation is
/// the one public way to set them.
pub fn publish(
    topic: &Bytes,
    payload: &Bytes,
    qos: u8,
    retain: bool,
    pkid: u16,
) -> rumqttd::protocol::Publish {
    let mut raw = Vec::with_capacity(5 + topic.len() + payload.len());
    raw.push(0b0011_0000 | u8::from(retain) | ((qos & 0b11) << 1));
    raw.extend_from_slice(&pkid.to_be_bytes());
    raw.extend_from_slice(&(topic.len().min(u16::MAX as usize) as u16).to_be_bytes());
    raw.extend_from_slice(topic);
    raw.extend_from_slice(payload);
    rumqttd::protocol::Publish::deserialize(Bytes::from(raw))
}
