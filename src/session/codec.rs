//! MQTT framing over the TLS stream, with rumqttd's codecs behind guards.
//!
//! 3.1.1 and 5 share the TLS port: the protocol level byte of CONNECT picks
//! the codec. rumqttd's codecs have known panics (`rumqttd-embedding.md`):
//! `V5::read_mut` on client-sent CONNACK/UNSUBACK, `V4::write` on packets
//! with properties. Both are avoided up front, and every codec call runs
//! under `catch_unwind` so that an unknown one ends one connection, not the
//! broker.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    DisconnectProperties, DisconnectReasonCode, Error as ProtocolError, Packet, Protocol,
};

/// The MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes from a client could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("the first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported MQTT protocol level {0} (certmq speaks 3.1.1 and 5)")]
    UnsupportedLevel(u8),
    #[error("packet of {0} bytes exceeds the maximum packet size")]
    TooLarge(usize),
    #[error("a client may not send {0}")]
    ServerOnly(&'static str),
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("the MQTT codec failed on this packet ({0})")]
    CodecPanic(&'static str),
}

/// Looks at the first bytes of a connection: `Ok(None)` until enough of the
/// CONNECT packet has arrived to read its protocol level.
pub fn detect_version(buf: &[u8]) -> Result<Option<Version>, CodecError> {
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != 1 {
        return Err(CodecError::NotConnect);
    }
    // Skip the remaining-length varint (1 to 4 bytes).
    let mut pos = 1;
    loop {
        let Some(byte) = buf.get(pos) else {
            return Ok(None);
        };
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Err(CodecError::Malformed(
                "remaining length longer than 4 bytes".into(),
            ));
        }
    }
    let (Some(hi), Some(lo)) = (buf.get(pos), buf.get(pos + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let level_pos = pos + 2 + name_len;
    let Some(level) = buf.get(level_pos) else {
        return if name_len > 6 {
            Err(CodecError::Malformed("protocol name is not MQTT".into()))
        } else {
            Ok(None)
        };
    };
    match (&buf[pos + 2..level_pos], *level) {
        (b"MQTT", 4) => Ok(Some(Version::V4)),
        (b"MQTT", 5) => Ok(Some(Version::V5)),
        (b"MQTT" | b"MQIsdp", other) => Err(CodecError::UnsupportedLevel(other)),
        _ => Err(CodecError::Malformed("protocol name is not MQTT".into())),
    }
}

/// Frames packets for one connection.
pub struct Codec {
    version: Version,
    max_packet_size: usize,
}

impl Codec {
    pub fn new(version: Version, max_packet_size: usize) -> Self {
        Codec {
            version,
            max_packet_size,
        }
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Takes the next whole packet out of `buf`, `Ok(None)` if more bytes
    /// are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let packet_type = buf[0] >> 4;
        match packet_type {
            2 => return Err(CodecError::ServerOnly("CONNACK")),
            9 => return Err(CodecError::ServerOnly("SUBACK")),
            11 => return Err(CodecError::ServerOnly("UNSUBACK")),
            13 => return Err(CodecError::ServerOnly("PINGRESP")),
            0 | 15 => {
                return Err(CodecError::Malformed(format!(
                    "packet type {packet_type} is not supported"
                )));
            }
            _ => {}
        }
        if let Some(packet) = self.short_disconnect(buf) {
            return Ok(Some(packet));
        }
        let max = self.max_packet_size;
        let result = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V4 => V4.read_mut(buf, max),
            Version::V5 => V5.read_mut(buf, max),
        }))
        .map_err(|_| CodecError::CodecPanic("decode"))?;
        match result {
            Ok(packet) => Ok(Some(packet)),
            Err(ProtocolError::InsufficientBytes(_)) => Ok(None),
            Err(ProtocolError::PayloadSizeLimitExceeded(n)) => Err(CodecError::TooLarge(n)),
            Err(e) => Err(CodecError::Malformed(e.to_string())),
        }
    }

    /// An MQTT 5 DISCONNECT of a reason code and no properties (`E0 01
    /// rc`, section 3.14.2.2.1: the property length may be left out):
    /// rumqttd's decoder waits for the property length forever. Read here.
    fn short_disconnect(&self, buf: &mut BytesMut) -> Option<Packet> {
        if self.version != Version::V5 || buf.len() < 3 || buf[0] != 0xE0 || buf[1] != 0x01 {
            return None;
        }
        let reason_code = match buf[2] {
            0x00 => DisconnectReasonCode::NormalDisconnection,
            0x04 => DisconnectReasonCode::DisconnectWithWillMessage,
            _ => DisconnectReasonCode::UnspecifiedError,
        };
        let _ = buf.split_to(3);
        Some(Packet::Disconnect(
            rumqttd::protocol::Disconnect { reason_code },
            None,
        ))
    }

    /// Appends `packet` to `out`. Properties are stripped for 3.1.1, which
    /// has none (and whose encoder panics on them).
    pub fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<(), CodecError> {
        let result = catch_unwind(AssertUnwindSafe(|| match self.version {
            Version::V4 => V4.write(strip_properties(packet), out),
            Version::V5 => V5.write(with_disconnect_properties(packet), out),
        }))
        .map_err(|_| CodecError::CodecPanic("encode"))?;
        result
            .map(|_| ())
            .map_err(|e| CodecError::Malformed(e.to_string()))
    }
}

/// rumqttd's 5 encoder mis-frames a DISCONNECT that carries a reason code:
/// without properties it writes `E0 01 <reason> 00` (remaining length 1,
/// two bytes follow), and with an empty property block it writes `E0 00`,
/// losing the reason. With a non-empty property block it is correct, so
/// certmq always sends a Reason String, which also tells the client why.
fn with_disconnect_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Disconnect(d, None)
            if d.reason_code != DisconnectReasonCode::NormalDisconnection =>
        {
            let props = DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(reason_text(d.reason_code)),
                user_properties: Vec::new(),
                server_reference: None,
            };
            Packet::Disconnect(d, Some(props))
        }
        other => other,
    }
}

fn reason_text(code: DisconnectReasonCode) -> String {
    match code {
        DisconnectReasonCode::AdministrativeAction => {
            "the certificate's access was removed by an administrator".into()
        }
        DisconnectReasonCode::ServerShuttingDown => "the broker is shutting down".into(),
        DisconnectReasonCode::SessionTakenOver => {
            "another connection took over this client id".into()
        }
        DisconnectReasonCode::KeepAliveTimeout => {
            "nothing received within 1.5 times the keep alive".into()
        }
        DisconnectReasonCode::MaximumConnectTime => {
            "the device certificate, or its CA's, has expired".into()
        }
        DisconnectReasonCode::UseAnotherServer => {
            "this node cannot vouch for certificates now; connect to another node".into()
        }
        other => format!("{other:?}"),
    }
}

fn strip_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Connect(c, _, will, _, login) => Packet::Connect(c, None, will, None, login),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::Subscribe(p, _) => Packet::Subscribe(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Unsubscribe(p, _) => Packet::Unsubscribe(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other @ (Packet::PingReq(_) | Packet::PingResp(_)) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_levels() {
        let v4 = [
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0, 60, 0, 0,
        ];
        assert_eq!(detect_version(&v4), Ok(Some(Version::V4)));
        let mut v5 = v4;
        v5[8] = 5;
        assert_eq!(detect_version(&v5), Ok(Some(Version::V5)));
        assert_eq!(detect_version(&v4[..5]), Ok(None));
        let mut v3 = v4;
        v3[8] = 3;
        assert_eq!(detect_version(&v3), Err(CodecError::UnsupportedLevel(3)));
        assert_eq!(detect_version(&[0x30, 0]), Err(CodecError::NotConnect));
        assert!(detect_version(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn server_only_packets_are_refused_before_decoding() {
        let codec = Codec::new(Version::V5, 1024);
        for (byte, name) in [(0x20u8, "CONNACK"), (0xb0, "UNSUBACK")] {
            let mut buf = BytesMut::from(&[byte, 0x03, 0x00, 0x00, 0x00][..]);
            assert_eq!(codec.decode(&mut buf), Err(CodecError::ServerOnly(name)));
        }
    }

    #[test]
    fn disconnect_with_a_reason_is_well_formed() {
        use rumqttd::protocol::Disconnect;
        let codec = Codec::new(Version::V5, 1024);
        let mut out = BytesMut::new();
        let d = Disconnect {
            reason_code: DisconnectReasonCode::AdministrativeAction,
        };
        codec.encode(Packet::Disconnect(d, None), &mut out).unwrap();
        assert_eq!(&out[..3], [0xe0, out.len() as u8 - 2, 0x98]);
        // The rest is the property block: its length, then a Reason String.
        assert_eq!(usize::from(out[3]), out.len() - 4);
        assert_eq!(out[4], 0x1f);
    }

    /// MQTT 5 section 3.14.2.2.1: a DISCONNECT whose remaining length is
    /// 1 has a reason code and no property length.
    #[test]
    fn a_disconnect_without_a_property_length_is_read() {
        let codec = Codec::new(Version::V5, 1024);
        for (rc, expected) in [
            (0x00, DisconnectReasonCode::NormalDisconnection),
            (0x04, DisconnectReasonCode::DisconnectWithWillMessage),
            (0x80, DisconnectReasonCode::UnspecifiedError),
        ] {
            let mut buf = BytesMut::from(&[0xE0, 0x01, rc, 0xC0, 0x00][..]);
            match codec.decode(&mut buf) {
                Ok(Some(Packet::Disconnect(d, None))) => assert_eq!(d.reason_code, expected),
                other => panic!("{other:?}"),
            }
            assert_eq!(&buf[..], [0xC0, 0x00], "the next packet is left");
        }
    }

    #[test]
    fn oversized_packets_are_refused() {
        let codec = Codec::new(Version::V4, 64);
        let mut buf = BytesMut::from(&[0x30, 0xff, 0x01][..]);
        assert_eq!(codec.decode(&mut buf), Err(CodecError::TooLarge(255)));
    }
}
