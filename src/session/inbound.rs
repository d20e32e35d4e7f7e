//! What a connection receives from its client, beyond authorization:
//! topic aliases the client set (MQTT 5 section 3.3.2.3.4), the QoS 2
//! messages received and not yet released (section 4.3.3: routed once,
//! however often the client sends them before PUBREL), and the receive
//! maximum certmq announced (section 3.3.4: more unreleased QoS 2
//! messages than that is a protocol error, 0x93).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Why an incoming PUBLISH breaks the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("topic alias {0} is 0 or above the topic alias maximum certmq announced")]
    AliasInvalid(u16),
    #[error("topic alias {0} was never set on this connection")]
    AliasUnknown(u16),
    #[error("more QoS 2 messages awaiting PUBREL than the receive maximum certmq announced")]
    ReceiveMaximumExceeded,
}

/// A connection's incoming state.
#[derive(Debug)]
pub struct Inbound {
    aliases: HashMap<u16, Arc<str>>,
    alias_max: u16,
    /// QoS 2 packet ids received, PUBREL not yet.
    qos2: HashSet<u16>,
    receive_maximum: u16,
}

impl Inbound {
    /// `alias_max` and `receive_maximum`: what CONNACK announces.
    pub fn new(alias_max: u16, receive_maximum: u16, pending_qos2: Vec<u16>) -> Inbound {
        Inbound {
            aliases: HashMap::new(),
            alias_max,
            qos2: pending_qos2.into_iter().collect(),
            receive_maximum: receive_maximum.max(1),
        }
    }

    /// The topic of a PUBLISH: its topic name (setting `alias` to it if
    /// given), or the topic `alias` was set to.
    pub fn topic(&mut self, topic: &str, alias: Option<u16>) -> Result<Arc<str>, InboundError> {
        let Some(alias) = alias else {
            return Ok(topic.into());
        };
        if alias == 0 || alias > self.alias_max {
            return Err(InboundError::AliasInvalid(alias));
        }
        if topic.is_empty() {
            return self
                .aliases
                .get(&alias)
                .cloned()
                .ok_or(InboundError::AliasUnknown(alias));
        }
        let topic: Arc<str> = topic.into();
        self.aliases.insert(alias, topic.clone());
        Ok(topic)
    }

    /// A QoS 2 PUBLISH arrived: `Ok(true)` to route it (first time),
    /// `Ok(false)` if it is a resend of one not yet released.
    pub fn qos2_received(&mut self, pkid: u16) -> Result<bool, InboundError> {
        if self.qos2.contains(&pkid) {
            return Ok(false);
        }
        if self.qos2.len() >= usize::from(self.receive_maximum) {
            return Err(InboundError::ReceiveMaximumExceeded);
        }
        self.qos2.insert(pkid);
        Ok(true)
    }

    /// PUBREL: `true` if the id was awaiting it.
    pub fn released(&mut self, pkid: u16) -> bool {
        self.qos2.remove(&pkid)
    }

    /// The unreleased ids, for the session to keep.
    pub fn park(&mut self) -> Vec<u16> {
        self.qos2.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_qos2_follow_the_rules() {
        let mut i = Inbound::new(2, 2, vec![9]);
        assert_eq!(&*i.topic("a/b", Some(1)).unwrap(), "a/b");
        assert_eq!(&*i.topic("", Some(1)).unwrap(), "a/b");
        assert_eq!(i.topic("", Some(2)), Err(InboundError::AliasUnknown(2)));
        assert_eq!(i.topic("x", Some(3)), Err(InboundError::AliasInvalid(3)));
        assert_eq!(i.topic("x", Some(0)), Err(InboundError::AliasInvalid(0)));
        assert_eq!(&*i.topic("c", Some(1)).unwrap(), "c", "reset");
        assert_eq!(
            i.qos2_received(9),
            Ok(false),
            "carried over, not routed again"
        );
        assert_eq!(i.qos2_received(1), Ok(true));
        assert_eq!(
            i.qos2_received(2),
            Err(InboundError::ReceiveMaximumExceeded)
        );
        assert!(i.released(9));
        assert!(!i.released(9));
        assert_eq!(i.qos2_received(2), Ok(true));
        assert_eq!(i.park().len(), 2);
    }
}
