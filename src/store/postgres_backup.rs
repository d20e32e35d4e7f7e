//! `certmq registry export/import` on the PostgreSQL store: the same JSON
//! lines as the SQLite store's (`backup`), so a registry moves from one to
//! the other by export and import.
//!
//! Export reads one repeatable-read snapshot through a cursor (bounded
//! memory however large the registry). Import runs in one transaction, all
//! or nothing, updating records that exist; it refuses while any node holds
//! a live lease (stop the brokers first, as for SQLite), and it numbers
//! every imported record in the change feed like any change, so that a
//! node that was cut off and comes back applies them too.

use std::io::{BufRead, Write};

use tokio_postgres::{Client, Transaction};

use super::backup::{BackupError, Imported, Line, Record, emit, parse_line};
use super::postgres::{
    DeviceColumns, INSERT_DEVICES, ca_from_row_at, config, connect, db_message, describe,
    device_from_row,
};
use super::postgres_schema;
use super::{CA_COLUMNS, Change, DEVICE_COLUMNS, feed, status_code};
use crate::record::DeviceRecord;

/// Device rows read or written per round trip.
const CHUNK: usize = 1000;

async fn open(url: &str) -> Result<(Client, String), BackupError> {
    let config = config(url).map_err(|e| BackupError::Open {
        path: "storage.postgres_url".into(),
        reason: e.to_string(),
    })?;
    let at = describe(&config);
    let client = connect(&config).await.map_err(|e| BackupError::Open {
        path: at.clone(),
        reason: e.to_string(),
    })?;
    Ok((client, at))
}

fn read_err(e: tokio_postgres::Error) -> BackupError {
    BackupError::Read(db_message(&e))
}

/// Writes the registry in the database at `url` (which brokers may be
/// using) to `out`; returns how many lines.
pub async fn export(url: &str, out: &mut dyn Write) -> Result<usize, BackupError> {
    let (mut client, at) = open(url).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read_err)?;
    let code = tx
        .query_opt("SELECT registration_code FROM instance WHERE id = 1", &[])
        .await
        .map_err(|e| BackupError::Open {
            path: at.clone(),
            reason: format!(
                "{} (has a broker ever started on this database?)",
                db_message(&e)
            ),
        })?
        .ok_or_else(|| BackupError::Read(format!("{at} holds no instance yet")))?;
    let mut lines = 0;
    emit(
        &Line::Instance {
            registration_code: code.get(0),
        },
        out,
    )?;
    lines += 1;
    for row in tx
        .query(&format!("SELECT {CA_COLUMNS} FROM ca ORDER BY ord"), &[])
        .await
        .map_err(read_err)?
    {
        let ca = ca_from_row_at(&row, 0).map_err(|e| BackupError::Read(e.to_string()))?;
        emit(&Line::from(&ca), out)?;
        lines += 1;
    }
    tx.batch_execute(&format!(
        "DECLARE devices NO SCROLL CURSOR FOR SELECT {DEVICE_COLUMNS} FROM device ORDER BY ord"
    ))
    .await
    .map_err(read_err)?;
    loop {
        let rows = tx
            .query(&format!("FETCH {CHUNK} FROM devices"), &[])
            .await
            .map_err(read_err)?;
        for row in &rows {
            let device = device_from_row(row).map_err(|e| BackupError::Read(e.to_string()))?;
            emit(&Line::from(&device), out)?;
            lines += 1;
        }
        if rows.len() < CHUNK {
            break;
        }
    }
    for row in tx
        .query(&super::all_permissions_query(), &[])
        .await
        .map_err(read_err)?
    {
        let permission = super::postgres::permission_from_row(&row)
            .map_err(|e| BackupError::Read(e.to_string()))?;
        emit(&Line::from(&permission), out)?;
        lines += 1;
    }
    tx.commit().await.map_err(read_err)?;
    out.flush().map_err(BackupError::Output)?;
    Ok(lines)
}

/// Reads a backup into the database at `url` (its schema created or
/// migrated first), all or nothing. Refused while a node holds a live
/// lease on it.
pub async fn import(url: &str, input: &mut dyn BufRead) -> Result<Imported, BackupError> {
    let (mut client, at) = open(url).await?;
    let failed = |e: tokio_postgres::Error| BackupError::Import(db_message(&e));
    postgres_schema::migrate(&mut client)
        .await
        .map_err(|e| BackupError::Open {
            path: at.clone(),
            reason: match e {
                postgres_schema::MigrateError::TooNew(found) => format!(
                    "registry schema version {found} is newer than this certmq understands ({})",
                    postgres_schema::VERSION
                ),
                postgres_schema::MigrateError::Sql(e) => db_message(&e),
            },
        })?;
    let live: Vec<String> = client
        .query(
            "SELECT node_id FROM node_lease WHERE expires_at > clock_timestamp() ORDER BY node_id",
            &[],
        )
        .await
        .map_err(failed)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !live.is_empty() {
        return Err(BackupError::Import(format!(
            "brokers are running on {at} (live leases: {}); stop every node first",
            live.join(", ")
        )));
    }
    let tx = client.transaction().await.map_err(failed)?;
    let now = super::sqlite::now_ms();
    let mut imported = Imported::default();
    let mut devices: Vec<(usize, DeviceRecord)> = Vec::with_capacity(CHUNK);
    let mut last_seq = None;
    let mut last_permission = None;
    for (index, text) in input.lines().enumerate() {
        let number = index + 1;
        let text = text.map_err(|e| BackupError::Line {
            line: number,
            reason: e.to_string(),
        })?;
        let Some(record) = parse_line(number, &text)? else {
            continue;
        };
        let line_err = |e: tokio_postgres::Error| BackupError::Line {
            line: number,
            reason: db_message(&e),
        };
        // Devices go in chunks; anything else first writes those before it.
        if !matches!(record, Record::Device(_)) && !devices.is_empty() {
            last_seq = put_devices(&tx, &mut devices, now).await?.or(last_seq);
        }
        match record {
            Record::Instance(code) => {
                tx.execute(
                    "INSERT INTO instance (id, registration_code) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET registration_code = excluded.registration_code",
                    &[&code],
                )
                .await
                .map_err(line_err)?;
            }
            Record::Ca(ca) => {
                tx.execute(
                    "INSERT INTO ca (sn, name, status, valid_begin_ms, valid_end_ms, pem, verification_pem,
                                     registration_code, registered_at_ms, updated_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                     ON CONFLICT (sn) DO UPDATE SET name = excluded.name, status = excluded.status,
                        valid_begin_ms = excluded.valid_begin_ms, valid_end_ms = excluded.valid_end_ms,
                        pem = excluded.pem, verification_pem = excluded.verification_pem,
                        registration_code = excluded.registration_code, updated_at_ms = excluded.updated_at_ms",
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
                .map_err(line_err)?;
                let (sn, status) = (ca.sn, ca.status);
                feed::log(&tx, &Change::RegisterCa(ca), "import")
                    .await
                    .map_err(line_err)?;
                let seq = feed::log(&tx, &Change::SetCaStatus(sn, status), "import")
                    .await
                    .map_err(line_err)?;
                last_seq = Some(seq);
                imported.cas += 1;
            }
            Record::Device(device) => {
                devices.push((number, device));
                imported.devices += 1;
                if devices.len() >= CHUNK {
                    last_seq = put_devices(&tx, &mut devices, now).await?.or(last_seq);
                }
            }
            Record::Permission(p) => {
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
                .map_err(line_err)?;
                last_permission = Some(p);
                imported.permissions += 1;
            }
        }
    }
    last_seq = put_devices(&tx, &mut devices, now).await?.or(last_seq);
    // One entry for all of them: a node reads the permissions again whole.
    if let Some(p) = last_permission {
        last_seq = Some(
            feed::log(&tx, &Change::PutPermission(p), "import")
                .await
                .map_err(failed)?,
        );
    }
    if let Some(seq) = last_seq {
        feed::notify(&tx, seq).await.map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    Ok(imported)
}

/// Writes the pending devices (upserts) and numbers each in the feed as a
/// status change (which a node applies to a device it knows or not);
/// returns the last number.
async fn put_devices(
    tx: &Transaction<'_>,
    devices: &mut Vec<(usize, DeviceRecord)>,
    now: i64,
) -> Result<Option<u64>, BackupError> {
    let Some(first_line) = devices.first().map(|(n, _)| *n) else {
        return Ok(None);
    };
    let last_line = devices.last().map_or(first_line, |(n, _)| *n);
    let columns = DeviceColumns::of(devices.iter().map(|(_, d)| d));
    let lines_err = |e: tokio_postgres::Error| BackupError::Line {
        line: first_line,
        reason: format!(
            "in the device certificates of lines {first_line} to {last_line}: {} (is each one's CA in the backup, before it? is one listed twice?)",
            db_message(&e)
        ),
    };
    tx.execute(
        &format!(
            "{INSERT_DEVICES}
             ON CONFLICT (ca_sn, device_sn) DO UPDATE SET name = excluded.name, status = excluded.status,
                valid_begin_ms = excluded.valid_begin_ms, valid_end_ms = excluded.valid_end_ms,
                pem = excluded.pem, updated_at_ms = excluded.updated_at_ms"
        ),
        &columns.params(&now),
    )
    .await
    .map_err(lines_err)?;
    let changes: Vec<Change> = devices
        .iter()
        .map(|(_, d)| Change::SetDeviceStatus(d.identity, d.status))
        .collect();
    let refs: Vec<&Change> = changes.iter().collect();
    let seqs = feed::log_many(tx, &refs, "import")
        .await
        .map_err(lines_err)?;
    devices.clear();
    Ok(seqs.last().copied())
}
