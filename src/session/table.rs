//! The session table: every live connection, by device identity and by MQTT
//! client id, each with a kill handle.
//!
//! A client id belongs to the certificate identity that holds it, live or
//! with a persistent session stored in the router: another identity cannot
//! take it (it would kick the holder, or inherit its subscriptions and queued
//! messages). The same identity may take its own session over, as MQTT
//! allows. The claim belongs to the identity until a clean session of it
//! ends.
//!
//! What an operator asks of one device or one CA is answered from an index
//! of it, not by walking the fleet: the client ids each identity owns (so
//! that InactivateDeviceCertificate, and each serial a CRL revokes, release
//! a device's persistent sessions as fast among 100,000 others as among
//! 1,000) and the live sessions per CA (GetCaCertificate's count).
//! `benches/sessions.rs` measures both. Operations on a whole CA (kill,
//! release, re-judge) still walk the devices: they act on all of them.
//!
//! A connection enters the table right after its TLS handshake, *before* it
//! re-reads its certificate's status (see `admission`), and leaves it when
//! its socket is closed. That makes "drop every session of this device"
//! exact: once [`SessionTable::drop_device`] has waited, no socket of that
//! device is open, and any connection that was still between handshake and
//! table entry will see the new status when it re-reads it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::identity::DeviceIdentity;
use crate::serial::CaSn;

/// Identifies one connection for its whole life.
pub type SessionId = u64;

/// Why certmq closes a session; MQTT 5 clients receive it as DISCONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An admin call (or a CRL) removed the certificate's access, or an
    /// operator closed the connection (reason code 0x98).
    Administrative(Cut),
    /// The broker is stopping (0x8B).
    ShuttingDown,
    /// Another connection claimed the same client id (0x8E).
    TakenOver,
    /// This node lost its lease on the shared registry and cannot know
    /// whether the certificate is still active (0x9C, use another server).
    Fenced,
    /// The device certificate, or its CA's, passed its NotAfter (0xA0,
    /// maximum connect time).
    Expired,
}

/// What an operator did that ended a session (all DISCONNECT 0x98): the
/// lifecycle events tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The device certificate was inactivated (by a call or a CRL).
    Inactivated,
    /// Its CA certificate was inactivated.
    CaInactivated,
    /// The device certificate was deleted.
    Deleted,
    /// Its CA certificate was deleted.
    CaDeleted,
    /// The connection was closed by a call (CloseConnection).
    Kicked,
    /// The policies changed and the session did not re-judge its
    /// subscriptions in time.
    PolicyChanged,
}

impl Cut {
    const ALL: [Cut; 6] = [
        Cut::Inactivated,
        Cut::CaInactivated,
        Cut::Deleted,
        Cut::CaDeleted,
        Cut::Kicked,
        Cut::PolicyChanged,
    ];

    /// The `reason` of a disconnected event.
    pub fn name(self) -> &'static str {
        match self {
            Cut::Inactivated => "inactivated",
            Cut::CaInactivated => "ca_inactivated",
            Cut::Deleted => "deleted",
            Cut::CaDeleted => "ca_deleted",
            Cut::Kicked => "kicked",
            Cut::PolicyChanged => "policy_changed",
        }
    }
}

impl DropReason {
    fn code(self) -> u8 {
        match self {
            DropReason::Administrative(cut) => 10 + cut as u8,
            DropReason::ShuttingDown => 2,
            DropReason::TakenOver => 3,
            DropReason::Fenced => 4,
            DropReason::Expired => 5,
        }
    }

    fn from_code(code: u8) -> Option<DropReason> {
        match code {
            2 => Some(DropReason::ShuttingDown),
            3 => Some(DropReason::TakenOver),
            4 => Some(DropReason::Fenced),
            5 => Some(DropReason::Expired),
            _ => Cut::ALL
                .into_iter()
                .find(|cut| 10 + *cut as u8 == code)
                .map(DropReason::Administrative),
        }
    }

    /// The `reason` label of `certmq_sessions_dropped_total`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Administrative(_) => "administrative",
            DropReason::ShuttingDown => "shutting_down",
            DropReason::TakenOver => "taken_over",
            DropReason::Fenced => "fenced",
            DropReason::Expired => "expired",
        }
    }

    /// The `reason` of a disconnected event: the metric's label, the
    /// administrative one told apart by its cut.
    pub fn event_name(self) -> &'static str {
        match self {
            DropReason::Administrative(cut) => cut.name(),
            other => other.label(),
        }
    }

    pub fn is_administrative(self) -> bool {
        matches!(self, DropReason::Administrative(_))
    }

    /// Whether the session's will is withheld: the certificate lost its
    /// access (or this node cannot tell whether it has), so its last word
    /// must not reach the fleet.
    pub fn silences_will(self) -> bool {
        matches!(
            self,
            DropReason::Administrative(_) | DropReason::Fenced | DropReason::Expired
        )
    }
}

/// Sessions did not close within the allowed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{open} session(s) were still open after {waited:?}")]
pub struct DropTimeout {
    pub open: usize,
    pub waited: Duration,
}

#[derive(Clone)]
struct Handle {
    kill: CancellationToken,
    closed: CancellationToken,
    /// The first reason a kill gave, except that the first administrative
    /// drop wins over any other: a session an operator cut off while it
    /// was being taken over (or the broker stopping) publishes no will, and
    /// its disconnected event names the first cut.
    reason: Arc<AtomicU8>,
    /// The policy generation the session's grants were made under (0:
    /// none yet; it will make them under the set in force then).
    judged: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Handle {
    fn kill(&self, reason: DropReason) -> Closing {
        let code = reason.code();
        // The first reason stays, except that the first administrative one
        // replaces any other (and no later one replaces it).
        let _ = self
            .reason
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let admin = |c| DropReason::from_code(c).is_some_and(DropReason::is_administrative);
                (current == 0 || (reason.is_administrative() && !admin(current))).then_some(code)
            });
        self.kill.cancel();
        Closing {
            closed: self.closed.clone(),
        }
    }
}

/// Resolves when a killed session's socket is closed.
#[derive(Debug)]
pub struct Closing {
    closed: CancellationToken,
}

impl Closing {
    pub async fn wait(self) {
        self.closed.cancelled().await
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// Waits for all `closings`, at most `timeout`.
pub async fn wait_all(closings: Vec<Closing>, timeout: Duration) -> Result<usize, DropTimeout> {
    let count = closings.len();
    let pending: Vec<_> = closings.iter().map(|c| c.closed.clone()).collect();
    let all = async {
        for token in &pending {
            token.cancelled().await;
        }
    };
    match tokio::time::timeout(timeout, all).await {
        Ok(()) => Ok(count),
        Err(_) => Err(DropTimeout {
            open: pending.iter().filter(|t| !t.is_cancelled()).count(),
            waited: timeout,
        }),
    }
}

/// The live sessions; cheap to clone, all clones share state.
#[derive(Clone, Default)]
pub struct SessionTable {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    next_id: AtomicU64,
    by_device: DashMap<DeviceIdentity, HashMap<SessionId, Handle>>,
    by_client: DashMap<Arc<str>, ClientEntry>,
    /// The keys of `by_client` by their owner. Every entry made in
    /// `by_client` adds its key here once, under the entry's lock, and
    /// every entry removed takes it out once, right after (lock order:
    /// `by_client`, then `owned`). A session's claim is here before its
    /// guard signals "closed", so whoever has waited for a device's
    /// sessions to close finds every id it owns. A reader may briefly see
    /// an id whose entry has gone or changed owner: `by_client` decides.
    owned: DashMap<DeviceIdentity, Vec<Arc<str>>>,
    /// Live sessions per CA. An entry goes when its count reaches zero.
    live_per_ca: DashMap<CaSn, AtomicUsize>,
    /// Sessions by the moment their certificate (or its CA's) expires, in
    /// milliseconds since the epoch: one ordered map and one task for all
    /// of them (see [`SessionTable::run_expiry`]), no timer per session.
    expiry: std::sync::Mutex<std::collections::BTreeMap<(i64, SessionId), Handle>>,
    /// Woken when a session expiring sooner than any other enters.
    expiry_changed: tokio::sync::Notify,
}

/// Who owns a client id, and which session (if any) holds it now. One map
/// entry, so every change of both happens under one lock.
struct ClientEntry {
    owner: DeviceIdentity,
    holder: Option<(SessionId, Handle)>,
    /// The holder asked for a persistent session: the claim outlives it.
    persistent: bool,
}

/// Which sessions a change concerns.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    Device(&'a DeviceIdentity),
    Ca(&'a CaSn),
    Client(&'a str),
}

/// What [`SessionTable::rejudged`] waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejudged {
    /// Sessions that had grants from an older generation.
    pub sessions: usize,
    /// Of those, closed because they had not re-judged in time.
    pub cut_off: usize,
}

/// A client id claimed by another certificate identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client id belongs to another device certificate ({owner})")]
pub struct ClientIdTaken {
    pub owner: DeviceIdentity,
}

impl Shared {
    /// `client_id` entered `by_client`, owned by `owner`.
    fn own(&self, owner: DeviceIdentity, client_id: Arc<str>) {
        self.owned.entry(owner).or_default().push(client_id);
    }

    /// `client_id`'s entry, owned by `owner`, left `by_client`.
    fn disown(&self, owner: &DeviceIdentity, client_id: &str) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.owned.entry(*owner) {
            let ids = e.get_mut();
            if let Some(at) = ids.iter().position(|id| &**id == client_id) {
                ids.swap_remove(at);
            }
            if ids.is_empty() {
                e.remove();
            } else if ids.capacity() > 2 * ids.len() {
                ids.shrink_to_fit();
            }
        }
    }

    /// Removes `client_id`'s entry if `release` says so (under the
    /// entry's lock), and its key from `owned`. Whether it was removed.
    fn release_claim(&self, client_id: &str, release: impl FnOnce(&ClientEntry) -> bool) -> bool {
        match self.by_client.remove_if(client_id, |_, e| release(e)) {
            Some((key, entry)) => {
                self.disown(&entry.owner, &key);
                true
            }
            None => false,
        }
    }

    fn session_entered(&self, ca_sn: &CaSn) {
        if let Some(count) = self.live_per_ca.get(ca_sn) {
            count.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.live_per_ca
            .entry(*ca_sn)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    fn session_left(&self, ca_sn: &CaSn) {
        let last = self
            .live_per_ca
            .get(ca_sn)
            .is_some_and(|count| count.fetch_sub(1, Ordering::Relaxed) == 1);
        if last {
            // Under the shard's write lock: a session entering meanwhile
            // has raised the count again (or finds no entry and makes one).
            self.live_per_ca
                .remove_if(ca_sn, |_, count| count.load(Ordering::Relaxed) == 0);
        }
    }
}

impl SessionTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enters a new connection of `identity`. The returned guard removes it
    /// again, and signals "closed", when dropped.
    pub fn register(&self, identity: DeviceIdentity) -> SessionGuard {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = Handle {
            kill: CancellationToken::new(),
            closed: CancellationToken::new(),
            reason: Arc::new(AtomicU8::new(0)),
            judged: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        self.shared
            .by_device
            .entry(identity)
            .or_default()
            .insert(id, handle.clone());
        self.shared.session_entered(&identity.ca_sn);
        SessionGuard {
            table: self.clone(),
            id,
            identity,
            handle,
            client_id: None,
            expires_at_ms: None,
        }
    }

    /// Ends sessions whose certificate expired, until `shutdown`: sleeps
    /// until the soonest expiry (at most a minute, so that a wall clock
    /// set forward is noticed), kills what is due, and so on.
    pub async fn run_expiry(&self, shutdown: CancellationToken) {
        const LONGEST_SLEEP_MS: i64 = 60_000;
        let shared = &self.shared;
        loop {
            let now = crate::store::sqlite::now_ms();
            let (due, next) = {
                let mut expiry = shared.expiry.lock().unwrap_or_else(|p| p.into_inner());
                let later = expiry.split_off(&(now.saturating_add(1), 0));
                let due = std::mem::replace(&mut *expiry, later);
                let next = expiry.keys().next().map(|(at, _)| *at);
                (due, next)
            };
            for handle in due.into_values() {
                handle.kill(DropReason::Expired);
            }
            let wait = next.map_or(LONGEST_SLEEP_MS, |at| {
                at.saturating_sub(now).clamp(1, LONGEST_SLEEP_MS)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = shared.expiry_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
    }

    /// Sessions waiting for their certificate's expiry.
    pub fn expiring(&self) -> usize {
        self.shared
            .expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Kills every session of a device; returns their close waiters.
    pub fn kill_device(&self, identity: &DeviceIdentity, reason: DropReason) -> Vec<Closing> {
        match self.shared.by_device.get(identity) {
            Some(sessions) => sessions.values().map(|h| h.kill(reason)).collect(),
            None => Vec::new(),
        }
    }

    /// Kills every session of every device issued by a CA.
    pub fn kill_ca(&self, ca_sn: &CaSn, reason: DropReason) -> Vec<Closing> {
        let mut closings = Vec::new();
        for entry in self.shared.by_device.iter() {
            if entry.key().ca_sn == *ca_sn {
                closings.extend(entry.value().values().map(|h| h.kill(reason)));
            }
        }
        closings
    }

    /// Waits until every live session in `scope` has re-judged under the
    /// policy generation `generation` (or closed, if it held what that
    /// generation no longer allows). A session that has not within
    /// `timeout` is closed (no session keeps a grant the policies in force
    /// do not give); closing is waited for as long again.
    pub async fn rejudged(
        &self,
        scope: Scope<'_>,
        generation: u64,
        timeout: Duration,
    ) -> Result<Rejudged, DropTimeout> {
        let handles = self.handles(scope);
        let behind = |h: &Handle| {
            let judged = *h.judged.borrow();
            judged != 0 && judged < generation && !h.closed.is_cancelled()
        };
        let waiting: Vec<Handle> = handles.into_iter().filter(|h| behind(h)).collect();
        let count = waiting.len();
        let caught_up = async {
            for handle in &waiting {
                let mut judged = handle.judged.subscribe();
                tokio::select! {
                    _ = judged.wait_for(|g| *g >= generation) => {}
                    _ = handle.closed.cancelled() => {}
                }
            }
        };
        if tokio::time::timeout(timeout, caught_up).await.is_ok() {
            return Ok(Rejudged {
                sessions: count,
                cut_off: 0,
            });
        }
        let late: Vec<Closing> = waiting
            .iter()
            .filter(|h| behind(h))
            .map(|h| h.kill(DropReason::Administrative(Cut::PolicyChanged)))
            .collect();
        let cut_off = wait_all(late, timeout).await?;
        Ok(Rejudged {
            sessions: count,
            cut_off,
        })
    }

    fn handles(&self, scope: Scope<'_>) -> Vec<Handle> {
        match scope {
            Scope::Device(identity) => self
                .shared
                .by_device
                .get(identity)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default(),
            Scope::Ca(ca_sn) => self
                .shared
                .by_device
                .iter()
                .filter(|e| e.key().ca_sn == *ca_sn)
                .flat_map(|e| e.value().values().cloned().collect::<Vec<_>>())
                .collect(),
            Scope::Client(client_id) => self
                .shared
                .by_client
                .get(client_id)
                .and_then(|e| e.holder.as_ref().map(|(_, h)| h.clone()))
                .into_iter()
                .collect(),
        }
    }

    /// Kills every session (shutdown).
    pub fn kill_all(&self, reason: DropReason) -> Vec<Closing> {
        let mut closings = Vec::new();
        for entry in self.shared.by_device.iter() {
            closings.extend(entry.value().values().map(|h| h.kill(reason)));
        }
        closings
    }

    /// Kills the session holding `client_id`, if any.
    pub fn kill_client(&self, client_id: &str, reason: DropReason) -> Option<Closing> {
        let entry = self.shared.by_client.get(client_id)?;
        entry.holder.as_ref().map(|(_, handle)| handle.kill(reason))
    }

    /// Kills every session of a device and waits until their sockets are
    /// closed. Returns how many there were.
    pub async fn drop_device(
        &self,
        identity: &DeviceIdentity,
        reason: DropReason,
        timeout: Duration,
    ) -> Result<usize, DropTimeout> {
        wait_all(self.kill_device(identity, reason), timeout).await
    }

    /// Releases the client ids a device's certificate owns without a live
    /// session (persistent sessions it left behind), once it has lost its
    /// access: an inactivated or deleted certificate keeps no claim.
    /// `forget` runs for each before it is freed (it discards the router's
    /// stored session, so that the next owner inherits nothing); the id
    /// stays claimed until `forget` returns, and for good if it returns
    /// `false` (then the router still holds the session: releasing the id
    /// would hand it to whoever claims it next). Returns how many were
    /// freed.
    pub async fn release_device<F, Fut>(&self, identity: &DeviceIdentity, forget: F) -> usize
    where
        F: Fn(Arc<str>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.release_owned(identity, &forget).await
    }

    /// [`SessionTable::release_device`] for every device of a CA.
    pub async fn release_ca<F, Fut>(&self, ca_sn: &CaSn, forget: F) -> usize
    where
        F: Fn(Arc<str>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let owners: Vec<DeviceIdentity> = self
            .shared
            .owned
            .iter()
            .filter(|e| e.key().ca_sn == *ca_sn)
            .map(|e| *e.key())
            .collect();
        let mut released = 0;
        for owner in owners {
            released += self.release_owned(&owner, &forget).await;
        }
        released
    }

    /// Releases the unheld client ids `owner` owns; see
    /// [`SessionTable::release_device`].
    async fn release_owned<F, Fut>(&self, owner: &DeviceIdentity, forget: &F) -> usize
    where
        F: Fn(Arc<str>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let unheld = |e: &ClientEntry| e.holder.is_none() && e.owner == *owner;
        let ids: Vec<Arc<str>> = match self.shared.owned.get(owner) {
            Some(ids) => ids.clone(),
            None => return 0,
        };
        let mut released = 0;
        for client_id in ids {
            let still_unheld = self
                .shared
                .by_client
                .get(&client_id)
                .is_some_and(|e| unheld(&e));
            if !still_unheld || !forget(client_id.clone()).await {
                continue;
            }
            // Only if still unheld: the owner cannot have come back (it has
            // no access), but be exact about it.
            if self.shared.release_claim(&client_id, unheld) {
                released += 1;
            }
        }
        released
    }

    /// Frees the claim on `client_id` of a persistent session that
    /// expired in the router, unless a connection holds the id now.
    pub fn release_expired(&self, client_id: &str) {
        self.shared.release_claim(client_id, |e| e.holder.is_none());
    }

    /// Gives back the room of maps that emptied (after a burst of
    /// connections or of persistent sessions that has gone).
    pub fn shrink_if_sparse(&self) {
        let sparse = |len: usize, capacity: usize| capacity > 1024 && len * 4 < capacity;
        if sparse(
            self.shared.by_client.len(),
            self.shared.by_client.capacity(),
        ) {
            self.shared.by_client.shrink_to_fit();
        }
        if sparse(
            self.shared.by_device.len(),
            self.shared.by_device.capacity(),
        ) {
            self.shared.by_device.shrink_to_fit();
        }
        if sparse(self.shared.owned.len(), self.shared.owned.capacity()) {
            self.shared.owned.shrink_to_fit();
        }
    }

    /// Client ids claimed now, live or by a persistent session.
    pub fn claimed_client_ids(&self) -> usize {
        self.shared.by_client.len()
    }

    /// Live sessions of a device.
    pub fn sessions_of(&self, identity: &DeviceIdentity) -> usize {
        self.shared.by_device.get(identity).map_or(0, |s| s.len())
    }

    /// Live sessions of a CA's devices.
    pub fn sessions_of_ca(&self, ca_sn: &CaSn) -> usize {
        self.shared
            .live_per_ca
            .get(ca_sn)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// Whether a connection currently holds this client id.
    pub fn is_online(&self, client_id: &str) -> bool {
        self.shared
            .by_client
            .get(client_id)
            .is_some_and(|e| e.holder.is_some())
    }

    /// All live sessions.
    pub fn len(&self) -> usize {
        self.shared.by_device.iter().map(|e| e.value().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's membership in the table, held by its task.
pub struct SessionGuard {
    table: SessionTable,
    id: SessionId,
    identity: DeviceIdentity,
    handle: Handle,
    client_id: Option<Arc<str>>,
    /// When the certificate expires, once [`SessionGuard::expires_at`] set it.
    expires_at_ms: Option<i64>,
}

impl SessionGuard {
    /// Ends this session (DropReason::Expired) at `at_ms` (milliseconds
    /// since the epoch): when the device certificate or its CA's passes
    /// NotAfter. Set once, after admission.
    pub fn expires_at(&mut self, at_ms: i64) {
        if self.expires_at_ms.is_some() {
            return;
        }
        self.expires_at_ms = Some(at_ms);
        let shared = &self.table.shared;
        let mut expiry = shared.expiry.lock().unwrap_or_else(|p| p.into_inner());
        let soonest = expiry.keys().next().is_none_or(|(first, _)| at_ms < *first);
        expiry.insert((at_ms, self.id), self.handle.clone());
        drop(expiry);
        if soonest {
            shared.expiry_changed.notify_one();
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn identity(&self) -> DeviceIdentity {
        self.identity
    }

    /// Resolves when the session is to be dropped.
    pub fn killed(&self) -> WaitForCancellationFuture<'_> {
        self.handle.kill.cancelled()
    }

    pub fn is_killed(&self) -> bool {
        self.handle.kill.is_cancelled()
    }

    /// Records that this session's grants are those of policy generation
    /// `generation`.
    pub fn judged(&self, generation: u64) {
        self.handle.judged.send_replace(generation);
    }

    pub fn drop_reason(&self) -> Option<DropReason> {
        DropReason::from_code(self.handle.reason.load(Ordering::Acquire))
    }

    /// Makes this session the holder of `client_id`, unless another
    /// certificate identity owns it. A previous holder of the same identity
    /// is killed (MQTT session take-over) and its waiter returned.
    /// `persistent`: the client asked the router to keep its session.
    pub fn claim_client_id(
        &mut self,
        client_id: &str,
        persistent: bool,
    ) -> Result<Option<Closing>, ClientIdTaken> {
        let key: Arc<str> = Arc::from(client_id);
        let holder = (self.id, self.handle.clone());
        let previous = match self.table.shared.by_client.entry(key.clone()) {
            dashmap::mapref::entry::Entry::Occupied(mut e) => {
                let entry = e.get_mut();
                if entry.owner != self.identity {
                    return Err(ClientIdTaken { owner: entry.owner });
                }
                entry.persistent = persistent;
                entry.holder.replace(holder)
            }
            dashmap::mapref::entry::Entry::Vacant(e) => {
                let _locked = e.insert(ClientEntry {
                    owner: self.identity,
                    holder: Some(holder),
                    persistent,
                });
                // Indexed before the entry's lock is let go: a take-over
                // by the same identity could otherwise end and remove the
                // entry before its key is in `owned`, which would then
                // keep it for good.
                self.table.shared.own(self.identity, key.clone());
                None
            }
        };
        self.client_id = Some(key);
        Ok(previous
            .filter(|(id, _)| *id != self.id)
            .map(|(_, handle)| handle.kill(DropReason::TakenOver)))
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let shared = &self.table.shared;
        if let Some(at) = self.expires_at_ms {
            shared
                .expiry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(at, self.id));
        }
        if let Some(client_id) = &self.client_id {
            if let Some(mut entry) = shared.by_client.get_mut(client_id) {
                if entry.holder.as_ref().is_some_and(|(id, _)| *id == self.id) {
                    entry.holder = None;
                }
            }
            // A clean session leaves nothing behind: the id is free again.
            shared.release_claim(client_id, |e| e.holder.is_none() && !e.persistent);
        }
        if let Some(mut sessions) = shared.by_device.get_mut(&self.identity) {
            sessions.remove(&self.id);
        }
        shared
            .by_device
            .remove_if(&self.identity, |_, s| s.is_empty());
        shared.session_left(&self.identity.ca_sn);
        self.handle.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::{DeviceSn, Serial};

    fn identity(n: u8) -> DeviceIdentity {
        DeviceIdentity {
            ca_sn: CaSn(Serial::from_der_content(&[1]).unwrap()),
            device_sn: DeviceSn(Serial::from_der_content(&[n]).unwrap()),
        }
    }

    #[tokio::test]
    async fn kill_reaches_only_the_device() {
        let table = SessionTable::new();
        let a = table.register(identity(1));
        let b = table.register(identity(2));
        assert_eq!(table.len(), 2);
        let closings =
            table.kill_device(&identity(1), DropReason::Administrative(Cut::Inactivated));
        assert_eq!(closings.len(), 1);
        assert!(a.is_killed());
        assert_eq!(
            a.drop_reason(),
            Some(DropReason::Administrative(Cut::Inactivated))
        );
        assert!(!b.is_killed());
        drop(a);
        assert_eq!(wait_all(closings, Duration::from_secs(1)).await, Ok(1));
        assert_eq!(table.sessions_of(&identity(1)), 0);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn drop_times_out_when_a_session_stays() {
        let table = SessionTable::new();
        let _a = table.register(identity(1));
        let err = table
            .drop_device(
                &identity(1),
                DropReason::Administrative(Cut::Inactivated),
                Duration::from_millis(20),
            )
            .await
            .unwrap_err();
        assert_eq!(err.open, 1);
    }

    #[test]
    fn claiming_a_client_id_takes_it_over() {
        let table = SessionTable::new();
        let mut a = table.register(identity(1));
        let mut b = table.register(identity(1));
        assert!(a.claim_client_id("c", false).unwrap().is_none());
        assert!(table.is_online("c"));
        assert!(b.claim_client_id("c", false).unwrap().is_some());
        assert_eq!(a.drop_reason(), Some(DropReason::TakenOver));
        drop(a); // must not remove b's claim
        assert!(table.is_online("c"));
        drop(b);
        assert!(!table.is_online("c"));
        // A clean session freed the id for anyone.
        let mut other = table.register(identity(2));
        assert!(other.claim_client_id("c", false).is_ok());
    }

    #[test]
    fn an_administrative_drop_overrides_an_earlier_reason() {
        let table = SessionTable::new();
        let a = table.register(identity(1));
        table.kill_all(DropReason::ShuttingDown);
        assert_eq!(a.drop_reason(), Some(DropReason::ShuttingDown));
        table.kill_device(&identity(1), DropReason::TakenOver);
        assert_eq!(a.drop_reason(), Some(DropReason::ShuttingDown));
        // An operator cut it off as well: no will, whatever came first.
        table.kill_device(&identity(1), DropReason::Administrative(Cut::Inactivated));
        assert_eq!(
            a.drop_reason(),
            Some(DropReason::Administrative(Cut::Inactivated))
        );
        // A later cut (a kick, a policy change) does not rename it: the
        // disconnected event says what ended it first.
        table.kill_device(&identity(1), DropReason::Administrative(Cut::Kicked));
        assert_eq!(
            a.drop_reason(),
            Some(DropReason::Administrative(Cut::Inactivated))
        );
    }

    #[test]
    fn another_identity_cannot_take_a_client_id() {
        let table = SessionTable::new();
        let mut a = table.register(identity(1));
        let mut intruder = table.register(identity(2));
        a.claim_client_id("c", true).unwrap();
        assert_eq!(
            intruder.claim_client_id("c", false).unwrap_err(),
            ClientIdTaken { owner: identity(1) }
        );
        assert!(!a.is_killed());
        // A persistent session keeps the claim after it ends...
        drop(a);
        assert!(!table.is_online("c"));
        assert!(intruder.claim_client_id("c", false).is_err());
        // ...until its owner ends a clean session.
        let mut again = table.register(identity(1));
        again.claim_client_id("c", false).unwrap();
        drop(again);
        assert!(intruder.claim_client_id("c", false).is_ok());
    }

    #[tokio::test]
    async fn losing_access_releases_persistent_claims_after_forgetting_them() {
        let table = SessionTable::new();
        let mut a = table.register(identity(1));
        a.claim_client_id("kept", true).unwrap();
        let mut live = table.register(identity(1));
        live.claim_client_id("live", true).unwrap();
        let mut other = table.register(identity(2));
        other.claim_client_id("theirs", true).unwrap();
        drop(a);
        drop(other);
        assert_eq!(table.claimed_client_ids(), 3);
        let forgotten = std::sync::Mutex::new(Vec::new());
        let released = table
            .release_device(&identity(1), |id| {
                // Still claimed while the router forgets it.
                assert!(table.shared.by_client.contains_key(&id));
                forgotten.lock().unwrap().push(id.to_string());
                async { true }
            })
            .await;
        assert_eq!(released, 1);
        assert_eq!(*forgotten.lock().unwrap(), ["kept"]);
        // A live session's claim and another device's stay.
        assert_eq!(table.claimed_client_ids(), 2);
        let mut intruder = table.register(identity(3));
        assert!(intruder.claim_client_id("kept", true).is_ok());
        assert!(intruder.claim_client_id("theirs", true).is_err());
    }

    /// `owned` holds each key of `by_client` once, under its owner, and
    /// nothing else.
    fn assert_index_exact(table: &SessionTable) {
        let shared = &table.shared;
        let mut expected: HashMap<DeviceIdentity, Vec<String>> = HashMap::new();
        for e in shared.by_client.iter() {
            expected
                .entry(e.owner)
                .or_default()
                .push(e.key().to_string());
        }
        let mut found: HashMap<DeviceIdentity, Vec<String>> = HashMap::new();
        for e in shared.owned.iter() {
            assert!(!e.value().is_empty(), "an empty entry for {}", e.key());
            found.insert(
                *e.key(),
                e.value().iter().map(|id| id.to_string()).collect(),
            );
        }
        for ids in expected.values_mut().chain(found.values_mut()) {
            ids.sort();
        }
        assert_eq!(found, expected);
    }

    #[tokio::test]
    async fn the_owner_index_follows_every_claim_and_release() {
        let table = SessionTable::new();
        let mut a = table.register(identity(1));
        a.claim_client_id("a-kept", true).unwrap();
        let mut a2 = table.register(identity(1));
        a2.claim_client_id("a-clean", false).unwrap();
        let mut b = table.register(identity(2));
        b.claim_client_id("b-kept", true).unwrap();
        assert_index_exact(&table);
        // A take-over by the same identity adds nothing.
        let mut a3 = table.register(identity(1));
        a3.claim_client_id("a-kept", true).unwrap();
        drop(a);
        assert_index_exact(&table);
        drop(a2); // clean: released
        drop(a3); // persistent: kept
        drop(b);
        assert_index_exact(&table);
        assert_eq!(table.shared.owned.get(&identity(1)).unwrap().len(), 1);
        table.release_expired("b-kept");
        assert_index_exact(&table);
        assert!(table.shared.owned.get(&identity(2)).is_none());
        assert_eq!(
            table.release_device(&identity(1), |_| async { true }).await,
            1
        );
        assert_index_exact(&table);
        assert_eq!(table.shared.owned.len(), 0);
        // A router that cannot forget keeps the claim, and the index with it.
        let mut c = table.register(identity(3));
        c.claim_client_id("c-kept", true).unwrap();
        drop(c);
        assert_eq!(
            table
                .release_device(&identity(3), |_| async { false })
                .await,
            0
        );
        assert_index_exact(&table);
        assert_eq!(
            table
                .release_ca(&identity(3).ca_sn, |_| async { true })
                .await,
            1
        );
        assert_index_exact(&table);
        assert_eq!(table.claimed_client_ids(), 0);
    }

    /// Claims, take-overs, clean and persistent ends, expiries and
    /// releases of the same few ids from several threads at once: the
    /// index is exact once they are done, and releasing each owner then
    /// frees every id left.
    #[test]
    fn the_owner_index_stays_exact_under_contention() {
        let table = SessionTable::new();
        let ids = ["x", "y", "z", "w"];
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let table = table.clone();
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for i in 0..3_000usize {
                        let owner = identity(1 + (i % 2) as u8);
                        let id = ids[(i + t as usize) % ids.len()];
                        let mut guard = table.register(owner);
                        let _ = guard.claim_client_id(id, (i + t as usize) % 3 != 0);
                        drop(guard);
                        match i % 5 {
                            0 => table.release_expired(ids[(i / 5) % ids.len()]),
                            1 => {
                                rt.block_on(table.release_device(&owner, |_| async { true }));
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        assert_index_exact(&table);
        for n in [1, 2] {
            rt_block(table.release_device(&identity(n), |_| async { true }));
        }
        assert_eq!(table.claimed_client_ids(), 0);
        assert_eq!(table.shared.owned.len(), 0);
    }

    fn rt_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn identity_under(ca: u8, n: u8) -> DeviceIdentity {
        DeviceIdentity {
            ca_sn: CaSn(Serial::from_der_content(&[ca]).unwrap()),
            device_sn: DeviceSn(Serial::from_der_content(&[n]).unwrap()),
        }
    }

    #[test]
    fn live_sessions_are_counted_per_ca() {
        let table = SessionTable::new();
        let ca = |n: u8| identity_under(n, 1).ca_sn;
        let a = table.register(identity_under(1, 1));
        let b = table.register(identity_under(1, 2));
        let c = table.register(identity_under(2, 1));
        assert_eq!(table.sessions_of_ca(&ca(1)), 2);
        assert_eq!(table.sessions_of_ca(&ca(2)), 1);
        assert_eq!(table.sessions_of_ca(&ca(3)), 0);
        drop(a);
        drop(c);
        assert_eq!(table.sessions_of_ca(&ca(1)), 1);
        assert_eq!(table.sessions_of_ca(&ca(2)), 0);
        assert_eq!(
            table.shared.live_per_ca.len(),
            1,
            "an emptied CA leaves no entry"
        );
        drop(b);
        assert_eq!(table.shared.live_per_ca.len(), 0);
    }

    /// Sessions of one CA entering and leaving from several threads at
    /// once, the count passing through zero again and again: whatever the
    /// interleaving of a last session leaving (its entry going) with a new
    /// one entering, the count always ends at the sessions still open.
    #[test]
    fn the_per_ca_count_survives_contention() {
        let table = SessionTable::new();
        let ca = identity_under(2, 0).ca_sn;
        let kept: Vec<SessionGuard> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4u8)
                .map(|t| {
                    let table = table.clone();
                    scope.spawn(move || {
                        let mut kept = Vec::new();
                        for i in 0..100_000 {
                            let guard = table.register(identity_under(2, t));
                            // Not zero while this one is open: its entry
                            // cannot have gone with its count.
                            assert!(
                                table.sessions_of_ca(&ca) >= 1,
                                "a live session went uncounted"
                            );
                            if i % 10_000 == 9_999 {
                                // Open for a while: if an entry went with
                                // its count, this session's leaving lowers
                                // another entry's.
                                kept.push(guard);
                            }
                            if i % 30_000 == 29_999 {
                                kept.clear();
                            }
                        }
                        kept
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert_eq!(table.sessions_of_ca(&ca), kept.len());
        drop(kept);
        assert_eq!(table.sessions_of_ca(&ca), 0);
        assert_eq!(table.shared.live_per_ca.len(), 0);
    }
}
