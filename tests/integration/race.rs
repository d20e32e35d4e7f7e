//! The guarantee under contention: "device connecting" against
//! "InactivateDeviceCertificate", many rounds. After every success answer,
//! no session of that device may be alive and no later connect may succeed.
//!
//! To hit the dangerous window (the verifier has said yes, the connection is
//! not yet a session) often, the clients here pace their TLS records: each
//! record goes out 10 ms after the previous one, as over a slow network. In
//! TLS 1.2 the certificate travels in an earlier record than the client's
//! Finished; in TLS 1.3 the clients use small records (max fragment 128) so
//! that it does too. Either way the server has verified the certificate tens
//! of milliseconds before the handshake completes. The broker's counters
//! show how often a connection was refused *after* a successful
//! verification: the proof that the window was exercised.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::support::mqtt::{Version, connect};
use crate::support::{self, Ca, Device, TestBroker};

const CLIENTS_PER_ROUND: usize = 6;
const RECORD_GAP: Duration = Duration::from_millis(10);
/// How long after the answer a client may take to see its socket close.
const NOTICE_CLOSE: Duration = Duration::from_secs(2);

/// A socket that sends at most one TLS record per write, and waits
/// `RECORD_GAP` between records.
struct Paced {
    inner: TcpStream,
    gap: Option<Pin<Box<Sleep>>>,
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(gap) = self.gap.as_mut() {
            ready!(gap.as_mut().poll(cx));
            self.gap = None;
        }
        let record = if buf.len() >= 5 {
            (5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))).min(buf.len())
        } else {
            buf.len()
        };
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..record]))?;
        if written == record {
            self.gap = Some(Box::pin(tokio::time::sleep(RECORD_GAP)));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// What one connecting client saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    /// It received CONNACK 0.
    pub connacked: bool,
    /// Its connection was still open when the round ended (`NOTICE_CLOSE`
    /// after the revocation had answered).
    pub open_at_end: bool,
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

pub(crate) async fn paced_client(
    port: u16,
    tls: Arc<ClientConfig>,
    client_id: String,
    round_over: CancellationToken,
) -> Outcome {
    let mut outcome = Outcome::default();
    let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
        return outcome;
    };
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from("localhost").unwrap();
    let Ok(mut stream) = connector
        .connect(
            name,
            Paced {
                inner: tcp,
                gap: None,
            },
        )
        .await
    else {
        return outcome;
    };
    if stream.write_all(&connect_packet(&client_id)).await.is_err() || stream.flush().await.is_err()
    {
        return outcome;
    }
    let mut connack = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut connack)).await {
        Ok(Ok(_)) if connack == [0x20, 0x02, 0x00, 0x00] => outcome.connacked = true,
        _ => return outcome,
    }
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            _ = round_over.cancelled() => {
                outcome.open_at_end = true;
                return outcome;
            }
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return outcome,
                Ok(_) => continue,
            },
        }
    }
}

/// A client configuration for paced clients: no resumption (every
/// connection runs the verifier, so a refusal after the handshake can only
/// come from the window under test); for TLS 1.3, small records and a small
/// ClientHello (X25519 only).
pub(crate) fn paced_config(
    tb: &TestBroker,
    device: &Device,
    version: &'static SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut provider = certmq::tls::provider().as_ref().clone();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(tb.server_ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(device.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    if version == &TLS13 {
        config.max_fragment_size = Some(128);
    }
    Arc::new(config)
}

/// An admin call that removes a device's access, and the call that gives
/// it back.
#[derive(Debug, Clone, Copy)]
enum Revocation {
    InactivateDevice,
    InactivateCa,
    DeleteCa,
}

impl Revocation {
    async fn revoke(self, tb: &TestBroker, ca: &Ca, device: &Device) {
        let instance = tb.instance();
        let sn = ca.sn.to_string();
        let (action, params) = match self {
            Revocation::InactivateDevice => return tb.inactivate(device).await,
            Revocation::InactivateCa => (
                "InactivateCaCertificate",
                [("MqttInstanceId", instance.as_str()), ("Sn", sn.as_str())],
            ),
            Revocation::DeleteCa => (
                "DeleteCaCertificate",
                [("MqttInstanceId", instance.as_str()), ("Sn", sn.as_str())],
            ),
        };
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (status, body) = tb.client.call(action, &params).await.unwrap();
        assert_eq!(status, 200, "{action}: {body}");
    }

    async fn restore(self, tb: &TestBroker, ca: &Ca, device: &Device) {
        match self {
            Revocation::InactivateDevice => tb.activate(device).await,
            Revocation::InactivateCa => tb
                .broker
                .registry()
                .set_ca_status(&ca.sn, certmq::CertStatus::Active)
                .await
                .unwrap(),
            Revocation::DeleteCa => {
                if tb.broker.registry().ca(&ca.sn).is_none() {
                    let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
                    let cert =
                        certmq::registry::CaCert::parse(der, rustls_pki_types::UnixTime::now())
                            .unwrap();
                    tb.broker
                        .registry()
                        .register_ca(certmq::registry::CaRegistration::declared(cert))
                        .await
                        .unwrap();
                }
            }
        }
    }
}

async fn contest(revocation: Revocation, rounds: usize) {
    let ca = Ca::new("fleet CA");
    let tb = support::start(&[&ca]).await;
    let device = ca.device("contested");
    let configs = [
        paced_config(&tb, &device, &TLS12),
        paced_config(&tb, &device, &TLS13),
    ];
    // Register the device (so it can be inactivated) with a first connect.
    connect(&tb, &device, "warm-up", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;

    let mut violations = Vec::new();
    let mut connacked = 0;
    for round in 0..rounds {
        revocation.restore(&tb, &ca, &device).await;
        let round_over = CancellationToken::new();
        let clients: Vec<_> = (0..CLIENTS_PER_ROUND)
            .map(|i| {
                let (tls, round_over) = (configs[i % 2].clone(), round_over.clone());
                let start = Duration::from_millis(15 * i as u64);
                let port = tb.port();
                tokio::spawn(async move {
                    // Staggered, so that the handshakes in flight when the
                    // call lands are at different stages.
                    tokio::time::sleep(start).await;
                    paced_client(port, tls, format!("c-{round}-{i}"), round_over).await
                })
            })
            .collect();
        // A paced handshake verifies the certificate 10-50 ms after its
        // client starts and completes 20-30 ms later: aim the call into that
        // window for some of the clients.
        tokio::time::sleep(Duration::from_millis(50 + (round as u64 * 7) % 40)).await;
        revocation.revoke(&tb, &ca, &device).await;
        // The answer is in: every client's connection is closed or about to
        // fail. The round ends when all of them have seen it, or after a
        // generous moment to notice their socket closing: whoever is still
        // connected then is a violation.
        let grace = tokio::spawn({
            let round_over = round_over.clone();
            async move {
                tokio::time::sleep(NOTICE_CLOSE).await;
                round_over.cancel();
            }
        });
        for client in clients {
            let outcome = client.await.unwrap();
            connacked += usize::from(outcome.connacked);
            if outcome.open_at_end {
                violations.push((round, outcome));
            }
        }
        grace.abort();
        // And no new connection gets in.
        assert!(
            connect(&tb, &device, "after", Version::V4).await.is_err(),
            "{revocation:?}, round {round}: the device connected after the answer"
        );
    }
    let stats = tb.broker.metrics();
    println!(
        "{revocation:?}, {rounds} rounds: {connacked} sessions opened and dropped, {} connections refused after a successful verification",
        stats.refused_after_handshake()
    );
    assert!(
        violations.is_empty(),
        "{revocation:?}: sessions alive after the answer: {violations:?}"
    );
    // The race window was hit: some connections passed the verifier while
    // access was granted and were caught by the post-handshake check.
    assert!(
        stats.refused_after_handshake() > 0,
        "{revocation:?}: the test never exercised the handshake-in-flight window"
    );
    // And established sessions were dropped by the answer, too.
    assert!(
        connacked > 0,
        "{revocation:?}: no session was ever established before the call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_inactivation_wins_against_connects_in_flight() {
    contest(Revocation::InactivateDevice, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_inactivation_wins_against_connects_in_flight() {
    contest(Revocation::InactivateCa, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_deletion_wins_against_connects_in_flight() {
    contest(Revocation::DeleteCa, 20).await;
}
