//! The PROXY protocol (HAProxy's, versions 1 and 2): behind a TCP load
//! balancer every connection comes from the balancer's address, and the
//! header it sends first says whose connection it really is.
//!
//! With `mqtt.proxy_protocol` on, a connection must start with a complete,
//! valid header (the specification forbids guessing whether one is there);
//! the device's address from it is what the per-address limit counts and
//! what logs show. Reading never goes past the header: the TLS ClientHello
//! that follows stays in the socket for the handshake. The parsing itself
//! is the `ppp` crate's.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first 12 bytes of a version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, CRLF included (the specification's).
const V1_MAX: usize = 107;

/// The longest version 2 header certmq reads: the fixed 16 bytes, the
/// addresses (216 for UNIX sockets) and room for the TLVs balancers add
/// (AWS NLB's endpoint id, HAProxy's unique id and TLS details).
const V2_MAX: usize = 16 + 216 + 1024;

/// Why a connection's PROXY header was refused. Messages say what the
/// client sent and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "the connection did not start with a PROXY protocol header (mqtt.proxy_protocol is on: \
         only a load balancer sending PROXY v1 or v2 may connect; turn it off for direct clients)"
    )]
    Missing,
    #[error("the PROXY v1 header has no CRLF within {V1_MAX} bytes")]
    V1TooLong,
    #[error("the PROXY v2 header says {0} bytes follow, more than the {V2_MAX} certmq accepts")]
    V2TooLong(usize),
    #[error("invalid PROXY v1 header: {0}")]
    V1(String),
    #[error("invalid PROXY v2 header: {0}")]
    V2(String),
    #[error("the connection closed or failed inside the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `stream`: the device's address,
/// or `None` when the balancer speaks for itself (v2 LOCAL, e.g. its
/// health checks; v1 UNKNOWN; or an address family without one).
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, ProxyError> {
    // Shorter than either version's shortest header (v1: 15, v2: 16), so
    // this never reads into the TLS handshake.
    let mut start = [0u8; 12];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if 16 + len > V2_MAX {
            return Err(ProxyError::V2TooLong(len));
        }
        let mut header = Vec::with_capacity(16 + len);
        header.extend_from_slice(&start);
        header.extend_from_slice(&fixed);
        header.resize(16 + len, 0);
        stream.read_exact(&mut header[16..]).await?;
        return v2_source(&header);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    // Byte by byte up to CRLF: nothing after the line may be consumed.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        line.push(stream.read_u8().await?);
    }
    v1_source(&line)
}

fn v2_source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header};
    let parsed = Header::try_from(header).map_err(|e| ProxyError::V2(e.to_string()))?;
    if parsed.command == Command::Local {
        return Ok(None);
    }
    Ok(match parsed.addresses {
        Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => None,
    })
}

fn v1_source(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    use ppp::v1::{Addresses, Header};
    // The header is US-ASCII; anything else is refused here, before the
    // parser (which slices the text at byte offsets) sees it.
    if !line.is_ascii() {
        return Err(ProxyError::V1("not US-ASCII".into()));
    }
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::V1("not US-ASCII".into()))?;
    let parsed = Header::try_from(text).map_err(|e| ProxyError::V1(e.to_string()))?;
    Ok(match parsed.addresses {
        Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unknown => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut reader = bytes;
        let result = read_header(&mut reader).await;
        (result, reader.to_vec())
    }

    fn v2(src: &str, dst: &str, command: ppp::v2::Command) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | command,
            ppp::v2::Protocol::Stream,
            (src, dst),
        )
        .write_tlv(0x05, b"unique-id")
        .unwrap()
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn both_versions_give_the_source_and_leave_what_follows() {
        let mut bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 4711 8883\r\n".to_vec();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (source, rest) = read(&bytes).await;
        assert_eq!(source.unwrap(), Some("203.0.113.7:4711".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01", "the ClientHello is left alone");

        let mut bytes = v2(
            "[2001:db8::7]:4711",
            "[2001:db8::1]:8883",
            ppp::v2::Command::Proxy,
        );
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (source, rest) = read(&bytes).await;
        assert_eq!(source.unwrap(), Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");

        let local = v2("10.0.0.1:1", "10.0.0.2:2", ppp::v2::Command::Local);
        assert_eq!(
            read(&local).await.0.unwrap(),
            None,
            "LOCAL: the balancer itself"
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(read(unknown).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn what_is_not_a_valid_header_is_refused_with_the_reason() {
        let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00\x00\x00";
        assert!(matches!(read(hello).await.0, Err(ProxyError::Missing)));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(matches!(
            read(long.as_bytes()).await.0,
            Err(ProxyError::V1TooLong)
        ));
        let bad = b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 8883\r\n";
        assert!(matches!(read(bad).await.0, Err(ProxyError::V1(_))));
        // A CR followed by a multi-byte character made the parser slice
        // inside it (a panic): refused as not ASCII.
        let split = "PROXY \r\u{e9}abc\r\n".as_bytes();
        assert!(matches!(read(split).await.0, Err(ProxyError::V1(_))));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            read(&huge).await.0,
            Err(ProxyError::V2TooLong(65535))
        ));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(
            matches!(read(&short).await.0, Err(ProxyError::V2(_))),
            "addresses cut short"
        );
        let mut version = V2_SIGNATURE.to_vec();
        version.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
        version.extend_from_slice(&[0; 12]);
        assert!(
            matches!(read(&version).await.0, Err(ProxyError::V2(_))),
            "version 3"
        );
        let cut = &v2("10.0.0.1:1", "10.0.0.2:2", ppp::v2::Command::Proxy)[..20];
        assert!(
            matches!(read(cut).await.0, Err(ProxyError::Io(_))),
            "closed inside"
        );
        for message in [
            ProxyError::Missing.to_string(),
            ProxyError::V2TooLong(65535).to_string(),
        ] {
            assert!(message.contains("PROXY"), "{message}");
        }
    }
}
