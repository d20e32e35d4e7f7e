//! A bare MQTT-over-TLS client for byte-level cases (keepalive silence,
//! unsupported protocol levels) that a full client library will not produce.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub type Stream = TlsStream<TcpStream>;

pub async fn tls_connect(port: u16, tls: Arc<rustls::ClientConfig>) -> std::io::Result<Stream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A CONNECT packet (clean session) with the given protocol name and level.
pub fn connect_packet(name: &[u8], level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((name.len() as u16).to_be_bytes());
    body.extend(name);
    body.push(level);
    body.push(0x02);
    body.extend(keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// An MQTT 5 CONNECT with clean start 0 and a session expiry interval of
/// `expiry_secs` (MQTT 5 section 3.1.2.11.2: without one, the session ends
/// with the connection).
pub fn persistent_connect_packet(client_id: &str, keep_alive: u16, expiry_secs: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(4u16.to_be_bytes());
    body.extend(b"MQTT");
    body.push(5);
    body.push(0x00);
    body.extend(keep_alive.to_be_bytes());
    body.push(5);
    body.push(0x11);
    body.extend(expiry_secs.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// Sends `packet`, returns the first `n` bytes the server answers with.
pub async fn exchange(stream: &mut Stream, packet: &[u8], n: usize) -> std::io::Result<Vec<u8>> {
    stream.write_all(packet).await?;
    stream.flush().await?;
    let mut answer = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(answer)
}

/// Waits until the server closes the connection; returns what it sent
/// before closing.
pub async fn until_closed(stream: &mut Stream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|_| received)
}

/// Waits until the server closes `tcp`; false if it stays open `within`.
pub async fn closed_by_server(mut tcp: TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
