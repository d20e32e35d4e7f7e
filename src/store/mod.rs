//! Durable certificate state, behind a trait.
//!
//! The [`Registry`](crate::registry::Registry) keeps the hot-path index in
//! memory (CA trust anchors and statuses, one status per device) and asks a
//! [`Store`] to make every change durable *before* it applies it: a change
//! the store did not commit never becomes visible. Certificate bodies stay
//! in the store and are read only when the admin API asks for them.
//!
//! [`sqlite::SqliteStore`] is the store of a single broker;
//! [`postgres::PgStore`] keeps the registry in a PostgreSQL database that
//! several brokers share. The verifier and the admin API never see which
//! one is in use.

pub mod backup;
pub mod feed;
pub mod postgres;
pub mod postgres_backup;
mod postgres_schema;
mod schema;
pub mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::identity::DeviceIdentity;
use crate::record::{CaRecord, CertStatus, DeviceRecord, Page, PermissionKey, PermissionRecord};
use crate::serial::CaSn;

/// The columns of a CA record, in the order the stores' row readers take
/// them.
pub(crate) const CA_COLUMNS: &str =
    "sn, name, status, valid_begin_ms, valid_end_ms, pem, verification_pem, registration_code";

/// The columns of a device record, likewise.
pub(crate) const DEVICE_COLUMNS: &str =
    "ca_sn, device_sn, name, status, valid_begin_ms, valid_end_ms, pem";

/// The columns of a custom permission, likewise.
pub(crate) const PERMISSION_COLUMNS: &str = "identity_type, identity, topic, permit_action, effect";

/// Every stored custom permission, in the order both stores list them.
pub(crate) fn all_permissions_query() -> String {
    format!(
        "SELECT {PERMISSION_COLUMNS} FROM custom_permission ORDER BY identity_type, identity, topic"
    )
}

/// How a status is stored (both schemas: 1 active, 0 inactive).
pub(crate) fn status_code(status: CertStatus) -> i16 {
    match status {
        CertStatus::Active => 1,
        CertStatus::Inactive => 0,
    }
}

/// A stored status (anything but 1 reads as inactive).
pub(crate) fn status_from(code: i16) -> CertStatus {
    if code == 1 {
        CertStatus::Active
    } else {
        CertStatus::Inactive
    }
}

/// A boxed future of a store operation (the trait is used as `dyn Store`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why the store could not do something. Messages name the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the registry database {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the registry database {path} failed its integrity check: {problems}; restore it from a backup \
         (certmq registry import) or move it away to start empty"
    )]
    Integrity { path: PathBuf, problems: String },
    #[error(
        "the registry database {path} has schema version {found}, newer than this certmq understands ({supported})"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("the registry could not be written ({0}); nothing was changed")]
    Write(String),
    #[error("the registry could not be read: {0}")]
    Read(String),
    #[error("the change conflicts with what is stored: {0}")]
    Conflict(String),
    #[error("the registry store has stopped")]
    Closed,
}

/// Everything the in-memory index needs, read once at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The instance's registration code (created with the store).
    pub registration_code: String,
    /// Registered CAs, in registration order.
    pub cas: Vec<CaRecord>,
    /// Every device certificate's identity and status.
    pub devices: Vec<(DeviceIdentity, CertStatus)>,
    /// The change feed's number of the last change the snapshot holds
    /// (0 for a store without a feed).
    pub seq: u64,
}

/// One durable change.
#[derive(Debug, Clone)]
pub enum Change {
    RegisterCa(CaRecord),
    SetCaStatus(CaSn, CertStatus),
    /// Removes the CA and every device certificate it issued.
    DeleteCa(CaSn),
    /// Registers a device certificate unless it is already stored.
    RegisterDevice(DeviceRecord),
    SetDeviceStatus(DeviceIdentity, CertStatus),
    DeleteDevice(DeviceIdentity),
    /// Stores a custom topic permission, replacing the one with its key.
    PutPermission(PermissionRecord),
    /// Removes a custom topic permission.
    DeletePermission(PermissionKey),
}

/// A change made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// How many records it touched (0: nothing to do, see [`Store::commit`]).
    pub touched: u64,
    /// Its number in the change feed, for a store several brokers share
    /// (PostgreSQL): every broker applies it to its own index from the
    /// feed, in this order. For a change that touched nothing, the feed's
    /// last number when that was found. `None` (SQLite): the caller
    /// applies it to the index itself.
    pub seq: Option<u64>,
}

impl Committed {
    /// A change applied by the caller (no feed).
    pub fn local(touched: u64) -> Self {
        Committed { touched, seq: None }
    }
}

/// A durable home for certificate state.
pub trait Store: Send + Sync {
    /// Reads what the in-memory index needs.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Makes `change` durable; answers how many records it touched (0 for
    /// a status change or deletion of something absent, or a registration
    /// of a device already stored) and its place in the change feed.
    fn commit(&self, change: Change) -> StoreFuture<'_, Committed>;

    /// One device certificate, body included.
    fn device(&self, id: DeviceIdentity) -> StoreFuture<'_, Option<DeviceRecord>>;

    /// Device certificates in first-seen order, all or one CA's; with a
    /// `keyword`, only those whose serial (hex) or name contains it,
    /// ignoring ASCII case.
    fn list_devices(
        &self,
        ca: Option<CaSn>,
        keyword: Option<String>,
        offset: usize,
        limit: usize,
    ) -> StoreFuture<'_, Page<DeviceRecord>>;

    /// Every custom topic permission, in key order (read at start-up;
    /// the running broker keeps them in its policies).
    fn permissions(&self) -> StoreFuture<'_, Vec<PermissionRecord>>;

    /// Where the store keeps its data, for messages.
    fn location(&self) -> String;

    /// Whether the store can take writes now (for readiness checks).
    fn is_healthy(&self) -> bool;

    /// Whether the store's writer still runs at all. One that stopped
    /// never comes back: the broker fails. (A networked store whose
    /// database is away is running but not healthy, and recovers.)
    fn is_running(&self) -> bool {
        self.is_healthy()
    }
}

/// A `LIKE` pattern matching text that contains `keyword` (with `\` as
/// the escape character: `%`, `_` and `\` in it match themselves).
pub(crate) fn like_pattern(keyword: &str) -> String {
    let mut pattern = String::with_capacity(keyword.len() + 2);
    pattern.push('%');
    for c in keyword.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}
