//! A message as the router carries it, and one delivery of it.
//!
//! A [`Message`] is made once per PUBLISH and shared (`Arc`) by every
//! delivery, mailbox and retained slot that holds it: fan-out to a
//! thousand subscribers copies a thousand pointers, not the payload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Identifies a session in the router for its whole life, across the
/// reconnections of a persistent session.
pub type SessionKey = u64;

/// An MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(level: u8) -> Option<QoS> {
        match level {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// What a PUBLISH carries that the broker passes on unchanged
/// (MQTT 5 section 3.3.2.3): payload format, content type, response
/// topic, correlation data, user properties, in their order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passthrough {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

/// One published message.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The publisher's RETAIN flag.
    pub retain: bool,
    pub properties: Passthrough,
    /// When it expires (MQTT 5 message expiry interval), if it does.
    pub expires_at: Option<Instant>,
    /// The session that published it (for no local), if any.
    pub origin: Option<SessionKey>,
}

impl Message {
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The expiry interval left, in whole seconds rounded up, to write
    /// into the PUBLISH that delivers it (MQTT 5 section 3.3.2.3.3);
    /// `None` if it does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// When a message published now with this expiry interval expires.
    pub fn expiry_from(now: Instant, interval_secs: Option<u32>) -> Option<Instant> {
        interval_secs.map(|s| now + Duration::from_secs(u64::from(s)))
    }
}

/// When a subscription receives the retained messages that match it
/// (MQTT 5 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// At every SUBSCRIBE (0, and the only behaviour of 3.1.1).
    #[default]
    AtSubscribe,
    /// Only if the subscription did not exist before (1).
    IfNew,
    /// Never (2).
    Never,
}

impl RetainHandling {
    pub fn from_u8(value: u8) -> Option<RetainHandling> {
        match value {
            0 => Some(RetainHandling::AtSubscribe),
            1 => Some(RetainHandling::IfNew),
            2 => Some(RetainHandling::Never),
            _ => None,
        }
    }
}

/// A subscription's options (MQTT 5 section 3.8.3.1; 3.1.1 has the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The QoS granted: deliveries are downgraded to it.
    pub qos: QoS,
    /// Not to receive its own session's messages.
    pub no_local: bool,
    /// Keep the publisher's RETAIN flag on forwarded messages.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// Sent with every message it matches.
    pub subscription_id: Option<u32>,
}

impl SubOptions {
    /// A 3.1.1 subscription (or a 5 one with default options) at `qos`.
    pub fn at(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::AtSubscribe,
            subscription_id: None,
        }
    }
}

/// One message for one session: at the highest QoS of the session's
/// subscriptions that match (never above the published QoS), with every
/// matching subscription identifier (MQTT 5 section 3.3.4).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent because of
    /// a SUBSCRIBE, and for forwarded ones only under retain as published.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_expiry_rounds_up_and_saturates() {
        let now = Instant::now();
        let m = |at: Option<Instant>| Message {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Passthrough::default(),
            expires_at: at,
            origin: None,
        };
        assert_eq!(m(None).remaining_expiry(now), None);
        assert_eq!(
            m(Some(now + Duration::from_millis(1500))).remaining_expiry(now),
            Some(2)
        );
        assert_eq!(m(Some(now)).remaining_expiry(now), Some(0));
        assert!(m(Some(now)).is_expired(now));
        assert!(!m(Some(now + Duration::from_secs(1))).is_expired(now));
        assert_eq!(QoS::from_u8(3), None);
        assert!(QoS::AtMostOnce < QoS::ExactlyOnce);
    }
}
