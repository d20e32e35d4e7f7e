//! Topic authorization in the session loop: what of a client's SUBSCRIBE
//! and PUBLISH reaches the router, and what the client is told about the
//! rest. The decisions are `authz`'s; this is how they meet MQTT.
//!
//! - SUBSCRIBE: refused filters are taken out before the router sees the
//!   packet, and put back into its SUBACK as `0x80` (3.1.1) or `0x87` Not
//!   authorized (5); the others are granted as usual. If every filter is
//!   refused, certmq answers the SUBACK itself.
//! - PUBLISH: a refused one never reaches the router (so it is neither
//!   routed nor retained). QoS 0 is dropped; QoS 1 and 2 are acknowledged
//!   by certmq: MQTT 5 with `0x87` Not authorized in PUBACK / PUBREC, MQTT
//!   3.1.1 (which has no way to say no) with a plain PUBACK / PUBREC, the
//!   message dropped - the choice 3.1.1 section 4.9 leaves to the server
//!   that keeps the client connected.

use std::collections::{HashMap, HashSet};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish, SubAck,
    Subscribe, SubscribeReasonCode,
};

use super::codec::Version;
use crate::authz::{Action, Decision, Filter, Grants};

/// What one connection has refused and still owes the client.
#[derive(Default)]
pub(super) struct Refusals {
    /// SUBSCRIBE packet id -> positions of refused filters, ascending.
    pending_subacks: HashMap<u16, Vec<usize>>,
    /// MQTT 3.1.1 QoS 2 packet ids certmq answered PUBREC to itself: their
    /// PUBREL is answered here too, the router never heard of them.
    local_qos2: HashSet<u16>,
}

/// A refusal, for counting and the (rate-limited) log.
pub(super) struct Denied {
    pub action: Action,
    pub topic: String,
    pub decision: Decision,
}

/// The packet's topic as text, for decisions (its UTF-8 was checked).
fn topic_text(publish: &Publish) -> &str {
    std::str::from_utf8(&publish.topic).unwrap_or_default()
}

/// The QoS and packet id of a PUBLISH (rumqttd keeps both crate-private;
/// its own serialisation carries them in the first three bytes).
fn qos_and_pkid(publish: &Publish) -> (u8, u16) {
    let head = publish.serialize();
    match head.get(..3) {
        Some([first, hi, lo]) => ((first >> 1) & 0b11, u16::from_be_bytes([*hi, *lo])),
        _ => (0, 0),
    }
}

/// The filter a subscription is judged by: a shared subscription
/// (`$share/<group>/<filter>`) by its filter.
pub(super) fn judged_filter(path: &str) -> &str {
    match path.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, filter)| filter),
        None => path,
    }
}

impl Refusals {
    /// Judges a SUBSCRIBE. Returns the packet for the router (the granted
    /// filters; `None` if none is), the SUBACK to send now (when all were
    /// refused), and the refusals to count.
    pub(super) fn subscribe(
        &mut self,
        grants: &Grants,
        version: Version,
        mut subscribe: Subscribe,
        props: Option<rumqttd::protocol::SubscribeProperties>,
    ) -> (Option<Packet>, Option<Packet>, Vec<Denied>) {
        let mut refused = Vec::new();
        let mut denied = Vec::new();
        let mut position = 0;
        subscribe.filters.retain(|filter| {
            let judged = judged_filter(&filter.path);
            let decision = match Filter::parse(judged) {
                Ok(f) => grants.subscribe(&f),
                Err(_) => Decision::Deny(None),
            };
            let keep = decision.is_allowed();
            if !keep {
                refused.push(position);
                denied.push(Denied {
                    action: Action::Subscribe,
                    topic: filter.path.chars().take(256).collect(),
                    decision,
                });
            }
            position += 1;
            keep
        });
        if refused.is_empty() {
            return (Some(Packet::Subscribe(subscribe, props)), None, denied);
        }
        if subscribe.filters.is_empty() {
            let codes = vec![refusal_code(version); refused.len()];
            let suback = SubAck {
                pkid: subscribe.pkid,
                return_codes: codes,
            };
            return (None, Some(Packet::SubAck(suback, None)), denied);
        }
        self.pending_subacks.insert(subscribe.pkid, refused);
        (Some(Packet::Subscribe(subscribe, props)), None, denied)
    }

    /// Puts the refused filters' codes back into the router's SUBACK.
    pub(super) fn complete_suback(&mut self, version: Version, packet: Packet) -> Packet {
        let Packet::SubAck(mut suback, props) = packet else {
            return packet;
        };
        if let Some(refused) = self.pending_subacks.remove(&suback.pkid) {
            for position in refused {
                let at = position.min(suback.return_codes.len());
                suback.return_codes.insert(at, refusal_code(version));
            }
        }
        Packet::SubAck(suback, props)
    }

    /// Judges a PUBLISH: `None` to forward it, or the answer to send
    /// instead (none for QoS 0) and the refusal.
    pub(super) fn publish(
        &mut self,
        grants: &Grants,
        version: Version,
        publish: &Publish,
    ) -> Option<(Option<Packet>, Denied)> {
        let topic = topic_text(publish);
        let decision = grants.publish(topic);
        if decision.is_allowed() {
            return None;
        }
        let denied = Denied {
            action: Action::Publish,
            topic: topic.chars().take(256).collect(),
            decision,
        };
        let v5 = version == Version::V5;
        let (qos, pkid) = qos_and_pkid(publish);
        let answer = match qos {
            1 => Some(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: if v5 {
                        PubAckReason::NotAuthorized
                    } else {
                        PubAckReason::Success
                    },
                },
                None,
            )),
            2 => {
                if !v5 {
                    self.local_qos2.insert(pkid);
                }
                Some(Packet::PubRec(
                    PubRec {
                        pkid,
                        reason: if v5 {
                            PubRecReason::NotAuthorized
                        } else {
                            PubRecReason::Success
                        },
                    },
                    None,
                ))
            }
            _ => None,
        };
        Some((answer, denied))
    }

    /// A PUBREL for a QoS 2 message certmq refused: answered here
    /// (`Some(PUBCOMP)`), not forwarded.
    pub(super) fn pubrel(&mut self, pkid: u16) -> Option<Packet> {
        self.local_qos2.remove(&pkid).then(|| {
            Packet::PubComp(
                PubComp {
                    pkid,
                    reason: PubCompReason::Success,
                },
                None,
            )
        })
    }
}

fn refusal_code(version: Version) -> SubscribeReasonCode {
    match version {
        Version::V4 => SubscribeReasonCode::Failure,
        Version::V5 => SubscribeReasonCode::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_are_judged_by_their_filter() {
        assert_eq!(judged_filter("$share/g/devices/+/t"), "devices/+/t");
        assert_eq!(judged_filter("$share/g"), "g");
        assert_eq!(judged_filter("devices/a"), "devices/a");
        assert_eq!(judged_filter("$SYS/x"), "$SYS/x");
    }

    #[test]
    fn qos_and_packet_id_are_read_back() {
        let p = crate::router::publish(&"a/b".into(), &"x".into(), 1, false, 0x1234);
        assert_eq!(qos_and_pkid(&p), (1, 0x1234));
        let p = crate::router::publish(&"a/b".into(), &"x".into(), 2, true, 7);
        assert_eq!(qos_and_pkid(&p), (2, 7));
    }
}
