//! Certificate records: the status of a CA or device certificate and what
//! the API reports about each. The registry keeps them and the store
//! persists them; both depend on this module, neither on the other's
//! internals (the store knows nothing of the registry).

use std::sync::Arc;

use crate::identity::DeviceIdentity;
use crate::serial::CaSn;

/// The lifecycle status of a CA or device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    Active,
    Inactive,
}

impl CertStatus {
    /// The API's encoding: the string `"1"` for active, `"0"` for inactive.
    pub fn api_code(self) -> &'static str {
        match self {
            CertStatus::Active => "1",
            CertStatus::Inactive => "0",
        }
    }
}

/// A registered CA as the API reports it.
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub sn: CaSn,
    pub name: String,
    pub status: CertStatus,
    pub valid_begin_ms: i64,
    pub valid_end_ms: i64,
    pub pem: Arc<str>,
    pub verification_pem: Option<Arc<str>>,
    /// The registration code the verification certificate carried.
    pub registration_code: Option<Arc<str>>,
}

/// A page of a listing: `offset` and `limit` in, the page and the total out.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: usize,
}

/// A device certificate as the API reports it.
#[derive(Debug, Clone)]
pub struct DeviceRecord {
    pub identity: DeviceIdentity,
    pub name: Arc<str>,
    pub status: CertStatus,
    pub valid_begin_ms: i64,
    pub valid_end_ms: i64,
    pub pem: Arc<str>,
}
