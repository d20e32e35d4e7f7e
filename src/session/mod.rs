//! A session: one admitted device connection, from CONNECT to close.
//!
//! certmq runs its own per-connection loop over the TLS stream and hands
//! MQTT packets to rumqttd's router through an in-process link (the seam in
//! `rumqttd-embedding.md`). What rumqttd's own network link did, this loop
//! does: the CONNECT timeout, keepalive (1.5 x the client's value), the
//! maximum packet size, client id assignment, the will on abnormal close,
//! and closing the router link on every exit path.
//!
//! The loop always listens to its kill handle first: a session dropped by an
//! admin call stops whatever it is doing, sends MQTT 5 clients DISCONNECT
//! 0x98 (administrative action), and closes its socket.

mod authorize;
pub mod codec;
mod connect;
pub mod table;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{
    ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Packet, PingResp,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info};

pub use table::{DropReason, SessionGuard, SessionTable};

use crate::Context;
use crate::metrics::LiveSession;
use crate::router::{Link, LinkRequest};
use codec::{Codec, CodecError, Version};
use connect::{ConnectRequest, TopicProblem, accept_connect, check_publish_topic, refusal_connack};

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
            Exit::Killed(DropReason::Administrative) => DisconnectReasonCode::AdministrativeAction,
            Exit::Killed(DropReason::ShuttingDown) => DisconnectReasonCode::ServerShuttingDown,
            Exit::Killed(DropReason::TakenOver) => DisconnectReasonCode::SessionTakenOver,
            Exit::KeepAliveTimeout => DisconnectReasonCode::KeepAliveTimeout,
            Exit::Protocol(CodecError::TooLarge(_)) => DisconnectReasonCode::PacketTooLarge,
            Exit::Protocol(CodecError::Malformed(_)) => DisconnectReasonCode::MalformedPacket,
            Exit::Protocol(CodecError::CodecPanic(_)) => DisconnectReasonCode::UnspecifiedError,
            Exit::Protocol(_) => DisconnectReasonCode::ProtocolError,
            Exit::TopicInvalid => DisconnectReasonCode::TopicNameInvalid,
            Exit::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Exit::Router(_) => DisconnectReasonCode::UnspecifiedError,
            _ => return None,
        })
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
                | Exit::Killed(DropReason::Administrative)
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
    /// Who this is, as topic authorization sees it (the certificate's
    /// subject CN also decides `mqtt.client_id_policy`).
    principal: crate::authz::Principal,
    /// What the policies let it do; made at CONNECT.
    grants: crate::authz::Grants,
    refusals: authorize::Refusals,
    /// The current policies; a reload is seen here.
    policies: tokio::sync::watch::Receiver<std::sync::Arc<crate::authz::PolicySet>>,
    /// The filters this connection subscribed to and was granted (as the
    /// client wrote them), re-judged on a policy reload.
    granted: std::collections::HashSet<String>,
    authz_denied: prometheus::IntCounterVec,
    denial_log: std::sync::Arc<crate::log_limit::LogLimiter>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    codec: Option<Codec>,
    /// Whether CONNACK went out (DISCONNECT is only valid after it).
    connacked: bool,
    /// The client asked for a persistent session.
    persistent: bool,
    /// PUBLISH packets received and sent (`certmq_messages_*_total`).
    published_in: prometheus::IntCounter,
    published_out: prometheus::IntCounter,
    /// `mqtt.send_timeout_ms`: the longest one write may take.
    send_timeout: Duration,
    /// Counted in `certmq_sessions_live` from CONNACK until this drops.
    live: Option<LiveSession>,
}

/// Runs an admitted connection until it ends. `guard` is its entry in the
/// session table; it is dropped (and the session counts as closed) only once
/// the socket is closed.
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
        principal,
        grants: crate::authz::Grants::default(),
        refusals: authorize::Refusals::default(),
        policies: ctx.authz.subscribe(),
        granted: std::collections::HashSet::new(),
        authz_denied: ctx.metrics.authz_denied(),
        denial_log: ctx.refusal_log.clone(),
        read_buf: BytesMut::new(),
        write_buf: BytesMut::new(),
        codec: None,
        connacked: false,
        persistent: false,
        published_in,
        published_out,
        send_timeout: ctx.settings.send_timeout(),
        live: None,
    };
    let mut link = None;
    let mut will = None;
    let exit = session.drive(ctx, &mut link, &mut will).await;
    if let (Some(_), Exit::Killed(reason)) = (&session.live, &exit) {
        ctx.metrics.session_dropped(reason.label());
    }
    session.finish(exit, link, will).await;
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn drive(
        &mut self,
        ctx: &Context,
        link_slot: &mut Option<Link>,
        will: &mut Option<Packet>,
    ) -> Exit {
        let request = match self.read_connect(ctx).await {
            Ok(r) => r,
            Err(exit) => return exit,
        };
        *will = request.will.clone();
        if !ctx
            .settings
            .mqtt
            .client_id_policy
            .allows(&request.client_id, &self.principal.common_name)
        {
            let _ = self
                .refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await;
            return Exit::ConnectRefused(format!(
                "client id `{}` breaks mqtt.client_id_policy for the certificate CN `{}`",
                request.client_id, self.principal.common_name
            ));
        }
        self.principal.client_id = request.client_id.clone();
        self.judge();
        if let Some(Packet::Publish(will, _)) = &request.will {
            let topic = String::from_utf8_lossy(&will.topic).into_owned();
            if !self.grants.publish(&topic).is_allowed() {
                self.authz_denied.with_label_values(&["will"]).inc();
                let _ = self.refuse(ConnectReturnCode::NotAuthorized).await;
                return Exit::ConnectRefused(format!(
                    "the will topic `{}` is not allowed by the device's policies",
                    topic.chars().take(256).collect::<String>()
                ));
            }
        }
        match self
            .guard
            .claim_client_id(&request.client_id, !request.clean_session)
        {
            Ok(Some(previous)) => {
                // MQTT take-over: the older connection with this id goes first.
                tokio::select! {
                    biased;
                    _ = self.guard.killed() => return self.killed(),
                    _ = tokio::time::timeout(ctx.settings.drop_timeout(), previous.wait()) => {}
                }
            }
            Ok(None) => {}
            Err(taken) => {
                let _ = self
                    .refuse(ConnectReturnCode::ClientIdentifierNotValid)
                    .await;
                return Exit::ConnectRefused(format!("client id `{}`: {taken}", request.client_id));
            }
        }
        self.persistent = !request.clean_session;
        if self.persistent
            && self.guard.prior_persistent()
            && !self.restore_grants(ctx, &request.client_id).await
        {
            return self.killed();
        }
        let link_request = LinkRequest {
            client_id: request.client_id.clone(),
            clean_session: request.clean_session,
            topic_alias_max: request.topic_alias_max,
        };
        let build = ctx.router.link(link_request);
        tokio::pin!(build);
        let link = tokio::select! {
            biased;
            _ = self.guard.killed() => {
                // Let a link being made finish (within the drop timeout) and
                // close it in order, before this session counts as closed:
                // a successor with the same client id must find it gone.
                if let Ok(Ok(link)) = tokio::time::timeout(ctx.settings.drop_timeout(), &mut build).await {
                    *link_slot = Some(link);
                }
                return self.killed();
            }
            built = &mut build => built,
        };
        let link = match link {
            Ok(link) => link_slot.insert(link),
            Err(e) => {
                let _ = self.refuse(ConnectReturnCode::ServiceUnavailable).await;
                return Exit::Router(e.to_string());
            }
        };
        if let Err(exit) = self.send_connack(ctx, link, &request).await {
            return exit;
        }
        self.live = Some(ctx.metrics.session_started());
        info!(
            peer = %self.peer,
            device = %self.guard.identity(),
            client_id = %request.client_id,
            version = ?self.version(),
            "session started"
        );
        self.pump(link, request.keep_alive_secs).await
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
        link: &mut Link,
        request: &ConnectRequest,
    ) -> Result<(), Exit> {
        let Some(Packet::ConnAck(ack, props)) = link.take_connack() else {
            return Err(Exit::Router(
                "the router did not acknowledge the connection".into(),
            ));
        };
        let props = (self.version() == Some(Version::V5)).then(|| ConnAckProperties {
            assigned_client_identifier: request
                .assigned_client_id
                .then(|| request.client_id.clone()),
            max_packet_size: u32::try_from(ctx.settings.mqtt.max_packet_size).ok(),
            ..props.unwrap_or_default()
        });
        self.write_packets(vec![Packet::ConnAck(ack, props)])
            .await?;
        self.connacked = true;
        Ok(())
    }

    /// The main loop: client -> router, router -> client, keepalive.
    async fn pump(&mut self, link: &mut Link, keep_alive_secs: u16) -> Exit {
        let keep_alive =
            (keep_alive_secs > 0).then(|| Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        loop {
            // The kill handle comes first; between the socket and the
            // router, no side may starve the other.
            if self.guard.is_killed() {
                return self.killed();
            }
            if !self.up_to_date() {
                return Exit::NotAuthorized;
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > READ_BUFFER_KEEP {
                self.read_buf = BytesMut::new();
            }
            self.read_buf.reserve(READ_CHUNK);
            tokio::select! {
                _ = self.guard.killed() => return self.killed(),
                read = self.stream.read_buf(&mut self.read_buf) => {
                    match read {
                        Ok(0) => return Exit::PeerClosed,
                        Ok(_) => {}
                        Err(e) => return Exit::Io(e),
                    }
                    if let Some(k) = keep_alive {
                        deadline = Some(Instant::now() + k);
                    }
                    if let Some(exit) = self.forward_client_packets(link).await {
                        return exit;
                    }
                }
                out = link.recv() => {
                    let out = match out {
                        Ok(out) => out,
                        Err(e) => return Exit::Router(e.to_string()),
                    };
                    if !self.up_to_date() {
                        return Exit::NotAuthorized;
                    }
                    let router_disconnect = out.packets.iter().any(|p| matches!(p, Packet::Disconnect(..)));
                    let out_packets: Vec<Packet> = match self.version() {
                        Some(version) => out
                            .packets
                            .into_iter()
                            .map(|p| match p {
                                p @ Packet::SubAck(..) => self.refusals.complete_suback(version, p),
                                p => p,
                            })
                            .collect(),
                        None => out.packets,
                    };
                    if let Err(exit) = self.write_packets(out_packets).await {
                        return exit;
                    }
                    if router_disconnect {
                        return Exit::Router("the router closed the session".into());
                    }
                    if out.reschedule {
                        tokio::select! {
                            biased;
                            _ = self.guard.killed() => return self.killed(),
                            ready = link.ready() => if let Err(e) = ready {
                                return Exit::Router(e.to_string());
                            },
                        }
                    }
                }
                _ = sleep_until_opt(deadline) => return Exit::KeepAliveTimeout,
                changed = self.policies.changed() => {
                    if changed.is_ok() && !self.regrant() {
                        return Exit::NotAuthorized;
                    }
                }
            }
        }
    }

    /// Decodes what the client sent and forwards it to the router.
    async fn forward_client_packets(&mut self, link: &mut Link) -> Option<Exit> {
        if !self.up_to_date() {
            return Some(Exit::NotAuthorized);
        }
        let Some(codec) = &self.codec else {
            return Some(Exit::Protocol(CodecError::NotConnect));
        };
        let mut batch = Vec::new();
        let mut received = 0u64;
        // Answers certmq gives itself (PINGRESP, refusals), after the batch.
        let mut replies = Vec::new();
        let mut denials = Vec::new();
        let mut ending = None;
        loop {
            match codec.decode(&mut self.read_buf) {
                Ok(None) => break,
                Ok(Some(packet)) => match packet {
                    Packet::Publish(ref publish, _)
                        if check_publish_topic(&publish.topic).is_err() =>
                    {
                        ending = Some(match check_publish_topic(&publish.topic) {
                            Err(TopicProblem::NotUtf8) => Exit::Protocol(CodecError::Malformed(
                                "the topic name is not UTF-8".into(),
                            )),
                            _ => Exit::TopicInvalid,
                        });
                        break;
                    }
                    Packet::PingReq(_) => replies.push(Packet::PingResp(PingResp)),
                    Packet::Subscribe(subscribe, props) => {
                        let (forward, answer, denied) = self.refusals.subscribe(
                            &self.grants,
                            codec.version(),
                            subscribe,
                            props,
                        );
                        if let Some(Packet::Subscribe(granted, _)) = &forward {
                            for filter in &granted.filters {
                                self.granted.insert(filter.path.clone());
                            }
                        }
                        batch.extend(forward);
                        replies.extend(answer);
                        denials.extend(denied);
                    }
                    Packet::Unsubscribe(unsubscribe, props) => {
                        for filter in &unsubscribe.filters {
                            self.granted.remove(filter);
                        }
                        batch.push(Packet::Unsubscribe(unsubscribe, props));
                    }
                    Packet::PubRel(pubrel, props) => match self.refusals.pubrel(pubrel.pkid) {
                        Some(pubcomp) => replies.push(pubcomp),
                        None => batch.push(Packet::PubRel(pubrel, props)),
                    },
                    Packet::Publish(publish, props) => {
                        received += 1;
                        let refused =
                            self.refusals
                                .publish(&self.grants, codec.version(), &publish);
                        #[cfg(feature = "fault-injection")]
                        let refused =
                            refused.filter(|_| !crate::fault::bypasses_authz(&publish.topic));
                        #[cfg(feature = "fault-injection")]
                        if crate::fault::stalls_session(&publish.topic) {
                            tokio::select! {
                                biased;
                                _ = self.guard.killed() => return Some(self.killed()),
                                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                            }
                        }
                        match refused {
                            None => {
                                #[cfg(feature = "fault-injection")]
                                crate::fault::on_publish(&publish.topic);
                                batch.push(Packet::Publish(publish, props));
                            }
                            Some((answer, denied)) => {
                                replies.extend(answer);
                                denials.push(denied);
                            }
                        }
                    }
                    Packet::Disconnect(d, _) => {
                        let with_will =
                            d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                        ending = Some(Exit::ClientDisconnect { with_will });
                        break;
                    }
                    Packet::Connect(..) => {
                        ending = Some(Exit::Protocol(CodecError::ServerOnly("a second CONNECT")));
                        break;
                    }
                    packet => batch.push(packet),
                },
                Err(e) => {
                    ending = Some(Exit::Protocol(e));
                    break;
                }
            }
        }
        self.published_in.inc_by(received);
        if !batch.is_empty() {
            tokio::select! {
                biased;
                _ = self.guard.killed() => return Some(self.killed()),
                sent = link.send(batch) => if let Err(e) = sent {
                    return Some(Exit::Router(e.to_string()));
                },
            }
        }
        for denied in denials {
            self.denied(denied);
        }
        if !replies.is_empty() {
            if let Err(exit) = self.write_packets(replies).await {
                return Some(exit);
            }
        }
        ending
    }

    async fn write_packets(&mut self, packets: Vec<Packet>) -> Result<(), Exit> {
        let Some(codec) = &self.codec else {
            return Ok(());
        };
        for packet in packets {
            if matches!(packet, Packet::Publish(..)) {
                self.published_out.inc();
            }
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
            _ = guard.killed() => Err(Exit::Killed(guard.drop_reason().unwrap_or(DropReason::Administrative))),
            written = write => match written {
                Ok(done) => done.map_err(Exit::Io),
                Err(_) => Err(Exit::SendTimeout),
            },
        }
    }

    /// A persistent session's stored subscriptions come back from the
    /// router without a SUBSCRIBE: they are judged here first. If one is
    /// no longer allowed (or what was granted is not known), the stored
    /// session is discarded and the client starts afresh (CONNACK says no
    /// session is present; it subscribes again, and is judged then).
    /// `false` if the session was killed meanwhile.
    async fn restore_grants(&mut self, ctx: &Context, client_id: &str) -> bool {
        if self.policies.has_changed().unwrap_or(false) {
            // Nothing is granted yet: new grants, nothing to re-judge.
            self.judge();
        }
        let stored = self.guard.take_stored_grants();
        let keep = stored.as_ref().is_some_and(|filters| {
            filters.iter().all(|path| {
                crate::authz::Filter::parse(authorize::judged_filter(path))
                    .is_ok_and(|f| self.grants.subscribe(&f).is_allowed())
            })
        });
        if keep {
            self.granted = stored.unwrap_or_default().into_iter().collect();
            return true;
        }
        info!(
            peer = %self.peer,
            device = %self.guard.identity(),
            %client_id,
            "stored session discarded: the policies no longer allow all of its subscriptions"
        );
        let forgotten =
            tokio::time::timeout(ctx.settings.drop_timeout(), ctx.router.forget(client_id));
        tokio::select! {
            biased;
            _ = self.guard.killed() => false,
            _ = forgotten => true,
        }
    }

    /// Re-judges this connection under reloaded policies: new grants for
    /// what it does next, and `false` if a subscription it holds is no
    /// longer allowed (the session then ends: no connection keeps a grant
    /// the current policies do not give).
    fn regrant(&mut self) -> bool {
        let generation = self.judge_grants();
        let revoked = self.granted.iter().find(|path| {
            let judged = authorize::judged_filter(path);
            !crate::authz::Filter::parse(judged)
                .is_ok_and(|f| self.grants.subscribe(&f).is_allowed())
        });
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
        self.write_packets(vec![refusal_connack(code)]).await
    }

    fn killed(&self) -> Exit {
        Exit::Killed(
            self.guard
                .drop_reason()
                .unwrap_or(DropReason::Administrative),
        )
    }

    fn version(&self) -> Option<Version> {
        self.codec.as_ref().map(Codec::version)
    }

    /// Says goodbye, closes the socket, closes the router link (publishing
    /// the will if due), and leaves the session table.
    async fn finish(mut self, exit: Exit, link: Option<Link>, will: Option<Packet>) {
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
            exit.publishes_will() && self.guard.drop_reason() != Some(DropReason::Administrative)
        });
        let Session {
            stream,
            guard,
            peer,
            ..
        } = self;
        drop(stream);
        // The router hears of the close (a non-blocking hand-over to its
        // feeder) before the table entry goes: whoever waits for this
        // session to close and then reuses its client id finds it gone from
        // the router too (see `RouterHandle::link`).
        if let Some(link) = link {
            link.close(will).await;
        }
        if self.persistent {
            guard.keep_grants(std::mem::take(&mut self.granted).into_iter().collect());
        }
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
