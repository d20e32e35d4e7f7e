//! The CONNECT step of a session: what the client asked for, and whether
//! certmq accepts it before the session is attached to the router.

use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{
    ConnAck, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties, Packet,
};

use super::codec::Version;
use crate::router::message::{Message, Passthrough, QoS};

/// A will: the message, and how long after the connection ends it waits
/// (MQTT 5 will delay interval; 0 for 3.1.1).
#[derive(Debug, Clone)]
pub struct Will {
    pub message: Message,
    /// Its message expiry interval, counted from its publication.
    pub expiry_secs: Option<u32>,
    pub delay: Duration,
}

/// A CONNECT, reduced to what certmq uses.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: String,
    /// Set when certmq chose the client id (the client sent an empty one).
    pub assigned_client_id: bool,
    /// Clean session (3.1.1) or clean start (5).
    pub clean_session: bool,
    pub keep_alive_secs: u16,
    /// The client's topic alias maximum (what certmq may use towards it).
    pub topic_alias_max: u16,
    /// The client's receive maximum (65,535 when it gave none).
    pub receive_maximum: u16,
    /// The client's maximum packet size, if it gave one.
    pub max_packet_size: Option<u32>,
    /// The session expiry interval asked for (5); `None` for 3.1.1.
    pub session_expiry_secs: Option<u32>,
    pub will: Option<Will>,
}

/// Why a CONNECT is refused with a CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRefusal {
    ClientIdNotValid(&'static str),
    WillTopicInvalid,
}

impl ConnectRefusal {
    pub fn return_code(&self) -> ConnectReturnCode {
        match self {
            ConnectRefusal::ClientIdNotValid(_) => ConnectReturnCode::ClientIdentifierNotValid,
            ConnectRefusal::WillTopicInvalid => ConnectReturnCode::TopicNameInvalid,
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectRefusal::ClientIdNotValid(why) => write!(f, "client id refused: {why}"),
            ConnectRefusal::WillTopicInvalid => write!(
                f,
                "the will topic is not a valid topic name (UTF-8, not empty, no wildcards)"
            ),
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
    let props: ConnectProperties = props.unwrap_or(ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    });
    let will = match will {
        Some(w) => Some(will_of(w, will_props)?),
        None => None,
    };
    Ok(ConnectRequest {
        client_id,
        assigned_client_id: assigned,
        // A generated id is known to this connection alone: a session kept
        // under it would be state nobody can come back for. It is clean.
        clean_session: connect.clean_session || assigned,
        keep_alive_secs: connect.keep_alive,
        topic_alias_max: props.topic_alias_max.unwrap_or(0),
        receive_maximum: props.receive_maximum.filter(|n| *n > 0).unwrap_or(u16::MAX),
        max_packet_size: props.max_packet_size.filter(|n| *n > 0),
        session_expiry_secs: match version {
            Version::V4 => None,
            Version::V5 => Some(if assigned {
                0
            } else {
                props.session_expiry_interval.unwrap_or(0)
            }),
        },
        will,
    })
}

/// The will certmq publishes on the client's behalf when the connection
/// ends without a normal DISCONNECT.
fn will_of(will: LastWill, props: Option<LastWillProperties>) -> Result<Will, ConnectRefusal> {
    let topic = std::str::from_utf8(&will.topic).map_err(|_| ConnectRefusal::WillTopicInvalid)?;
    if topic.is_empty() || check_publish_topic(&will.topic).is_err() {
        return Err(ConnectRefusal::WillTopicInvalid);
    }
    let props = props.unwrap_or(LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    });
    Ok(Will {
        message: Message {
            topic: topic.into(),
            payload: will.message,
            qos: QoS::from_u8(will.qos as u8).unwrap_or(QoS::AtMostOnce),
            retain: will.retain,
            properties: Passthrough {
                payload_format_indicator: props.payload_format_indicator,
                content_type: props.content_type,
                response_topic: props.response_topic,
                correlation_data: props.correlation_data,
                user_properties: props.user_properties,
            },
            expires_at: None,
            origin: None,
        },
        expiry_secs: props.message_expiry_interval,
        delay: Duration::from_secs(u64::from(props.delay_interval.unwrap_or(0))),
    })
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
