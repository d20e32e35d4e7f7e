//! Topic authorization: what a device may publish and subscribe to,
//! derived from the identity its certificate proved.
//!
//! - [`pattern`]: rule patterns with variables (`devices/${CommonName}/#`)
//!   and the [`Principal`] whose values fill them in;
//! - [`policy`]: policies, rules, and the per-connection [`Grants`] that
//!   decide (deny wins; no allow means deny);
//! - [`set`]: the configured policies and their attachments to CAs,
//!   certificates and subjects ([`PolicySet`]);
//! - [`custom`]: permissions added through the admin API, per client id,
//!   certificate or CA;
//! - [`live`]: the set in force, shared with every session, and changes
//!   to its custom part (durable before they are visible).
//!
//! It knows nothing of sessions or the router: the session asks, it
//! answers.

pub mod custom;
pub mod live;
pub mod pattern;
pub mod policy;
pub mod set;

pub use crate::topic::{Filter, FilterError};
pub use custom::{CustomPermissions, PermissionError};
pub use live::LivePolicies;
pub use pattern::{Pattern, PatternError, Principal, Var};
pub use policy::{Action, Decision, Effect, Grants, Policy, Rule, RuleRef};
pub use set::{AuthzError, AuthzSettings, PolicySet};

#[cfg(test)]
mod properties;
