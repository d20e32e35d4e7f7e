//! PUBLISH on the wire, written and read by certmq itself.
//!
//! rumqttd's codec keeps a PUBLISH's QoS, packet identifier and DUP flag
//! crate-private, and its encoder copies the payload; delivering one
//! message to many sessions is the broker's hottest path. So certmq reads
//! those three from the frame's own bytes before the codec decodes it
//! ([`peek_publish`]), and encodes every outgoing PUBLISH itself
//! ([`encode_publish`], MQTT 3.1.1 section 3.3 and MQTT 5 section 3.3),
//! straight into the connection's write buffer. Every other packet still
//! goes through rumqttd's codec (`codec`).

use bytes::{BufMut, BytesMut};

use crate::router::message::{Message, QoS};

/// The fixed-header flags and packet identifier of a PUBLISH frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHead {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
}

/// Reads the head of the PUBLISH at the start of `buf`, if the frame
/// there is a PUBLISH and long enough to hold it.
pub fn peek_publish(buf: &[u8]) -> Option<PublishHead> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let mut pos = 1;
    loop {
        let byte = *buf.get(pos)?;
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return None;
        }
    }
    let qos = (first >> 1) & 0b11;
    let topic_len = usize::from(u16::from_be_bytes([*buf.get(pos)?, *buf.get(pos + 1)?]));
    let pkid = if qos > 0 {
        let at = pos + 2 + topic_len;
        u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?])
    } else {
        0
    };
    Some(PublishHead {
        dup: first & 0b1000 != 0,
        qos,
        retain: first & 1 != 0,
        pkid,
    })
}

/// One outgoing PUBLISH.
pub struct OutPublish<'a> {
    pub message: &'a Message,
    /// The topic to write: empty when `topic_alias` stands for it.
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// MQTT 5 only: the properties below are written.
    pub v5: bool,
    pub topic_alias: Option<u16>,
    pub message_expiry: Option<u32>,
    pub subscription_ids: &'a [u32],
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

impl OutPublish<'_> {
    fn properties_len(&self) -> usize {
        let p = &self.message.properties;
        let mut len = 0;
        if p.payload_format_indicator.is_some() {
            len += 2;
        }
        if self.message_expiry.is_some() {
            len += 5;
        }
        if self.topic_alias.is_some() {
            len += 3;
        }
        if let Some(t) = &p.response_topic {
            len += 3 + t.len();
        }
        if let Some(c) = &p.correlation_data {
            len += 3 + c.len();
        }
        for (k, v) in &p.user_properties {
            len += 5 + k.len() + v.len();
        }
        for id in self.subscription_ids {
            len += 1 + varint_len(*id as usize);
        }
        if let Some(c) = &p.content_type {
            len += 3 + c.len();
        }
        len
    }

    fn remaining_len(&self, properties: usize) -> usize {
        let mut len = 2 + self.topic.len() + self.message.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if self.v5 {
            len += varint_len(properties) + properties;
        }
        len
    }

    /// The size of the whole packet, for the client's maximum packet size.
    pub fn size(&self) -> usize {
        let remaining = self.remaining_len(if self.v5 { self.properties_len() } else { 0 });
        1 + varint_len(remaining) + remaining
    }

    /// Appends the packet to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let properties = if self.v5 { self.properties_len() } else { 0 };
        let remaining = self.remaining_len(properties);
        out.reserve(1 + varint_len(remaining) + remaining);
        out.put_u8(
            0b0011_0000
                | (u8::from(self.dup) << 3)
                | ((self.qos as u8) << 1)
                | u8::from(self.retain),
        );
        put_varint(out, remaining);
        put_str(out, self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            out.put_u16(self.pkid);
        }
        if self.v5 {
            let p = &self.message.properties;
            put_varint(out, properties);
            if let Some(f) = p.payload_format_indicator {
                out.put_u8(0x01);
                out.put_u8(f);
            }
            if let Some(secs) = self.message_expiry {
                out.put_u8(0x02);
                out.put_u32(secs);
            }
            if let Some(alias) = self.topic_alias {
                out.put_u8(0x23);
                out.put_u16(alias);
            }
            if let Some(t) = &p.response_topic {
                out.put_u8(0x08);
                put_str(out, t.as_bytes());
            }
            if let Some(c) = &p.correlation_data {
                out.put_u8(0x09);
                put_str(out, c);
            }
            for (k, v) in &p.user_properties {
                out.put_u8(0x26);
                put_str(out, k.as_bytes());
                put_str(out, v.as_bytes());
            }
            for id in self.subscription_ids {
                out.put_u8(0x0B);
                put_varint(out, *id as usize);
            }
            if let Some(c) = &p.content_type {
                out.put_u8(0x03);
                put_str(out, c.as_bytes());
            }
        }
        out.put_slice(&self.message.payload);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use rumqttd::protocol::{Packet, Protocol};

    use super::*;
    use crate::router::message::Passthrough;

    fn message(payload: usize) -> Message {
        Message {
            topic: "devices/d1/t".into(),
            payload: Bytes::from(vec![7u8; payload]),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Passthrough {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            },
            expires_at: None,
            origin: None,
        }
    }

    /// What certmq writes, rumqttd's decoder (the clients' reading of the
    /// same section) reads back, field by field; the peek agrees.
    #[test]
    fn encoded_publishes_decode_and_peek_back() {
        for (v5, payload, qos) in [
            (true, 10, QoS::AtLeastOnce),
            (true, 300, QoS::ExactlyOnce),
            (false, 20_000, QoS::AtLeastOnce),
            (false, 0, QoS::AtMostOnce),
            (true, 200_000, QoS::AtMostOnce),
        ] {
            let m = message(payload);
            let out = OutPublish {
                message: &m,
                topic: &m.topic,
                qos,
                retain: true,
                dup: qos != QoS::AtMostOnce,
                pkid: if qos == QoS::AtMostOnce { 0 } else { 4242 },
                v5,
                topic_alias: v5.then_some(3),
                message_expiry: v5.then_some(60),
                subscription_ids: if v5 { &[1, 200, 70_000] } else { &[] },
            };
            let mut buf = BytesMut::new();
            out.encode(&mut buf);
            assert_eq!(buf.len(), out.size());
            let head = peek_publish(&buf).unwrap();
            assert_eq!(
                (head.qos, head.pkid, head.dup, head.retain),
                (qos as u8, out.pkid, out.dup, true)
            );
            let decoded = if v5 {
                rumqttd::protocol::v5::V5.read_mut(&mut buf, 1 << 20)
            } else {
                rumqttd::protocol::v4::V4.read_mut(&mut buf, 1 << 20)
            }
            .unwrap();
            let Packet::Publish(p, props) = decoded else {
                panic!("{decoded:?}")
            };
            assert_eq!(&p.topic[..], m.topic.as_bytes());
            assert_eq!(p.payload.len(), payload);
            assert!(p.retain);
            if v5 {
                let props = props.unwrap();
                assert_eq!(props.topic_alias, Some(3));
                assert_eq!(props.message_expiry_interval, Some(60));
                assert_eq!(props.subscription_identifiers, [1, 200, 70_000]);
                assert_eq!(props.content_type.as_deref(), Some("text/plain"));
                assert_eq!(props.response_topic.as_deref(), Some("r/t"));
                assert_eq!(props.correlation_data.as_deref(), Some(&b"corr"[..]));
                assert_eq!(props.payload_format_indicator, Some(1));
                assert_eq!(props.user_properties, m.properties.user_properties);
            }
            assert!(buf.is_empty());
        }
        let _ = Arc::new(0);
    }

    #[test]
    fn peek_needs_the_whole_head() {
        let m = message(5);
        let out = OutPublish {
            message: &m,
            topic: &m.topic,
            qos: QoS::AtLeastOnce,
            retain: false,
            dup: false,
            pkid: 9,
            v5: false,
            topic_alias: None,
            message_expiry: None,
            subscription_ids: &[],
        };
        let mut buf = BytesMut::new();
        out.encode(&mut buf);
        let topic_end = 2 + 2 + m.topic.len();
        assert!(peek_publish(&buf[..topic_end]).is_none());
        assert_eq!(peek_publish(&buf[..topic_end + 2]).unwrap().pkid, 9);
        assert!(peek_publish(&[0x20, 0x02, 0, 0]).is_none(), "not a PUBLISH");
    }
}
