//! Behind a TCP load balancer: `mqtt.proxy_protocol` (HAProxy's PROXY
//! protocol, v1 and v2, `doc/proxy-protocol.txt`). The device's address in
//! the header is what the per-address limit counts; a connection without a
//! valid header is refused.

use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::pki::client_config;
use crate::support::raw::{self, closed_by_server};
use crate::support::{self, Ca, Device, TestBroker, metric, scrape};

fn v1(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    format!(
        "PROXY TCP4 {} 192.0.2.1 {} 8883\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

fn v2(source: &str, command: ppp::v2::Command) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let destination: SocketAddr = "[2001:db8::1]:8883".parse().unwrap();
    let destination = if source.is_ipv4() {
        "192.0.2.1:8883".parse().unwrap()
    } else {
        destination
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | command,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// A TCP connection that sends `header` (if any) and then does TLS and
/// MQTT CONNECT: whether CONNACK accepted it.
async fn connect_via(tb: &TestBroker, device: &Device, header: Option<&[u8]>) -> bool {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", tb.port())).await else {
        return false;
    };
    if let Some(header) = header {
        if tcp.write_all(header).await.is_err() {
            return false;
        }
    }
    let connector = tokio_rustls::TlsConnector::from(client_config(&tb.server_ca, Some(device)));
    let handshake = connector.connect(ServerName::try_from("localhost").unwrap(), tcp);
    let Ok(Ok(mut tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await else {
        return false;
    };
    let connect = raw::connect_packet(b"MQTT", 4, &format!("proxied-{}", device.name), 30);
    matches!(raw::exchange(&mut tls, &connect, 4).await, Ok(ack) if ack == [0x20, 0x02, 0x00, 0x00])
}

async fn refused(tb: &TestBroker, reason: &str) -> f64 {
    metric(
        &scrape(tb).await,
        &format!(r#"certmq_handshakes_refused_total{{reason="{reason}"}}"#),
    )
}

/// Sends only `header` and waits until the broker has closed the
/// connection (it judged the header, then found no TLS): the address in it
/// has used its budget by then.
async fn spend(tb: &TestBroker, header: &[u8]) {
    let mut tcp = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(
        closed_by_server(tcp, Duration::from_secs(5)).await,
        "the broker closes a connection that ends after its header"
    );
}

#[tokio::test]
async fn the_limit_counts_the_address_in_the_header_of_either_version() {
    let ca = Ca::new("proxy CA");
    let tb = support::start_with(&[&ca], |s| {
        s.mqtt.proxy_protocol = true;
        s.mqtt.connections_per_second_per_ip = 1;
    })
    .await;
    let devices: Vec<Device> = (0..5).map(|i| ca.device(&format!("lb-{i}"))).collect();
    // Every connection comes from 127.0.0.1 (the "balancer"); the limit of
    // 1/s per address applies to the devices' addresses in the headers.
    spend(&tb, &v1("203.0.113.7:4711")).await;
    assert!(
        !connect_via(
            &tb,
            &devices[0],
            Some(&v2("203.0.113.7:5000", ppp::v2::Command::Proxy))
        )
        .await,
        "the same device address again within the second: over its limit"
    );
    assert_eq!(refused(&tb, "rate_limited").await, 1.0);
    assert!(
        connect_via(&tb, &devices[1], Some(&v1("203.0.113.8:4711"))).await,
        "another device's address (v1): its own budget"
    );
    assert!(
        connect_via(
            &tb,
            &devices[2],
            Some(&v2("203.0.113.9:4711", ppp::v2::Command::Proxy))
        )
        .await,
        "another (v2 TCP4)"
    );
    assert!(
        connect_via(
            &tb,
            &devices[3],
            Some(&v2("[2001:db8::7]:4711", ppp::v2::Command::Proxy))
        )
        .await,
        "IPv6 (PROXY v2 TCP6)"
    );
    assert_eq!(refused(&tb, "rate_limited").await, 1.0);
    // LOCAL (the balancer's own health check) and UNKNOWN keep the
    // balancer's own address, 127.0.0.1: one budget for both.
    spend(&tb, &v2("198.51.100.1:1", ppp::v2::Command::Local)).await;
    assert!(
        !connect_via(&tb, &devices[4], Some(b"PROXY UNKNOWN\r\n")).await,
        "UNKNOWN is the balancer's address too, which LOCAL just used"
    );
    assert_eq!(refused(&tb, "rate_limited").await, 2.0);
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_refused_and_counted() {
    let ca = Ca::new("proxy CA");
    let device = ca.device("lb-device");
    let tb = support::start_with(&[&ca], |s| {
        s.mqtt.proxy_protocol = true;
        s.mqtt.first_byte_timeout_ms = 300;
    })
    .await;
    // A direct TLS client: its ClientHello is not a PROXY header.
    assert!(!connect_via(&tb, &device, None).await);
    assert_eq!(refused(&tb, "proxy_header").await, 1.0);
    // A malformed v1 line, a v2 header with a bad version, a v1 line that
    // never ends.
    let mut bad_version = v2("203.0.113.7:4711", ppp::v2::Command::Proxy);
    bad_version[12] = 0x31;
    let never_ends = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    for header in [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 8883\r\n".to_vec(),
        bad_version,
        never_ends,
    ] {
        assert!(!connect_via(&tb, &device, Some(&header)).await);
    }
    assert_eq!(refused(&tb, "proxy_header").await, 4.0);
    // A header cut short, then silence: closed at mqtt.first_byte_timeout_ms.
    let mut tcp = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    let header = v2("203.0.113.7:4711", ppp::v2::Command::Proxy);
    tcp.write_all(&header[..14]).await.unwrap();
    assert!(closed_by_server(tcp, Duration::from_secs(5)).await);
    assert_eq!(refused(&tb, "proxy_header").await, 5.0);
    // The broker serves proper ones all along, a health check's too.
    assert!(connect_via(&tb, &device, Some(&v1("203.0.113.9:1"))).await);
    assert!(
        connect_via(
            &tb,
            &device,
            Some(&v2("10.0.0.1:1", ppp::v2::Command::Local))
        )
        .await
    );
}

#[tokio::test]
async fn without_the_option_a_header_is_not_accepted_as_tls() {
    let ca = Ca::new("proxy CA");
    let device = ca.device("direct-device");
    let tb = support::start(&[&ca]).await;
    assert!(
        connect_via(&tb, &device, None).await,
        "direct clients, as ever"
    );
    assert!(
        !connect_via(&tb, &device, Some(&v1("203.0.113.7:4711"))).await,
        "a PROXY header where TLS is expected fails the handshake"
    );
}
