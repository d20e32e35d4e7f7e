//! Topic authorization in the session loop: how `authz`'s decisions meet
//! MQTT.
//!
//! - SUBSCRIBE: each refused filter gets `0x80` (3.1.1) or `0x87` Not
//!   authorized (5) in the SUBACK, while the others are granted.
//! - PUBLISH: a refused one is neither routed nor retained. QoS 0 is
//!   dropped; QoS 1 and 2 are acknowledged: MQTT 5 with `0x87` Not
//!   authorized in PUBACK / PUBREC, MQTT 3.1.1 (which has no way to say no)
//!   with a plain PUBACK / PUBREC, the message dropped - the choice 3.1.1
//!   section 4.9 leaves to a server that keeps the client connected.

use rumqttd::protocol::{Packet, PubAck, PubAckReason, PubRec, PubRecReason, SubscribeReasonCode};

use super::codec::Version;
use crate::authz::{Action, Decision, Filter, Grants};

/// A refusal, for counting and the (rate-limited) log.
pub(super) struct Denied {
    pub action: Action,
    pub topic: String,
    pub decision: Decision,
}

/// The filter a subscription is judged by: a shared subscription
/// (`$share/<group>/<filter>`) by its filter.
pub(super) fn judged_filter(path: &str) -> &str {
    match path.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, filter)| filter),
        None => path,
    }
}

/// May the grants subscribe to `path` (as the client wrote it)?
pub(super) fn subscribe(grants: &Grants, path: &str) -> Result<(), Denied> {
    let decision = match Filter::parse(judged_filter(path)) {
        Ok(f) => grants.subscribe(&f),
        Err(_) => Decision::Deny(None),
    };
    if decision.is_allowed() {
        return Ok(());
    }
    Err(Denied {
        action: Action::Subscribe,
        topic: path.chars().take(256).collect(),
        decision,
    })
}

/// May the grants publish to `topic`? Never to the broker's own event
/// topics (`$certmq/...`), whatever the policies say.
pub(super) fn publish(grants: &Grants, topic: &str) -> Result<(), Denied> {
    let decision = if crate::events::is_reserved(topic) {
        Decision::Deny(None)
    } else {
        grants.publish(topic)
    };
    if decision.is_allowed() {
        return Ok(());
    }
    Err(Denied {
        action: Action::Publish,
        topic: topic.chars().take(256).collect(),
        decision,
    })
}

/// The acknowledgement of a refused PUBLISH of QoS `qos` (none for 0).
pub(super) fn publish_refusal(version: Version, qos: u8, pkid: u16) -> Option<Packet> {
    let v5 = version == Version::V5;
    match qos {
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
        2 => Some(Packet::PubRec(
            PubRec {
                pkid,
                reason: if v5 {
                    PubRecReason::NotAuthorized
                } else {
                    PubRecReason::Success
                },
            },
            None,
        )),
        _ => None,
    }
}

/// The SUBACK code of a refused filter.
pub(super) fn refusal_code(version: Version) -> SubscribeReasonCode {
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
    fn refusals_say_no_over_5_and_acknowledge_over_3_1_1() {
        let reason = |p: Option<Packet>| match p {
            Some(Packet::PubAck(a, _)) => format!("{:?}", a.reason),
            Some(Packet::PubRec(r, _)) => format!("{:?}", r.reason),
            other => format!("{other:?}"),
        };
        assert_eq!(reason(publish_refusal(Version::V5, 1, 3)), "NotAuthorized");
        assert_eq!(reason(publish_refusal(Version::V5, 2, 3)), "NotAuthorized");
        assert_eq!(reason(publish_refusal(Version::V4, 1, 3)), "Success");
        assert_eq!(reason(publish_refusal(Version::V4, 2, 3)), "Success");
        assert!(publish_refusal(Version::V4, 0, 0).is_none());
    }
}
