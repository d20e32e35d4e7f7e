//! Backup and migration: the registry as JSON lines.
//!
//! `certmq registry export` writes one JSON object per line: the instance
//! (its registration code), then every CA, then every device certificate,
//! bodies included, then every custom topic permission. `certmq registry import` reads such a file into a
//! registry database in one transaction, updating records that exist; it
//! refuses to run while a broker holds the data directory.

use std::io::{BufRead, Write};
use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::sqlite::{
    ca_from_row, device_from_row, now_ms, permission_from_row, put_permission, registration_code,
};
use super::{CA_COLUMNS, DEVICE_COLUMNS};
use crate::identity::DeviceIdentity;
use crate::record::{
    CaRecord, CertStatus, DeviceRecord, IdentityKind, PermissionKey, PermissionRecord,
    PermitAction, PermitEffect,
};
use crate::serial::{CaSn, DeviceSn};

/// One line of a backup.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Line {
    Instance {
        registration_code: String,
    },
    Ca {
        sn: String,
        name: String,
        /// "1" active, "0" inactive, as the API writes it.
        status: String,
        valid_begin_ms: i64,
        valid_end_ms: i64,
        pem: String,
        verification_pem: Option<String>,
        registration_code: Option<String>,
    },
    Device {
        ca_sn: String,
        device_sn: String,
        name: String,
        status: String,
        valid_begin_ms: i64,
        valid_end_ms: i64,
        pem: String,
    },
    Permission {
        /// `CLIENT`, `DEVICE` or `CA`, as the API writes them.
        identity_type: String,
        identity: String,
        topic: String,
        /// `PUB`, `SUB` or `PUB_SUB`.
        permit_action: String,
        /// `ALLOW` or `DENY`.
        effect: String,
    },
}

impl From<&PermissionRecord> for Line {
    fn from(p: &PermissionRecord) -> Line {
        Line::Permission {
            identity_type: p.key.kind.api_name().to_owned(),
            identity: p.key.identity.clone(),
            topic: p.key.topic.clone(),
            permit_action: p.action.api_name().to_owned(),
            effect: p.effect.api_name().to_owned(),
        }
    }
}

impl From<&CaRecord> for Line {
    fn from(ca: &CaRecord) -> Line {
        Line::Ca {
            sn: ca.sn.to_string(),
            name: ca.name.clone(),
            status: ca.status.api_code().to_owned(),
            valid_begin_ms: ca.valid_begin_ms,
            valid_end_ms: ca.valid_end_ms,
            pem: ca.pem.to_string(),
            verification_pem: ca.verification_pem.as_deref().map(str::to_owned),
            registration_code: ca.registration_code.as_deref().map(str::to_owned),
        }
    }
}

impl From<&DeviceRecord> for Line {
    fn from(device: &DeviceRecord) -> Line {
        Line::Device {
            ca_sn: device.identity.ca_sn.to_string(),
            device_sn: device.identity.device_sn.to_string(),
            name: device.name.to_string(),
            status: device.status.api_code().to_owned(),
            valid_begin_ms: device.valid_begin_ms,
            valid_end_ms: device.valid_end_ms,
            pem: device.pem.to_string(),
        }
    }
}

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot open the registry database {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("reading the registry failed: {0}")]
    Read(String),
    #[error("writing the backup failed: {0}")]
    Output(std::io::Error),
    #[error("line {line} of the backup: {reason}")]
    Line { line: usize, reason: String },
    #[error("importing failed, nothing was imported: {0}")]
    Import(String),
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub cas: usize,
    pub devices: usize,
    pub permissions: usize,
}

fn open(path: &Path, flags: OpenFlags) -> Result<Connection, BackupError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(
        |e| BackupError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).ok();
    Ok(conn)
}

/// Writes the registry at `db` (which may be in use by a running broker)
/// to `out`; returns how many lines.
pub fn export(db: &Path, out: &mut dyn Write) -> Result<usize, BackupError> {
    if !db.is_file() {
        return Err(BackupError::Open {
            path: db.display().to_string(),
            reason: "no such file (is storage.data_dir right?)".into(),
        });
    }
    let conn = open(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let read = |e: rusqlite::Error| BackupError::Read(e.to_string());
    // One read transaction: a consistent snapshot even while the broker writes.
    conn.execute_batch("BEGIN").map_err(read)?;
    let mut lines = 0;
    let mut emit = |line: &Line, out: &mut dyn Write| -> Result<(), BackupError> {
        emit(line, out)?;
        lines += 1;
        Ok(())
    };
    emit(
        &Line::Instance {
            registration_code: registration_code(&conn).map_err(read)?,
        },
        out,
    )?;
    let mut stmt = conn
        .prepare(&format!("SELECT {CA_COLUMNS} FROM ca ORDER BY rowid"))
        .map_err(read)?;
    for ca in stmt.query_map([], ca_from_row).map_err(read)? {
        emit(&Line::from(&ca.map_err(read)?), out)?;
    }
    drop(stmt);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM device ORDER BY rowid"
        ))
        .map_err(read)?;
    for device in stmt.query_map([], device_from_row).map_err(read)? {
        emit(&Line::from(&device.map_err(read)?), out)?;
    }
    drop(stmt);
    let mut stmt = conn
        .prepare(&super::all_permissions_query())
        .map_err(read)?;
    for permission in stmt.query_map([], permission_from_row).map_err(read)? {
        emit(&Line::from(&permission.map_err(read)?), out)?;
    }
    out.flush().map_err(BackupError::Output)?;
    Ok(lines)
}

fn status(line: usize, status: &str) -> Result<CertStatus, BackupError> {
    match status {
        "1" => Ok(CertStatus::Active),
        "0" => Ok(CertStatus::Inactive),
        other => Err(BackupError::Line {
            line,
            reason: format!("status must be \"1\" or \"0\", not {other:?}"),
        }),
    }
}

fn serial<T>(
    line: usize,
    what: &str,
    value: &str,
    parse: fn(&str) -> Result<T, crate::serial::SerialError>,
) -> Result<T, BackupError> {
    parse(value).map_err(|e| BackupError::Line {
        line,
        reason: format!("{what}: {e}"),
    })
}

/// A permission line, checked as the API checks a call.
fn permission(
    line: usize,
    identity_type: &str,
    identity: &str,
    topic: &str,
    permit_action: &str,
    effect: &str,
) -> Result<PermissionRecord, BackupError> {
    let bad = |reason: String| BackupError::Line { line, reason };
    let kind = IdentityKind::from_api_name(identity_type).ok_or_else(|| {
        bad(format!(
            "identity_type must be CLIENT, DEVICE or CA, not {identity_type:?}"
        ))
    })?;
    let key = PermissionKey::new(kind, identity, topic).map_err(|e| bad(e.to_string()))?;
    Ok(PermissionRecord {
        key,
        action: PermitAction::from_api_name(permit_action).ok_or_else(|| {
            bad(format!(
                "permit_action must be PUB, SUB or PUB_SUB, not {permit_action:?}"
            ))
        })?,
        effect: PermitEffect::from_api_name(effect)
            .ok_or_else(|| bad(format!("effect must be ALLOW or DENY, not {effect:?}")))?,
    })
}

/// One line of a backup, checked.
pub(crate) enum Record {
    Instance(String),
    Ca(CaRecord),
    Device(DeviceRecord),
    Permission(PermissionRecord),
}

/// Reads line `number` of a backup; `None` for a blank line.
pub(crate) fn parse_line(number: usize, text: &str) -> Result<Option<Record>, BackupError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let line: Line = serde_json::from_str(text).map_err(|e| BackupError::Line {
        line: number,
        reason: e.to_string(),
    })?;
    Ok(Some(match line {
        Line::Instance { registration_code } => Record::Instance(registration_code),
        Line::Ca {
            sn,
            name,
            status: code,
            valid_begin_ms,
            valid_end_ms,
            pem,
            verification_pem,
            registration_code,
        } => Record::Ca(CaRecord {
            sn: serial(number, "sn", &sn, CaSn::parse)?,
            name,
            status: status(number, &code)?,
            valid_begin_ms,
            valid_end_ms,
            pem: pem.into(),
            verification_pem: verification_pem.map(Into::into),
            registration_code: registration_code.map(Into::into),
        }),
        Line::Device {
            ca_sn,
            device_sn,
            name,
            status: code,
            valid_begin_ms,
            valid_end_ms,
            pem,
        } => Record::Device(DeviceRecord {
            identity: DeviceIdentity {
                ca_sn: serial(number, "ca_sn", &ca_sn, CaSn::parse)?,
                device_sn: serial(number, "device_sn", &device_sn, DeviceSn::parse)?,
            },
            name: name.into(),
            status: status(number, &code)?,
            valid_begin_ms,
            valid_end_ms,
            pem: pem.into(),
        }),
        Line::Permission {
            identity_type,
            identity,
            topic,
            permit_action,
            effect,
        } => Record::Permission(permission(
            number,
            &identity_type,
            &identity,
            &topic,
            &permit_action,
            &effect,
        )?),
    }))
}

/// Writes one line of a backup.
pub(crate) fn emit(line: &Line, out: &mut dyn Write) -> Result<(), BackupError> {
    serde_json::to_writer(&mut *out, line).map_err(|e| BackupError::Output(e.into()))?;
    out.write_all(b"\n").map_err(BackupError::Output)
}

/// Reads a backup into the database at `db` (created if missing), all or
/// nothing. The caller must hold the data directory (no broker running).
pub fn import(db: &Path, input: &mut dyn BufRead) -> Result<Imported, BackupError> {
    // Opening through the store creates, checks and migrates the database.
    drop(
        super::sqlite::SqliteStore::open(db, 0).map_err(|e| BackupError::Open {
            path: db.display().to_string(),
            reason: e.to_string(),
        })?,
    );
    let mut conn = open(db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(|e| BackupError::Import(e.to_string()))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| BackupError::Import(e.to_string()))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| BackupError::Import(e.to_string()))?;
    let import_err = |line: usize, e: rusqlite::Error| BackupError::Line {
        line,
        reason: e.to_string(),
    };
    let mut imported = Imported::default();
    let now = now_ms();
    for (index, text) in input.lines().enumerate() {
        let number = index + 1;
        let text = text.map_err(|e| BackupError::Line {
            line: number,
            reason: e.to_string(),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let Some(record) = parse_line(number, &text)? else {
            continue;
        };
        match record {
            Record::Instance(registration_code) => {
                tx.execute(
                    "INSERT INTO instance (id, registration_code) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET registration_code = excluded.registration_code",
                    params![registration_code],
                )
                .map_err(|e| import_err(number, e))?;
            }
            Record::Ca(ca) => {
                tx.execute(
                    "INSERT INTO ca (sn, name, status, valid_begin_ms, valid_end_ms, pem, verification_pem,
                                     registration_code, registered_at_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)
                     ON CONFLICT (sn) DO UPDATE SET name = excluded.name, status = excluded.status,
                        valid_begin_ms = excluded.valid_begin_ms, valid_end_ms = excluded.valid_end_ms,
                        pem = excluded.pem, verification_pem = excluded.verification_pem,
                        registration_code = excluded.registration_code, updated_at_ms = excluded.updated_at_ms",
                    params![
                        ca.sn.to_string(),
                        ca.name,
                        i64::from(super::status_code(ca.status)),
                        ca.valid_begin_ms,
                        ca.valid_end_ms,
                        &*ca.pem,
                        ca.verification_pem.as_deref(),
                        ca.registration_code.as_deref(),
                        now
                    ],
                )
                .map_err(|e| import_err(number, e))?;
                imported.cas += 1;
            }
            Record::Device(device) => {
                tx.execute(
                    "INSERT INTO device (ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem,
                                         first_seen_ms, updated_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
                     ON CONFLICT (ca_sn, device_sn) DO UPDATE SET name = excluded.name, status = excluded.status,
                        valid_begin_ms = excluded.valid_begin_ms, valid_end_ms = excluded.valid_end_ms,
                        pem = excluded.pem, updated_at_ms = excluded.updated_at_ms",
                    params![
                        device.identity.ca_sn.to_string(),
                        device.identity.device_sn.to_string(),
                        &*device.name,
                        i64::from(super::status_code(device.status)),
                        device.valid_begin_ms,
                        device.valid_end_ms,
                        &*device.pem,
                        now
                    ],
                )
                .map_err(|e| BackupError::Line {
                    line: number,
                    reason: format!("{e} (is its CA in the backup, before it?)"),
                })?;
                imported.devices += 1;
            }
            Record::Permission(record) => {
                put_permission(&tx, &record, now).map_err(|e| import_err(number, e))?;
                imported.permissions += 1;
            }
        }
    }
    tx.commit()
        .map_err(|e| BackupError::Import(e.to_string()))?;
    Ok(imported)
}
