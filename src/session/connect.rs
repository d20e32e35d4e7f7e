//! The CONNECT step of a session: what the client asked for, and whether
//! certmq accepts it before a router link is made.

use bytes::Bytes;
use rumqttd::protocol::{
    ConnAck, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties, Packet,
    PublishProperties,
};

use super::codec::Version;
use crate::router;

/// A CONNECT, reduced to what certmq uses.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: String,
    /// Set when certmq chose the client id (the client sent an empty one).
    pub assigned_client_id: bool,
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    pub topic_alias_max: u16,
    pub will: Option<Packet>,
}

/// Why a CONNECT is refused with a CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    ClientIdNotValid(&'static str),
}

impl ConnectRefusal {
    pub fn return_code(&self) -> ConnectReturnCode {
        match self {
            ConnectRefusal::ClientIdNotValid(_) => ConnectReturnCode::ClientIdentifierNotValid,
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectRefusal::ClientIdNotValid(why) => write!(f, "client id refused: {why}"),
        }
    }
}

/// Characters the router reserves; a client id containing one is refused.
const RESERVED: [char; 4] = ['+', '#', '/', '$'];

/// Reads the parts of a CONNECT packet certmq acts on.
pub fn accept_connect(packet: Packet, version: Version) -> Result<ConnectRequest, ConnectRefusal> {
    let Packet::Connect(connect, props, will, will_props, _login) = packet else {
        // The caller only passes CONNECT packets.
        return Err(ConnectRefusal::ClientIdNotValid("not a CONNECT"));
    };
    let mut client_id = connect.client_id;
    let mut assigned = false;
    if client_id.is_empty() {
        // 3.1.1 allows an empty id only with a clean session; 5 always
        // (the server assigns one and says which in CONNACK).
        if version == Version::V4 && !connect.clean_session {
            return Err(ConnectRefusal::ClientIdNotValid(
                "an empty client id needs a clean session",
            ));
        }
        client_id = format!("certmq-{}", uuid::Uuid::new_v4().simple());
        assigned = true;
    }
    if client_id.contains(RESERVED) {
        return Err(ConnectRefusal::ClientIdNotValid(
            "client ids may not contain '+', '#', '/' or '$'",
        ));
    }
    let topic_alias_max = props
        .as_ref()
        .and_then(|p: &ConnectProperties| p.topic_alias_max)
        .unwrap_or(0);
    Ok(ConnectRequest {
        client_id,
        assigned_client_id: assigned,
        // A generated id is known to this connection alone: a session kept
        // under it would be state nobody can come back for. It is clean.
        clean_session: connect.clean_session || assigned,
        keep_alive_secs: connect.keep_alive,
        topic_alias_max,
        will: will.map(|w| will_packet(w, will_props)),
    })
}

/// The will as the PUBLISH certmq sends on the client's behalf when the
/// connection ends without a normal DISCONNECT.
fn will_packet(will: LastWill, props: Option<LastWillProperties>) -> Packet {
    let qos = will.qos as u8;
    let pkid = u16::from(qos > 0);
    let publish = router::publish(&will.topic, &will.message, qos, will.retain, pkid);
    let props = props.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        content_type: p.content_type,
        ..Default::default()
    });
    Packet::Publish(publish, props)
}

/// A refusing CONNACK.
pub fn refusal_connack(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

/// The CONNACK of MQTT 3.1 (level 3), which certmq does not speak: return
/// code 1, "unacceptable protocol version". Written raw: no codec has it.
pub const UNSUPPORTED_VERSION_CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// What is wrong with a PUBLISH topic, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicProblem {
    /// Not UTF-8: a malformed packet.
    NotUtf8,
    /// Wildcards or NUL: a well-formed name no one may publish to.
    Invalid,
}

/// Checks a PUBLISH topic: valid UTF-8, no wildcards, no NUL.
pub fn check_publish_topic(topic: &Bytes) -> Result<(), TopicProblem> {
    match std::str::from_utf8(topic) {
        Ok(t) if t.contains(['+', '#', '\0']) => Err(TopicProblem::Invalid),
        Ok(_) => Ok(()),
        Err(_) => Err(TopicProblem::NotUtf8),
    }
}
