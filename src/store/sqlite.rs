//! The SQLite store: one database file in the data directory, WAL mode,
//! `synchronous=FULL` (a commit is on disk when it returns).
//!
//! Writes go through one writer thread that groups them: it takes every
//! change waiting in its queue, applies each in its own savepoint (one bad
//! change fails alone), and commits them together, one fsync for many. A
//! storm of first connections therefore costs a few fsyncs per second, not
//! one per device. Reads (the admin API's Get and List) use a second
//! connection and never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use super::schema::{self, MigrateError};
use super::{
    CA_COLUMNS, Change, Committed, DEVICE_COLUMNS, Snapshot, Store, StoreError, StoreFuture,
    status_code, status_from,
};
use crate::identity::DeviceIdentity;
use crate::record::{
    CaRecord, DeviceRecord, IdentityKind, Page, PermissionKey, PermissionRecord, PermitAction,
    PermitEffect,
};
use crate::serial::{CaSn, DeviceSn, SerialError};

/// The database file inside `storage.data_dir`.
pub const FILE_NAME: &str = "registry.db";

/// Most changes committed in one transaction.
const MAX_BATCH: usize = 1024;

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    writer: Option<mpsc::UnboundedSender<Job>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    // A std Mutex: held only inside spawn_blocking, for one query.
    reader: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (or creates) the database at `path`, checks its integrity,
    /// brings its schema up to date, and starts the writer thread.
    /// `max_size_bytes` caps the database's size (0: no cap).
    pub fn open(path: &Path, max_size_bytes: u64) -> Result<SqliteStore, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(&e))?;
        configure(&writer).map_err(|e| open_err(&e))?;
        let problems: Vec<String> = {
            let mut check = writer
                .prepare("PRAGMA quick_check")
                .map_err(|e| open_err(&e))?;
            let rows = check
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| open_err(&e))?;
            rows.collect::<Result<_, _>>().map_err(|e| open_err(&e))?
        };
        if problems != ["ok"] {
            return Err(StoreError::Integrity {
                path: path.to_path_buf(),
                problems: problems.join("; "),
            });
        }
        let found = schema::migrate(&mut writer).map_err(|e| match e {
            MigrateError::TooNew(found) => StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                supported: schema::VERSION,
            },
            MigrateError::Sql(e) => open_err(&e),
        })?;
        if found < schema::VERSION {
            info!(file = %path.display(), from = found, to = schema::VERSION, "registry schema migrated");
        }
        if max_size_bytes > 0 {
            let page_size: u64 = writer
                .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                .map_err(|e| open_err(&e))? as u64;
            writer
                .pragma_update(
                    None,
                    "max_page_count",
                    (max_size_bytes / page_size.max(1)).max(1) as i64,
                )
                .map_err(|e| open_err(&e))?;
        }
        ensure_registration_code(&writer).map_err(|e| open_err(&e))?;

        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_err(&e))?;
        configure(&reader).map_err(|e| open_err(&e))?;

        let (tx, rx) = mpsc::unbounded_channel();
        let writer_thread = std::thread::Builder::new()
            .name("registry-writer".into())
            .spawn(move || write_loop(writer, rx))
            .map_err(|e| open_err(&e))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            query(&conn).map_err(|e| StoreError::Read(e.to_string()))
        })
        .await
        .map_err(|e| StoreError::Read(e.to_string()))?
    }
}

impl Drop for SqliteStore {
    /// Closes the store for good: the writer finishes what was queued and
    /// closes its connection (checkpointing the WAL) before this returns.
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The custom permissions stored in the database at `path`, read through a
/// read-only connection (a running broker may have it open), for tools
/// such as `certmq authz explain`. `Ok(None)`: no database there yet.
pub fn read_permissions(path: &Path) -> Result<Option<Vec<PermissionRecord>>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let fail = |e: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
    let found = schema::version(&conn).map_err(fail)?;
    if found > schema::VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found,
            supported: schema::VERSION,
        });
    }
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'custom_permission'",
            [],
            |r| r.get(0),
        )
        .map_err(fail)?;
    if !has_table {
        // Written by a certmq from before custom permissions: it has none.
        return Ok(Some(Vec::new()));
    }
    let records = conn
        .prepare(&super::all_permissions_query())
        .and_then(|mut query| query.query_map([], permission_from_row)?.collect())
        .map_err(|e| StoreError::Read(format!("{}: {e}", path.display())))?;
    Ok(Some(records))
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the database refused WAL mode (it is in {mode} mode)"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

fn ensure_registration_code(conn: &Connection) -> rusqlite::Result<()> {
    let code = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    conn.execute(
        "INSERT OR IGNORE INTO instance (id, registration_code) VALUES (1, ?1)",
        params![code],
    )?;
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The writer thread: group commit until every sender is gone.
fn write_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Applies each change in its own savepoint, commits all at once. If the
/// commit fails, every change of the batch fails.
fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Vec<Result<u64, StoreError>> {
    let write_err = |e: rusqlite::Error| StoreError::Write(e.to_string());
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            return batch
                .iter()
                .map(|_| Err(write_err(e.clone_error())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = tx.savepoint().map_err(write_err).and_then(|mut sp| {
            let applied = apply(&sp, &job.change)?;
            sp.set_drop_behavior(rusqlite::DropBehavior::Commit);
            sp.commit().map_err(write_err)?;
            Ok(applied)
        });
        if let Err(e) = &result {
            // Some errors (a full disk, an I/O error) make SQLite roll the
            // whole transaction back: then the batch fails as one, with the
            // error that caused it.
            if tx.is_autocommit() {
                error!(error = %e, changes = batch.len(), "registry write failed");
                return batch.iter().map(|_| Err(e.clone())).collect();
            }
        }
        results.push(result);
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => {
            error!(error = %e, changes = batch.len(), "registry commit failed");
            batch
                .iter()
                .map(|_| Err(write_err(e.clone_error())))
                .collect()
        }
    }
}

trait CloneError {
    fn clone_error(&self) -> rusqlite::Error;
}

impl CloneError for rusqlite::Error {
    fn clone_error(&self) -> rusqlite::Error {
        rusqlite::Error::InvalidParameterName(self.to_string())
    }
}

fn apply(conn: &Connection, change: &Change) -> Result<u64, StoreError> {
    let now = now_ms();
    let result = match change {
        Change::RegisterCa(ca) => conn.execute(
            "INSERT INTO ca (sn, name, status, valid_begin_ms, valid_end_ms, pem, verification_pem,
                             registration_code, registered_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            params![
                ca.sn.to_string(),
                ca.name,
                i64::from(status_code(ca.status)),
                ca.valid_begin_ms,
                ca.valid_end_ms,
                &*ca.pem,
                ca.verification_pem.as_deref(),
                ca.registration_code.as_deref(),
                now
            ],
        ),
        Change::SetCaStatus(sn, status) => conn.execute(
            "UPDATE ca SET status = ?2, updated_at_ms = ?3 WHERE sn = ?1",
            params![sn.to_string(), i64::from(status_code(*status)), now],
        ),
        Change::DeleteCa(sn) => conn.execute("DELETE FROM ca WHERE sn = ?1", params![sn.to_string()]),
        Change::RegisterDevice(d) => conn.execute(
            "INSERT OR IGNORE INTO device (ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem,
                                           first_seen_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                d.identity.ca_sn.to_string(),
                d.identity.device_sn.to_string(),
                &*d.name,
                i64::from(status_code(d.status)),
                d.valid_begin_ms,
                d.valid_end_ms,
                &*d.pem,
                now
            ],
        ),
        Change::SetDeviceStatus(id, status) => conn.execute(
            "UPDATE device SET status = ?3, updated_at_ms = ?4 WHERE ca_sn = ?1 AND device_sn = ?2",
            params![id.ca_sn.to_string(), id.device_sn.to_string(), i64::from(status_code(*status)), now],
        ),
        Change::DeleteDevice(id) => conn.execute(
            "DELETE FROM device WHERE ca_sn = ?1 AND device_sn = ?2",
            params![id.ca_sn.to_string(), id.device_sn.to_string()],
        ),
        Change::PutPermission(p) => put_permission(conn, p, now),
        Change::DeletePermission(key) => conn.execute(
            "DELETE FROM custom_permission WHERE identity_type = ?1 AND identity = ?2 AND topic = ?3",
            params![key.kind.api_name(), key.identity, key.topic],
        ),
    };
    match result {
        Ok(n) => Ok(n as u64),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::Conflict(msg.unwrap_or_else(|| e.to_string())))
        }
        Err(e) => Err(StoreError::Write(e.to_string())),
    }
}

/// Stores a custom permission, replacing the one with its key (the
/// store's changes and backup imports alike).
pub(super) fn put_permission(
    conn: &Connection,
    p: &PermissionRecord,
    now: i64,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO custom_permission (identity_type, identity, topic, permit_action, effect,
                                        created_at_ms, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (identity_type, identity, topic)
         DO UPDATE SET permit_action = ?4, effect = ?5, updated_at_ms = ?6",
        params![
            p.key.kind.api_name(),
            p.key.identity,
            p.key.topic,
            p.action.api_name(),
            p.effect.api_name(),
            now
        ],
    )
}

/// The instance's registration code, made with the database.
pub(super) fn registration_code(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row(
        "SELECT registration_code FROM instance WHERE id = 1",
        [],
        |r| r.get(0),
    )
}

/// A stored serial that does not parse, as a row conversion error.
fn bad_serial(column: usize, what: &str, value: &str, e: SerialError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("{what} `{value}`: {e}").into(),
    )
}

pub(super) fn ca_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CaRecord> {
    let sn: String = row.get(0)?;
    Ok(CaRecord {
        sn: CaSn::parse(&sn).map_err(|e| bad_serial(0, "CA serial", &sn, e))?,
        name: row.get(1)?,
        status: status_from(row.get::<_, i16>(2)?),
        valid_begin_ms: row.get(3)?,
        valid_end_ms: row.get(4)?,
        pem: row.get::<_, String>(5)?.into(),
        verification_pem: row.get::<_, Option<String>>(6)?.map(Into::into),
        registration_code: row.get::<_, Option<String>>(7)?.map(Into::into),
    })
}

pub(super) fn permission_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PermissionRecord> {
    let text = |column: usize, value: &str, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown {what} `{value}`").into(),
        )
    };
    let kind: String = row.get(0)?;
    let action: String = row.get(3)?;
    let effect: String = row.get(4)?;
    Ok(PermissionRecord {
        key: PermissionKey {
            kind: IdentityKind::from_api_name(&kind)
                .ok_or_else(|| text(0, &kind, "identity type"))?,
            identity: row.get(1)?,
            topic: row.get(2)?,
        },
        action: PermitAction::from_api_name(&action)
            .ok_or_else(|| text(3, &action, "permit action"))?,
        effect: PermitEffect::from_api_name(&effect).ok_or_else(|| text(4, &effect, "effect"))?,
    })
}

pub(super) fn device_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let ca_sn: String = row.get(0)?;
    let device_sn: String = row.get(1)?;
    Ok(DeviceRecord {
        identity: DeviceIdentity {
            ca_sn: CaSn::parse(&ca_sn).map_err(|e| bad_serial(0, "device CA serial", &ca_sn, e))?,
            device_sn: DeviceSn::parse(&device_sn)
                .map_err(|e| bad_serial(1, "device serial", &device_sn, e))?,
        },
        name: row.get::<_, String>(2)?.into(),
        status: status_from(row.get::<_, i16>(3)?),
        valid_begin_ms: row.get(4)?,
        valid_end_ms: row.get(5)?,
        pem: row.get::<_, String>(6)?.into(),
    })
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let read = |e: rusqlite::Error| StoreError::Read(format!("{}: {e}", self.path.display()));
        let registration_code = registration_code(&conn).map_err(read)?;
        let cas = conn
            .prepare(&format!("SELECT {CA_COLUMNS} FROM ca ORDER BY rowid"))
            .and_then(|mut stmt| stmt.query_map([], ca_from_row)?.collect())
            .map_err(read)?;
        let mut devices = Vec::new();
        let mut stmt = conn
            .prepare("SELECT ca_sn, device_sn, status FROM device")
            .map_err(read)?;
        let mut rows = stmt.query([]).map_err(read)?;
        while let Some(row) = rows.next().map_err(read)? {
            let ca_sn = row
                .get_ref(0)
                .map_err(read)?
                .as_str()
                .map_err(|e| read(e.into()))?;
            let device_sn = row
                .get_ref(1)
                .map_err(read)?
                .as_str()
                .map_err(|e| read(e.into()))?;
            let identity = DeviceIdentity {
                ca_sn: CaSn::parse(ca_sn)
                    .map_err(|e| StoreError::Read(format!("device CA serial `{ca_sn}`: {e}")))?,
                device_sn: DeviceSn::parse(device_sn)
                    .map_err(|e| StoreError::Read(format!("device serial `{device_sn}`: {e}")))?,
            };
            devices.push((identity, status_from(row.get::<_, i16>(2).map_err(read)?)));
        }
        Ok(Snapshot {
            registration_code,
            cas,
            devices,
            seq: 0,
        })
    }

    fn commit(&self, change: Change) -> StoreFuture<'_, Committed> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            let writer = self.writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .send(Job { change, reply })
                .map_err(|_| StoreError::Closed)?;
            answer
                .await
                .map_err(|_| StoreError::Closed)?
                .map(Committed::local)
        })
    }

    fn device(&self, id: DeviceIdentity) -> StoreFuture<'_, Option<DeviceRecord>> {
        Box::pin(self.read(move |conn| {
            conn.query_row(
                &format!("SELECT {DEVICE_COLUMNS} FROM device WHERE ca_sn = ?1 AND device_sn = ?2"),
                params![id.ca_sn.to_string(), id.device_sn.to_string()],
                device_from_row,
            )
            .optional()
        }))
    }

    fn list_devices(
        &self,
        ca: Option<CaSn>,
        keyword: Option<String>,
        offset: usize,
        limit: usize,
    ) -> StoreFuture<'_, Page<DeviceRecord>> {
        Box::pin(self.read(move |conn| {
            let ca = ca.map(|sn| sn.to_string());
            let pattern = keyword.as_deref().map(super::like_pattern);
            // LIKE ignores ASCII case in SQLite.
            const WHERE: &str = "(?1 IS NULL OR ca_sn = ?1) AND (?2 IS NULL \
                 OR device_sn LIKE ?2 ESCAPE '\\' OR name LIKE ?2 ESCAPE '\\')";
            let total: i64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM device WHERE {WHERE}"),
                params![ca, pattern],
                |r| r.get(0),
            )?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {DEVICE_COLUMNS} FROM device WHERE {WHERE} ORDER BY rowid LIMIT ?3 OFFSET ?4"
            ))?;
            let items = stmt
                .query_map(
                    params![ca, pattern, limit as i64, offset as i64],
                    device_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page {
                items,
                total: total as usize,
            })
        }))
    }

    fn permissions(&self) -> StoreFuture<'_, Vec<PermissionRecord>> {
        Box::pin(self.read(|conn| {
            conn.prepare(&super::all_permissions_query())?
                .query_map([], permission_from_row)?
                .collect()
        }))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn is_healthy(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &Path, version: i64, migrations: usize) -> PathBuf {
        let path = dir.join(format!("v{version}.db"));
        let conn = Connection::open(&path).unwrap();
        for sql in &schema::MIGRATIONS[..migrations] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", version).unwrap();
        path
    }

    #[test]
    fn permissions_are_read_from_any_registry_this_certmq_can_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_permissions(&dir.path().join("none.db"))
                .unwrap()
                .is_none()
        );
        // From before custom permissions: none.
        let old = database(dir.path(), 1, 1);
        assert_eq!(read_permissions(&old).unwrap(), Some(Vec::new()));
        let newer = database(dir.path(), schema::VERSION + 1, schema::MIGRATIONS.len());
        let err = read_permissions(&newer).unwrap_err().to_string();
        assert!(err.contains("newer than this certmq understands"), "{err}");
    }
}
