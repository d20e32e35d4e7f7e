//! The change feed of the PostgreSQL registry: what every broker sharing
//! the database hears of every change.
//!
//! The writer records each change that touched something in `change_log`,
//! in the transaction that makes it, under the next number of the
//! `change_seq` counter row (gapless, in commit order: the row stays
//! locked until the transaction ends), and the transaction sends one
//! `pg_notify` on [`CHANNEL`] with its last number when it commits. A
//! broker applies the log in number order, from the number its snapshot
//! holds; notifications only tell it to look, so a lost one costs time,
//! never a change (the heartbeat compares numbers too: see `cluster`).
//!
//! A log row holds what a broker's in-memory index needs: serials and the
//! status. A CA's registration is read back with its certificate from the
//! `ca` table; custom permissions are read again whole.

use tokio_postgres::{Client, GenericClient, Row};

use super::{CA_COLUMNS, Change, StoreError, status_code, status_from};
use crate::identity::DeviceIdentity;
use crate::record::{CaRecord, CertStatus};
use crate::serial::{CaSn, DeviceSn};

/// The notification channel of committed changes; the payload is the
/// number of the transaction's last change.
pub const CHANNEL: &str = "certmq_change";

/// The database's clock in milliseconds since the epoch: log entries are
/// stamped, and pruned, by one clock, whatever the nodes' clocks say.
pub const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// One change as the feed delivers it.
#[derive(Debug, Clone)]
pub enum FeedChange {
    /// A CA was registered. `None`: it was deleted again since, and the
    /// log's later entry says so.
    CaRegistered(CaSn, Option<Box<CaRecord>>),
    CaStatus(CaSn, CertStatus),
    /// The CA and every device certificate it issued are gone.
    CaDeleted(CaSn),
    /// A device certificate was registered (on its first connection).
    DeviceRegistered(DeviceIdentity, CertStatus),
    DeviceStatus(DeviceIdentity, CertStatus),
    DeviceDeleted(DeviceIdentity),
    /// A custom topic permission was added, changed or removed.
    Permissions,
}

/// A change and its number.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub seq: u64,
    pub change: FeedChange,
}

/// The log row of a change: kind, CA serial, device serial, status.
fn log_row(change: &Change) -> (&'static str, Option<String>, Option<String>, Option<i16>) {
    let device = |id: &DeviceIdentity| (Some(id.ca_sn.to_string()), Some(id.device_sn.to_string()));
    match change {
        Change::RegisterCa(ca) => (
            "ca",
            Some(ca.sn.to_string()),
            None,
            Some(status_code(ca.status)),
        ),
        Change::SetCaStatus(sn, status) => (
            "ca_status",
            Some(sn.to_string()),
            None,
            Some(status_code(*status)),
        ),
        Change::DeleteCa(sn) => ("ca_delete", Some(sn.to_string()), None, None),
        Change::RegisterDevice(d) => {
            let (ca, dev) = device(&d.identity);
            ("device", ca, dev, Some(status_code(d.status)))
        }
        Change::SetDeviceStatus(id, status) => {
            let (ca, dev) = device(id);
            ("device_status", ca, dev, Some(status_code(*status)))
        }
        Change::DeleteDevice(id) => {
            let (ca, dev) = device(id);
            ("device_delete", ca, dev, None)
        }
        Change::PutPermission(_) | Change::DeletePermission(_) => ("permission", None, None, None),
    }
}

/// Records `change` in the log under the next number, inside the caller's
/// transaction; returns the number.
pub(super) async fn log(
    tx: &impl GenericClient,
    change: &Change,
    origin: &str,
) -> Result<u64, tokio_postgres::Error> {
    let (kind, ca_sn, device_sn, status) = log_row(change);
    let seq: i64 = tx
        .query_one(
            &format!(
                "WITH next AS (UPDATE change_seq SET seq = seq + 1 WHERE id = 1 RETURNING seq)
                 INSERT INTO change_log (seq, kind, ca_sn, device_sn, status, origin, at_ms)
                 SELECT seq, $1, $2, $3, $4, $5, {DB_NOW_MS} FROM next
                 RETURNING seq"
            ),
            &[&kind, &ca_sn, &device_sn, &status, &origin],
        )
        .await?
        .get(0);
    Ok(seq as u64)
}

/// Records `changes` in the log under the next numbers, in order, with
/// one statement; returns their numbers.
pub(super) async fn log_many(
    tx: &impl GenericClient,
    changes: &[&Change],
    origin: &str,
) -> Result<Vec<u64>, tokio_postgres::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<_> = changes.iter().map(|c| log_row(c)).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let ca_sns: Vec<Option<String>> = rows.iter().map(|r| r.1.clone()).collect();
    let device_sns: Vec<Option<String>> = rows.iter().map(|r| r.2.clone()).collect();
    let statuses: Vec<Option<i16>> = rows.iter().map(|r| r.3).collect();
    let count = changes.len() as i64;
    let last: i64 = tx
        .query_one(
            "UPDATE change_seq SET seq = seq + $1 WHERE id = 1 RETURNING seq",
            &[&count],
        )
        .await?
        .get(0);
    let first = last - count + 1;
    tx.execute(
        &format!(
            "INSERT INTO change_log (seq, kind, ca_sn, device_sn, status, origin, at_ms)
             SELECT $1 + r.n - 1, r.kind, r.ca_sn, r.device_sn, r.status, $6, {DB_NOW_MS}
             FROM unnest($2::text[], $3::text[], $4::text[], $5::int2[])
                  WITH ORDINALITY AS r(kind, ca_sn, device_sn, status, n)"
        ),
        &[&first, &kinds, &ca_sns, &device_sns, &statuses, &origin],
    )
    .await?;
    Ok((first..=last).map(|seq| seq as u64).collect())
}

/// Tells every listening broker that changes up to `seq` are committed
/// (delivered when the caller's transaction commits).
pub(super) async fn notify(tx: &impl GenericClient, seq: u64) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await
        .map(|_| ())
}

/// The number of the last committed change.
pub async fn head(client: &impl GenericClient) -> Result<u64, tokio_postgres::Error> {
    let seq: i64 = client
        .query_one("SELECT seq FROM change_seq WHERE id = 1", &[])
        .await?
        .get(0);
    Ok(seq as u64)
}

/// The changes after `after`, in order, at most `limit`. The caller checks
/// that they follow on without a gap.
pub async fn after(client: &Client, after: u64, limit: u32) -> Result<Vec<FeedEntry>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT l.seq, l.kind, l.ca_sn, l.device_sn, l.status, {}
                 FROM change_log l LEFT JOIN ca c ON l.kind = 'ca' AND c.sn = l.ca_sn
                 WHERE l.seq > $1 ORDER BY l.seq LIMIT $2",
                CA_COLUMNS
                    .split(", ")
                    .map(|column| format!("c.{column}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &[&(after.min(i64::MAX as u64) as i64), &i64::from(limit)],
        )
        .await
        .map_err(|e| StoreError::Read(super::postgres::db_message(&e)))?;
    rows.iter().map(entry_from_row).collect()
}

fn entry_from_row(row: &Row) -> Result<FeedEntry, StoreError> {
    let seq: i64 = row.get(0);
    let kind: &str = row.get(1);
    let bad = |what: String| StoreError::Read(format!("change {seq} in change_log: {what}"));
    let ca_sn = || -> Result<CaSn, StoreError> {
        let raw: Option<&str> = row.get(2);
        let raw = raw.ok_or_else(|| bad("no CA serial".into()))?;
        CaSn::parse(raw).map_err(|e| bad(format!("CA serial `{raw}`: {e}")))
    };
    let identity = || -> Result<DeviceIdentity, StoreError> {
        let raw: Option<&str> = row.get(3);
        let raw = raw.ok_or_else(|| bad("no device serial".into()))?;
        Ok(DeviceIdentity {
            ca_sn: ca_sn()?,
            device_sn: DeviceSn::parse(raw)
                .map_err(|e| bad(format!("device serial `{raw}`: {e}")))?,
        })
    };
    let status = || -> Result<CertStatus, StoreError> {
        let code: Option<i16> = row.get(4);
        code.map(status_from).ok_or_else(|| bad("no status".into()))
    };
    let change = match kind {
        "ca" => {
            let sn = ca_sn()?;
            let registered: Option<&str> = row.get(5);
            let record = match registered {
                Some(_) => Some(Box::new(super::postgres::ca_from_row_at(row, 5)?)),
                None => None,
            };
            FeedChange::CaRegistered(sn, record)
        }
        "ca_status" => FeedChange::CaStatus(ca_sn()?, status()?),
        "ca_delete" => FeedChange::CaDeleted(ca_sn()?),
        "device" => FeedChange::DeviceRegistered(identity()?, status()?),
        "device_status" => FeedChange::DeviceStatus(identity()?, status()?),
        "device_delete" => FeedChange::DeviceDeleted(identity()?),
        "permission" => FeedChange::Permissions,
        other => {
            return Err(bad(format!(
                "unknown kind `{other}` (written by a newer certmq?)"
            )));
        }
    };
    Ok(FeedEntry {
        seq: seq as u64,
        change,
    })
}
