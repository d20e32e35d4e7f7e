//! Certificate state: which CAs are registered, which device certificates
//! are known, and whether each is active.
//!
//! The registry is the single source of truth that the TLS verifier reads on
//! every handshake and that admin calls change. It holds two tables:
//! - the CA table, keyed by [`CaSn`];
//! - the device table, a `DashMap` keyed by [`DeviceIdentity`]
//!   (`(CaSn, DeviceSn)`), so handshakes of different devices never contend.
//!
//! It owns no sessions: dropping the live connections of a certificate that
//! was just inactivated is the caller's job (see `admin` and
//! `session::SessionTable`). The order matters and is documented on
//! [`Registry::set_device_status`].
//!
//! Reads are synchronous (the verifier runs inside rustls). Changes are
//! `async` because a durable store will sit behind them: a change will be
//! committed before it becomes visible here.

mod ca;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use rustls_pki_types::TrustAnchor;

pub use ca::{CaCert, CaCertError};

use crate::identity::{DeviceCert, DeviceIdentity};
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

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no CA certificate with serial {0} is registered")]
    CaNotFound(CaSn),
    #[error("no device certificate with {0} is registered")]
    DeviceNotFound(DeviceIdentity),
    #[error("a CA certificate with serial {0} is already registered")]
    CaAlreadyRegistered(CaSn),
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

/// What registering a CA records.
#[derive(Debug, Clone)]
pub struct CaRegistration {
    pub cert: CaCert,
    /// CaName; the subject CN when `None`.
    pub name: Option<String>,
    pub verification_pem: Option<String>,
    pub registration_code: Option<String>,
}

impl CaRegistration {
    /// A CA trusted by configuration (`tls.ca_files`), with no proof of
    /// possession on record.
    pub fn declared(cert: CaCert) -> Self {
        CaRegistration {
            cert,
            name: None,
            verification_pem: None,
            registration_code: None,
        }
    }
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

/// A registered CA that may have issued a presented certificate.
#[derive(Debug, Clone)]
pub struct IssuerCandidate {
    pub sn: CaSn,
    pub status: CertStatus,
    pub anchor: Arc<TrustAnchor<'static>>,
}

/// The outcome of admitting a device after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The device was unknown and is now registered, active.
    Registered,
    /// The device was known; this is its status.
    Known(CertStatus),
}

struct CaEntry {
    /// Registration order, for stable listings.
    seq: u64,
    record: CaRecord,
    subject_raw: Vec<u8>,
    anchor: Arc<TrustAnchor<'static>>,
}

struct DeviceEntry {
    /// First-seen order, for stable listings.
    seq: u64,
    name: Arc<str>,
    status: CertStatus,
    valid_begin_ms: i64,
    valid_end_ms: i64,
    pem: Arc<str>,
}

/// The certificate registry; cheap to clone, all clones share state.
#[derive(Clone, Default)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("cas", &self.shared.cas.len())
            .field("devices", &self.shared.devices.len())
            .finish()
    }
}

#[derive(Default)]
struct Shared {
    cas: DashMap<CaSn, CaEntry>,
    devices: DashMap<DeviceIdentity, DeviceEntry>,
    next_seq: AtomicU64,
}

impl Shared {
    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }
}

impl DeviceEntry {
    fn record(&self, identity: DeviceIdentity) -> DeviceRecord {
        DeviceRecord {
            identity,
            name: self.name.clone(),
            status: self.status,
            valid_begin_ms: self.valid_begin_ms,
            valid_end_ms: self.valid_end_ms,
            pem: self.pem.clone(),
        }
    }
}

fn page<T>(mut keyed: Vec<(u64, T)>, offset: usize, limit: usize) -> Page<T> {
    keyed.sort_by_key(|(seq, _)| *seq);
    let total = keyed.len();
    let items = keyed
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(_, t)| t)
        .collect();
    Page { items, total }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    // ----- CAs -------------------------------------------------------------

    /// Registers a CA, active. Refuses a serial that is already registered.
    pub async fn register_ca(&self, registration: CaRegistration) -> Result<CaSn, RegistryError> {
        let CaRegistration {
            cert,
            name,
            verification_pem,
            registration_code,
        } = registration;
        let sn = cert.sn;
        match self.shared.cas.entry(sn) {
            Entry::Occupied(_) => Err(RegistryError::CaAlreadyRegistered(sn)),
            Entry::Vacant(slot) => {
                let name = name.unwrap_or_else(|| cert.common_name.clone());
                slot.insert(CaEntry {
                    seq: self.shared.seq(),
                    record: CaRecord {
                        sn,
                        name,
                        status: CertStatus::Active,
                        valid_begin_ms: cert.valid_begin_ms,
                        valid_end_ms: cert.valid_end_ms,
                        pem: Arc::from(cert.pem()),
                        verification_pem: verification_pem.map(Arc::from),
                        registration_code: registration_code.map(Arc::from),
                    },
                    subject_raw: cert.subject_raw,
                    anchor: cert.anchor,
                });
                Ok(sn)
            }
        }
    }

    /// Removes a CA and every device certificate it issued; returns how
    /// many devices went. Callers drop the CA's sessions *after* this.
    pub async fn delete_ca(&self, sn: &CaSn) -> Result<usize, RegistryError> {
        if self.shared.cas.remove(sn).is_none() {
            return Err(RegistryError::CaNotFound(*sn));
        }
        let before = self.shared.devices.len();
        self.shared.devices.retain(|id, _| id.ca_sn != *sn);
        Ok(before.saturating_sub(self.shared.devices.len()))
    }

    /// Registered CAs in registration order.
    pub fn list_cas(&self, offset: usize, limit: usize) -> Page<CaRecord> {
        let all = self
            .shared
            .cas
            .iter()
            .map(|e| (e.seq, e.record.clone()))
            .collect();
        page(all, offset, limit)
    }

    /// Sets a CA's status. Callers that inactivate must drop the CA's
    /// sessions *after* this returns (see [`Registry::set_device_status`]).
    pub async fn set_ca_status(&self, sn: &CaSn, status: CertStatus) -> Result<(), RegistryError> {
        match self.shared.cas.get_mut(sn) {
            Some(mut entry) => {
                entry.record.status = status;
                Ok(())
            }
            None => Err(RegistryError::CaNotFound(*sn)),
        }
    }

    pub fn ca(&self, sn: &CaSn) -> Option<CaRecord> {
        self.shared.cas.get(sn).map(|e| e.record.clone())
    }

    pub fn ca_status(&self, sn: &CaSn) -> Option<CertStatus> {
        self.shared.cas.get(sn).map(|e| e.record.status)
    }

    /// Every registered CA whose subject is `issuer_raw` (usually one; more
    /// when a CA was re-keyed under the same name).
    pub fn issuers_of(&self, issuer_raw: &[u8]) -> Vec<IssuerCandidate> {
        self.shared
            .cas
            .iter()
            .filter(|e| e.subject_raw == issuer_raw)
            .map(|e| IssuerCandidate {
                sn: e.record.sn,
                status: e.record.status,
                anchor: e.anchor.clone(),
            })
            .collect()
    }

    pub fn ca_count(&self) -> usize {
        self.shared.cas.len()
    }

    // ----- devices ---------------------------------------------------------

    /// The status of a known device, `None` for a device never seen.
    pub fn device_status(&self, id: &DeviceIdentity) -> Option<CertStatus> {
        self.shared.devices.get(id).map(|e| e.status)
    }

    pub fn device(&self, id: &DeviceIdentity) -> Option<DeviceRecord> {
        self.shared.devices.get(id).map(|e| e.record(*id))
    }

    /// Device certificates in first-seen order, all or one CA's.
    pub fn list_devices(
        &self,
        ca: Option<&CaSn>,
        offset: usize,
        limit: usize,
    ) -> Page<DeviceRecord> {
        let all = self
            .shared
            .devices
            .iter()
            .filter(|e| ca.is_none_or(|sn| e.key().ca_sn == *sn))
            .map(|e| (e.seq, e.record(*e.key())))
            .collect();
        page(all, offset, limit)
    }

    /// Removes a device record. The device registers again on its next
    /// connection while its CA is active: inactivation, not deletion, keeps
    /// a device out.
    pub async fn delete_device(&self, id: &DeviceIdentity) -> Result<(), RegistryError> {
        match self.shared.devices.remove(id) {
            Some(_) => Ok(()),
            None => Err(RegistryError::DeviceNotFound(*id)),
        }
    }

    /// Registers a device on its first verified connection (status active,
    /// DeviceName = subject CN), or reports the status of a known one. One
    /// atomic step, so a concurrent status change is either seen here or
    /// applied after the registration.
    pub async fn admit_device(&self, id: &DeviceIdentity, cert: &DeviceCert) -> Admission {
        match self.shared.devices.entry(*id) {
            Entry::Occupied(e) => Admission::Known(e.get().status),
            Entry::Vacant(slot) => {
                slot.insert(DeviceEntry {
                    seq: self.shared.seq(),
                    name: Arc::from(cert.common_name.as_str()),
                    status: CertStatus::Active,
                    valid_begin_ms: cert.valid_begin_ms,
                    valid_end_ms: cert.valid_end_ms,
                    pem: Arc::from(cert.pem()),
                });
                Admission::Registered
            }
        }
    }

    /// Sets a device's status.
    ///
    /// Inactivation is exact only in this order: first this call, then the
    /// drop of the device's sessions. A connection registers its session
    /// *before* it re-reads the status after its handshake; so either that
    /// re-read sees `Inactive`, or the session was already in the table when
    /// the drop looked.
    pub async fn set_device_status(
        &self,
        id: &DeviceIdentity,
        status: CertStatus,
    ) -> Result<(), RegistryError> {
        match self.shared.devices.get_mut(id) {
            Some(mut entry) => {
                entry.status = status;
                Ok(())
            }
            None => Err(RegistryError::DeviceNotFound(*id)),
        }
    }

    pub fn device_count(&self) -> usize {
        self.shared.devices.len()
    }
}
