//! What a connection sends its client: deliveries turned into PUBLISH
//! packets, and the state MQTT asks a server to keep for them.
//!
//! - Packet identifiers and the in-flight window (MQTT 5 section 4.9):
//!   at most the client's receive maximum (capped by
//!   `mqtt.max_inflight_messages`) QoS 1 and 2 messages unacknowledged;
//!   the rest wait in the session's mailbox.
//! - QoS 2 (section 4.3.3): PUBLISH, PUBREC from the client, PUBREL from
//!   here, PUBCOMP from the client.
//! - Topic aliases (section 3.3.2.3.4): up to the client's topic alias
//!   maximum, a topic sent again goes as its alias alone.
//! - The client's maximum packet size (section 3.1.2.11.4): a message that
//!   would not fit is not sent to it, as if it had been (counted).
//! - Message expiry (section 3.3.2.3.3): an expired message is not sent;
//!   a live one carries the interval it has left.
//! - Resumption (section 4.4): what was unacknowledged when the previous
//!   connection ended is sent again first, DUP set, same identifiers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::wire::OutPublish;
use crate::router::hub::Unacked;
use crate::router::message::{Delivery, QoS};

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Written,
    Expired,
    /// Larger than the client's maximum packet size.
    TooLarge,
}

/// A connection's outgoing state.
#[derive(Debug)]
pub struct Outbound {
    v5: bool,
    next_pkid: u16,
    /// Unacknowledged QoS 1 and 2 messages, in the order sent.
    inflight: Vec<Unacked>,
    window: usize,
    aliases: HashMap<Arc<str>, u16>,
    alias_max: u16,
    max_packet_size: Option<usize>,
}

impl Outbound {
    /// `receive_maximum`: the client's (65,535 when it gave none), capped
    /// by `max_inflight`; `alias_max`: its topic alias maximum;
    /// `max_packet_size`: its maximum packet size.
    pub fn new(
        v5: bool,
        receive_maximum: u16,
        max_inflight: u16,
        alias_max: u16,
        max_packet_size: Option<u32>,
    ) -> Outbound {
        Outbound {
            v5,
            next_pkid: 1,
            inflight: Vec::new(),
            window: usize::from(receive_maximum.clamp(1, max_inflight.max(1))),
            aliases: HashMap::new(),
            alias_max: if v5 { alias_max } else { 0 },
            max_packet_size: max_packet_size.map(|n| n as usize),
        }
    }

    /// How many more QoS 1 and 2 messages may be sent now.
    pub fn room(&self) -> usize {
        self.window.saturating_sub(self.inflight.len())
    }

    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self
                .next_pkid
                .checked_add(1)
                .filter(|n| *n != 0)
                .unwrap_or(1);
            if !self.inflight.iter().any(|u| u.packet_id == pkid) {
                return pkid;
            }
        }
    }

    /// Writes `delivery` to `out` (a QoS 1 or 2 one takes a packet id and
    /// a place in the window: call only with [`Outbound::room`] left).
    pub fn send(&mut self, delivery: Delivery, now: Instant, out: &mut BytesMut) -> Sent {
        if delivery.message.is_expired(now) {
            return Sent::Expired;
        }
        let pkid = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            self.allocate_pkid()
        };
        let sent = self.write(&delivery, pkid, false, now, out);
        if sent == Sent::Written && delivery.qos != QoS::AtMostOnce {
            self.inflight.push(Unacked {
                packet_id: pkid,
                delivery,
                released: false,
            });
        }
        sent
    }

    fn write(
        &mut self,
        delivery: &Delivery,
        pkid: u16,
        dup: bool,
        now: Instant,
        out: &mut BytesMut,
    ) -> Sent {
        let message = &delivery.message;
        let (topic, topic_alias, new_alias) = self.alias_for(&message.topic);
        let publish = OutPublish {
            message,
            topic,
            qos: delivery.qos,
            retain: delivery.retain,
            dup,
            pkid,
            v5: self.v5,
            topic_alias,
            message_expiry: message.remaining_expiry(now),
            subscription_ids: &delivery.subscription_ids,
        };
        if self.max_packet_size.is_some_and(|max| publish.size() > max) {
            return Sent::TooLarge;
        }
        publish.encode(out);
        if let Some(alias) = new_alias {
            self.aliases.insert(message.topic.clone(), alias);
        }
        Sent::Written
    }

    /// The topic to write, the alias to send, and a new alias to record
    /// once written.
    fn alias_for<'a>(&self, topic: &'a Arc<str>) -> (&'a str, Option<u16>, Option<u16>) {
        if self.alias_max == 0 {
            return (topic, None, None);
        }
        match self.aliases.get(topic) {
            Some(alias) => ("", Some(*alias), None),
            None if self.aliases.len() < usize::from(self.alias_max) => {
                let alias = self.aliases.len() as u16 + 1;
                (topic, Some(alias), Some(alias))
            }
            None => (topic, None, None),
        }
    }

    /// Sends again what the previous connection left unacknowledged: a
    /// PUBLISH with DUP, or (QoS 2 after PUBREC) the PUBREL; returns the
    /// packet ids whose PUBREL the caller writes.
    pub fn resume(&mut self, unacked: Vec<Unacked>, now: Instant, out: &mut BytesMut) -> Vec<u16> {
        let mut pubrels = Vec::new();
        for u in unacked {
            if u.released {
                pubrels.push(u.packet_id);
                self.inflight.push(u);
                continue;
            }
            let sent = self.write(&u.delivery, u.packet_id, true, now, out);
            if sent == Sent::Written {
                self.inflight.push(u);
            }
        }
        pubrels
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2): the message is done. `false` if
    /// no message waits for it.
    pub fn completed(&mut self, pkid: u16) -> bool {
        match self.inflight.iter().position(|u| u.packet_id == pkid) {
            Some(at) => {
                self.inflight.remove(at);
                true
            }
            None => false,
        }
    }

    /// PUBREC: the client has the QoS 2 message; `true` if it was waiting
    /// (the caller answers PUBREL either way).
    pub fn received(&mut self, pkid: u16) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|u| u.packet_id == pkid && u.delivery.qos == QoS::ExactlyOnce)
        {
            Some(u) => {
                u.released = true;
                true
            }
            None => false,
        }
    }

    /// What is unacknowledged, for the session to keep.
    pub fn park(&mut self) -> Vec<Unacked> {
        std::mem::take(&mut self.inflight)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rumqttd::protocol::{Packet, Protocol};

    use super::*;
    use crate::router::message::{Message, Passthrough};

    fn delivery(topic: &str, qos: QoS, payload: usize) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: topic.into(),
                payload: Bytes::from(vec![1u8; payload]),
                qos,
                retain: false,
                properties: Passthrough::default(),
                expires_at: None,
                origin: None,
            }),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn decode_all(buf: &mut BytesMut) -> Vec<(String, Option<u16>, usize)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let Packet::Publish(p, props) =
                rumqttd::protocol::v5::V5.read_mut(buf, 1 << 20).unwrap()
            else {
                panic!()
            };
            out.push((
                String::from_utf8(p.topic.to_vec()).unwrap(),
                props.and_then(|p| p.topic_alias),
                p.payload.len(),
            ));
        }
        out
    }

    #[test]
    fn the_window_packet_ids_and_acknowledgements() {
        let mut o = Outbound::new(true, 2, 32, 0, None);
        let now = Instant::now();
        let mut buf = BytesMut::new();
        assert_eq!(o.room(), 2);
        assert_eq!(
            o.send(delivery("a", QoS::AtLeastOnce, 1), now, &mut buf),
            Sent::Written
        );
        assert_eq!(
            o.send(delivery("a", QoS::ExactlyOnce, 1), now, &mut buf),
            Sent::Written
        );
        assert_eq!(o.room(), 0);
        assert_eq!(
            o.send(delivery("a", QoS::AtMostOnce, 1), now, &mut buf),
            Sent::Written
        );
        assert_eq!(o.inflight(), 2, "QoS 0 takes no place");
        assert!(o.received(2));
        assert!(!o.received(1), "QoS 1 has no PUBREC");
        assert!(o.completed(1));
        assert!(!o.completed(1));
        assert_eq!(o.room(), 1);
        let parked = o.park();
        assert_eq!(parked.len(), 1);
        assert!(parked[0].released);
        // Resumed: the released one is owed a PUBREL only.
        let mut o = Outbound::new(true, 10, 32, 0, None);
        let mut out = BytesMut::new();
        assert_eq!(o.resume(parked, now, &mut out), [2]);
        assert!(out.is_empty());
        // The next id skips one still in flight.
        o.next_pkid = 2;
        let mut buf = BytesMut::new();
        o.send(delivery("b", QoS::AtLeastOnce, 1), now, &mut buf);
        assert_eq!(o.inflight[1].packet_id, 3);
    }

    #[test]
    fn aliases_max_packet_size_and_expiry() {
        let mut o = Outbound::new(true, 100, 100, 1, Some(100));
        let now = Instant::now();
        let mut buf = BytesMut::new();
        o.send(delivery("devices/d1/t", QoS::AtMostOnce, 1), now, &mut buf);
        o.send(delivery("devices/d1/t", QoS::AtMostOnce, 1), now, &mut buf);
        o.send(delivery("devices/d2/t", QoS::AtMostOnce, 1), now, &mut buf);
        assert_eq!(
            decode_all(&mut buf),
            [
                ("devices/d1/t".to_owned(), Some(1), 1),
                (String::new(), Some(1), 1),
                ("devices/d2/t".to_owned(), None, 1)
            ]
        );
        assert_eq!(
            o.send(delivery("x", QoS::AtLeastOnce, 200), now, &mut buf),
            Sent::TooLarge
        );
        assert!(buf.is_empty() && o.inflight() == 0);
        let mut expired = delivery("x", QoS::AtLeastOnce, 1);
        Arc::get_mut(&mut expired.message).unwrap().expires_at = Some(now);
        assert_eq!(o.send(expired, now, &mut buf), Sent::Expired);
    }
}
