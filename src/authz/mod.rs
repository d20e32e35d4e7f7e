//! Topic authorization: what a device may publish and subscribe to,
//! derived from the identity its certificate proved.
//!
//! - [`topic`]: filters, and whether one matches, contains or overlaps
//!   another (the `$`-topic and `#`-parent rules of MQTT included);
//! - [`pattern`]: rule patterns with variables (`devices/${CommonName}/#`)
//!   and the [`Principal`] whose values fill them in;
//! - [`policy`]: policies, rules, and the per-connection [`Grants`] that
//!   decide (deny wins; no allow means deny);
//! - [`set`]: the configured policies and their attachments to CAs,
//!   certificates and subjects ([`PolicySet`]).
//!
//! It knows nothing of sessions or the router: the session asks, it
//! answers.

pub mod pattern;
pub mod policy;
pub mod set;
pub mod topic;

pub use pattern::{Pattern, PatternError, Principal, Var};
pub use policy::{Action, Decision, Effect, Grants, Policy, Rule, RuleRef};
pub use set::{AuthzError, AuthzSettings, PolicySet};
pub use topic::{Filter, FilterError};

#[cfg(test)]
mod properties;
