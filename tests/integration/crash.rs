//! Nothing acknowledged is lost: a real `certmq serve` takes lifecycle
//! changes from concurrent admin clients and first connections of new
//! devices, is killed with SIGKILL at a random moment, restarts, and must
//! show every change it acknowledged before the kill. Several rounds.
//!
//! Each device is driven by one client at a time, so after a restart its
//! state must be the last acknowledged one, or the one of the request that
//! was in flight when the process died (that request may or may not have
//! been committed; both are correct).
//!
//! The kill moments and the clients' choices come from one seeded RNG; the
//! seed is printed at the start and with any failure. `CERTMQ_TEST_SEED=<n>`
//! runs with a given seed (the same choices; the interleaving with the
//! broker still varies).

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certmq::admin::client::AdminClient;
use certmq::pki::{CaSigner, KeyKind};
use certmq::store::backup;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::support::mqtt::{Version, connect_with};
use crate::support::pki::client_config;
use crate::support::{Ca, Device, wait_listening};

const BIN: &str = env!("CARGO_BIN_EXE_certmq");
const ROUNDS: usize = 4;
const SEEDED: usize = 24;
const WORKERS: usize = 4;
const KEY_ID: &str = "LTAI5tCrashTestKey000001";
const KEY_SECRET: &str = "crash-test-secret-0123456789";
const INSTANCE: &str = "mqtt-certmq-local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Inactive,
    Deleted,
}

/// What the clients know: per device, the last acknowledged state and the
/// state of a request still unanswered when the broker died.
#[derive(Default)]
struct Ledger {
    devices: HashMap<usize, (State, Option<State>)>,
    /// CAs whose registration was acknowledged / was in flight.
    cas: Vec<(Ca, bool)>,
    /// Devices whose first connection got CONNACK (so they must be stored).
    registered: Vec<Device>,
}

struct Server {
    child: Child,
    admin: u16,
    mqtt: u16,
}

impl Drop for Server {
    /// A failing test must not leave a broker behind (it would hold the
    /// test's output open).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the seed if the test fails, whatever the failure.
struct Replay(u64);

impl Drop for Replay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "crash test failed with seed {0}: replay with CERTMQ_TEST_SEED={0}",
                self.0
            );
        }
    }
}

/// The seed: `CERTMQ_TEST_SEED`, or a random one.
fn chosen_seed() -> u64 {
    match std::env::var("CERTMQ_TEST_SEED") {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("CERTMQ_TEST_SEED={seed} is not a u64")),
        Err(_) => rand::random(),
    }
}

/// Starts `certmq serve` on any free ports and waits until it listens.
fn start(work: &Path) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--config", "certmq.toml"])
        .current_dir(work)
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let listening = wait_listening(&work.join("data"), child.id(), || child.try_wait().unwrap())
        .unwrap_or_else(|status| panic!("certmq serve exited with {status} (its stderr is above)"));
    Server {
        child,
        admin: listening.admin.port(),
        mqtt: listening.mqtt.port(),
    }
}

fn params(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn device_params(d: &Device) -> Vec<(String, String)> {
    params(&[
        ("MqttInstanceId", INSTANCE.into()),
        ("CaSn", d.identity.ca_sn.to_string()),
        ("DeviceSn", d.identity.device_sn.to_string()),
    ])
}

/// The state the broker reports for a device.
async fn observed(client: &AdminClient, d: &Device) -> State {
    let (status, body) = client
        .call("GetDeviceCertificate", &device_params(d))
        .await
        .unwrap();
    match (
        status,
        body["Code"].as_str(),
        body["Data"]["Status"].as_str(),
    ) {
        (200, _, Some("1")) => State::Active,
        (200, _, Some("0")) => State::Inactive,
        (500, Some("FindDeviceBySnError"), _) => State::Deleted,
        other => panic!("unexpected answer for {}: {other:?} {body}", d.name),
    }
}

/// One admin client driving its own devices until `stop`, choosing with
/// `rng`.
async fn drive_devices(
    client: AdminClient,
    devices: Vec<(usize, Device)>,
    ledger: Arc<Mutex<Ledger>>,
    mut rng: StdRng,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let (index, device) = &devices[rng.random_range(0..devices.len())];
        let current = ledger.lock().unwrap().devices[index].0;
        if current == State::Deleted {
            let all_deleted = {
                let ledger = ledger.lock().unwrap();
                devices
                    .iter()
                    .all(|(i, _)| ledger.devices[i].0 == State::Deleted)
            };
            if all_deleted {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        let roll = rng.random_range(0..40);
        let (action, target) = match (current, roll) {
            (_, 0) => ("DeleteDeviceCertificate", State::Deleted),
            (State::Active, _) => ("InactivateDeviceCertificate", State::Inactive),
            _ => ("ActiveDeviceCertificate", State::Active),
        };
        ledger.lock().unwrap().devices.get_mut(index).unwrap().1 = Some(target);
        match client.call(action, &device_params(device)).await {
            Ok((200, _)) => {
                *ledger.lock().unwrap().devices.get_mut(index).unwrap() = (target, None);
            }
            Ok((status, body)) => panic!("{action} on {} answered {status}: {body}", device.name),
            // The broker died with the request in flight: it stays pending.
            Err(_) => return,
        }
    }
}

/// Registers new CAs through the API until `stop`.
async fn drive_cas(
    client: AdminClient,
    code: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let ca = Ca::new(&format!("crash CA {n} {}", uuid::Uuid::new_v4()));
        let signer = CaSigner::from_pem(&ca.cert_pem, &ca.key_pem).unwrap();
        let verification = signer
            .issue_verification(&code, KeyKind::P256)
            .unwrap()
            .cert_pem;
        let request = params(&[
            ("MqttInstanceId", INSTANCE.into()),
            ("CaName", format!("crash {n}")),
            ("CaContent", ca.cert_pem.clone()),
            ("VerificationContent", verification),
        ]);
        let slot = {
            let mut ledger = ledger.lock().unwrap();
            ledger.cas.push((ca, false));
            ledger.cas.len() - 1
        };
        match client.call("RegisterCaCertificate", &request).await {
            Ok((200, _)) => ledger.lock().unwrap().cas[slot].1 = true,
            Ok((status, body)) => panic!("RegisterCaCertificate answered {status}: {body}"),
            Err(_) => return,
        }
    }
}

/// Connects never-seen devices until `stop`; each CONNACK means the device
/// was registered durably.
async fn drive_first_connections(
    port: u16,
    server_ca: Arc<Ca>,
    fleet: Arc<Ca>,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let device = fleet.device(&format!("first-{}", uuid::Uuid::new_v4().simple()));
        let tls = client_config(&server_ca, Some(&device));
        match connect_with(port, tls, &device.name, Version::V4, |_| {}).await {
            Ok(client) => {
                ledger.lock().unwrap().registered.push(device);
                client.disconnect().await;
            }
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let work = tempfile::tempdir().unwrap();
    let server_ca = Arc::new(Ca::new("crash test server CA"));
    let fleet = Arc::new(Ca::new("crash test fleet CA"));
    let (server_cert, server_key) = server_ca.server();
    std::fs::write(work.path().join("server.pem"), server_cert).unwrap();
    std::fs::write(work.path().join("server.key"), server_key).unwrap();
    std::fs::write(
        work.path().join("certmq.toml"),
        format!(
            r#"
[mqtt]
connections_per_second_per_ip = 0

[tls]
server_cert = "server.pem"
server_key = "server.key"

[[admin.access_keys]]
id = "{KEY_ID}"
secret = "{KEY_SECRET}"
account = "local"
actions = ["mq:*"]

[admin.rate_limits]
default = 1000000
"#
        ),
    )
    .unwrap();

    // Seed the registry: the fleet CA and its devices, all active.
    let devices: Vec<Device> = (0..SEEDED)
        .map(|i| fleet.device(&format!("seeded-{i}")))
        .collect();
    let mut seed = vec![
        serde_json::json!({"kind": "ca", "sn": fleet.sn.to_string(), "name": "fleet", "status": "1",
            "valid_begin_ms": 0, "valid_end_ms": 4_000_000_000_000i64, "pem": fleet.cert_pem,
            "verification_pem": null, "registration_code": null})
        .to_string(),
    ];
    for d in &devices {
        seed.push(
            serde_json::json!({"kind": "device", "ca_sn": d.identity.ca_sn.to_string(),
                "device_sn": d.identity.device_sn.to_string(), "name": d.name, "status": "1",
                "valid_begin_ms": 0, "valid_end_ms": 4_000_000_000_000i64, "pem": d.cert_pem})
            .to_string(),
        );
    }
    std::fs::create_dir_all(work.path().join("data")).unwrap();
    backup::import(
        &work.path().join("data/registry.db"),
        &mut seed.join("\n").as_bytes(),
    )
    .unwrap();

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for i in 0..SEEDED {
        ledger
            .lock()
            .unwrap()
            .devices
            .insert(i, (State::Active, None));
    }
    let seed = chosen_seed();
    eprintln!("crash test seed {seed} (replay with CERTMQ_TEST_SEED={seed})");
    let _replay = Replay(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut checked = 0usize;
    for round in 0..=ROUNDS {
        let mut server = start(work.path());
        let client =
            AdminClient::new(&format!("127.0.0.1:{}", server.admin), KEY_ID, KEY_SECRET).unwrap();

        // Everything acknowledged before the last kill is there.
        if round > 0 {
            let snapshot: Vec<(usize, State, Option<State>)> = ledger
                .lock()
                .unwrap()
                .devices
                .iter()
                .map(|(i, (acked, pending))| (*i, *acked, *pending))
                .collect();
            for (i, acked, pending) in snapshot {
                let seen = observed(&client, &devices[i]).await;
                assert!(
                    seen == acked || Some(seen) == pending,
                    "seed {seed}, round {round}: {} is {seen:?}, acknowledged {acked:?}, in flight {pending:?}",
                    devices[i].name
                );
                ledger.lock().unwrap().devices.insert(i, (seen, None));
                checked += 1;
            }
            let (cas, registered) = {
                let ledger = ledger.lock().unwrap();
                (
                    ledger
                        .cas
                        .iter()
                        .filter(|(_, acked)| *acked)
                        .map(|(ca, _)| ca.sn.to_string())
                        .collect::<Vec<_>>(),
                    ledger.registered.clone(),
                )
            };
            for sn in cas {
                let (status, body) = client
                    .call(
                        "GetCaCertificate",
                        &params(&[("MqttInstanceId", INSTANCE.into()), ("Sn", sn.clone())]),
                    )
                    .await
                    .unwrap();
                assert_eq!(
                    status, 200,
                    "seed {seed}, round {round}: acknowledged CA {sn} lost: {body}"
                );
                checked += 1;
            }
            for d in &registered {
                assert_eq!(
                    observed(&client, d).await,
                    State::Active,
                    "seed {seed}, round {round}: {} lost",
                    d.name
                );
                checked += 1;
            }
            // An inactive device is refused for real.
            let inactive = ledger
                .lock()
                .unwrap()
                .devices
                .iter()
                .find(|(_, (state, _))| *state == State::Inactive)
                .map(|(i, _)| *i);
            if let Some(i) = inactive {
                let tls = client_config(&server_ca, Some(&devices[i]));
                let attempt = connect_with(server.mqtt, tls, "inactive", Version::V4, |_| {}).await;
                assert!(
                    attempt.is_err(),
                    "seed {seed}, round {round}: inactive {} connected",
                    devices[i].name
                );
            }
        }
        if round == ROUNDS {
            let _ = server.child.kill();
            let _ = server.child.wait();
            break;
        }

        // Changes from every side, then SIGKILL at a random moment.
        let (_, body) = client
            .call(
                "GetRegisterCode",
                &params(&[("MqttInstanceId", INSTANCE.into())]),
            )
            .await
            .unwrap();
        let code = body["RegisterCode"].as_str().unwrap().to_owned();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let mine: Vec<(usize, Device)> = (0..SEEDED)
                .filter(|i| i % WORKERS == w)
                .map(|i| (i, devices[i].clone()))
                .collect();
            tasks.push(tokio::spawn(drive_devices(
                client.clone(),
                mine,
                ledger.clone(),
                StdRng::seed_from_u64(rng.random()),
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(drive_cas(
            client.clone(),
            code,
            ledger.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(drive_first_connections(
            server.mqtt,
            server_ca.clone(),
            fleet.clone(),
            ledger.clone(),
            stop.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        stop.cancel();
        for task in tasks {
            task.await
                .unwrap_or_else(|e| panic!("seed {seed}, round {round}: a client failed: {e}"));
        }
    }
    let ledger = ledger.lock().unwrap();
    println!(
        "{ROUNDS} kills (seed {seed}): {checked} acknowledged records checked ({} CAs registered, {} devices registered on first connection)",
        ledger.cas.iter().filter(|(_, a)| *a).count(),
        ledger.registered.len()
    );
    assert!(
        ledger.cas.iter().any(|(_, a)| *a),
        "seed {seed}: no CA registration was acknowledged"
    );
    assert!(
        !ledger.registered.is_empty(),
        "seed {seed}: no first connection got through"
    );
}
