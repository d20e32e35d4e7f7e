//! The rumqttd router, and links to it. Everything that touches rumqttd's
//! router API lives here.
//!
//! rumqttd's router runs on its own thread and talks to connections over
//! in-process links (`LinkTx`/`LinkRx`). Its channel type is not nameable
//! outside rumqttd, so [`RouterHandle`] keeps it inside closures. The link
//! API's sharp edges are handled here:
//! - `LinkBuilder::build` blocks until the router answers; it runs on the
//!   blocking pool.
//! - `LinkTx::send` is a *blocking* channel send (the router's channel is
//!   bounded), and so is the DISCONNECT a dropped link owes the router. No
//!   session calls it: every link's sending half lives on one feeder
//!   thread, `certmq-router-feed`, which does the blocking sends in order.
//!   Sessions hand it packets over an unbounded channel after taking a
//!   permit asynchronously (at most [`FEED_BATCHES`] batches in flight), so
//!   a saturated router makes sessions *wait*, never blocks an async worker.
//! - Dropping a link does not free the router's slot: the router must see a
//!   DISCONNECT. [`Link`] sends one on every exit path, drops included.
//!
//! [`RouterHandle::health`] says whether the router thread and the feeder
//! are still running; the broker cannot route without either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{Notification, RouterConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Batches of client packets queued for the router at most; a session
/// whose batch finds no room waits (asynchronously) for one.
/// Small: a batch is one read's worth of a client's packets, and the
/// router takes them faster than they could queue up in earnest.
pub const FEED_BATCHES: usize = 256;

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

/// Which part of routing stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouterDown {
    #[error("the router thread (rumqttd) has stopped")]
    Router,
    #[error("the router feeder thread (certmq-router-feed) has stopped")]
    Feeder,
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

/// Identifies a link on the feeder thread.
type LinkId = u64;

/// What the feeder thread does, in arrival order.
enum Feed {
    /// A new link's sending half.
    Open(LinkId, LinkTx),
    /// Client packets, in order; the permit returns when they are sent.
    Packets(LinkId, Vec<Packet>, OwnedSemaphorePermit),
    /// Optionally the will, then DISCONNECT; the link is gone after.
    Close(LinkId, Option<Box<Packet>>),
    /// Answered once everything queued before it is with the router.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// A handle to the router thread; cheap to clone.
#[derive(Clone)]
pub struct RouterHandle {
    connect: Arc<Connect>,
    router_gone: Arc<dyn Fn() -> bool + Send + Sync>,
    feed: mpsc::Sender<Feed>,
    room: Arc<Semaphore>,
    feeder_alive: Arc<AtomicBool>,
    next_link: Arc<AtomicU64>,
}

impl RouterHandle {
    /// Starts the router thread for at most `max_connections` links, and
    /// the feeder thread.
    pub fn spawn(
        max_connections: usize,
        max_packet_size: usize,
    ) -> Result<RouterHandle, RouterError> {
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
        let (feed, queue) = mpsc::channel();
        let feeder_alive = Arc::new(AtomicBool::new(true));
        let alive = Alive(feeder_alive.clone());
        std::thread::Builder::new()
            .name("certmq-router-feed".into())
            .spawn(move || feed_loop(queue, alive))
            .map_err(|e| {
                RouterError::Gone(format!("cannot start the router feeder thread: {e}"))
            })?;
        Ok(RouterHandle {
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
            router_gone: Arc::new(move || probe.is_disconnected()),
            feed,
            room: Arc::new(Semaphore::new(FEED_BATCHES)),
            feeder_alive,
            next_link: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Opens a link for a connection that sent CONNECT. The [`Link`] is
    /// made on the blocking thread, so that if the caller gives up waiting
    /// the link is still dropped properly (and the router told).
    pub async fn link(&self, req: LinkRequest) -> Result<Link, RouterError> {
        // A link closed before this one was asked for must be gone from the
        // router first: the new CONNECT goes to the router directly, the
        // old DISCONNECT through the feeder. Same client id (a take-over,
        // a session discarded by `forget`) then means: old gone, new in.
        self.barrier().await?;
        let connect = self.connect.clone();
        let router = self.clone();
        tokio::task::spawn_blocking(move || {
            connect(req).map(|(tx, rx, connack)| {
                let id = router.next_link.fetch_add(1, Ordering::Relaxed);
                // A closed feeder drops the link's sender here: the router
                // then never hears of it, but it is down anyway (see health).
                let _ = router.feed.send(Feed::Open(id, tx));
                Link {
                    id,
                    rx,
                    connack: Some(connack),
                    router,
                    closed: false,
                }
            })
        })
        .await
        .map_err(|e| RouterError::Gone(format!("link construction panicked: {e}")))?
    }

    /// Waits until the feeder has handed everything queued so far to the
    /// router.
    async fn barrier(&self) -> Result<(), RouterError> {
        let (done, handed) = tokio::sync::oneshot::channel();
        let gone = || RouterError::Gone(RouterDown::Feeder.to_string());
        self.feed.send(Feed::Barrier(done)).map_err(|_| gone())?;
        handed.await.map_err(|_| gone())
    }

    /// Discards whatever the router keeps for `client_id` (a persistent
    /// session): a clean link under that id, closed at once.
    pub async fn forget(&self, client_id: &str) -> Result<(), RouterError> {
        let link = self
            .link(LinkRequest {
                client_id: client_id.to_owned(),
                clean_session: true,
                topic_alias_max: 0,
            })
            .await?;
        link.close(None).await;
        Ok(())
    }

    /// Batches of client packets waiting for the router now (at most
    /// [`FEED_BATCHES`]).
    pub fn backlog(&self) -> usize {
        FEED_BATCHES - self.room.available_permits()
    }

    /// `Err` once the router or its feeder has stopped: then no message is
    /// routed, and the broker cannot go on.
    pub fn health(&self) -> Result<(), RouterDown> {
        if !self.feeder_alive.load(Ordering::Acquire) {
            return Err(RouterDown::Feeder);
        }
        if (self.router_gone)() {
            return Err(RouterDown::Router);
        }
        Ok(())
    }
}

/// Cleared when the feeder thread ends, by a panic too.
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The feeder thread: every blocking send to the router happens here.
fn feed_loop(queue: mpsc::Receiver<Feed>, _alive: Alive) {
    let mut links: HashMap<LinkId, LinkTx> = HashMap::new();
    for job in queue {
        match job {
            Feed::Open(id, tx) => {
                links.insert(id, tx);
            }
            Feed::Packets(id, packets, _permit) => {
                #[cfg(feature = "fault-injection")]
                crate::fault::on_router_feed(&packets);
                if let Some(tx) = links.get_mut(&id) {
                    // A send fails only when the router is gone; health()
                    // reports that, and the link's receiver ends its session.
                    let _ = hand_over(tx, packets);
                }
            }
            Feed::Close(id, will) => {
                if let Some(mut tx) = links.remove(&id) {
                    let mut packets: Vec<Packet> = will.into_iter().map(|w| *w).collect();
                    packets.push(disconnect_packet());
                    let _ = hand_over(&mut tx, packets);
                }
            }
            Feed::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Queues packets on a link and wakes the router once for all of them
/// (a blocking send when its channel is full: feeder thread only).
/// `false` if the router is gone.
fn hand_over(tx: &mut LinkTx, mut packets: Vec<Packet>) -> bool {
    let Some(last) = packets.pop() else {
        return true;
    };
    tx.buffer().extend(packets);
    // `LinkTx::send` has no await point inside: it completes on its first
    // poll, blocking in it if the router's channel is full.
    !matches!(poll_once(tx.send(last)), Some(Err(_)))
}

/// One connection's link to the router.
pub struct Link {
    id: LinkId,
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

    /// Hands packets from the client to the router, in order. Waits
    /// (asynchronously) while the router is saturated.
    pub async fn send(&mut self, packets: Vec<Packet>) -> Result<(), RouterError> {
        if packets.is_empty() {
            return Ok(());
        }
        let permit = self
            .router
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RouterError::Gone("the router feed is closed".into()))?;
        self.router
            .feed
            .send(Feed::Packets(self.id, packets, permit))
            .map_err(|_| RouterError::Gone(RouterDown::Feeder.to_string()))
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

    /// Tells the router the client has caught up (an asynchronous send).
    pub async fn ready(&self) -> Result<(), RouterError> {
        self.rx.wake().await?;
        Ok(())
    }

    /// Closes the link: optionally publishes the client's will first, then
    /// tells the router the connection is gone.
    pub async fn close(mut self, will: Option<Packet>) {
        self.closed = true;
        let _ = self
            .router
            .feed
            .send(Feed::Close(self.id, will.map(Box::new)));
    }
}

impl Drop for Link {
    /// The exit path of last resort (a panic, a cancelled task): the router
    /// must hear that this link is gone or its slot stays taken. Queued on
    /// the feeder, so a drop never blocks.
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.router.feed.send(Feed::Close(self.id, None));
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
