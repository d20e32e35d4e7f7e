//! The loop of a connected session: client packets in, deliveries out.
//!
//! Each turn: the kill handle first, then the policies (re-judged if they
//! changed), then whatever the mailbox holds that the in-flight window
//! allows, then one of: bytes from the client, a new delivery, the keep
//! alive deadline, a policy change. Nothing here blocks: the router is
//! in-memory and bounded, writes give way to the kill handle and end at
//! `mqtt.send_timeout_ms`.

use std::sync::Arc;

use rumqttd::protocol::{
    DisconnectProperties, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties,
    RetainForwardRule, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use super::codec::{CodecError, Version};
use super::outbound::Sent;
use super::wire::{PublishHead, peek_publish};
use super::{Exit, READ_BUFFER_KEEP, READ_CHUNK, Session, authorize, sleep_until_opt};
use crate::router::Delivery;
use crate::router::hub::{HubSession, split_shared};
use crate::router::mailbox::Admission;
use crate::router::message::{Message, Passthrough, QoS, RetainHandling, SubOptions};

/// Deliveries written per turn at most: the client's packets are read
/// between batches.
const DELIVERY_BATCH: usize = 256;

/// The largest subscription identifier (MQTT 5 section 3.8.2.1.2).
const MAX_SUBSCRIPTION_ID: usize = 268_435_455;

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The main loop, until the session ends.
    pub(super) async fn pump(&mut self, keep_alive_secs: u16) -> Exit {
        let Some(session) = self.attached.as_ref().map(|a| a.session.clone()) else {
            return Exit::Router("the session is not attached".into());
        };
        let keep_alive = (keep_alive_secs > 0)
            .then(|| std::time::Duration::from_millis(u64::from(keep_alive_secs) * 1500));
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        loop {
            if self.guard.is_killed() {
                return self.killed();
            }
            if !self.up_to_date() {
                return Exit::NotAuthorized;
            }
            if let Err(exit) = self.deliver(&session).await {
                return exit;
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > READ_BUFFER_KEEP {
                self.read_buf = bytes::BytesMut::new();
            }
            self.read_buf.reserve(READ_CHUNK);
            let room = self.outbound.room() > 0;
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
                    if let Some(exit) = self.client_packets(&session).await {
                        return exit;
                    }
                }
                _ = session.mailbox.ready(), if room => {}
                _ = sleep_until_opt(deadline) => return Exit::KeepAliveTimeout,
                changed = self.policies.changed() => {
                    if changed.is_ok() && !self.regrant() {
                        return Exit::NotAuthorized;
                    }
                }
            }
        }
    }

    /// Writes what is due to the client: retained messages a SUBSCRIBE
    /// asked for, then the mailbox, as far as the in-flight window allows.
    async fn deliver(&mut self, session: &HubSession) -> Result<(), Exit> {
        loop {
            let now = std::time::Instant::now();
            let mut room = self.outbound.room();
            let mut batch: Vec<Delivery> = Vec::new();
            while batch.len() < DELIVERY_BATCH {
                let Some(front) = self.retained_out.front() else {
                    break;
                };
                if front.qos != QoS::AtMostOnce {
                    if room == 0 {
                        break;
                    }
                    room -= 1;
                }
                batch.extend(self.retained_out.pop_front());
            }
            let from_mailbox = batch.len() < DELIVERY_BATCH && self.retained_out.is_empty();
            if from_mailbox {
                batch.extend(session.mailbox.take(DELIVERY_BATCH - batch.len(), room));
            }
            if batch.is_empty() {
                return Ok(());
            }
            let full = batch.len() == DELIVERY_BATCH;
            for delivery in batch {
                match self.outbound.send(delivery, now, &mut self.write_buf) {
                    Sent::Written => self.published_out.inc(),
                    Sent::Expired => self.messages_dropped.with_label_values(&["expired"]).inc(),
                    Sent::TooLarge => self
                        .messages_dropped
                        .with_label_values(&["too_large"])
                        .inc(),
                }
            }
            let bytes = self.write_buf.split();
            self.write_raw(&bytes).await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Handles what the client sent.
    async fn client_packets(&mut self, session: &Arc<HubSession>) -> Option<Exit> {
        if !self.up_to_date() {
            return Some(Exit::NotAuthorized);
        }
        let version = self.version()?;
        let mut received = 0u64;
        let mut replies = Vec::new();
        let mut denials = Vec::new();
        let mut ending = None;
        let now = std::time::Instant::now();
        loop {
            let head = peek_publish(&self.read_buf);
            let decoded = match &self.codec {
                Some(codec) => codec.decode(&mut self.read_buf),
                None => return Some(Exit::Protocol(CodecError::NotConnect)),
            };
            let packet = match decoded {
                Ok(None) => break,
                Ok(Some(packet)) => packet,
                Err(e) => {
                    ending = Some(Exit::Protocol(e));
                    break;
                }
            };
            match packet {
                Packet::Publish(publish, props) => {
                    received += 1;
                    let Some(head) = head else {
                        ending = Some(Exit::Protocol(CodecError::Malformed(
                            "a PUBLISH without its header".into(),
                        )));
                        break;
                    };
                    let outcome = self
                        .client_publish(
                            session,
                            version,
                            publish,
                            props,
                            head,
                            now,
                            &mut replies,
                            &mut denials,
                        )
                        .await;
                    if let Err(exit) = outcome {
                        ending = Some(exit);
                        break;
                    }
                }
                Packet::PingReq(_) => replies.push(Packet::PingResp(PingResp)),
                Packet::Subscribe(subscribe, props) => {
                    match self.client_subscribe(
                        session,
                        version,
                        subscribe,
                        props,
                        now,
                        &mut denials,
                    ) {
                        Ok(suback) => replies.push(suback),
                        Err(exit) => {
                            ending = Some(exit);
                            break;
                        }
                    }
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    let reasons = unsubscribe
                        .filters
                        .iter()
                        .map(|filter| {
                            self.granted.remove(filter);
                            if self.hub.unsubscribe(session, filter) {
                                UnsubAckReason::Success
                            } else {
                                UnsubAckReason::NoSubscriptionExisted
                            }
                        })
                        .collect();
                    replies.push(Packet::UnsubAck(
                        UnsubAck {
                            pkid: unsubscribe.pkid,
                            reasons,
                        },
                        None,
                    ));
                }
                Packet::PubAck(ack, _) => {
                    self.outbound.completed(ack.pkid);
                }
                Packet::PubRec(rec, _) => {
                    if matches!(
                        rec.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    ) {
                        let known = self.outbound.received(rec.pkid);
                        replies.push(Packet::PubRel(
                            PubRel {
                                pkid: rec.pkid,
                                reason: if known {
                                    PubRelReason::Success
                                } else {
                                    PubRelReason::PacketIdentifierNotFound
                                },
                            },
                            None,
                        ));
                    } else {
                        // The client refused it: the exchange ends here.
                        self.outbound.completed(rec.pkid);
                    }
                }
                Packet::PubRel(rel, _) => {
                    let known = self.inbound.released(rel.pkid);
                    replies.push(Packet::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: if known || version == Version::V4 {
                                PubCompReason::Success
                            } else {
                                PubCompReason::PacketIdentifierNotFound
                            },
                        },
                        None,
                    ));
                }
                Packet::PubComp(comp, _) => {
                    self.outbound.completed(comp.pkid);
                }
                Packet::Disconnect(d, props) => {
                    ending = Some(self.client_disconnect(d.reason_code, props));
                    break;
                }
                Packet::Connect(..) => {
                    ending = Some(Exit::Protocol(CodecError::ServerOnly("a second CONNECT")));
                    break;
                }
                Packet::ConnAck(..)
                | Packet::SubAck(..)
                | Packet::UnsubAck(..)
                | Packet::PingResp(..) => {
                    ending = Some(Exit::Protocol(CodecError::ServerOnly("a server packet")));
                    break;
                }
            }
        }
        self.published_in.inc_by(received);
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

    #[allow(clippy::too_many_arguments)]
    async fn client_publish(
        &mut self,
        session: &Arc<HubSession>,
        version: Version,
        publish: Publish,
        props: Option<PublishProperties>,
        head: PublishHead,
        now: std::time::Instant,
        replies: &mut Vec<Packet>,
        denials: &mut Vec<authorize::Denied>,
    ) -> Result<(), Exit> {
        let Ok(raw_topic) = std::str::from_utf8(&publish.topic) else {
            return Err(Exit::Protocol(CodecError::Malformed(
                "the topic name is not UTF-8".into(),
            )));
        };
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let topic = self
            .inbound
            .topic(raw_topic, alias)
            .map_err(Exit::Inbound)?;
        if topic.is_empty() {
            return Err(Exit::TopicInvalid);
        }
        // UTF-8 was checked above; wildcards and NUL make it invalid.
        if topic.contains(['+', '#', '\0']) {
            return Err(Exit::TopicInvalid);
        }
        let Some(qos) = QoS::from_u8(head.qos) else {
            return Err(Exit::Protocol(CodecError::Malformed(
                "PUBLISH with QoS 3".into(),
            )));
        };
        #[cfg(feature = "fault-injection")]
        if crate::fault::stalls_session(topic.as_bytes()) {
            tokio::select! {
                biased;
                _ = self.guard.killed() => return Err(self.killed()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            }
        }
        let refused = authorize::publish(&self.grants, &topic).err();
        #[cfg(feature = "fault-injection")]
        let refused = refused.filter(|_| !crate::fault::bypasses_authz(topic.as_bytes()));
        if let Some(denied) = refused {
            replies.extend(authorize::publish_refusal(version, head.qos, head.pkid));
            if qos == QoS::ExactlyOnce && version == Version::V4 {
                // Acknowledged as if taken: its PUBREL gets a PUBCOMP.
                self.inbound
                    .qos2_received(head.pkid)
                    .map_err(Exit::Inbound)?;
            }
            denials.push(denied);
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        crate::fault::on_publish(topic.as_bytes());
        let route = match qos {
            QoS::ExactlyOnce => self
                .inbound
                .qos2_received(head.pkid)
                .map_err(Exit::Inbound)?,
            _ => true,
        };
        if route {
            let props = props.unwrap_or_default();
            let message = Message {
                topic,
                payload: publish.payload,
                qos,
                retain: publish.retain,
                properties: Passthrough {
                    payload_format_indicator: props.payload_format_indicator,
                    content_type: props.content_type,
                    response_topic: props.response_topic,
                    correlation_data: props.correlation_data,
                    user_properties: props.user_properties,
                },
                expires_at: Message::expiry_from(now, props.message_expiry_interval),
                origin: Some(session.key()),
            };
            let routed = self.hub.publish_waiting(message, now);
            // One deadline for the message, however many subscribers it
            // waits for.
            let deadline = Instant::now() + self.max_publish_wait;
            for (target, admission) in routed.blocked {
                self.wait_for_room(&target, admission, deadline).await?;
            }
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => replies.push(Packet::PubAck(
                PubAck {
                    pkid: head.pkid,
                    reason: PubAckReason::Success,
                },
                None,
            )),
            QoS::ExactlyOnce => replies.push(Packet::PubRec(
                PubRec {
                    pkid: head.pkid,
                    reason: PubRecReason::Success,
                },
                None,
            )),
        }
        Ok(())
    }

    /// Waits (reading nothing from this client meanwhile: TCP slows it
    /// down) until what the router parked in `target`'s full mailbox is
    /// admitted, at most `mqtt.max_publish_wait_ms`; then it is dropped for
    /// that subscriber, which is marked overflowing (see `router::mailbox`).
    async fn wait_for_room(
        &mut self,
        target: &HubSession,
        mut admission: Admission,
        deadline: Instant,
    ) -> Result<(), Exit> {
        tokio::select! {
            biased;
            _ = self.guard.killed() => Err(self.killed()),
            // Admitted, or dropped by the mailbox (its session went
            // offline; counted there).
            _ = &mut admission.decided => Ok(()),
            _ = tokio::time::sleep_until(deadline) => {
                self.hub.gave_up(target, &admission);
                Ok(())
            }
        }
    }

    /// Judges and applies a SUBSCRIBE; its SUBACK.
    fn client_subscribe(
        &mut self,
        session: &Arc<HubSession>,
        version: Version,
        subscribe: Subscribe,
        props: Option<SubscribeProperties>,
        now: std::time::Instant,
        denials: &mut Vec<authorize::Denied>,
    ) -> Result<Packet, Exit> {
        let v5 = version == Version::V5;
        let subscription_id = match props.and_then(|p| p.id) {
            Some(0) => {
                return Err(Exit::Protocol(CodecError::Malformed(
                    "subscription identifier 0".into(),
                )));
            }
            Some(id) if id > MAX_SUBSCRIPTION_ID => {
                return Err(Exit::Protocol(CodecError::Malformed(
                    "subscription identifier above 268435455".into(),
                )));
            }
            Some(id) => Some(id as u32),
            None => None,
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let (group, plain) = split_shared(&filter.path);
            let valid = crate::topic::Filter::parse(plain).is_ok()
                && group.is_none_or(|g| !g.is_empty() && !g.contains(['+', '#']))
                && !(filter.path.starts_with("$share/") && group.is_none());
            if !valid {
                codes.push(if v5 {
                    SubscribeReasonCode::TopicFilterInvalid
                } else {
                    SubscribeReasonCode::Failure
                });
                continue;
            }
            if v5 && group.is_some() && filter.nolocal {
                return Err(Exit::Protocol(CodecError::Malformed(
                    "no local on a shared subscription".into(),
                )));
            }
            if let Err(denied) = authorize::subscribe(&self.grants, &filter.path) {
                codes.push(authorize::refusal_code(version));
                denials.push(denied);
                continue;
            }
            let qos = QoS::from_u8(filter.qos as u8).unwrap_or(QoS::AtMostOnce);
            let options = SubOptions {
                qos,
                no_local: v5 && filter.nolocal,
                retain_as_published: v5 && filter.preserve_retain,
                retain_handling: match filter.retain_forward_rule {
                    RetainForwardRule::OnEverySubscribe => RetainHandling::AtSubscribe,
                    RetainForwardRule::OnNewSubscribe if v5 => RetainHandling::IfNew,
                    RetainForwardRule::Never if v5 => RetainHandling::Never,
                    _ => RetainHandling::AtSubscribe,
                },
                subscription_id: subscription_id.filter(|_| v5),
            };
            let retained = self.hub.subscribe(session, &filter.path, options, now);
            self.retained_out.extend(retained);
            self.granted.insert(filter.path);
            codes.push(SubscribeReasonCode::Success(filter.qos));
        }
        Ok(Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
            },
            None,
        ))
    }

    /// A DISCONNECT from the client: its reason (a will or not) and, over
    /// 5, a new session expiry interval.
    fn client_disconnect(
        &mut self,
        reason: DisconnectReasonCode,
        props: Option<DisconnectProperties>,
    ) -> Exit {
        if let Some(secs) = props.and_then(|p| p.session_expiry_interval) {
            if self.expiry_was_zero && secs > 0 {
                // MQTT 5 section 3.14.2.2.2: a protocol error.
                return Exit::Protocol(CodecError::Malformed(
                    "DISCONNECT sets a session expiry after CONNECT asked for none".into(),
                ));
            }
            self.session_expiry =
                std::time::Duration::from_secs(u64::from(secs)).min(self.max_session_expiry);
        }
        Exit::ClientDisconnect {
            with_will: reason == DisconnectReasonCode::DisconnectWithWillMessage,
        }
    }
}
