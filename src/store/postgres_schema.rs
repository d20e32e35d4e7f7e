//! The PostgreSQL registry's schema, versioned in `certmq_schema`.
//!
//! Each migration takes the database from version `n` to `n + 1`; all
//! that are due run in one transaction holding an advisory lock, so that
//! brokers starting together against one database migrate one at a time
//! and the second finds the work done. Never edit a released migration:
//! add the next one.
//!
//! The tables mirror the SQLite store's (serials as canonical upper-case
//! hex text, times in milliseconds since the epoch); `ord` keeps the order
//! of registration that SQLite's rowid gives.

use tokio_postgres::Client;

/// The advisory lock key of migrations ("certmq" in ASCII).
const MIGRATION_LOCK: i64 = 0x6365_7274_6d71;

/// The migrations, in order; index `i` moves version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: instance, CAs, device certificates, custom permissions.
    "
    CREATE TABLE instance (
        id                INTEGER PRIMARY KEY CHECK (id = 1),
        registration_code TEXT NOT NULL
    );
    CREATE TABLE ca (
        ord               BIGINT GENERATED ALWAYS AS IDENTITY,
        sn                TEXT PRIMARY KEY,
        name              TEXT NOT NULL,
        status            SMALLINT NOT NULL CHECK (status IN (0, 1)),
        valid_begin_ms    BIGINT NOT NULL,
        valid_end_ms      BIGINT NOT NULL,
        pem               TEXT NOT NULL,
        verification_pem  TEXT,
        registration_code TEXT,
        registered_at_ms  BIGINT NOT NULL,
        updated_at_ms     BIGINT NOT NULL
    );
    CREATE TABLE device (
        ord            BIGINT GENERATED ALWAYS AS IDENTITY,
        ca_sn          TEXT NOT NULL REFERENCES ca (sn) ON DELETE CASCADE,
        device_sn      TEXT NOT NULL,
        name           TEXT NOT NULL,
        status         SMALLINT NOT NULL CHECK (status IN (0, 1)),
        valid_begin_ms BIGINT NOT NULL,
        valid_end_ms   BIGINT NOT NULL,
        pem            TEXT NOT NULL,
        first_seen_ms  BIGINT NOT NULL,
        updated_at_ms  BIGINT NOT NULL,
        PRIMARY KEY (ca_sn, device_sn)
    );
    CREATE INDEX device_by_ord ON device (ord);
    CREATE TABLE custom_permission (
        identity_type TEXT NOT NULL CHECK (identity_type IN ('CLIENT', 'DEVICE', 'CA')),
        identity      TEXT NOT NULL,
        topic         TEXT NOT NULL,
        permit_action TEXT NOT NULL CHECK (permit_action IN ('PUB', 'SUB', 'PUB_SUB')),
        effect        TEXT NOT NULL CHECK (effect IN ('ALLOW', 'DENY')),
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (identity_type, identity, topic)
    );
    ",
    // 2: the change feed and the nodes' leases (several brokers on one
    // registry). `change_seq` is one counter row: each change takes the
    // next number in its own transaction, holding the row until it
    // commits, so numbers are gapless and in commit order (a SEQUENCE is
    // neither: numbers are taken before commit and never given back).
    "
    CREATE TABLE change_seq (
        id  INTEGER PRIMARY KEY CHECK (id = 1),
        seq BIGINT NOT NULL
    );
    INSERT INTO change_seq (id, seq) VALUES (1, 0);
    CREATE TABLE change_log (
        seq       BIGINT PRIMARY KEY,
        kind      TEXT NOT NULL,
        ca_sn     TEXT,
        device_sn TEXT,
        status    SMALLINT,
        origin    TEXT NOT NULL,
        at_ms     BIGINT NOT NULL
    );
    CREATE TABLE node_lease (
        node_id     TEXT PRIMARY KEY,
        incarnation TEXT NOT NULL,
        applied_seq BIGINT NOT NULL,
        expires_at  TIMESTAMPTZ NOT NULL,
        renewed_at  TIMESTAMPTZ NOT NULL
    );
    ",
];

/// The schema version this certmq writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug)]
pub enum MigrateError {
    TooNew(i64),
    Sql(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// Brings the database to [`VERSION`]; returns the version found, or an
/// error if the database is newer than this certmq.
pub async fn migrate(client: &mut Client) -> Result<i64, MigrateError> {
    let tx = client.transaction().await?;
    // Held until the transaction ends: the next broker waits here, then
    // finds the version this one wrote.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS certmq_schema (
             id      INTEGER PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         );
         INSERT INTO certmq_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT version FROM certmq_schema WHERE id = 1", &[])
        .await?
        .get(0);
    if found > VERSION {
        return Err(MigrateError::TooNew(found));
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.batch_execute(sql).await?;
    }
    tx.execute(
        "UPDATE certmq_schema SET version = $1 WHERE id = 1",
        &[&VERSION.max(found)],
    )
    .await?;
    tx.commit().await?;
    Ok(found)
}
