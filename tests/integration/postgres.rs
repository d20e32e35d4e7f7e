//! The registry on PostgreSQL (`storage.backend = "postgres"`, issue 13
//! point 1): what the SQLite store keeps, the PostgreSQL store keeps;
//! migrations run one broker at a time; a database that is newer or gone
//! is reported clearly. Each test runs its own throwaway cluster
//! (`support::postgres`).

use std::time::Duration;

use certmq::config::StorageBackend;
use certmq::store::Store;
use certmq::store::postgres::PgStore;

use crate::support::mqtt::{Version, connect};
use crate::support::postgres::PgCluster;
use crate::support::{self, Ca, readyz};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_postgres_keeps_everything_across_restarts() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("restarts").await;
    crate::durability::keeps_everything_across_restarts(move |s| {
        s.storage.backend = StorageBackend::Postgres;
        s.storage.postgres_url = url;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_register_on_first_connection_and_inactivation_is_refused() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("admission").await;
    let ca = Ca::new("pg CA");
    let tb = support::start_with(&[&ca], |s| {
        s.storage.backend = StorageBackend::Postgres;
        s.storage.postgres_url = url.clone();
    })
    .await;
    assert!(tb.broker.registry().location().starts_with("postgres "));
    let devices: Vec<_> = (0..20).map(|i| ca.device(&format!("pg-{i}"))).collect();
    // First connections: each registers, committed before it proceeds.
    for d in &devices {
        connect(&tb, d, &d.name, Version::V5)
            .await
            .unwrap()
            .disconnect()
            .await;
    }
    assert_eq!(tb.broker.registry().device_count(), 20);
    tb.inactivate(&devices[3]).await;
    let err = connect(&tb, &devices[3], "pg-3", Version::V4)
        .await
        .err()
        .expect("inactive");
    assert!(err.to_lowercase().contains("revoked"), "{err}");
    // The rows are PostgreSQL's: read them back independently.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT name FROM device WHERE ca_sn = $1 AND status = 0",
            &[&ca.sn.to_string()],
        )
        .await
        .unwrap();
    let inactive: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(inactive, ["pg-3"]);
    // The console's search (ILIKE here), wildcards literal.
    let instance = tb.instance();
    let ca_sn = ca.sn.to_string();
    for (keyword, total) in [("PG-1", 11), ("pg-15", 1), ("pg_1", 0), ("%", 0)] {
        let (status, body) = tb
            .admin(&[
                ("Action", "ListDeviceCertificateByCaSn"),
                ("MqttInstanceId", &instance),
                ("CaSn", &ca_sn),
                ("Keyword", keyword),
            ])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["Data"]["Total"], total, "Keyword {keyword}: {body}");
    }
    let count: i64 = client
        .query_one("SELECT COUNT(*) FROM device", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 20);
    // Every change that touched something is in the change feed, in order.
    let kinds: Vec<String> = client
        .query("SELECT kind FROM change_log ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kinds.len(), 22, "{kinds:?}");
    assert_eq!(kinds[0], "ca");
    assert!(kinds[1..21].iter().all(|k| k == "device"), "{kinds:?}");
    assert_eq!(kinds[21], "device_status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("migrations").await;
    // Four at once against an empty database: the advisory lock lets one
    // create the schema and the others find it done; all four share it.
    let starts: Vec<_> = (0..4)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url, &format!("node-{i}")).await })
        })
        .collect();
    let mut codes = Vec::new();
    for s in starts {
        let store = s.await.unwrap().expect("every broker opens the database");
        codes.push(store.load().unwrap().registration_code);
    }
    codes.dedup();
    assert_eq!(codes.len(), 1, "one instance, one registration code");

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("UPDATE certmq_schema SET version = 99", &[])
        .await
        .unwrap();
    let err = PgStore::connect(&url, "node").await.err().expect("too new");
    let message = err.to_string();
    assert!(
        message.contains("schema version 99") && message.contains("newer than this certmq"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_fails_changes_and_comes_back_without_a_restart() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("outage").await;
    let ca = Ca::new("outage CA");
    let tb = support::start_with(&[&ca], |s| {
        s.storage.backend = StorageBackend::Postgres;
        s.storage.postgres_url = url.clone();
    })
    .await;
    let device = ca.device("outage-device");
    connect(&tb, &device, "outage", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    pg.pg_ctl_stop();
    let (status, body) = tb.device_call("InactivateDeviceCertificate", &device).await;
    assert_ne!(status, 200, "no success without a commit: {body}");
    assert_eq!(
        tb.broker.registry().device_status(&device.identity),
        Some(certmq::CertStatus::Active),
        "nothing changed"
    );
    let newcomer = ca.device("outage-newcomer");
    assert!(
        connect(&tb, &newcomer, "newcomer", Version::V4)
            .await
            .is_err(),
        "a first connection cannot register without the database"
    );
    assert_eq!(readyz(&tb).await.0, 503, "not ready without the database");
    pg.pg_ctl_start();
    // Ready again with the database, before any change asks for it.
    support::wait_until(Duration::from_secs(15), "ready again", async || {
        readyz(&tb).await.0 == 200
    })
    .await;
    assert_eq!(
        tb.device_call("InactivateDeviceCertificate", &device)
            .await
            .0,
        200
    );
    assert!(connect(&tb, &device, "outage", Version::V4).await.is_err());
    connect(&tb, &newcomer, "newcomer", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
}

#[tokio::test]
async fn a_bad_url_names_the_key() {
    let mut settings = certmq::Settings::embedded_defaults().unwrap();
    settings.storage.backend = StorageBackend::Postgres;
    let err = settings.validate().unwrap_err().to_string();
    assert!(err.contains("storage.postgres_url"), "{err}");
    settings.storage.postgres_url = "postgres://u@h:notaport/db".into();
    let err = settings.validate().unwrap_err().to_string();
    assert!(
        err.contains("storage.postgres_url") && err.contains("postgres://"),
        "{err}"
    );
    settings.storage.postgres_url = "postgres://u@localhost/db".into();
    settings.storage.max_size_mb = 10;
    let err = settings.validate().unwrap_err().to_string();
    assert!(err.contains("storage.max_size_mb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_checks_the_database() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("checked").await;
    let dir = tempfile::tempdir().unwrap();
    let check = |url: &str| {
        let config = format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n");
        std::fs::write(dir.path().join("c.toml"), config).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_certmq"))
            .current_dir(dir.path())
            .args(["check-config", "--config", "c.toml"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (ok, out) = check(&url);
    assert!(ok, "{out}");
    assert!(out.contains("configuration OK"), "{out}");
    let (ok, out) = check(&pg.url("no_such_database"));
    assert!(!ok);
    assert!(
        out.contains("storage.postgres_url: cannot connect to postgres")
            && out.contains("no_such_database"),
        "{out}"
    );
    pg.pg_ctl_stop();
    let (ok, out) = check(&url);
    assert!(!ok);
    assert!(out.contains("cannot connect"), "{out}");
    assert!(out.contains("is the server running"), "{out}");
}

/// `certmq registry export` / `import` with `--config`-less settings from
/// the environment, as an operator would run them.
fn registry_cli(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "certmq {args:?}: {stderr}");
    stderr
}

/// A SQLite deployment moves to PostgreSQL by export and import (issue 13
/// point 6): statuses, the registration code and custom permissions come
/// along; the PostgreSQL export holds the same lines; an import while a
/// node runs is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_registry_moves_to_postgres_by_export_and_import() {
    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("moved").await;
    let ca = Ca::new("moving CA");
    let tb = support::start(&[&ca]).await;
    let devices: Vec<_> = (0..3).map(|i| ca.device(&format!("mover-{i}"))).collect();
    for d in &devices {
        connect(&tb, d, &d.name, Version::V4)
            .await
            .unwrap()
            .disconnect()
            .await;
    }
    tb.inactivate(&devices[1]).await;
    let instance = tb.instance();
    let (status, body) = tb
        .admin(&[
            ("Action", "AddCustomAuthPermission"),
            ("InstanceId", &instance),
            ("IdentityType", "CLIENT"),
            ("Identity", "mover-2"),
            ("Topic", "fleet/#"),
            ("PermitAction", "PUB_SUB"),
            ("Effect", "ALLOW"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut settings, server_ca, dir) = tb.stop().await;
    let data_dir = settings.storage.data_dir.display().to_string();
    let from_sqlite = dir.path().join("sqlite.jsonl");
    let from_pg = dir.path().join("postgres.jsonl");
    registry_cli(
        &[
            "registry",
            "export",
            "--output",
            from_sqlite.to_str().unwrap(),
        ],
        &[("CERTMQ__STORAGE__DATA_DIR", &data_dir)],
    );
    let on_pg = [
        ("CERTMQ__STORAGE__BACKEND", "postgres"),
        ("CERTMQ__STORAGE__POSTGRES_URL", url.as_str()),
    ];
    let said = registry_cli(
        &["registry", "import", from_sqlite.to_str().unwrap()],
        &on_pg,
    );
    assert!(
        said.contains("imported 1 CAs, 3 device certificates and 1 custom permissions"),
        "{said}"
    );
    // The same lines back out of PostgreSQL.
    registry_cli(
        &["registry", "export", "--output", from_pg.to_str().unwrap()],
        &on_pg,
    );
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    assert_eq!(read(&from_pg), read(&from_sqlite));

    // A node on the moved registry: statuses and permissions as they were.
    settings.storage.backend = StorageBackend::Postgres;
    settings.storage.postgres_url = url.clone();
    let tb = support::TestBroker::launch(settings, server_ca, dir).await;
    assert_eq!(tb.broker.registry().device_count(), 3);
    assert!(
        connect(&tb, &devices[1], "mover-1", Version::V4)
            .await
            .is_err()
    );
    connect(&tb, &devices[0], "mover-0", Version::V4)
        .await
        .unwrap()
        .disconnect()
        .await;
    let (status, body) = tb
        .admin(&[
            ("Action", "QueryCustomAuthPermission"),
            ("InstanceId", &instance),
            ("Size", "10"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("fleet/#"), "{body}");
    // `certmq authz explain` reads them from PostgreSQL, the node running.
    let mover = &devices[2].identity;
    let (ca_sn, device_sn) = (mover.ca_sn.to_string(), mover.device_sn.to_string());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args([
            "authz",
            "explain",
            "--ca-sn",
            &ca_sn,
            "--device-sn",
            &device_sn,
        ])
        .args(["--cn", "mover-2", "publish", "fleet/news"])
        .envs(on_pg)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains("allowed by policy `custom permission CLIENT mover-2` rule 1 (`fleet/#`)"),
        "{said}"
    );
    // Importing into a registry in use is refused, saying why.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_certmq"))
        .args(["registry", "import", from_sqlite.to_str().unwrap()])
        .envs(on_pg)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stop every node first"), "{stderr}");
}

/// First connections in a burst are registered by one statement per
/// batch: each distinct device once (the second connection of a device
/// finds it registered), each with its own number in the change feed, no
/// gap; a batch holding a device whose CA is gone falls back to one change
/// at a time, and only that device fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_first_connections_is_numbered_once_per_device() {
    use std::sync::Arc;

    use certmq::record::{CaRecord, CertStatus, DeviceRecord};
    use certmq::serial::{CaSn, DeviceSn};
    use certmq::store::{Change, StoreError};

    let Some(pg) = PgCluster::start() else {
        return;
    };
    let url = pg.database("burst").await;
    let store = Arc::new(PgStore::connect(&url, "burst").await.unwrap());
    let ca_sn = CaSn::parse("0A").unwrap();
    let ca = CaRecord {
        sn: ca_sn,
        name: "burst CA".into(),
        status: CertStatus::Active,
        valid_begin_ms: 0,
        valid_end_ms: i64::MAX,
        pem: Arc::from("-"),
        verification_pem: None,
        registration_code: None,
    };
    let first = store.commit(Change::RegisterCa(ca)).await.unwrap();
    assert_eq!((first.touched, first.seq), (1, Some(1)));
    let device = |ca: CaSn, n: u32| DeviceRecord {
        identity: certmq::identity::DeviceIdentity {
            ca_sn: ca,
            device_sn: DeviceSn::parse(&format!("{n:X}")).unwrap(),
        },
        name: Arc::from(format!("d{n}").as_str()),
        status: CertStatus::Active,
        valid_begin_ms: 0,
        valid_end_ms: i64::MAX,
        pem: Arc::from("-"),
    };
    // A burst of 400 devices, each twice; then one of 100 more and a
    // device of an unknown CA.
    let orphan = CaSn::parse("0B").unwrap();
    let burst = |records: Vec<DeviceRecord>| {
        let jobs: Vec<_> = records
            .into_iter()
            .map(|record| {
                let each = store.clone();
                tokio::spawn(async move { each.commit(Change::RegisterDevice(record)).await })
            })
            .collect();
        async move {
            let mut outcomes = Vec::new();
            for job in jobs {
                outcomes.push(job.await.unwrap());
            }
            outcomes
        }
    };
    let mut outcomes = burst((0..800).map(|n| device(ca_sn, n % 400 + 1)).collect()).await;
    let mut second: Vec<_> = (401..=500).map(|n| device(ca_sn, n)).collect();
    second.insert(50, device(orphan, 1));
    outcomes.extend(burst(second).await);
    let (mut seqs, mut already, mut refused) = (Vec::new(), 0, 0);
    for outcome in outcomes {
        match outcome {
            Ok(c) if c.touched == 1 => seqs.push(c.seq.expect("numbered")),
            Ok(c) => {
                assert_eq!(c.seq, None);
                already += 1;
            }
            Err(StoreError::Conflict(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((seqs.len(), already, refused), (500, 400, 1));
    seqs.sort();
    assert_eq!(
        seqs,
        (2..=501).collect::<Vec<u64>>(),
        "gapless, after the CA's"
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let logged: i64 = client
        .query_one("SELECT COUNT(*) FROM change_log WHERE kind = 'device'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 500);
    let head: i64 = client
        .query_one("SELECT seq FROM change_seq", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(head, 501);
}
