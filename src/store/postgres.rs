//! The PostgreSQL store (`storage.backend = "postgres"`): the registry of
//! several brokers in one database.
//!
//! Like the SQLite store, every change is committed before it is
//! acknowledged, and writes are grouped: one writer task takes every change
//! waiting in its queue, applies each in its own savepoint (one bad change
//! fails alone) and commits them together, one round trip and one WAL flush
//! for many. Reads (the admin API's Get and List) use a second connection.
//! Both reconnect on the next use after the database went away; the writer
//! also checks the database every second between batches, so the store
//! reports itself unhealthy (unready) while it is away and changes fail
//! (never half-done). Every operation is bounded in time.
//!
//! The schema is migrated at start under an advisory lock, so that nodes
//! starting together migrate one at a time (`postgres_schema`). The
//! snapshot the in-memory index loads is read in one repeatable-read
//! transaction when the store connects.
//!
//! Several brokers share one database. Each change that touched something
//! is numbered and logged in its transaction, and the transaction notifies
//! the other brokers when it commits (`feed`); the store answers with the
//! number, and the broker that made the change waits until every broker
//! has applied it (`cluster`). The store itself never changes the
//! in-memory index.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Row};
use tracing::{error, info, warn};

use super::{
    CA_COLUMNS, Change, Committed, DEVICE_COLUMNS, Snapshot, Store, StoreError, StoreFuture,
    status_code, status_from,
};
use super::{feed, postgres_schema};
use crate::identity::DeviceIdentity;
use crate::record::{
    CaRecord, DeviceRecord, IdentityKind, Page, PermissionKey, PermissionRecord, PermitAction,
    PermitEffect,
};
use crate::serial::{CaSn, DeviceSn};

/// The registry schema version this certmq writes.
pub const SCHEMA_VERSION: i64 = postgres_schema::VERSION;

/// Most changes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// How long connecting may take before the store says the database is
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// The PostgreSQL store.
pub struct PgStore {
    /// `host:port/database`, for messages (never the password).
    location: String,
    snapshot: Mutex<Option<Snapshot>>,
    writer: mpsc::UnboundedSender<Job>,
    reader: Connection,
    healthy: Arc<AtomicBool>,
}

/// Parses `storage.postgres_url`, with certmq's connection settings.
pub fn config(url: &str) -> Result<Config, StoreError> {
    let mut config: Config = url.parse().map_err(|e| StoreError::Open {
        path: "storage.postgres_url".into(),
        reason: format!(
            "not a PostgreSQL connection string ({e}); expected postgres://user:password@host:5432/database"
        ),
    })?;
    config
        .application_name("certmq")
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3)
        .tcp_user_timeout(OPERATION_TIMEOUT);
    Ok(config)
}

/// Where a configuration points, for messages: hosts, port, database.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres {}:{port}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// One connection that comes back after the database went away.
pub(crate) struct Connection {
    config: Config,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Connection {
    pub(crate) fn new(config: Config) -> Self {
        Connection {
            config,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Drops the client (one that stopped answering): the next use
    /// connects again.
    pub(crate) async fn reset(&self) {
        *self.client.lock().await = None;
    }

    /// The live client, connecting first if there is none (or it closed).
    pub(crate) async fn client(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            let client = connect(&self.config).await?;
            *slot = Some(client);
        }
        Ok(tokio::sync::MutexGuard::map(slot, |c| {
            c.as_mut().expect("connected above")
        }))
    }
}

pub(crate) async fn connect(config: &Config) -> Result<Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await.map_err(|e| StoreError::Open {
        path: describe(config).into(),
        reason: e.to_string(),
    })?;
    let at = describe(config);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(store = %at, error = %e, "registry connection lost");
        }
    });
    Ok(client)
}

/// The custom permissions stored in the database at `url`, read on a
/// connection of their own (schema unchanged), for tools such as `certmq
/// authz explain`.
pub async fn read_permissions(url: &str) -> Result<Vec<PermissionRecord>, StoreError> {
    let config = config(url)?;
    let location = describe(&config);
    let client = connect(&config).await?;
    let undefined = |e: &tokio_postgres::Error| {
        e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
    };
    match client
        .query_opt("SELECT version FROM certmq_schema WHERE id = 1", &[])
        .await
    {
        Ok(Some(row)) => {
            let found: i64 = row.get(0);
            if found > postgres_schema::VERSION {
                return Err(StoreError::SchemaTooNew {
                    path: location.into(),
                    found,
                    supported: postgres_schema::VERSION,
                });
            }
        }
        Ok(None) => {}
        // No schema yet: the first broker start creates it.
        Err(e) if undefined(&e) => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::Read(format!("{location}: {}", db_message(&e)))),
    }
    let rows = client.query(&super::all_permissions_query(), &[]).await;
    match rows {
        Ok(rows) => rows.iter().map(permission_from_row).collect(),
        // A schema from before custom permissions: none.
        Err(e) if undefined(&e) => Ok(Vec::new()),
        Err(e) => Err(StoreError::Read(format!("{location}: {}", db_message(&e)))),
    }
}

impl PgStore {
    /// Connects to the database at `url`, brings its schema up to date,
    /// reads the snapshot and starts the writer. `origin` (the node id)
    /// is recorded with each change in the log.
    pub async fn connect(url: &str, origin: &str) -> Result<PgStore, StoreError> {
        let config = config(url)?;
        let location = describe(&config);
        let mut client = connect(&config).await?;
        let open_err = |e: tokio_postgres::Error| StoreError::Open {
            path: location.clone().into(),
            reason: db_message(&e),
        };
        let found = postgres_schema::migrate(&mut client)
            .await
            .map_err(|e| match e {
                postgres_schema::MigrateError::TooNew(found) => StoreError::SchemaTooNew {
                    path: location.clone().into(),
                    found,
                    supported: postgres_schema::VERSION,
                },
                postgres_schema::MigrateError::Sql(e) => open_err(e),
            })?;
        if found < postgres_schema::VERSION {
            info!(store = %location, from = found, to = postgres_schema::VERSION, "registry schema migrated");
        }
        let code = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
        client
            .execute(
                "INSERT INTO instance (id, registration_code) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
                &[&code],
            )
            .await
            .map_err(open_err)?;
        let snapshot = read_snapshot(&mut client)
            .await
            .map_err(|e| StoreError::Read(format!("{location}: {e}")))?;
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(
            Connection {
                config: config.clone(),
                client: tokio::sync::Mutex::new(Some(client)),
            },
            rx,
            healthy.clone(),
            Arc::from(origin),
        ));
        Ok(PgStore {
            location,
            snapshot: Mutex::new(Some(snapshot)),
            writer: tx,
            reader: Connection::new(config),
            healthy,
        })
    }

    async fn read<T>(
        &self,
        query: impl AsyncFnOnce(&Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let answered = tokio::time::timeout(OPERATION_TIMEOUT, async {
            let client = self.reader.client().await.map_err(|e| {
                StoreError::Read(format!("the registry database is unreachable: {e}"))
            })?;
            query(&client).await
        })
        .await;
        match answered {
            Ok(result) => result,
            Err(_) => {
                self.reader.reset().await;
                Err(StoreError::Read(format!(
                    "the registry database did not answer within {} s",
                    OPERATION_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// The PostgreSQL error's own message (with its detail), not just "db
/// error".
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

fn read_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Read(db_message(&e))
}

async fn read_snapshot(client: &mut Client) -> Result<Snapshot, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read_err)?;
    let registration_code: String = tx
        .query_one("SELECT registration_code FROM instance WHERE id = 1", &[])
        .await
        .map_err(read_err)?
        .get(0);
    let cas = tx
        .query(&format!("SELECT {CA_COLUMNS} FROM ca ORDER BY ord"), &[])
        .await
        .map_err(read_err)?
        .iter()
        .map(ca_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let rows = tx
        .query("SELECT ca_sn, device_sn, status FROM device", &[])
        .await
        .map_err(read_err)?;
    let mut devices = Vec::with_capacity(rows.len());
    for row in &rows {
        devices.push((identity_from(row, 0, 1)?, status_from(row.get(2))));
    }
    let seq = feed::head(&tx).await.map_err(read_err)?;
    tx.commit().await.map_err(read_err)?;
    Ok(Snapshot {
        registration_code,
        cas,
        devices,
        seq,
    })
}

/// How often the writer checks the database while nothing is written
/// (and tries it again while it is away): readiness follows the database,
/// not the next change.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The longest a batch, a probe or a read may take: a database that stops
/// answering (a hung server, a black-holed network) fails them instead of
/// holding the writer and every admin call behind it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The writer: group commit until every sender is gone. Between batches it
/// checks the database every [`PROBE_EVERY`] (reconnecting when the
/// connection was lost).
async fn write_loop(
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Job>,
    healthy: Arc<AtomicBool>,
    origin: Arc<str>,
) {
    let at = describe(&conn.config);
    loop {
        let next = tokio::select! {
            job = rx.recv() => job,
            _ = tokio::time::sleep(PROBE_EVERY) => {
                let up = probe(&conn).await;
                let was = healthy.swap(up, Ordering::AcqRel);
                if up && !was {
                    info!(store = %at, "registry database reachable again");
                } else if !up && was {
                    warn!(store = %at, "registry database unreachable: changes fail until it is back");
                }
                continue;
            }
        };
        let Some(first) = next else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = tokio::time::timeout(OPERATION_TIMEOUT, async {
            match conn.client().await {
                Ok(mut client) => commit_batch(&mut client, &batch, &origin).await,
                Err(e) => {
                    let e = StoreError::Write(format!("the registry database is unreachable: {e}"));
                    (batch.iter().map(|_| Err(e.clone())).collect(), true)
                }
            }
        })
        .await;
        let (results, transaction_failed) = match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                conn.reset().await;
                let e = StoreError::Write(format!(
                    "the registry database did not answer within {} s; nothing was changed",
                    OPERATION_TIMEOUT.as_secs()
                ));
                (batch.iter().map(|_| Err(e.clone())).collect(), true)
            }
        };
        healthy.store(!transaction_failed, Ordering::Release);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Whether the writer's connection answers (reconnecting if need be).
async fn probe(conn: &Connection) -> bool {
    let answered = tokio::time::timeout(OPERATION_TIMEOUT, async {
        match conn.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    match answered {
        Ok(up) => up,
        Err(_) => {
            conn.reset().await;
            false
        }
    }
}

/// Applies each change in its own savepoint, logging it in the change feed
/// when it touched something, commits all at once: each change's result,
/// and whether the transaction itself failed (then every change of the
/// batch fails, and the database is taken to be away).
///
/// A connection lost during COMMIT leaves its outcome unknown: the server
/// may have committed what is reported here as failed. Such a change is in
/// the change log all the same, and every node, this one included, applies
/// the log (`cluster::feed`): the in-memory index catches up once the feed
/// reads it, and a caller who was told it failed and retries finds it done.
async fn commit_batch(
    client: &mut Client,
    batch: &[Job],
    origin: &str,
) -> (Vec<Result<Committed, StoreError>>, bool) {
    let whole = |e: &tokio_postgres::Error| -> (Vec<Result<Committed, StoreError>>, bool) {
        let e = StoreError::Write(db_message(e));
        (batch.iter().map(|_| Err(e.clone())).collect(), true)
    };
    let mut tx = match client.transaction().await {
        Ok(tx) => tx,
        Err(e) => return whole(&e),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut last_seq = None;
    let now = crate::store::sqlite::now_ms();
    // A burst of first connections: one statement for all of them.
    if batch.len() > 1
        && batch
            .iter()
            .all(|j| matches!(j.change, Change::RegisterDevice(_)))
    {
        match register_devices(&mut tx, batch, origin, now).await {
            Ok(Some(results)) => {
                let last = results.iter().filter_map(|r| r.seq).max();
                if let Some(seq) = last
                    && let Err(e) = feed::notify(&tx, seq).await
                {
                    return whole(&e);
                }
                return match tx.commit().await {
                    Ok(()) => (results.into_iter().map(Ok).collect(), false),
                    Err(e) => {
                        error!(error = %db_message(&e), changes = batch.len(), "registry commit failed");
                        whole(&e)
                    }
                };
            }
            // One of them failed (its CA was deleted): one at a time below.
            Ok(None) => {}
            Err(e) => return whole(&e),
        }
    }
    for job in batch {
        let mut savepoint = match tx.savepoint("change").await {
            Ok(sp) => sp,
            Err(e) => return whole(&e),
        };
        let applied = match apply(&mut savepoint, &job.change, now).await {
            // Nothing to do; the feed's head says by when that was
            // true, so that a caller can wait until every node has seen
            // what made it so (a retried deletion).
            Ok(0) => feed::head(&savepoint).await.map(|head| Committed {
                touched: 0,
                seq: Some(head),
            }),
            Ok(touched) => feed::log(&savepoint, &job.change, origin)
                .await
                .map(|seq| Committed {
                    touched,
                    seq: Some(seq),
                }),
            Err(e) => Err(e),
        };
        match applied {
            Ok(committed) => {
                if let Err(e) = savepoint.commit().await {
                    return whole(&e);
                }
                last_seq = committed.seq.or(last_seq);
                results.push(Ok(committed));
            }
            Err(e) => {
                if e.code().is_none() || savepoint.rollback().await.is_err() {
                    // Not the change's fault (the connection, the server):
                    // the batch fails as one, with the error that caused it.
                    error!(error = %db_message(&e), changes = batch.len(), "registry write failed");
                    return whole(&e);
                }
                results.push(Err(change_error(&e)));
            }
        }
    }
    if let Some(seq) = last_seq
        && let Err(e) = feed::notify(&tx, seq).await
    {
        return whole(&e);
    }
    match tx.commit().await {
        Ok(()) => (results, false),
        Err(e) => {
            error!(error = %db_message(&e), changes = batch.len(), "registry commit failed");
            whole(&e)
        }
    }
}

/// A multi-row insert of device records: `$1` to `$7` the columns of
/// [`DeviceColumns`], `$8` the time; the caller adds its ON CONFLICT.
pub(crate) const INSERT_DEVICES: &str =
    "INSERT INTO device (ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem,
                         first_seen_ms, updated_at_ms)
     SELECT r.ca_sn, r.device_sn, r.name, r.status, r.b, r.e, r.pem, $8, $8
     FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::int8[], $6::int8[], $7::text[])
          WITH ORDINALITY AS r(ca_sn, device_sn, name, status, b, e, pem, n)
     ORDER BY r.n";

/// Device records as the column arrays of [`INSERT_DEVICES`], in order.
pub(crate) struct DeviceColumns {
    ca_sns: Vec<String>,
    device_sns: Vec<String>,
    names: Vec<String>,
    statuses: Vec<i16>,
    begins: Vec<i64>,
    ends: Vec<i64>,
    pems: Vec<String>,
}

impl DeviceColumns {
    pub(crate) fn of<'a>(devices: impl Iterator<Item = &'a DeviceRecord>) -> Self {
        let mut c = DeviceColumns {
            ca_sns: Vec::new(),
            device_sns: Vec::new(),
            names: Vec::new(),
            statuses: Vec::new(),
            begins: Vec::new(),
            ends: Vec::new(),
            pems: Vec::new(),
        };
        for d in devices {
            c.ca_sns.push(d.identity.ca_sn.to_string());
            c.device_sns.push(d.identity.device_sn.to_string());
            c.names.push(d.name.to_string());
            c.statuses.push(status_code(d.status));
            c.begins.push(d.valid_begin_ms);
            c.ends.push(d.valid_end_ms);
            c.pems.push(d.pem.to_string());
        }
        c
    }

    /// The parameters of [`INSERT_DEVICES`].
    pub(crate) fn params<'a>(
        &'a self,
        now: &'a i64,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.ca_sns,
            &self.device_sns,
            &self.names,
            &self.statuses,
            &self.begins,
            &self.ends,
            &self.pems,
            now,
        ]
    }
}

/// Registers every device of `batch` (all `RegisterDevice`) in one
/// statement, in a savepoint, and logs those that were new. `None`: the
/// statement failed for a reason of the changes' own (rolled back; the
/// caller goes one change at a time to find which); `Err`: the database
/// failed.
async fn register_devices(
    tx: &mut tokio_postgres::Transaction<'_>,
    batch: &[Job],
    origin: &str,
    now: i64,
) -> Result<Option<Vec<Committed>>, tokio_postgres::Error> {
    let devices: Vec<&DeviceRecord> = batch
        .iter()
        .filter_map(|j| match &j.change {
            Change::RegisterDevice(d) => Some(d),
            _ => None,
        })
        .collect();
    let columns = DeviceColumns::of(devices.iter().copied());
    let savepoint = tx.savepoint("registrations").await?;
    let inserted = savepoint
        .query(
            &format!(
                "{INSERT_DEVICES} ON CONFLICT (ca_sn, device_sn) DO NOTHING RETURNING ca_sn, device_sn"
            ),
            &columns.params(&now),
        )
        .await;
    let inserted = match inserted {
        Ok(rows) => rows,
        Err(e) if e.code().is_some() => {
            savepoint.rollback().await?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut new: std::collections::HashSet<(String, String)> = inserted
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // In batch order; a device twice in the batch was new for its first.
    let fresh: Vec<bool> = columns
        .ca_sns
        .iter()
        .zip(&columns.device_sns)
        .map(|(ca, dev)| new.remove(&(ca.clone(), dev.clone())))
        .collect();
    let logged: Vec<&Change> = batch
        .iter()
        .zip(&fresh)
        .filter(|(_, fresh)| **fresh)
        .map(|(job, _)| &job.change)
        .collect();
    let mut seqs = feed::log_many(&savepoint, &logged, origin)
        .await?
        .into_iter();
    savepoint.commit().await?;
    Ok(Some(
        fresh
            .into_iter()
            .map(|fresh| match fresh {
                true => Committed {
                    touched: 1,
                    seq: seqs.next(),
                },
                false => Committed::local(0),
            })
            .collect(),
    ))
}

fn change_error(e: &tokio_postgres::Error) -> StoreError {
    let conflict = [
        SqlState::UNIQUE_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::CHECK_VIOLATION,
        SqlState::NOT_NULL_VIOLATION,
    ];
    match e.code() {
        Some(code) if conflict.contains(code) => StoreError::Conflict(db_message(e)),
        _ => StoreError::Write(db_message(e)),
    }
}

async fn apply(
    tx: &mut tokio_postgres::Transaction<'_>,
    change: &Change,
    now: i64,
) -> Result<u64, tokio_postgres::Error> {
    match change {
        Change::RegisterCa(ca) => {
            tx.execute(
                "INSERT INTO ca (sn, name, status, valid_begin_ms, valid_end_ms, pem, verification_pem,
                                 registration_code, registered_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
                &[
                    &ca.sn.to_string(),
                    &ca.name,
                    &status_code(ca.status),
                    &ca.valid_begin_ms,
                    &ca.valid_end_ms,
                    &&*ca.pem,
                    &ca.verification_pem.as_deref(),
                    &ca.registration_code.as_deref(),
                    &now,
                ],
            )
            .await
        }
        Change::SetCaStatus(sn, status) => {
            tx.execute(
                "UPDATE ca SET status = $2, updated_at_ms = $3 WHERE sn = $1",
                &[&sn.to_string(), &status_code(*status), &now],
            )
            .await
        }
        Change::DeleteCa(sn) => {
            tx.execute("DELETE FROM ca WHERE sn = $1", &[&sn.to_string()])
                .await
        }
        Change::RegisterDevice(d) => {
            tx.execute(
                "INSERT INTO device (ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem,
                                     first_seen_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                 ON CONFLICT (ca_sn, device_sn) DO NOTHING",
                &[
                    &d.identity.ca_sn.to_string(),
                    &d.identity.device_sn.to_string(),
                    &&*d.name,
                    &status_code(d.status),
                    &d.valid_begin_ms,
                    &d.valid_end_ms,
                    &&*d.pem,
                    &now,
                ],
            )
            .await
        }
        Change::SetDeviceStatus(id, status) => {
            tx.execute(
                "UPDATE device SET status = $3, updated_at_ms = $4 WHERE ca_sn = $1 AND device_sn = $2",
                &[
                    &id.ca_sn.to_string(),
                    &id.device_sn.to_string(),
                    &status_code(*status),
                    &now,
                ],
            )
            .await
        }
        Change::DeleteDevice(id) => {
            tx.execute(
                "DELETE FROM device WHERE ca_sn = $1 AND device_sn = $2",
                &[&id.ca_sn.to_string(), &id.device_sn.to_string()],
            )
            .await
        }
        Change::PutPermission(p) => {
            tx.execute(
                "INSERT INTO custom_permission (identity_type, identity, topic, permit_action, effect,
                                                created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (identity_type, identity, topic)
                 DO UPDATE SET permit_action = $4, effect = $5, updated_at_ms = $6",
                &[
                    &p.key.kind.api_name(),
                    &p.key.identity,
                    &p.key.topic,
                    &p.action.api_name(),
                    &p.effect.api_name(),
                    &now,
                ],
            )
            .await
        }
        Change::DeletePermission(key) => {
            tx.execute(
                "DELETE FROM custom_permission WHERE identity_type = $1 AND identity = $2 AND topic = $3",
                &[&key.kind.api_name(), &key.identity, &key.topic],
            )
            .await
        }
    }
}

/// A stored serial that does not parse.
fn bad_serial(what: &str, value: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Read(format!("stored {what} `{value}` is not a serial: {e}"))
}

fn identity_from(row: &Row, ca: usize, device: usize) -> Result<DeviceIdentity, StoreError> {
    let ca_sn: &str = row.get(ca);
    let device_sn: &str = row.get(device);
    Ok(DeviceIdentity {
        ca_sn: CaSn::parse(ca_sn).map_err(|e| bad_serial("device CA serial", ca_sn, e))?,
        device_sn: DeviceSn::parse(device_sn)
            .map_err(|e| bad_serial("device serial", device_sn, e))?,
    })
}

fn ca_from_row(row: &Row) -> Result<CaRecord, StoreError> {
    ca_from_row_at(row, 0)
}

/// A CA record from the [`CA_COLUMNS`] that start at column `at`.
pub(crate) fn ca_from_row_at(row: &Row, at: usize) -> Result<CaRecord, StoreError> {
    let sn: &str = row.get(at);
    Ok(CaRecord {
        sn: CaSn::parse(sn).map_err(|e| bad_serial("CA serial", sn, e))?,
        name: row.get(at + 1),
        status: status_from(row.get(at + 2)),
        valid_begin_ms: row.get(at + 3),
        valid_end_ms: row.get(at + 4),
        pem: row.get::<_, String>(at + 5).into(),
        verification_pem: row.get::<_, Option<String>>(at + 6).map(Into::into),
        registration_code: row.get::<_, Option<String>>(at + 7).map(Into::into),
    })
}

pub(crate) fn device_from_row(row: &Row) -> Result<DeviceRecord, StoreError> {
    Ok(DeviceRecord {
        identity: identity_from(row, 0, 1)?,
        name: row.get::<_, String>(2).into(),
        status: status_from(row.get(3)),
        valid_begin_ms: row.get(4),
        valid_end_ms: row.get(5),
        pem: row.get::<_, String>(6).into(),
    })
}

pub(crate) fn permission_from_row(row: &Row) -> Result<PermissionRecord, StoreError> {
    let unknown =
        |what: &str, value: &str| StoreError::Read(format!("stored {what} `{value}` is unknown"));
    let kind: &str = row.get(0);
    let action: &str = row.get(3);
    let effect: &str = row.get(4);
    Ok(PermissionRecord {
        key: PermissionKey {
            kind: IdentityKind::from_api_name(kind)
                .ok_or_else(|| unknown("identity type", kind))?,
            identity: row.get(1),
            topic: row.get(2),
        },
        action: PermitAction::from_api_name(action)
            .ok_or_else(|| unknown("permit action", action))?,
        effect: PermitEffect::from_api_name(effect).ok_or_else(|| unknown("effect", effect))?,
    })
}

impl Store for PgStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                StoreError::Read(
                    "the PostgreSQL store's snapshot was already loaded; connect again to read a new one"
                        .into(),
                )
            })
    }

    fn commit(&self, change: Change) -> StoreFuture<'_, Committed> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.writer
                .send(Job { change, reply })
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn device(&self, id: DeviceIdentity) -> StoreFuture<'_, Option<DeviceRecord>> {
        Box::pin(self.read(async move |client: &Client| {
            client
                .query_opt(
                    &format!(
                        "SELECT {DEVICE_COLUMNS} FROM device WHERE ca_sn = $1 AND device_sn = $2"
                    ),
                    &[&id.ca_sn.to_string(), &id.device_sn.to_string()],
                )
                .await
                .map_err(read_err)?
                .as_ref()
                .map(device_from_row)
                .transpose()
        }))
    }

    fn list_devices(
        &self,
        ca: Option<CaSn>,
        keyword: Option<String>,
        offset: usize,
        limit: usize,
    ) -> StoreFuture<'_, Page<DeviceRecord>> {
        Box::pin(self.read(async move |client: &Client| {
            let ca = ca.map(|sn| sn.to_string());
            let pattern = keyword.as_deref().map(super::like_pattern);
            const WHERE: &str = "($1::text IS NULL OR ca_sn = $1) AND ($2::text IS NULL \
                 OR device_sn ILIKE $2 ESCAPE '\\' OR name ILIKE $2 ESCAPE '\\')";
            let (limit, offset) = (
                limit.min(i64::MAX as usize) as i64,
                offset.min(i64::MAX as usize) as i64,
            );
            let total: i64 = client
                .query_one(
                    &format!("SELECT COUNT(*) FROM device WHERE {WHERE}"),
                    &[&ca, &pattern],
                )
                .await
                .map_err(read_err)?
                .get(0);
            let items = client
                .query(
                    &format!(
                        "SELECT {DEVICE_COLUMNS} FROM device WHERE {WHERE}
                         ORDER BY ord LIMIT $3 OFFSET $4"
                    ),
                    &[&ca, &pattern, &limit, &offset],
                )
                .await
                .map_err(read_err)?
                .iter()
                .map(device_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page {
                items,
                total: total as usize,
            })
        }))
    }

    fn permissions(&self) -> StoreFuture<'_, Vec<PermissionRecord>> {
        Box::pin(self.read(async |client: &Client| {
            client
                .query(&super::all_permissions_query(), &[])
                .await
                .map_err(read_err)?
                .iter()
                .map(permission_from_row)
                .collect()
        }))
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn is_healthy(&self) -> bool {
        self.is_running() && self.healthy.load(Ordering::Acquire)
    }

    fn is_running(&self) -> bool {
        !self.writer.is_closed()
    }
}
