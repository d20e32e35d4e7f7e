//! A resumed TLS session skips the verifier; the post-handshake re-check
//! must still refuse an inactivated certificate.

use std::sync::Arc;
use std::time::Duration;

use rustls::HandshakeKind;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::pki::client_config_versions;
use crate::support::{self, Ca};

const CONNECT: [u8; 16] = [
    0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x02, b'r', b'1',
];

/// Connects, sends CONNECT, returns (handshake kind, CONNACK bytes or the
/// read error).
async fn attempt(
    port: u16,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> (Option<HandshakeKind>, Result<[u8; 4], String>) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let kind = stream.get_ref().1.handshake_kind();
    stream.write_all(&CONNECT).await.unwrap();
    let mut connack = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack)).await;
    let result = match read {
        Ok(Ok(_)) => Ok(connack),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    // The session ticket came with the CONNACK (listener::socket), so it is
    // stored by now: the next attempt with this configuration resumes.
    (kind, result)
}

fn tls13_client(tb: &support::TestBroker, device: &support::Device) -> Arc<rustls::ClientConfig> {
    client_config_versions(&tb.server_ca, Some(device), &[&rustls::version::TLS13])
}

/// RFC 8446 section 4.6.1: the server may send NewSessionTicket at any
/// time after the client's Finished. certmq holds it back and sends it in
/// the CONNACK's write: nothing reaches the client between its Finished
/// and the CONNACK, and the ticket still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_ticket_is_sent_with_the_connack() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("ticket");
    let tls = tls13_client(&tb, &device);
    let tcp = TcpStream::connect(("127.0.0.1", tb.port())).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    // An absence, so a window: before CONNECT the server sends nothing.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        stream.get_ref().0.peek(&mut byte),
    )
    .await;
    assert!(early.is_err(), "the server wrote before CONNECT: {early:?}");
    stream.write_all(&CONNECT).await.unwrap();
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    drop(stream);
    let (kind, connack) = attempt(tb.port(), tls).await;
    assert_eq!(kind, Some(HandshakeKind::Resumed), "the held ticket works");
    assert_eq!(connack.unwrap(), [0x20, 0x02, 0x00, 0x00]);
}

/// With session tickets off (`tls.session_cache_size = 0`) nothing is held:
/// the CONNACK that follows a TLS 1.3 CertificateVerify goes out at once,
/// and TLS 1.2 is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_session_tickets_the_connack_is_not_held() {
    let ca = Ca::new("fleet CA");
    let tb = support::start_with(&[&ca], |s| s.tls.session_cache_size = 0).await;
    let device = ca.device("no-tickets");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let tls = client_config_versions(&tb.server_ca, Some(&device), &[version]);
        for _ in 0..2 {
            let (kind, connack) = attempt(tb.port(), tls.clone()).await;
            assert_eq!(
                kind,
                Some(HandshakeKind::Full),
                "{version:?}: no resumption"
            );
            assert_eq!(connack.unwrap(), [0x20, 0x02, 0x00, 0x00], "{version:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_are_rechecked() {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("resumer");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client config = one client session cache.
        let tls = client_config_versions(&tb.server_ca, Some(&device), &[version]);
        let (kind, connack) = attempt(tb.port(), tls.clone()).await;
        assert_eq!(kind, Some(HandshakeKind::Full));
        assert_eq!(connack.unwrap(), [0x20, 0x02, 0x00, 0x00]);
        let (kind, connack) = attempt(tb.port(), tls.clone()).await;
        assert_eq!(
            kind,
            Some(HandshakeKind::Resumed),
            "{version:?}: resumption is on"
        );
        assert_eq!(connack.unwrap(), [0x20, 0x02, 0x00, 0x00]);

        tb.inactivate(&device).await;
        let refused_before = tb.broker.metrics().resumptions_refused();
        let (kind, connack) = attempt(tb.port(), tls.clone()).await;
        assert_eq!(kind, Some(HandshakeKind::Resumed), "{version:?}");
        assert!(
            connack.is_err(),
            "{version:?}: a resumed session of an inactive device got CONNACK"
        );
        assert_eq!(
            tb.broker.metrics().resumptions_refused(),
            refused_before + 1
        );
        tb.activate(&device).await;
    }
}
