//! Several nodes on one PostgreSQL registry (issue 13, points 2 to 4): a
//! change made on any node is in force on every node before it answers,
//! under contention and through faults. Three nodes run in this process,
//! each with its own listeners, data directory and node id, on one
//! throwaway database (`support::postgres`).

use std::time::Duration;

use certmq::config::StorageBackend;
use rustls::version::{TLS12, TLS13};
use tokio_util::sync::CancellationToken;

use crate::race::{paced_client, paced_config};
use crate::support::mqtt::{Client, Version, connect};
use crate::support::postgres::PgCluster;
use crate::support::{self, Ca, Device, TestBroker};

/// Starts `names.len()` nodes on the database at `url`, one after the
/// other, each trusting `cas`.
async fn nodes(url: &str, names: &[&str], cas: &[&Ca]) -> Vec<TestBroker> {
    let mut started = Vec::new();
    for name in names {
        started.push(node(url, name, cas).await);
    }
    started
}

async fn node(url: &str, name: &str, cas: &[&Ca]) -> TestBroker {
    node_with(url, name, cas, |_| {}).await
}

async fn node_with(
    url: &str,
    name: &str,
    cas: &[&Ca],
    tweak: impl FnOnce(&mut certmq::config::Settings),
) -> TestBroker {
    let (url, name) = (url.to_owned(), name.to_owned());
    support::start_with(cas, move |s| {
        s.storage.backend = StorageBackend::Postgres;
        s.storage.postgres_url = url;
        s.cluster.node_id = name;
        // Faster fencing, so that the fault tests stay short; still well
        // inside the drop timeout.
        s.cluster.lease_ms = 1500;
        tweak(s);
    })
    .await
}

async fn ca_call(tb: &TestBroker, action: &str, ca: &Ca) -> (u16, serde_json::Value) {
    let instance = tb.instance();
    let sn = ca.sn.to_string();
    tb.admin(&[
        ("Action", action),
        ("MqttInstanceId", &instance),
        ("Sn", &sn),
    ])
    .await
}

/// Connects `device` to every node in turn; how many admitted it.
async fn admitted_by(nodes: &[TestBroker], device: &Device) -> usize {
    let mut admitted = 0;
    for (i, tb) in nodes.iter().enumerate() {
        if let Ok(client) = connect(
            tb,
            device,
            &format!("{}-probe-{i}", device.name),
            Version::V4,
        )
        .await
        {
            client.disconnect().await;
            admitted += 1;
        }
    }
    admitted
}

/// No node holds a session of `device` now (checked the moment a call
/// answered: exact, not eventually).
fn no_session_anywhere(nodes: &[TestBroker], device: &Device, what: &str) {
    for tb in nodes {
        assert_eq!(
            tb.broker.sessions().sessions_of(&device.identity),
            0,
            "{what}: node {} still holds a session of {}",
            tb.broker.settings().cluster.node_id,
            device.name
        );
    }
}

async fn closed(client: &mut Client, what: &str) {
    assert!(
        tokio::time::timeout(Duration::from_secs(5), client.expect_closed())
            .await
            .is_ok(),
        "{what}: the client's connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_in_force_on_every_node() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("three_nodes").await;
    let ca = Ca::new("cluster CA");
    let cluster = nodes(&url, &["node-a", "node-b", "node-c"], &[&ca]).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);

    // Each node names itself in its metrics.
    assert_eq!(
        support::metric(
            &support::scrape(b).await,
            r#"certmq_node_info{node_id="node-b"}"#
        ),
        1.0
    );
    // A device registered on C is known everywhere.
    let device = ca.device("roaming");
    let mut on_c = connect(c, &device, "roaming", Version::V5).await.unwrap();
    support::wait_until(
        Duration::from_secs(5),
        "every node knows the device",
        async || {
            cluster.iter().all(|tb| {
                tb.broker
                    .registry()
                    .device_status(&device.identity)
                    .is_some()
            })
        },
    )
    .await;

    // Inactivated on A: C's session is gone when A answers, and no node
    // admits the device.
    a.inactivate(&device).await;
    no_session_anywhere(&cluster, &device, "InactivateDeviceCertificate on A");
    closed(&mut on_c, "inactivated on A, connected to C").await;
    assert_eq!(
        admitted_by(&cluster, &device).await,
        0,
        "refused everywhere"
    );

    // Activated on B: admitted everywhere.
    b.activate(&device).await;
    assert_eq!(
        admitted_by(&cluster, &device).await,
        3,
        "admitted everywhere"
    );

    // The CA inactivated on B drops its devices' sessions on A and C.
    let mut on_a = connect(a, &device, "roaming-a", Version::V4).await.unwrap();
    let other = ca.device("other");
    let mut other_on_c = connect(c, &other, "other-c", Version::V5).await.unwrap();
    let (status, body) = ca_call(b, "InactivateCaCertificate", &ca).await;
    assert_eq!(status, 200, "{body}");
    no_session_anywhere(&cluster, &device, "InactivateCaCertificate on B");
    no_session_anywhere(&cluster, &other, "InactivateCaCertificate on B");
    closed(&mut on_a, "CA inactivated on B, connected to A").await;
    closed(&mut other_on_c, "CA inactivated on B, connected to C").await;
    assert_eq!(admitted_by(&cluster, &device).await, 0);
    assert_eq!(admitted_by(&cluster, &other).await, 0);
    let (status, body) = ca_call(c, "ActiveCaCertificate", &ca).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admitted_by(&cluster, &device).await, 3);

    // Deleted on C: the session on B goes (the device registers again on
    // its next connection, as on one node).
    let mut on_b = connect(b, &device, "roaming-b", Version::V4).await.unwrap();
    let (status, body) = c.device_call("DeleteDeviceCertificate", &device).await;
    assert_eq!(status, 200, "{body}");
    no_session_anywhere(&cluster, &device, "DeleteDeviceCertificate on C");
    closed(&mut on_b, "deleted on C, connected to B").await;
    for tb in &cluster {
        assert_eq!(tb.broker.registry().device_status(&device.identity), None);
    }

    // The CA deleted on A: its devices are refused everywhere, and a node
    // restarted afterwards does not bring it back from its CA file (it is
    // registered again, as a new CA, only by that node's file).
    let mut on_c = connect(c, &device, "roaming-c", Version::V4).await.unwrap();
    let (status, body) = ca_call(a, "DeleteCaCertificate", &ca).await;
    assert_eq!(status, 200, "{body}");
    no_session_anywhere(&cluster, &device, "DeleteCaCertificate on A");
    closed(&mut on_c, "CA deleted on A, connected to C").await;
    for tb in &cluster {
        assert!(tb.broker.registry().ca(&ca.sn).is_none());
    }
    assert_eq!(admitted_by(&cluster, &device).await, 0);
}

/// The session operations by client id look at every node (issue 13
/// point 7): a client connected to C is online for A and B, and closed
/// through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_operations_look_at_every_node() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("cluster_sessions").await;
    let ca = Ca::new("sessions CA");
    let cluster = nodes(&url, &["ses-a", "ses-b", "ses-c"], &[&ca]).await;
    let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);
    let device = ca.device("far-away");
    let mut on_c = connect(c, &device, "far-away", Version::V5).await.unwrap();
    let instance = a.instance();
    let (status, body) = a
        .admin(&[
            ("Action", "QuerySessionByClientId"),
            ("InstanceId", &instance),
            ("ClientId", "far-away"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["OnlineStatus"], true, "online on C, asked on A");
    let (status, body) = b
        .admin(&[
            ("Action", "BatchQuerySessionByClientIds"),
            ("InstanceId", &instance),
            ("ClientIdList.1", "nobody"),
            ("ClientIdList.2", "far-away"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let list = body["OnlineStatusList"].as_array().unwrap();
    assert_eq!(list[0]["OnlineStatus"], false);
    assert_eq!(list[1]["OnlineStatus"], true);
    let (status, body) = a
        .admin(&[
            ("Action", "CloseConnection"),
            ("InstanceId", &instance),
            ("ClientId", "far-away"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !c.broker.sessions().is_online("far-away"),
        "closed on C before A answered"
    );
    closed(&mut on_c, "closed through A").await;
    let (_, body) = b
        .admin(&[
            ("Action", "QuerySessionByClientId"),
            ("InstanceId", &instance),
            ("ClientId", "far-away"),
        ])
        .await;
    assert_eq!(body["OnlineStatus"], false);
}

/// The guarantee under contention, across nodes: connects to B and C
/// against InactivateDeviceCertificate on A, many rounds. The moment A
/// answers, no node may hold a session of the device (checked on each
/// node's session table, by client id: a session that got its CONNACK
/// holds its id until it is closed), and no client may stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivation_on_one_node_wins_against_connects_on_the_others() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("cluster_race").await;
    let ca = Ca::new("contested CA");
    let cluster = nodes(&url, &["race-a", "race-b", "race-c"], &[&ca]).await;
    let (a, targets) = (&cluster[0], &cluster[1..]);
    let device = ca.device("contested");
    connect(&cluster[1], &device, "warm-up", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    support::wait_until(
        Duration::from_secs(5),
        "every node knows the device",
        async || {
            cluster.iter().all(|tb| {
                tb.broker
                    .registry()
                    .device_status(&device.identity)
                    .is_some()
            })
        },
    )
    .await;
    let configs: Vec<_> = targets
        .iter()
        .map(|tb| {
            [
                paced_config(tb, &device, &TLS12),
                paced_config(tb, &device, &TLS13),
            ]
        })
        .collect();
    const ROUNDS: usize = 30;
    const CLIENTS: usize = 6;
    let mut violations = Vec::new();
    let mut connacked = 0;
    for round in 0..ROUNDS {
        a.activate(&device).await;
        let round_over = CancellationToken::new();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let target = i % targets.len();
                let tls = configs[target][(i / 2) % 2].clone();
                let port = targets[target].port();
                let round_over = round_over.clone();
                let start = Duration::from_millis(15 * i as u64);
                let client_id = format!("r{round}-{i}");
                tokio::spawn(async move {
                    tokio::time::sleep(start).await;
                    paced_client(port, tls, client_id, round_over).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50 + (round as u64 * 7) % 40)).await;
        a.inactivate(&device).await;
        // The answer is in: look at every node at once.
        for i in 0..CLIENTS {
            let client_id = format!("r{round}-{i}");
            for tb in &cluster {
                if tb.broker.sessions().is_online(&client_id) {
                    violations.push(format!(
                        "round {round}: {client_id} online on {} after the answer",
                        tb.broker.settings().cluster.node_id
                    ));
                }
            }
        }
        let grace = tokio::spawn({
            let round_over = round_over.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                round_over.cancel();
            }
        });
        for (i, client) in clients.into_iter().enumerate() {
            let outcome = client.await.unwrap();
            connacked += usize::from(outcome.connacked);
            if outcome.open_at_end {
                violations.push(format!("round {round}: client {i} still connected"));
            }
        }
        grace.abort();
        for tb in targets {
            assert!(
                connect(tb, &device, "after", Version::V4).await.is_err(),
                "round {round}: the device connected after the answer"
            );
        }
    }
    let refused: u64 = targets
        .iter()
        .map(|tb| tb.broker.metrics().refused_after_handshake())
        .sum();
    println!(
        "{ROUNDS} rounds over 3 nodes: {connacked} sessions opened and dropped, {refused} connections refused after a successful verification"
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        connacked > 0,
        "no session was ever established before the call"
    );
    assert!(
        refused > 0,
        "the handshake-in-flight window was never exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_misses_notifications_catches_up_by_its_heartbeat() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("lost_notifications").await;
    let ca = Ca::new("heartbeat CA");
    let cluster = nodes(&url, &["hb-a", "hb-c"], &[&ca]).await;
    let (a, c) = (&cluster[0], &cluster[1]);
    let device = ca.device("quiet");
    let mut on_c = connect(c, &device, "quiet", Version::V4).await.unwrap();
    support::wait_until(Duration::from_secs(5), "A knows the device", async || {
        a.broker
            .registry()
            .device_status(&device.identity)
            .is_some()
    })
    .await;
    const HEARTBEATS: &str = r#"certmq_cluster_catch_ups_total{trigger="heartbeat"}"#;
    let before = support::metric(&support::scrape(c).await, HEARTBEATS);
    // C hears nothing of the inactivation: its heartbeat finds it behind,
    // it catches up, and only then does A answer.
    certmq::fault::lose_change_notifications("hb-c", 1);
    a.inactivate(&device).await;
    no_session_anywhere(
        &cluster,
        &device,
        "inactivated while C missed the notification",
    );
    closed(&mut on_c, "C missed the notification").await;
    assert!(
        support::metric(&support::scrape(c).await, HEARTBEATS) > before,
        "the heartbeat caught C up"
    );

    // C's LISTEN connection cut: it connects again and catches up.
    a.activate(&device).await;
    let mut on_c = connect(c, &device, "quiet-2", Version::V4).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let cut: i64 = client
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'certmq feed hb-c'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 1, "C's feed connection was found and cut");
    a.inactivate(&device).await;
    no_session_anywhere(&cluster, &device, "inactivated after C's feed was cut");
    closed(&mut on_c, "C's feed was cut").await;
    assert!(connect(c, &device, "quiet-3", Version::V4).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_fence_themselves_while_postgres_is_down_and_recover() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("cluster_outage").await;
    let ca = Ca::new("outage CA");
    let cluster = nodes(&url, &["out-a", "out-b"], &[&ca]).await;
    let (a, b) = (&cluster[0], &cluster[1]);
    let device = ca.device("survivor");
    let kept = ca.device("kept");
    let mut on_b = connect(b, &device, "survivor", Version::V5).await.unwrap();
    connect(a, &kept, "kept", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    // An acknowledged change before the outage.
    a.inactivate(&kept).await;

    pg.pg_ctl_stop();
    let stopped = std::time::Instant::now();
    // A call during the outage fails, saying so.
    let (status, body) = a.device_call("InactivateDeviceCertificate", &device).await;
    assert_ne!(status, 200, "no success without the database: {body}");
    // Both nodes fence themselves: B's session is dropped (MQTT 5: use
    // another server), new connections are refused, /readyz says why.
    closed(&mut on_b, "B fenced").await;
    for tb in &cluster {
        support::wait_until(Duration::from_secs(10), "fenced", async || {
            support::metric(&support::scrape(tb).await, "certmq_cluster_fenced") == 1.0
        })
        .await;
        assert_eq!(readyz(tb).await.0, 503);
        assert!(connect(tb, &device, "during", Version::V4).await.is_err());
    }
    // Keep it down for 5 s in all.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed())).await;
    pg.pg_ctl_start();
    for tb in &cluster {
        support::wait_until(Duration::from_secs(20), "ready again", async || {
            readyz(tb).await.0 == 200
        })
        .await;
    }
    // Nothing acknowledged was lost, nothing refused was done.
    for tb in &cluster {
        assert_eq!(admitted_by(std::slice::from_ref(tb), &kept).await, 0);
        assert_eq!(admitted_by(std::slice::from_ref(tb), &device).await, 1);
    }
    b.inactivate(&device).await;
    assert_eq!(admitted_by(&cluster, &device).await, 0);
}

async fn readyz(tb: &TestBroker) -> (u16, String) {
    match reqwest::get(format!("http://{}/readyz", tb.broker.admin_addr())).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// A `certmq serve` process, one node of the cluster, killed with SIGKILL.
struct Process {
    child: std::process::Child,
    mqtt: u16,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(work: &std::path::Path, url: &str) -> Process {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["serve", "--config", "certmq.toml"])
        .current_dir(work)
        .env("CERTMQ__MQTT__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__ADMIN__LISTEN", "127.0.0.1:0")
        .env("CERTMQ__STORAGE__POSTGRES_URL", url)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let listening =
        support::wait_listening(&work.join("data"), child.id(), || child.try_wait().unwrap())
            .unwrap_or_else(|status| {
                panic!("certmq serve exited with {status} (its stderr is above)")
            });
    Process {
        child,
        mqtt: listening.mqtt.port(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_catches_up() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("killed_node").await;
    let ca = Ca::new("kill CA");
    let a = node(&url, "kill-a", &[&ca]).await;
    let work = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("kill server CA");
    let (server_cert, server_key) = server_ca.server();
    std::fs::write(work.path().join("server.pem"), server_cert).unwrap();
    std::fs::write(work.path().join("server.key"), server_key).unwrap();
    std::fs::write(work.path().join("devices-ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(
        work.path().join("certmq.toml"),
        r#"
[tls]
server_cert = "server.pem"
server_key = "server.key"
ca_files = ["devices-ca.pem"]

[storage]
backend = "postgres"

[cluster]
node_id = "kill-k"
lease_ms = 1500
"#,
    )
    .unwrap();
    let device = ca.device("killed");
    let kept_out = ca.device("kept-out");
    let connect_k = async |k: &Process, device: &Device, id: &str| {
        let tls = crate::support::pki::client_config(&server_ca, Some(device));
        crate::support::mqtt::connect_with(k.mqtt, tls, id, Version::V4, |_| {}).await
    };
    let mut k = serve(work.path(), &url);
    connect_k(&k, &device, "before")
        .await
        .unwrap()
        .disconnect()
        .await;
    connect_k(&k, &kept_out, "kept-out")
        .await
        .unwrap()
        .disconnect()
        .await;

    // Killed while its lease is live, started again at once: it waits out
    // its old lease. A's inactivation meanwhile answers once the dead
    // lease ran out (and the new process, if it took its lease by then,
    // applied the change).
    drop(k);
    let restarted = std::thread::spawn({
        let (work, url) = (work.path().to_owned(), url.clone());
        move || serve(&work, &url)
    });
    a.inactivate(&device).await;
    k = restarted.join().unwrap();
    // And a change after it is back.
    a.inactivate(&kept_out).await;
    assert!(
        connect_k(&k, &device, "after").await.is_err(),
        "K applied the change made while it was down"
    );
    assert!(
        connect_k(&k, &kept_out, "after-2").await.is_err(),
        "K follows the feed again"
    );
    a.activate(&device).await;
    connect_k(&k, &device, "back")
        .await
        .unwrap()
        .disconnect()
        .await;
}

/// A node with a live lease that does not apply a change in
/// `mqtt.drop_timeout_ms`: the call answers an error naming it, never
/// success; once the node applies again, it drops the session, and the
/// call retried succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_not_applied_everywhere_in_time_answers_an_error() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("not_applied").await;
    let ca = Ca::new("stalled CA");
    let short = |s: &mut certmq::config::Settings| s.mqtt.drop_timeout_ms = 2000;
    let a = node_with(&url, "stall-a", &[&ca], short).await;
    let c = node_with(&url, "stall-c", &[&ca], short).await;
    let device = ca.device("stuck");
    let mut on_c = connect(&c, &device, "stuck", Version::V4).await.unwrap();
    support::wait_until(Duration::from_secs(5), "A knows the device", async || {
        a.broker
            .registry()
            .device_status(&device.identity)
            .is_some()
    })
    .await;
    certmq::fault::stall_feed("stall-c", true);
    let (status, body) = a.device_call("InactivateDeviceCertificate", &device).await;
    assert_ne!(status, 200, "no success while C has not applied it: {body}");
    let message = body["Message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stall-c") && message.contains("retry"),
        "{message}"
    );
    assert_eq!(
        c.broker.sessions().sessions_of(&device.identity),
        1,
        "the error was honest"
    );
    certmq::fault::stall_feed("stall-c", false);
    closed(&mut on_c, "C applied the change once it could").await;
    a.inactivate(&device).await;
    assert!(connect(&c, &device, "stuck-2", Version::V4).await.is_err());

    // A deletion retried after such an error does not answer "not found"
    // (done, to an operator) while C still has not applied the first try.
    let other = ca.device("stuck-deleted");
    let mut on_c = connect(&c, &other, "stuck-deleted", Version::V4)
        .await
        .unwrap();
    support::wait_until(Duration::from_secs(5), "A knows the device", async || {
        a.broker.registry().device_status(&other.identity).is_some()
    })
    .await;
    certmq::fault::stall_feed("stall-c", true);
    let (status, _) = a.device_call("DeleteDeviceCertificate", &other).await;
    assert_ne!(status, 200);
    let (status, body) = a.device_call("DeleteDeviceCertificate", &other).await;
    assert_ne!(status, 200);
    assert_ne!(
        body["Code"], "FindDeviceBySnError",
        "not found while C holds it: {body}"
    );
    assert!(
        body["Message"]
            .as_str()
            .unwrap_or_default()
            .contains("stall-c"),
        "{body}"
    );
    certmq::fault::stall_feed("stall-c", false);
    closed(&mut on_c, "C applied the deletion").await;
    let (_, body) = a.device_call("DeleteDeviceCertificate", &other).await;
    assert_eq!(body["Code"], "FindDeviceBySnError", "{body}");
}

/// The change log is pruned up to what every lease row has applied (a
/// node away for a while holds it back; one gone for over a day does
/// not), and only entries older than ten minutes; the nodes follow the
/// feed as before afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_log_is_pruned_behind_every_node() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("pruning").await;
    let ca = Ca::new("pruning CA");
    let a = node(&url, "prune-a", &[&ca]).await;
    let devices: Vec<_> = (0..5).map(|i| ca.device(&format!("pruned-{i}"))).collect();
    for d in &devices {
        connect(&a, d, &d.name, Version::V4)
            .await
            .unwrap()
            .disconnect()
            .await;
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let count = async |sql: &str| -> i64 { client.query_one(sql, &[]).await.unwrap().get(0) };
    assert_eq!(
        count("SELECT COUNT(*) FROM change_log").await,
        6,
        "the CA and 5 devices"
    );
    // All of it old; a node gone two days ago at 0, one away a minute at 3.
    client
        .batch_execute(
            "UPDATE change_log SET at_ms = 0;
             INSERT INTO node_lease VALUES
               ('gone', 'x', 0, now() - interval '2 days', now() - interval '2 days'),
               ('away', 'y', 3, now() - interval '1 minute', now() - interval '1 minute');",
        )
        .await
        .unwrap();
    // A node joining prunes.
    let b = node(&url, "prune-b", &[&ca]).await;
    assert_eq!(
        count("SELECT COUNT(*) FROM node_lease WHERE node_id = 'gone'").await,
        0
    );
    assert_eq!(
        count("SELECT MIN(seq) FROM change_log").await,
        4,
        "kept what `away` lacks"
    );
    client
        .execute("DELETE FROM node_lease WHERE node_id = 'away'", &[])
        .await
        .unwrap();
    // Both nodes still follow the feed.
    b.inactivate(&devices[0]).await;
    assert!(
        connect(&a, &devices[0], "after-pruning", Version::V4)
            .await
            .is_err()
    );
    assert_eq!(b.broker.registry().device_count(), 5);
}
