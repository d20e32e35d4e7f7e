//! The registry database's schema, versioned with `PRAGMA user_version`.
//!
//! Each migration takes the database from version `n` to `n + 1` in one
//! transaction. Never edit a released migration: add the next one.
//!
//! Serial numbers are stored as their canonical text (upper-case hex), so
//! operators can read and query the database with the `sqlite3` shell:
//!
//! ```sql
//! SELECT device_sn, name, status FROM device WHERE ca_sn = '2B22...';
//! ```

use rusqlite::{Connection, TransactionBehavior};

/// The migrations, in order; index `i` moves version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: instance, CAs, device certificates.
    "
    CREATE TABLE instance (
        id                INTEGER PRIMARY KEY CHECK (id = 1),
        registration_code TEXT NOT NULL
    );
    CREATE TABLE ca (
        sn                TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        status            INTEGER NOT NULL CHECK (status IN (0, 1)),
        valid_begin_ms    INTEGER NOT NULL,
        valid_end_ms      INTEGER NOT NULL,
        pem               TEXT NOT NULL,
        verification_pem  TEXT,
        registration_code TEXT,
        registered_at_ms  INTEGER NOT NULL,
        updated_at_ms     INTEGER NOT NULL
    );
    CREATE TABLE device (
        ca_sn          TEXT NOT NULL REFERENCES ca (sn) ON DELETE CASCADE,
        device_sn      TEXT NOT NULL,
        name           TEXT NOT NULL,
        status         INTEGER NOT NULL CHECK (status IN (0, 1)),
        valid_begin_ms INTEGER NOT NULL,
        valid_end_ms   INTEGER NOT NULL,
        pem            TEXT NOT NULL,
        first_seen_ms  INTEGER NOT NULL,
        updated_at_ms  INTEGER NOT NULL,
        UNIQUE (ca_sn, device_sn)
    );
    ",
    // 2: topic permissions added through the API (AddCustomAuthPermission).
    "
    CREATE TABLE custom_permission (
        identity_type TEXT NOT NULL CHECK (identity_type IN ('CLIENT', 'DEVICE', 'CA')),
        identity      TEXT NOT NULL,
        topic         TEXT NOT NULL,
        permit_action TEXT NOT NULL CHECK (permit_action IN ('PUB', 'SUB', 'PUB_SUB')),
        effect        TEXT NOT NULL CHECK (effect IN ('ALLOW', 'DENY')),
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (identity_type, identity, topic)
    );
    ",
];

/// The schema version this certmq writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version of the database `conn` is open on.
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the database to [`VERSION`]; returns the version found, or an
/// error if the database is newer than this certmq.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrateError> {
    let found = version(conn)?;
    if found > VERSION {
        return Err(MigrateError::TooNew(found));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}

#[derive(Debug)]
pub enum MigrateError {
    TooNew(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sql(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of version 1 (certmq before custom permissions) keeps
    /// its records and gains the permission table.
    #[test]
    fn version_1_databases_migrate_and_keep_their_records() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO instance (id, registration_code) VALUES (1, 'CODE')",
            [],
        )
        .unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), 1);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        let code: String = conn
            .query_row("SELECT registration_code FROM instance", [], |r| r.get(0))
            .unwrap();
        assert_eq!(code, "CODE");
        let permissions: i64 = conn
            .query_row("SELECT COUNT(*) FROM custom_permission", [], |r| r.get(0))
            .unwrap();
        assert_eq!(permissions, 0);
        // Again: nothing to do.
        assert_eq!(migrate(&mut conn).unwrap(), VERSION);
    }
}
