//! Certificate state: which CAs are registered, which device certificates
//! are known, and whether each is active.
//!
//! The registry is what the TLS verifier reads on every handshake and what
//! admin calls change. It is an in-memory index in front of a durable
//! [`Store`]:
//! - the CA table, keyed by [`CaSn`], with each CA's trust anchor;
//! - the device table, a `DashMap` keyed by [`DeviceIdentity`]
//!   (`(CaSn, DeviceSn)`) holding one status per device, so handshakes of
//!   different devices never contend and a million devices fit in memory.
//!   Names, validity and certificate bodies stay in the store, read only
//!   when the admin API asks.
//!
//! Every change is committed to the store first and applied to the index
//! after: a change the store refused is not visible anywhere. Admin changes
//! are serialised (so the index and the store apply them in the same
//! order); auto-registrations are not, and are grouped by the store.
//!
//! On a store several brokers share (PostgreSQL), the store numbers each
//! change and the index is changed only by the change feed, in number
//! order, on every broker alike (`cluster` calls [`Registry::apply`]): an
//! admin change here waits, through the [`Propagation`] the cluster sets,
//! until every broker holding a lease has applied it, this one included.
//! Applying in one order everywhere is what keeps two changes of one
//! device, made on two brokers, from ending differently on a third.
//!
//! It owns no sessions: dropping the live connections of a certificate that
//! was just inactivated is the caller's job (see `admin` and
//! `session::SessionTable`). The order matters and is documented on
//! [`Registry::set_device_status`].

mod ca;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use rustls_pki_types::TrustAnchor;

pub use crate::record::{CaRecord, CertStatus, DeviceRecord, Page};
pub use ca::{CaCert, CaCertError};

use crate::identity::{DeviceCert, DeviceIdentity};
use crate::serial::CaSn;
use crate::store::feed::FeedChange;
use crate::store::{Change, Committed, Store, StoreError};

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no CA certificate with serial {0} is registered")]
    CaNotFound(CaSn),
    #[error("no device certificate with {0} is registered")]
    DeviceNotFound(DeviceIdentity),
    #[error("a CA certificate with serial {0} is already registered")]
    CaAlreadyRegistered(CaSn),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Committed, but not known to be in force on every broker.
    #[error("the change is committed but {0}")]
    NotApplied(String),
}

/// A boxed future of [`Propagation::settle`].
pub type SettleFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;

/// Waits until a change the store numbered is applied by every broker
/// that shares the store (the `cluster` implements it).
pub trait Propagation: Send + Sync {
    /// Resolves once every live broker has applied change `seq`, or with
    /// why that was not seen in time (naming the broker).
    fn settle(&self, seq: u64) -> SettleFuture<'_>;
}

/// Where a committed change still has to go.
enum Applied {
    /// Nowhere yet: the caller applies it to this index.
    ByCaller,
    /// Applied by the change feed on every broker, this one's index
    /// included.
    Everywhere,
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

/// A device certificate whose chain the verifier checked in full, as the
/// verifier remembers it (`tls::verifier`): 128 bits of a keyed MAC over
/// the issuing CA's public key and the certificate's DER. Compared in
/// constant time only ([`ChainVerified::matches`]).
#[derive(Clone, Copy)]
pub struct ChainVerified(pub [u8; 16]);

impl ChainVerified {
    pub fn matches(&self, other: &ChainVerified) -> bool {
        #[allow(deprecated)] // aws-lc-rs keeps it; it is what it says
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl std::fmt::Debug for ChainVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainVerified(..)")
    }
}

/// What the index knows of a device: its status, and for an active one
/// the certificate whose chain was last verified in full (18 bytes).
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Being auto-registered: admitted by the verifier, not yet committed.
    Pending,
    Active(Option<ChainVerified>),
    Inactive,
}

impl Slot {
    fn of(status: CertStatus) -> Slot {
        match status {
            CertStatus::Active => Slot::Active(None),
            CertStatus::Inactive => Slot::Inactive,
        }
    }

    fn is_pending(&self) -> bool {
        matches!(self, Slot::Pending)
    }
}

/// The certificate registry; cheap to clone, all clones share state.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.shared.store.location())
            .field("cas", &self.shared.cas.len())
            .field("devices", &self.shared.devices.len())
            .finish()
    }
}

struct Shared {
    store: Arc<dyn Store>,
    cas: DashMap<CaSn, CaEntry>,
    devices: DashMap<DeviceIdentity, Slot>,
    next_seq: AtomicU64,
    /// Serialises admin changes (store commit + index update), so both
    /// apply them in one order. Never held on the handshake path.
    admin: tokio::sync::Mutex<()>,
    /// Set by the cluster when the store has a change feed.
    propagation: std::sync::OnceLock<Arc<dyn Propagation>>,
    /// The feed number of the snapshot the index was loaded from.
    loaded_seq: u64,
}

impl Shared {
    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
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
    /// Loads the index from `store`. Returns the registry and the instance's
    /// registration code.
    pub fn open(store: Arc<dyn Store>) -> Result<(Registry, String), RegistryError> {
        let snapshot = store.load()?;
        let cas = DashMap::new();
        for (seq, record) in snapshot.cas.into_iter().enumerate() {
            let cert = CaCert::from_stored(&record.pem).map_err(|e| {
                StoreError::Read(format!("the stored CA {} is unusable: {e}", record.sn))
            })?;
            cas.insert(
                record.sn,
                CaEntry {
                    seq: seq as u64,
                    record,
                    subject_raw: cert.subject_raw,
                    anchor: cert.anchor,
                },
            );
        }
        let devices = DashMap::with_capacity(snapshot.devices.len());
        for (identity, status) in snapshot.devices {
            devices.insert(identity, Slot::of(status));
        }
        let next_seq = AtomicU64::new(cas.len() as u64);
        let registry = Registry {
            shared: Arc::new(Shared {
                store,
                cas,
                devices,
                next_seq,
                admin: tokio::sync::Mutex::new(()),
                propagation: std::sync::OnceLock::new(),
                loaded_seq: snapshot.seq,
            }),
        };
        Ok((registry, snapshot.registration_code))
    }

    /// The change feed's number of the snapshot the index was loaded from
    /// (0 without a feed): the cluster follows the feed from there.
    pub fn loaded_seq(&self) -> u64 {
        self.shared.loaded_seq
    }

    /// Makes admin changes wait for `propagation` after their commit (see
    /// the module doc). Set once, before the broker takes admin calls.
    pub fn set_propagation(&self, propagation: Arc<dyn Propagation>) {
        let _ = self.shared.propagation.set(propagation);
    }

    /// Commits an admin change and waits until it is in force everywhere
    /// when the store numbered it. `None`: it touched nothing. Callers
    /// hold the admin lock, so that one they apply themselves reaches the
    /// index in the store's order.
    async fn commit_admin(&self, change: Change) -> Result<Option<Applied>, RegistryError> {
        let committed = self.shared.store.commit(change).await?;
        match committed {
            Committed { touched: 0, seq } => {
                // Nothing to do here; on a shared store, wait until every
                // node has seen what made it so (a deletion retried after
                // an error answers "not found" only once it is in force
                // everywhere).
                if let (Some(seq), Some(propagation)) = (seq, self.shared.propagation.get()) {
                    propagation
                        .settle(seq)
                        .await
                        .map_err(RegistryError::NotApplied)?;
                }
                Ok(None)
            }
            Committed { seq: None, .. } => Ok(Some(Applied::ByCaller)),
            Committed { seq: Some(seq), .. } => {
                let Some(propagation) = self.shared.propagation.get() else {
                    return Err(RegistryError::NotApplied(
                        "this broker does not follow the store's change feed".into(),
                    ));
                };
                propagation
                    .settle(seq)
                    .await
                    .map_err(RegistryError::NotApplied)?;
                Ok(Some(Applied::Everywhere))
            }
        }
    }

    /// Whether the store takes writes.
    pub fn store_healthy(&self) -> bool {
        self.shared.store.is_healthy()
    }

    /// Whether the store's writer runs (see [`Store::is_running`]).
    pub fn store_running(&self) -> bool {
        self.shared.store.is_running()
    }

    /// Where the registry is stored, for messages.
    pub fn location(&self) -> String {
        self.shared.store.location()
    }

    // ----- CAs -------------------------------------------------------------

    /// Registers a CA, active. Refuses a serial that is already registered.
    pub async fn register_ca(&self, registration: CaRegistration) -> Result<CaSn, RegistryError> {
        let _serial = self.shared.admin.lock().await;
        let CaRegistration {
            cert,
            name,
            verification_pem,
            registration_code,
        } = registration;
        let sn = cert.sn;
        if self.shared.cas.contains_key(&sn) {
            return Err(RegistryError::CaAlreadyRegistered(sn));
        }
        let record = CaRecord {
            sn,
            name: name.unwrap_or_else(|| cert.common_name.clone()),
            status: CertStatus::Active,
            valid_begin_ms: cert.valid_begin_ms,
            valid_end_ms: cert.valid_end_ms,
            pem: Arc::from(cert.pem()),
            verification_pem: verification_pem.map(Arc::from),
            registration_code: registration_code.map(Arc::from),
        };
        match self.commit_admin(Change::RegisterCa(record.clone())).await {
            Ok(Some(Applied::ByCaller)) => {}
            Ok(Some(Applied::Everywhere)) => return Ok(sn),
            Ok(None) | Err(RegistryError::Store(StoreError::Conflict(_))) => {
                return Err(RegistryError::CaAlreadyRegistered(sn));
            }
            Err(e) => return Err(e),
        }
        self.shared.cas.insert(
            sn,
            CaEntry {
                seq: self.shared.seq(),
                record,
                subject_raw: cert.subject_raw,
                anchor: cert.anchor,
            },
        );
        Ok(sn)
    }

    /// Sets a CA's status. Callers that inactivate must drop the CA's
    /// sessions *after* this returns (see [`Registry::set_device_status`]).
    pub async fn set_ca_status(&self, sn: &CaSn, status: CertStatus) -> Result<(), RegistryError> {
        let _serial = self.shared.admin.lock().await;
        match self.commit_admin(Change::SetCaStatus(*sn, status)).await? {
            None => Err(RegistryError::CaNotFound(*sn)),
            Some(Applied::Everywhere) => Ok(()),
            Some(Applied::ByCaller) => {
                self.set_ca_status_here(sn, status);
                Ok(())
            }
        }
    }

    /// Removes a CA and every device certificate it issued; returns how
    /// many devices went. Callers drop the CA's sessions *after* this.
    pub async fn delete_ca(&self, sn: &CaSn) -> Result<usize, RegistryError> {
        let _serial = self.shared.admin.lock().await;
        let devices = self.devices_of(sn);
        match self.commit_admin(Change::DeleteCa(*sn)).await? {
            None => Err(RegistryError::CaNotFound(*sn)),
            Some(Applied::Everywhere) => Ok(devices),
            Some(Applied::ByCaller) => Ok(self.delete_ca_here(sn)),
        }
    }

    fn set_ca_status_here(&self, sn: &CaSn, status: CertStatus) {
        if let Some(mut entry) = self.shared.cas.get_mut(sn) {
            entry.record.status = status;
        }
    }

    /// Removes a CA and its devices from the index; how many devices went.
    fn delete_ca_here(&self, sn: &CaSn) -> usize {
        self.shared.cas.remove(sn);
        let before = self.shared.devices.len();
        self.shared.devices.retain(|id, _| id.ca_sn != *sn);
        before.saturating_sub(self.shared.devices.len())
    }

    /// How many devices of a CA the index knows.
    fn devices_of(&self, sn: &CaSn) -> usize {
        self.shared
            .devices
            .iter()
            .filter(|e| e.key().ca_sn == *sn)
            .count()
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

    pub fn ca(&self, sn: &CaSn) -> Option<CaRecord> {
        self.shared.cas.get(sn).map(|e| e.record.clone())
    }

    /// When a CA certificate expires (milliseconds since the epoch).
    pub fn ca_valid_end_ms(&self, sn: &CaSn) -> Option<i64> {
        self.shared.cas.get(sn).map(|e| e.record.valid_end_ms)
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

    /// The status of a device, `None` for a device never seen. A device
    /// being registered right now counts as active.
    pub fn device_status(&self, id: &DeviceIdentity) -> Option<CertStatus> {
        self.shared.devices.get(id).map(|slot| match *slot {
            Slot::Pending | Slot::Active(_) => CertStatus::Active,
            Slot::Inactive => CertStatus::Inactive,
        })
    }

    /// Whether `verified` is the certificate of an active device whose
    /// chain was verified in full before (see [`Registry::remember_verified`]).
    pub fn verified_before(&self, id: &DeviceIdentity, verified: &ChainVerified) -> bool {
        self.shared
            .devices
            .get(id)
            .is_some_and(|slot| match &*slot {
                Slot::Active(Some(known)) => known.matches(verified),
                _ => false,
            })
    }

    /// Remembers the certificate of an active device whose chain the
    /// verifier checked in full: the next handshake with the same
    /// certificate under the same CA key skips the signature check (the
    /// rest is checked every time). Forgotten with any change of the
    /// device's status; nothing for a device not active.
    pub fn remember_verified(&self, id: &DeviceIdentity, verified: ChainVerified) {
        if let Some(mut slot) = self.shared.devices.get_mut(id) {
            if let Slot::Active(memo) = &mut *slot {
                *memo = Some(verified);
            }
        }
    }

    /// One device certificate, as stored.
    pub async fn device(&self, id: &DeviceIdentity) -> Result<Option<DeviceRecord>, RegistryError> {
        Ok(self.shared.store.device(*id).await?)
    }

    /// Device certificates in first-seen order, all or one CA's.
    pub async fn list_devices(
        &self,
        ca: Option<&CaSn>,
        keyword: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<Page<DeviceRecord>, RegistryError> {
        Ok(self
            .shared
            .store
            .list_devices(ca.copied(), keyword.map(str::to_owned), offset, limit)
            .await?)
    }

    /// Registers a device on its first verified connection (status active,
    /// DeviceName = subject CN), durably, or reports the status of a known
    /// one. A concurrent status change is either seen here or applied after
    /// the registration.
    pub async fn admit_device(
        &self,
        id: &DeviceIdentity,
        cert: &DeviceCert,
    ) -> Result<Admission, RegistryError> {
        match self.shared.devices.entry(*id) {
            Entry::Occupied(e) => match *e.get() {
                Slot::Active(_) => return Ok(Admission::Known(CertStatus::Active)),
                Slot::Inactive => return Ok(Admission::Known(CertStatus::Inactive)),
                // Another connection of this device is registering it: commit
                // too (idempotent) rather than trust an uncommitted record.
                Slot::Pending => {}
            },
            Entry::Vacant(e) => {
                e.insert(Slot::Pending);
            }
        }
        let record = DeviceRecord {
            identity: *id,
            name: Arc::from(cert.common_name.as_str()),
            status: CertStatus::Active,
            valid_begin_ms: cert.valid_begin_ms,
            valid_end_ms: cert.valid_end_ms,
            pem: Arc::from(cert.pem()),
        };
        let committed = self
            .shared
            .store
            .commit(Change::RegisterDevice(record))
            .await;
        match committed {
            Ok(_) => {
                // An admin change may have landed since the commit; only a
                // still-pending slot becomes active.
                let slot = self.shared.devices.get_mut(id).map(|mut slot| {
                    if slot.is_pending() {
                        *slot = Slot::Active(None);
                    }
                    *slot
                });
                match slot {
                    Some(Slot::Active(_)) => Ok(Admission::Registered),
                    Some(_) => Ok(Admission::Known(CertStatus::Inactive)),
                    // Deleted (with its CA, or by DeleteDeviceCertificate)
                    // while it was being registered.
                    None => Ok(Admission::Known(CertStatus::Inactive)),
                }
            }
            Err(e) => {
                self.shared
                    .devices
                    .remove_if(id, |_, slot| slot.is_pending());
                Err(e.into())
            }
        }
    }

    /// Sets a device's status, durably.
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
        let _serial = self.shared.admin.lock().await;
        // Nothing touched: not stored (perhaps still being registered).
        match self
            .commit_admin(Change::SetDeviceStatus(*id, status))
            .await?
        {
            None => Err(RegistryError::DeviceNotFound(*id)),
            Some(Applied::Everywhere) => Ok(()),
            Some(Applied::ByCaller) => {
                self.shared.devices.insert(*id, Slot::of(status));
                Ok(())
            }
        }
    }

    /// Records a device never seen as inactive (a serial a CRL lists), so
    /// that its first connection is refused: a placeholder record without
    /// a certificate body. `false`: a record of it exists (inactivate it
    /// instead).
    pub async fn block_device(&self, id: &DeviceIdentity) -> Result<bool, RegistryError> {
        let _serial = self.shared.admin.lock().await;
        let placeholder = DeviceRecord {
            identity: *id,
            name: Arc::from(""),
            status: CertStatus::Inactive,
            valid_begin_ms: 0,
            valid_end_ms: 0,
            pem: Arc::from(""),
        };
        match self
            .commit_admin(Change::RegisterDevice(placeholder))
            .await?
        {
            None => Ok(false),
            Some(Applied::Everywhere) => Ok(true),
            Some(Applied::ByCaller) => {
                match self.shared.devices.entry(*id) {
                    Entry::Occupied(mut e) if e.get().is_pending() => {
                        e.insert(Slot::Inactive);
                    }
                    Entry::Occupied(_) => {}
                    Entry::Vacant(e) => {
                        e.insert(Slot::Inactive);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Removes a device record. The device registers again on its next
    /// connection while its CA is active: inactivation, not deletion, keeps
    /// a device out.
    pub async fn delete_device(&self, id: &DeviceIdentity) -> Result<(), RegistryError> {
        let _serial = self.shared.admin.lock().await;
        match self.commit_admin(Change::DeleteDevice(*id)).await? {
            None => Err(RegistryError::DeviceNotFound(*id)),
            Some(Applied::Everywhere) => Ok(()),
            Some(Applied::ByCaller) => {
                self.shared.devices.remove(id);
                Ok(())
            }
        }
    }

    pub fn device_count(&self) -> usize {
        self.shared.devices.len()
    }

    // ----- the change feed -------------------------------------------------

    /// Applies one change of the store's feed to the index (every broker,
    /// in the feed's order). Dropping the sessions it ends is the caller's
    /// job, after this, as for the admin calls.
    pub fn apply(&self, change: &FeedChange) -> Result<(), RegistryError> {
        match change {
            FeedChange::CaRegistered(_, None) => {}
            FeedChange::CaRegistered(sn, Some(record)) => {
                if !self.shared.cas.contains_key(sn) {
                    let cert = CaCert::from_stored(&record.pem).map_err(|e| {
                        StoreError::Read(format!("the stored CA {sn} is unusable: {e}"))
                    })?;
                    self.shared.cas.insert(
                        *sn,
                        CaEntry {
                            seq: self.shared.seq(),
                            record: (**record).clone(),
                            subject_raw: cert.subject_raw,
                            anchor: cert.anchor,
                        },
                    );
                }
            }
            FeedChange::CaStatus(sn, status) => self.set_ca_status_here(sn, *status),
            FeedChange::CaDeleted(sn) => {
                self.delete_ca_here(sn);
            }
            FeedChange::DeviceRegistered(id, status) => match self.shared.devices.entry(*id) {
                // A registration this broker is making: the admission
                // finishes it.
                Entry::Occupied(mut e) if e.get().is_pending() => {
                    e.insert(Slot::of(*status));
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(Slot::of(*status));
                }
            },
            FeedChange::DeviceStatus(id, status) => {
                self.shared.devices.insert(*id, Slot::of(*status));
            }
            FeedChange::DeviceDeleted(id) => {
                self.shared.devices.remove(id);
            }
            FeedChange::Permissions => {}
        }
        Ok(())
    }
}

/// For unit tests: a registry on SQLite in `dir` with one CA, `name`,
/// registered; the CA's certificate and key come back with its serial.
#[cfg(test)]
pub(crate) async fn with_one_ca(
    dir: &std::path::Path,
    name: &str,
) -> (Registry, CaSn, crate::pki::Issued) {
    use rustls_pki_types::pem::PemObject;
    let store = crate::store::sqlite::SqliteStore::open(&dir.join("registry.db"), 0).unwrap();
    let (registry, _) = Registry::open(Arc::new(store)).unwrap();
    let issued = crate::pki::create_ca(name, 30, crate::pki::KeyKind::P256).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let ca_sn = registry
        .register_ca(CaRegistration::declared(
            CaCert::parse(der, rustls_pki_types::UnixTime::now()).unwrap(),
        ))
        .await
        .unwrap();
    (registry, ca_sn, issued)
}
