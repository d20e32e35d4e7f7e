//! Certificate records: the status of a CA or device certificate and what
//! the API reports about each. The registry keeps them and the store
//! persists them; both depend on this module, neither on the other's
//! internals (the store knows nothing of the registry).

use std::sync::Arc;

use crate::identity::DeviceIdentity;
use crate::serial::{CaSn, DeviceSn};
use crate::topic::Filter;

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

/// Who a custom permission is for (the API's `IdentityType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKind {
    /// A client id (`CLIENT`, as on the platform).
    Client,
    /// One device certificate, `<CaSn>:<DeviceSn>` (`DEVICE`, certmq's).
    Device,
    /// Every certificate a CA issued, `<CaSn>` (`CA`, certmq's).
    Ca,
}

impl IdentityKind {
    pub const ALL: [IdentityKind; 3] =
        [IdentityKind::Client, IdentityKind::Device, IdentityKind::Ca];

    /// The API's (and the store's) name.
    pub fn api_name(self) -> &'static str {
        match self {
            IdentityKind::Client => "CLIENT",
            IdentityKind::Device => "DEVICE",
            IdentityKind::Ca => "CA",
        }
    }

    pub fn from_api_name(name: &str) -> Option<IdentityKind> {
        IdentityKind::ALL.into_iter().find(|k| k.api_name() == name)
    }
}

/// What a custom permission covers (the API's `PermitAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermitAction {
    Pub,
    Sub,
    PubSub,
}

impl PermitAction {
    pub const ALL: [PermitAction; 3] = [PermitAction::Pub, PermitAction::Sub, PermitAction::PubSub];

    pub fn api_name(self) -> &'static str {
        match self {
            PermitAction::Pub => "PUB",
            PermitAction::Sub => "SUB",
            PermitAction::PubSub => "PUB_SUB",
        }
    }

    pub fn from_api_name(name: &str) -> Option<PermitAction> {
        PermitAction::ALL.into_iter().find(|a| a.api_name() == name)
    }

    pub fn publish(self) -> bool {
        matches!(self, PermitAction::Pub | PermitAction::PubSub)
    }

    pub fn subscribe(self) -> bool {
        matches!(self, PermitAction::Sub | PermitAction::PubSub)
    }
}

/// Whether a custom permission allows or denies (the API's `Effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PermitEffect {
    Allow,
    Deny,
}

impl PermitEffect {
    pub fn api_name(self) -> &'static str {
        match self {
            PermitEffect::Allow => "ALLOW",
            PermitEffect::Deny => "DENY",
        }
    }

    pub fn from_api_name(name: &str) -> Option<PermitEffect> {
        [PermitEffect::Allow, PermitEffect::Deny]
            .into_iter()
            .find(|e| e.api_name() == name)
    }
}

/// What identifies a custom permission: one per identity and topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PermissionKey {
    pub kind: IdentityKind,
    /// Canonical: a client id as given; serials in upper-case hex.
    pub identity: String,
    pub topic: String,
}

/// The longest custom permission topic filter and client id, in bytes.
pub const MAX_TOPIC_BYTES: usize = 1_024;
pub const MAX_CLIENT_ID_BYTES: usize = 1_024;

/// Why a permission's identity or topic is not valid; the message names
/// the API parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Identity: {0}")]
    Identity(String),
    #[error("Topic: {0}")]
    Topic(String),
}

impl PermissionKey {
    /// The canonical identity text of `kind`: serials in upper-case hex,
    /// so that one certificate has one key however its serial is written.
    pub fn canonical_identity(kind: IdentityKind, identity: &str) -> Result<String, KeyError> {
        let bad = KeyError::Identity;
        match kind {
            IdentityKind::Client => {
                if identity.is_empty() || identity.len() > MAX_CLIENT_ID_BYTES {
                    return Err(bad(format!(
                        "a client id of 1 to {MAX_CLIENT_ID_BYTES} bytes"
                    )));
                }
                if identity.chars().any(char::is_control) {
                    return Err(bad("a client id without control characters".into()));
                }
                Ok(identity.to_owned())
            }
            IdentityKind::Device => {
                let (ca, device) = identity
                    .split_once(':')
                    .filter(|(_, device)| !device.contains(':'))
                    .ok_or_else(|| {
                        bad("a DEVICE identity is `<CaSn>:<DeviceSn>`: two hex serials without `:` separators, \
                             as the certificate API shows them, joined by one `:`".into())
                    })?;
                let ca = CaSn::parse(ca).map_err(|e| bad(format!("the CaSn before `:`: {e}")))?;
                let device = DeviceSn::parse(device)
                    .map_err(|e| bad(format!("the DeviceSn after `:`: {e}")))?;
                Ok(format!("{ca}:{device}"))
            }
            IdentityKind::Ca => Ok(CaSn::parse(identity)
                .map_err(|e| bad(format!("a CA identity is its hex serial: {e}")))?
                .to_string()),
        }
    }

    /// Checks a custom topic: an MQTT topic filter (wildcards allowed).
    pub fn check_topic(topic: &str) -> Result<Filter, KeyError> {
        if topic.len() > MAX_TOPIC_BYTES {
            return Err(KeyError::Topic(format!(
                "at most {MAX_TOPIC_BYTES} bytes, {} given",
                topic.len()
            )));
        }
        Filter::parse(topic).map_err(|e| KeyError::Topic(e.to_string()))
    }

    /// A key from what a caller or a backup wrote, checked and canonical.
    pub fn new(kind: IdentityKind, identity: &str, topic: &str) -> Result<PermissionKey, KeyError> {
        let identity = PermissionKey::canonical_identity(kind, identity)?;
        PermissionKey::check_topic(topic)?;
        Ok(PermissionKey {
            kind,
            identity,
            topic: topic.to_owned(),
        })
    }
}

/// A topic permission added through the API (`AddCustomAuthPermission`),
/// as stored. Checked before it is stored (see `authz::custom`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRecord {
    pub key: PermissionKey,
    pub action: PermitAction,
    pub effect: PermitEffect,
}
