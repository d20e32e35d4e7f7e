//! The policies in force, shared with every session through a watch
//! channel, and the changes that replace them: a configuration reload
//! (SIGHUP) replaces the configured part, the admin API's custom
//! permission calls the custom part.
//!
//! A custom permission change is durable before it is visible: it is
//! committed to the store, then put in force. Changes are serialised, so
//! the store and the set in force apply them in one order. Every set put
//! in force has a new generation: a session records the generation it
//! last judged under, and the caller of a change waits for the sessions
//! it concerns to catch up (see `session::SessionTable::rejudged`).

use std::sync::Arc;

use tokio::sync::watch;

use super::custom::{CustomPermissions, PermissionError};
use super::set::PolicySet;
use crate::record::{PermissionKey, PermissionRecord};
use crate::store::{Change, Store, StoreError};

/// Why a custom permission change was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Invalid(#[from] PermissionError),
    #[error(
        "a custom permission for this identity and topic exists; change it with UpdateCustomAuthPermission"
    )]
    Exists,
    #[error(
        "no custom permission for this identity and topic exists; add it with AddCustomAuthPermission"
    )]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policies in force.
pub struct LivePolicies {
    tx: watch::Sender<Arc<PolicySet>>,
    store: Arc<dyn Store>,
    changes: tokio::sync::Mutex<()>,
}

impl LivePolicies {
    /// Puts `configured` and the stored `custom` permissions in force.
    pub fn new(configured: PolicySet, custom: CustomPermissions, store: Arc<dyn Store>) -> Self {
        let mut set = configured.with_custom(custom);
        set.set_generation(1);
        LivePolicies {
            tx: watch::Sender::new(Arc::new(set)),
            store,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// Sees every set put in force from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicySet>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.tx.borrow().clone()
    }

    /// Replaces the configured policies, keeping the custom permissions;
    /// returns the new generation.
    pub fn reload(&self, configured: PolicySet) -> u64 {
        self.put_in_force(|current| configured.with_custom(current.custom().clone()))
    }

    /// Reads the custom permissions from the store again and puts them in
    /// force, after a broker sharing the store changed one (the change
    /// feed); returns the new generation. Live sessions re-judge
    /// themselves under it. Read under the change lock, so that a change
    /// made here meanwhile is either in what is read or made after it.
    pub async fn refresh_custom(&self) -> Result<u64, String> {
        let _serial = self.changes.lock().await;
        let records = self.store.permissions().await.map_err(|e| e.to_string())?;
        let custom = CustomPermissions::from_records(records).map_err(|e| e.to_string())?;
        Ok(self.put_in_force(|current| current.with_custom(custom)))
    }

    /// Adds a custom permission; refused if its identity and topic have one.
    pub async fn add(&self, record: PermissionRecord) -> Result<u64, ChangeError> {
        let _serial = self.changes.lock().await;
        let current = self.current();
        if current.custom().get(&record.key).is_some() {
            return Err(ChangeError::Exists);
        }
        let next = current.custom().with(record.clone())?;
        self.commit_and_apply(Change::PutPermission(record), next)
            .await
    }

    /// Changes the action and effect of an existing custom permission.
    pub async fn update(&self, record: PermissionRecord) -> Result<u64, ChangeError> {
        let _serial = self.changes.lock().await;
        let current = self.current();
        if current.custom().get(&record.key).is_none() {
            return Err(ChangeError::NotFound);
        }
        let next = current.custom().with(record.clone())?;
        self.commit_and_apply(Change::PutPermission(record), next)
            .await
    }

    /// Removes a custom permission.
    pub async fn delete(&self, key: PermissionKey) -> Result<u64, ChangeError> {
        let _serial = self.changes.lock().await;
        let next = self
            .current()
            .custom()
            .without(&key)
            .ok_or(ChangeError::NotFound)?;
        self.commit_and_apply(Change::DeletePermission(key), next)
            .await
    }

    async fn commit_and_apply(
        &self,
        change: Change,
        next: CustomPermissions,
    ) -> Result<u64, ChangeError> {
        self.store.commit(change).await?;
        // The configured part may have been reloaded meanwhile: keep it.
        Ok(self.put_in_force(|current| current.with_custom(next)))
    }

    /// Replaces the set in force with `make(current)` as the next
    /// generation, atomically with respect to other replacements.
    fn put_in_force(&self, make: impl FnOnce(&PolicySet) -> PolicySet) -> u64 {
        let mut generation = 0;
        self.tx.send_modify(|current| {
            generation = current.generation() + 1;
            let mut next = make(current);
            next.set_generation(generation);
            *current = Arc::new(next);
        });
        generation
    }
}
