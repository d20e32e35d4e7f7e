//! Just enough MQTT, written by hand, for a load generator: CONNECT,
//! SUBSCRIBE, PUBLISH, PUBACK, DISCONNECT, and reading packets back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

pub type Stream = TlsStream<TcpStream>;

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT, clean session/start, the given keepalive.
pub fn connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(level);
    body.push(0x02);
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    string(client_id.as_bytes(), &mut body);
    packet(0x10, &body)
}

/// CONNECT for a session that outlives the connection when `expiry_secs`
/// is not 0 (MQTT 5: clean start 0 and that session expiry interval;
/// 3.1.1: clean session 0).
pub fn connect_session(level: u8, client_id: &str, keep_alive: u16, expiry_secs: u32) -> Vec<u8> {
    if expiry_secs == 0 {
        return connect(level, client_id, keep_alive);
    }
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(level);
    body.push(0x00);
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(5);
        body.push(0x11);
        body.extend(expiry_secs.to_be_bytes());
    }
    string(client_id.as_bytes(), &mut body);
    packet(0x10, &body)
}

pub fn subscribe(level: u8, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    if level == 5 {
        body.push(0);
    }
    string(filter.as_bytes(), &mut body);
    body.push(qos);
    packet(0x82, &body)
}

pub fn publish(level: u8, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 8);
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

pub fn puback(pkid: u16) -> Vec<u8> {
    let p = pkid.to_be_bytes();
    vec![0x40, 0x02, p[0], p[1]]
}

pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// The source address of connection `i`: spread over 127.0.0.1-250, so that
/// tens of thousands of connections do not run out of ephemeral ports.
pub fn source(i: usize, spread: bool) -> Option<SocketAddr> {
    spread.then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 250) as u8)), 0))
}

/// TCP (TCP_NODELAY) and TLS.
pub async fn tls_connect(
    target: SocketAddr,
    from: Option<SocketAddr>,
    tls: Arc<ClientConfig>,
) -> Result<Stream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(from) = from {
        socket.bind(from)?;
    }
    let tcp = socket.connect(target).await.context("TCP connect")?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from("localhost")?;
    connector.connect(name, tcp).await.context("TLS handshake")
}

/// Reads one packet: (first byte, body).
pub async fn read_packet<R: tokio::io::AsyncRead + Unpin>(stream: &mut R) -> Result<(u8, Vec<u8>)> {
    let first = stream.read_u8().await?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let byte = stream.read_u8().await?;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            bail!("bad remaining length");
        }
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok((first, body))
}

/// Sends CONNECT and waits for a successful CONNACK.
pub async fn mqtt_connect(
    stream: &mut Stream,
    level: u8,
    client_id: &str,
    keep_alive: u16,
) -> Result<()> {
    stream
        .write_all(&connect(level, client_id, keep_alive))
        .await?;
    stream.flush().await?;
    let (first, body) = read_packet(stream).await.context("no CONNACK")?;
    if first != 0x20 || body.len() < 2 || body[1] != 0 {
        bail!("CONNACK refused: {first:#04x} {body:02x?}");
    }
    Ok(())
}
