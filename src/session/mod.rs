//! A session: one admitted device connection, from CONNECT to close.
//!
//! certmq runs its own per-connection loop over the TLS stream, attached to
//! its client id's session in the router ([`crate::router::Hub`]):
//! - this file: CONNECT (timeout, client id, will, authorization of the
//!   will), the claim of the client id (`table`), attachment (a resumed
//!   session's subscriptions judged again), CONNACK, and the end: the
//!   goodbye, the will (or not), detachment with the session expiry;
//! - `pump`: the loop itself - client packets in, deliveries out, keep
//!   alive, policy changes;
//! - `inbound` / `outbound`: the MQTT state of each direction (QoS 2
//!   receipts, topic aliases, packet ids, the in-flight window);
//! - `wire`: PUBLISH encoding; `codec`: every other packet (rumqttd's
//!   codecs, guarded); `authorize`: topic authorization's answers.
//!
//! The loop always listens to its kill handle first: a session dropped by an
//! admin call stops whatever it is doing, sends MQTT 5 clients DISCONNECT
//! 0x98 (administrative action), and closes its socket.

mod authorize;
pub mod codec;
mod connect;
mod inbound;
mod outbound;
mod pump;
pub mod table;
pub mod wire;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::collections::{HashSet, VecDeque};

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

pub use table::{Cut, DropReason, SessionGuard, SessionTable};

use crate::Context;
use crate::metrics::LiveSession;
use crate::router::hub::{Attached, Parked};
use crate::router::{Delivery, Hub};
use codec::{Codec, CodecError, Version};
use connect::{ConnectRequest, Will, accept_connect, refusal_connack};
use inbound::{Inbound, InboundError};
use outbound::Outbound;

/// Time allowed for the goodbye (DISCONNECT and TLS close_notify) before the
/// socket is closed regardless.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(250);

/// Room made in the read buffer before each read. Small: an idle session's
/// buffer is most of its memory that certmq controls; a larger packet grows
/// it as needed, and it shrinks back once drained.
const READ_CHUNK: usize = 1024;

/// A drained read buffer larger than this is given back.
const READ_BUFFER_KEEP: usize = 8 * 1024;

/// Why a session ended.
#[derive(Debug)]
enum Exit {
    Killed(DropReason),
    /// The client sent DISCONNECT; `with_will` for MQTT 5 reason 0x04.
    ClientDisconnect {
        with_will: bool,
    },
    PeerClosed,
    Io(io::Error),
    ConnectTimeout,
    KeepAliveTimeout,
    SendTimeout,
    Protocol(CodecError),
    /// A PUBLISH broke an MQTT 5 rule of this connection (aliases,
    /// receive maximum).
    Inbound(InboundError),
    TopicInvalid,
    /// A policy reload took away a subscription it holds.
    NotAuthorized,
    ConnectRefused(String),
    Router(String),
}

impl Exit {
    /// The DISCONNECT reason an MQTT 5 client receives, if any.
    fn reason_code(&self) -> Option<DisconnectReasonCode> {
        Some(match self {
            Exit::Killed(DropReason::Administrative(_)) => {
                DisconnectReasonCode::AdministrativeAction
            }
            Exit::Killed(DropReason::ShuttingDown) => DisconnectReasonCode::ServerShuttingDown,
            Exit::Killed(DropReason::TakenOver) => DisconnectReasonCode::SessionTakenOver,
            Exit::Killed(DropReason::Fenced) => DisconnectReasonCode::UseAnotherServer,
            Exit::Killed(DropReason::Expired) => DisconnectReasonCode::MaximumConnectTime,
            Exit::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
            Exit::Protocol(CodecError::TooLarge(_)) => DisconnectReasonCode::PacketTooLarge,
            Exit::Protocol(CodecError::Malformed(_)) => DisconnectReasonCode::MalformedPacket,
            Exit::Protocol(CodecError::CodecPanic(_)) => DisconnectReasonCode::UnspecifiedError,
            Exit::Protocol(_) => DisconnectReasonCode::ProtocolError,
            Exit::Inbound(InboundError::AliasInvalid(_)) => DisconnectReasonCode::TopicAliasInvalid,
            Exit::Inbound(InboundError::AliasUnknown(_)) => DisconnectReasonCode::ProtocolError,
            Exit::Inbound(InboundError::ReceiveMaximumExceeded) => {
                DisconnectReasonCode::ReceiveMaximumExceeded
            }
            Exit::TopicInvalid => DisconnectReasonCode::TopicNameInvalid,
            Exit::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Exit::Router(_) => DisconnectReasonCode::UnspecifiedError,
            _ => return None,
        })
    }

    /// The `reason` of the disconnected event. `dropped`: the reason a
    /// kill gave, which wins over how the loop noticed (the client may
    /// have closed its socket in the same moment).
    fn event_reason(&self, dropped: Option<DropReason>) -> &'static str {
        if let Some(reason) = dropped {
            return reason.event_name();
        }
        match self {
            Exit::Killed(reason) => reason.event_name(),
            Exit::ClientDisconnect { .. } => "normal",
            Exit::PeerClosed | Exit::Io(_) => "connection_lost",
            Exit::KeepAliveTimeout => "keepalive",
            Exit::SendTimeout => "send_timeout",
            Exit::Protocol(_) | Exit::Inbound(_) | Exit::TopicInvalid => "protocol_error",
            Exit::NotAuthorized => "not_authorized",
            Exit::ConnectTimeout | Exit::ConnectRefused(_) => "refused",
            Exit::Router(_) => "internal_error",
        }
    }

    /// Whether the client's will is published: on every end but a normal
    /// DISCONNECT and an administrative drop. A device cut off by an
    /// operator (inactivated, deleted, its CA inactivated or deleted, or
    /// kicked) has lost its voice: a stolen device's last word must not
    /// reach the fleet after the admin call answered.
    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            Exit::ClientDisconnect { with_will: false }
                | Exit::Killed(
                    DropReason::Administrative(_) | DropReason::Fenced | DropReason::Expired
                )
                | Exit::NotAuthorized
        )
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Killed(reason) => write!(f, "dropped by the broker ({reason:?})"),
            Exit::ClientDisconnect { with_will } => {
                write!(f, "client sent DISCONNECT (will: {with_will})")
            }
            Exit::PeerClosed => write!(f, "client closed the connection"),
            Exit::Io(e) => write!(f, "I/O error: {e}"),
            Exit::ConnectTimeout => write!(f, "no CONNECT within mqtt.connect_timeout_ms"),
            Exit::KeepAliveTimeout => write!(f, "keepalive expired"),
            Exit::SendTimeout => write!(
                f,
                "a write to the client took longer than mqtt.send_timeout_ms (it stopped reading)"
            ),
            Exit::Protocol(e) => write!(f, "protocol violation: {e}"),
            Exit::Inbound(e) => write!(f, "protocol violation: {e}"),
            Exit::TopicInvalid => write!(f, "PUBLISH to an invalid topic name"),
            Exit::NotAuthorized => write!(
                f,
                "the policies in force (reloaded, or changed through the API) no longer allow a subscription it holds"
            ),
            Exit::ConnectRefused(why) => write!(f, "CONNECT refused: {why}"),
            Exit::Router(why) => write!(f, "router: {why}"),
        }
    }
}

impl From<io::Error> for Exit {
    fn from(e: io::Error) -> Self {
        Exit::Io(e)
    }
}

/// The state of one connection's loop.
struct Session<S> {
    stream: S,
    guard: SessionGuard,
    peer: SocketAddr,
    hub: Hub,
    /// Who this is, as topic authorization sees it (the certificate's
    /// subject CN also decides `mqtt.client_id_policy`).
    principal: crate::authz::Principal,
    /// What the policies let it do; made at CONNECT.
    grants: crate::authz::Grants,
    /// The current policies; a change is seen here.
    policies: tokio::sync::watch::Receiver<std::sync::Arc<crate::authz::PolicySet>>,
    /// The filters this connection's session holds (as the client wrote
    /// them), re-judged when the policies change.
    granted: HashSet<String>,
    authz_denied: prometheus::IntCounterVec,
    messages_dropped: prometheus::IntCounterVec,
    denial_log: std::sync::Arc<crate::log_limit::LogLimiter>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    codec: Option<Codec>,
    /// Whether CONNACK went out (DISCONNECT is only valid after it).
    connacked: bool,
    /// Its session in the router, once attached.
    attached: Option<Attached>,
    inbound: Inbound,
    outbound: Outbound,
    /// Retained messages a SUBSCRIBE asked for, sent before the mailbox.
    retained_out: VecDeque<Delivery>,
    /// How long the session outlives this connection.
    session_expiry: Duration,
    /// The session expiry interval was 0 at CONNECT (MQTT 5 forbids a
    /// DISCONNECT to raise it then).
    expiry_was_zero: bool,
    /// `mqtt.max_session_expiry_secs`.
    max_session_expiry: Duration,
    /// `mqtt.max_publish_wait_ms`.
    max_publish_wait: Duration,
    /// PUBLISH packets received and sent (`certmq_messages_*_total`).
    published_in: prometheus::IntCounter,
    published_out: prometheus::IntCounter,
    /// `mqtt.send_timeout_ms`: the longest one write may take.
    send_timeout: Duration,
    /// Counted in `certmq_sessions_live` from CONNACK until this drops.
    live: Option<LiveSession>,
    /// Lifecycle events: `connected` after CONNACK, `disconnected` at the
    /// end of a session that was connected.
    events: crate::events::Events,
    /// The `disconnected` event owed once `connected` went out; emitted by
    /// `finish` with the reason, or (a panic) by its drop.
    disconnect_notice: Option<DisconnectNotice>,
}

/// A `disconnected` event still owed. It is emitted when this drops: with
/// the reason `finish` gave, or `internal_error` when the session's task
/// panicked and `finish` never ran. A back end never sees a device stay
/// connected.
struct DisconnectNotice {
    events: crate::events::Events,
    device: crate::identity::DeviceIdentity,
    client_id: String,
    peer: SocketAddr,
    reason: &'static str,
}

impl DisconnectNotice {
    fn send(mut self, reason: &'static str) {
        self.reason = reason;
    }
}

impl Drop for DisconnectNotice {
    fn drop(&mut self) {
        self.events.emit(crate::events::Event::Disconnected {
            device: self.device,
            client_id: std::mem::take(&mut self.client_id),
            peer: self.peer,
            reason: self.reason,
        });
    }
}

/// Runs an admitted connection until it ends. `guard` is its entry in the
/// session table; it is dropped (and the session counts as closed) only once
/// the socket is closed and the session detached from the router.
pub(crate) async fn run<S>(
    ctx: &Context,
    stream: S,
    guard: SessionGuard,
    peer: SocketAddr,
    principal: crate::authz::Principal,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (published_in, published_out) = ctx.metrics.message_counters();
    let mut session = Session {
        stream,
        guard,
        peer,
        hub: ctx.hub.clone(),
        principal,
        grants: crate::authz::Grants::default(),
        policies: ctx.authz.subscribe(),
        granted: HashSet::new(),
        authz_denied: ctx.metrics.authz_denied(),
        messages_dropped: ctx.metrics.messages_dropped(),
        denial_log: ctx.refusal_log.clone(),
        read_buf: BytesMut::new(),
        write_buf: BytesMut::new(),
        codec: None,
        connacked: false,
        attached: None,
        inbound: Inbound::new(0, 1, Vec::new()),
        outbound: Outbound::new(false, 1, 1, 0, None),
        retained_out: VecDeque::new(),
        session_expiry: Duration::ZERO,
        expiry_was_zero: true,
        max_session_expiry: ctx.settings.max_session_expiry(),
        max_publish_wait: Duration::from_millis(ctx.settings.mqtt.max_publish_wait_ms),
        published_in,
        published_out,
        send_timeout: ctx.settings.send_timeout(),
        live: None,
        events: ctx.events.clone(),
        disconnect_notice: None,
    };
    let mut will = None;
    let exit = session.drive(ctx, &mut will).await;
    if let (Some(_), Exit::Killed(reason)) = (&session.live, &exit) {
        ctx.metrics.session_dropped(reason.label());
    }
    // On the heap, like the CONNECT stage: only the loop's state stays
    // reserved in the task for the session's life.
    Box::pin(session.finish(exit, will)).await;
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// CONNECT, then the main loop until the session ends.
    async fn drive(&mut self, ctx: &Context, will: &mut Option<Will>) -> Exit {
        // The CONNECT stage's future lives on the heap and is freed when
        // the loop starts, so that an idle session's task holds the loop's
        // state only (see `listener::connection`).
        match Box::pin(self.start(ctx, will)).await {
            Ok(keep_alive) => self.pump(keep_alive).await,
            Err(exit) => exit,
        }
    }

    /// Reads and judges CONNECT, claims the client id, attaches to the
    /// router, answers CONNACK and resends what a resumed session left
    /// unacknowledged: the keep-alive the loop enforces, or how it ended.
    async fn start(&mut self, ctx: &Context, will: &mut Option<Will>) -> Result<u16, Exit> {
        let request = match self.read_connect(ctx).await {
            Ok(r) => r,
            Err(exit) => return Err(exit),
        };
        if !ctx
            .settings
            .mqtt
            .client_id_policy
            .allows(&request.client_id, &self.principal.common_name)
        {
            let _ = self
                .refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await;
            return Err(Exit::ConnectRefused(format!(
                "client id `{}` breaks mqtt.client_id_policy for the certificate CN `{}`",
                request.client_id, self.principal.common_name
            )));
        }
        self.principal.client_id = request.client_id.clone();
        self.judge();
        if let Some(w) = &request.will {
            if authorize::publish(&self.grants, &w.message.topic).is_err() {
                self.authz_denied.with_label_values(&["will"]).inc();
                let _ = self.refuse(ConnectReturnCode::NotAuthorized).await;
                return Err(Exit::ConnectRefused(format!(
                    "the will topic `{}` is not allowed by the device's policies",
                    w.message.topic.chars().take(256).collect::<String>()
                )));
            }
        }
        *will = request.will.clone();
        let persistent = match request.session_expiry_secs {
            Some(secs) => secs > 0,
            None => !request.clean_session,
        };
        match self.guard.claim_client_id(&request.client_id, persistent) {
            Ok(Some(previous)) => {
                // MQTT take-over: the older connection with this id goes first.
                tokio::select! {
                    biased;
                    _ = self.guard.killed() => return Err(self.killed()),
                    _ = tokio::time::timeout(ctx.settings.drop_timeout(), previous.wait()) => {}
                }
            }
            Ok(None) => {}
            Err(taken) => {
                let _ = self
                    .refuse(ConnectReturnCode::ClientIdentifierNotValid)
                    .await;
                return Err(Exit::ConnectRefused(format!(
                    "client id `{}`: {taken}",
                    request.client_id
                )));
            }
        }
        let max_expiry = ctx.settings.max_session_expiry();
        self.session_expiry = match request.session_expiry_secs {
            Some(secs) => Duration::from_secs(u64::from(secs)).min(max_expiry),
            None if request.clean_session => Duration::ZERO,
            None => max_expiry,
        };
        self.expiry_was_zero = request.session_expiry_secs == Some(0);
        let parked = self.attach(&request);
        let version = self.version().unwrap_or(Version::V4);
        let v5 = version == Version::V5;
        let m = &ctx.settings.mqtt;
        self.inbound = Inbound::new(
            if v5 { m.topic_alias_maximum } else { 0 },
            m.receive_maximum,
            parked.incoming_qos2,
        );
        self.outbound = Outbound::new(
            v5,
            request.receive_maximum,
            m.max_inflight_messages,
            request.topic_alias_max,
            request.max_packet_size,
        );
        let keep_alive = if v5
            && (request.keep_alive_secs == 0 || request.keep_alive_secs > m.max_keep_alive_secs)
        {
            m.max_keep_alive_secs
        } else {
            request.keep_alive_secs
        };
        self.send_connack(ctx, &request, keep_alive).await?;
        self.live = Some(ctx.metrics.session_started());
        info!(
            peer = %self.peer,
            device = %self.guard.identity(),
            client_id = %request.client_id,
            version = ?self.version(),
            resumed = self.attached.as_ref().is_some_and(|a| a.present),
            "session started"
        );
        self.events.emit(crate::events::Event::Connected {
            device: self.guard.identity(),
            client_id: request.client_id.clone(),
            peer: self.peer,
            protocol: if v5 { "5" } else { "3.1.1" },
            clean_start: request.clean_session,
            session_present: self.attached.as_ref().is_some_and(|a| a.present),
        });
        self.disconnect_notice = Some(DisconnectNotice {
            events: self.events.clone(),
            device: self.guard.identity(),
            client_id: request.client_id.clone(),
            peer: self.peer,
            reason: "internal_error",
        });
        // What the previous connection left unacknowledged goes first.
        let now = std::time::Instant::now();
        let mut out = BytesMut::new();
        let pubrels = self.outbound.resume(parked.unacked, now, &mut out);
        let mut packets = Vec::new();
        for pkid in pubrels {
            packets.push(Packet::PubRel(
                rumqttd::protocol::PubRel {
                    pkid,
                    reason: rumqttd::protocol::PubRelReason::Success,
                },
                None,
            ));
        }
        if !out.is_empty() || !packets.is_empty() {
            self.write_buf.unsplit(out);
            self.write_packets(packets).await?;
        }
        Ok(keep_alive)
    }

    /// Attaches to the client id's session in the router. A resumed
    /// session's subscriptions come back without a SUBSCRIBE: they are
    /// judged here first. If one is no longer allowed, the stored session
    /// is discarded and the client starts afresh (CONNACK says no session
    /// is present; it subscribes again, and is judged then).
    fn attach(&mut self, request: &ConnectRequest) -> Parked {
        let now = std::time::Instant::now();
        let mut attached = self
            .hub
            .attach(&request.client_id, request.clean_session, now);
        if attached.present {
            let filters = attached.session.filters();
            let allowed = filters
                .iter()
                .all(|path| authorize::subscribe(&self.grants, path).is_ok());
            if allowed {
                self.granted = filters.into_iter().collect();
            } else {
                info!(
                    peer = %self.peer,
                    device = %self.guard.identity(),
                    client_id = %request.client_id,
                    "stored session discarded: the policies no longer allow all of its subscriptions"
                );
                drop(attached);
                attached = self.hub.attach(&request.client_id, true, now);
            }
        }
        let parked = std::mem::take(&mut attached.parked);
        self.attached = Some(attached);
        parked
    }

    /// Waits for CONNECT (within `mqtt.connect_timeout_ms`) and checks it.
    async fn read_connect(&mut self, ctx: &Context) -> Result<ConnectRequest, Exit> {
        let deadline = Instant::now() + ctx.settings.connect_timeout();
        let max_packet_size = ctx.settings.mqtt.max_packet_size;
        loop {
            if self.codec.is_none() {
                match codec::detect_version(&self.read_buf) {
                    Ok(Some(version)) => self.codec = Some(Codec::new(version, max_packet_size)),
                    Ok(None) => {}
                    Err(CodecError::UnsupportedLevel(level)) => {
                        let _ = self.write_raw(&connect::UNSUPPORTED_VERSION_CONNACK).await;
                        return Err(Exit::ConnectRefused(format!(
                            "unsupported MQTT protocol level {level}"
                        )));
                    }
                    Err(e) => return Err(Exit::Protocol(e)),
                }
            }
            if let Some(codec) = &self.codec {
                match codec.decode(&mut self.read_buf) {
                    Ok(Some(packet @ Packet::Connect(..))) => {
                        let version = codec.version();
                        return match accept_connect(packet, version) {
                            Ok(request) => Ok(request),
                            Err(refusal) => {
                                let _ = self.refuse(refusal.return_code()).await;
                                Err(Exit::ConnectRefused(refusal.to_string()))
                            }
                        };
                    }
                    Ok(Some(_)) => return Err(Exit::Protocol(CodecError::NotConnect)),
                    Ok(None) => {}
                    Err(e) => return Err(Exit::Protocol(e)),
                }
            }
            self.read_buf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                _ = self.guard.killed() => return Err(self.killed()),
                read = self.stream.read_buf(&mut self.read_buf) => match read {
                    Ok(0) => return Err(Exit::PeerClosed),
                    Ok(_) => {}
                    Err(e) => return Err(Exit::Io(e)),
                },
                _ = tokio::time::sleep_until(deadline) => return Err(Exit::ConnectTimeout),
            }
        }
    }

    async fn send_connack(
        &mut self,
        ctx: &Context,
        request: &ConnectRequest,
        keep_alive: u16,
    ) -> Result<(), Exit> {
        let present = self.attached.as_ref().is_some_and(|a| a.present);
        let m = &ctx.settings.mqtt;
        let props = (self.version() == Some(Version::V5)).then(|| ConnAckProperties {
            session_expiry_interval: request
                .session_expiry_secs
                .filter(|asked| u64::from(*asked) > self.session_expiry.as_secs())
                .map(|_| self.session_expiry.as_secs() as u32),
            receive_max: Some(m.receive_maximum),
            max_qos: None,
            retain_available: None,
            max_packet_size: u32::try_from(m.max_packet_size).ok(),
            assigned_client_identifier: request
                .assigned_client_id
                .then(|| request.client_id.clone()),
            topic_alias_max: Some(m.topic_alias_maximum),
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: (keep_alive != request.keep_alive_secs).then_some(keep_alive),
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        let ack = ConnAck {
            session_present: present,
            code: ConnectReturnCode::Success,
        };
        self.write_packets(vec![Packet::ConnAck(ack, props)])
            .await?;
        self.connacked = true;
        Ok(())
    }

    async fn write_packets(&mut self, packets: Vec<Packet>) -> Result<(), Exit> {
        let Some(codec) = &self.codec else {
            return Ok(());
        };
        for packet in packets {
            if codec.version() == Version::V4 && matches!(packet, Packet::Disconnect(..)) {
                // MQTT 3.1.1 has no server-sent DISCONNECT; closing says it.
                continue;
            }
            codec
                .encode(packet, &mut self.write_buf)
                .map_err(Exit::Protocol)?;
        }
        let bytes = self.write_buf.split();
        self.write_raw(&bytes).await
    }

    /// Writes bytes, giving way to the kill handle, within
    /// `mqtt.send_timeout_ms` (a client that stops reading stalls writes).
    async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Session {
            stream,
            guard,
            send_timeout,
            ..
        } = self;
        let write = tokio::time::timeout(*send_timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        });
        tokio::select! {
            biased;
            _ = guard.killed() => Err(Exit::Killed(guard.drop_reason().unwrap_or(DropReason::Administrative(Cut::Kicked)))),
            written = write => match written {
                Ok(done) => done.map_err(Exit::Io),
                Err(_) => Err(Exit::SendTimeout),
            },
        }
    }

    /// Makes this connection's grants under the policies in force, and
    /// records their generation.
    fn judge(&mut self) {
        let generation = self.judge_grants();
        self.guard.judged(generation);
    }

    /// New grants under the policies in force; returns their generation
    /// (not yet recorded).
    fn judge_grants(&mut self) -> u64 {
        let policies = self.policies.borrow_and_update().clone();
        self.grants = policies.grants(&self.guard.identity(), &self.principal);
        policies.generation()
    }

    /// Re-judges this connection under changed policies: new grants for
    /// what it does next, and `false` if a subscription it holds is no
    /// longer allowed (the session then ends: no connection keeps a grant
    /// the current policies do not give).
    fn regrant(&mut self) -> bool {
        let generation = self.judge_grants();
        let revoked = self
            .granted
            .iter()
            .find(|path| authorize::subscribe(&self.grants, path).is_err());
        match revoked {
            Some(path) => {
                info!(
                    peer = %self.peer,
                    device = %self.guard.identity(),
                    filter = %path,
                    "subscription no longer allowed after a policy change; closing the session"
                );
                false
            }
            None => {
                self.guard.judged(generation);
                true
            }
        }
    }

    /// Re-judges first if the policies changed since this connection last
    /// judged: called before every decision and every delivery, so none is
    /// made under policies no longer in force. `false`: a subscription it
    /// holds is no longer allowed.
    fn up_to_date(&mut self) -> bool {
        !self.policies.has_changed().unwrap_or(false) || self.regrant()
    }

    /// Counts a refusal of topic authorization and logs it (rate-limited).
    fn denied(&self, denied: authorize::Denied) {
        self.authz_denied
            .with_label_values(&[denied.action.name()])
            .inc();
        if let Some(suppressed) = self.denial_log.admit() {
            let rule = match &denied.decision {
                crate::authz::Decision::Deny(Some(rule)) => rule.to_string(),
                _ => "no allow rule".to_owned(),
            };
            info!(
                peer = %self.peer,
                device = %self.guard.identity(),
                client_id = %self.principal.client_id,
                action = denied.action.name(),
                topic = %denied.topic,
                %rule,
                suppressed,
                "not authorized"
            );
        }
    }

    async fn refuse(&mut self, code: ConnectReturnCode) -> Result<(), Exit> {
        // 3.1.1 has six return codes; the rest say "not authorized" there.
        let code = match (self.version(), code) {
            (
                Some(Version::V4),
                ConnectReturnCode::Success
                | ConnectReturnCode::RefusedProtocolVersion
                | ConnectReturnCode::ClientIdentifierNotValid
                | ConnectReturnCode::ServiceUnavailable
                | ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized,
            ) => code,
            (Some(Version::V4), _) => ConnectReturnCode::NotAuthorized,
            _ => code,
        };
        self.write_packets(vec![refusal_connack(code)]).await
    }

    fn killed(&self) -> Exit {
        Exit::Killed(
            self.guard
                .drop_reason()
                .unwrap_or(DropReason::Administrative(Cut::Kicked)),
        )
    }

    fn version(&self) -> Option<Version> {
        self.codec.as_ref().map(Codec::version)
    }

    /// Says goodbye, closes the socket, detaches from the router (the will
    /// published or scheduled if due, the in-flight state kept for the next
    /// connection), and leaves the session table.
    async fn finish(mut self, exit: Exit, will: Option<Will>) {
        if self.connacked && self.version() == Some(Version::V5) {
            if let Some(reason_code) = exit.reason_code() {
                let goodbye = Packet::Disconnect(Disconnect { reason_code }, None);
                if let Some(codec) = &self.codec {
                    if codec.encode(goodbye, &mut self.write_buf).is_ok() {
                        let bytes = self.write_buf.split();
                        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                            self.stream.write_all(&bytes).await?;
                            self.stream.flush().await
                        })
                        .await;
                    }
                }
            }
        }
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.stream.shutdown()).await;
        // However the loop ended (the client may have closed its socket in
        // the same moment), a session an operator dropped leaves no will.
        let will = will.filter(|_| {
            exit.publishes_will()
                && !self
                    .guard
                    .drop_reason()
                    .is_some_and(DropReason::silences_will)
        });
        // The router hears of the end before the table entry goes: whoever
        // waits for this session to close and then reuses its client id
        // finds it detached.
        if let Some(attached) = self.attached.take() {
            let now = std::time::Instant::now();
            let unacked = self.outbound.park();
            // Deliveries taken but not sent go back to the mailbox.
            let pending: Vec<Delivery> = self.retained_out.drain(..).collect();
            attached.session.mailbox.unshift(pending);
            let parked = Parked {
                unacked,
                incoming_qos2: self.inbound.park(),
            };
            let will = will.map(|w| {
                let mut message = w.message;
                message.expires_at =
                    crate::router::Message::expiry_from(now + w.delay, w.expiry_secs);
                (message, w.delay)
            });
            self.hub
                .detach(attached, self.session_expiry, will, parked, now);
        }
        // Before the table entry goes: an admin call that waits for this
        // session to close emits its own event after this one.
        if let Some(notice) = self.disconnect_notice.take() {
            notice.send(exit.event_reason(self.guard.drop_reason()));
        }
        let Session {
            stream,
            guard,
            peer,
            ..
        } = self;
        drop(stream);
        let identity = guard.identity();
        drop(guard);
        match &exit {
            Exit::Killed(reason) => info!(%peer, device = %identity, ?reason, "session dropped"),
            Exit::ClientDisconnect { .. } | Exit::PeerClosed => {
                debug!(%peer, device = %identity, %exit, "session ended by the client")
            }
            other => info!(%peer, device = %identity, exit = %other, "session closed"),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
