//! Custom permissions: topic rules added through the admin API
//! (`AddCustomAuthPermission` and its siblings), each for one identity and
//! one topic filter.
//!
//! They combine with the configured policies: a connection's grants are
//! its configured policies' rules plus the custom permissions of its
//! device certificate (`DEVICE`), its CA (`CA`) and its client id
//! (`CLIENT`), and deny wins as everywhere. A custom topic is a plain MQTT
//! filter: `${...}` in it is literal text, not a variable.
//!
//! [`CustomPermissions`] is immutable: a change makes a new one (sharing
//! the compiled rules of every identity it does not touch), which the
//! policies in force then carry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::pattern::Pattern;
use super::policy::{Effect, Policy, Rule};
use crate::identity::DeviceIdentity;
use crate::record::{IdentityKind, KeyError, PermissionKey, PermissionRecord, PermitEffect};
use crate::serial::{CaSn, DeviceSn};

/// Most custom permissions one broker keeps, and per identity: far beyond
/// a fleet's needs, and a bound on the store, the memory and the work of
/// every connection's grants.
pub const MAX_PERMISSIONS: usize = 100_000;
pub const MAX_PER_IDENTITY: usize = 1_000;

/// Why a custom permission cannot be kept; the message names the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(
        "at most {MAX_PER_IDENTITY} custom permissions per identity; delete some with DeleteCustomAuthPermission"
    )]
    IdentityFull,
    #[error(
        "at most {MAX_PERMISSIONS} custom permissions per broker; delete some with DeleteCustomAuthPermission"
    )]
    Full,
}

/// Whom a custom identity selects, parsed once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Selector {
    Client(Arc<str>),
    Device(DeviceIdentity),
    Ca(CaSn),
}

fn selector(key: &PermissionKey) -> Result<Selector, PermissionError> {
    let canonical = PermissionKey::canonical_identity(key.kind, &key.identity)?;
    Ok(match key.kind {
        IdentityKind::Client => Selector::Client(canonical.into()),
        IdentityKind::Device => {
            let (ca, device) = canonical.split_once(':').unwrap_or_default();
            let parse_err = |e: crate::serial::SerialError| KeyError::Identity(e.to_string());
            Selector::Device(DeviceIdentity {
                ca_sn: CaSn::parse(ca).map_err(parse_err)?,
                device_sn: DeviceSn::parse(device).map_err(parse_err)?,
            })
        }
        IdentityKind::Ca => {
            Selector::Ca(CaSn::parse(&canonical).map_err(|e| KeyError::Identity(e.to_string()))?)
        }
    })
}

/// Every custom permission, and each identity's as one compiled policy.
#[derive(Debug, Clone, Default)]
pub struct CustomPermissions {
    records: Arc<BTreeMap<PermissionKey, PermissionRecord>>,
    compiled: HashMap<Selector, Arc<Policy>>,
}

impl CustomPermissions {
    /// Compiles stored permissions (at start-up).
    pub fn from_records(
        records: impl IntoIterator<Item = PermissionRecord>,
    ) -> Result<CustomPermissions, PermissionError> {
        let mut map = BTreeMap::new();
        for record in records {
            map.insert(record.key.clone(), record);
        }
        if map.len() > MAX_PERMISSIONS {
            return Err(PermissionError::Full);
        }
        let mut grouped: HashMap<Selector, Vec<&PermissionRecord>> = HashMap::new();
        for record in map.values() {
            grouped
                .entry(selector(&record.key)?)
                .or_default()
                .push(record);
        }
        let mut compiled = HashMap::with_capacity(grouped.len());
        for (selector, records) in grouped {
            compiled.insert(selector.clone(), compile(&selector, records)?);
        }
        Ok(CustomPermissions {
            records: Arc::new(map),
            compiled,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn get(&self, key: &PermissionKey) -> Option<&PermissionRecord> {
        self.records.get(key)
    }

    /// The permissions after `key` (all from the first with `None`), in
    /// key order: for paging.
    pub fn after<'a>(
        &'a self,
        key: Option<&PermissionKey>,
    ) -> impl Iterator<Item = &'a PermissionRecord> + 'a {
        use std::ops::Bound;
        let lower = match key {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        self.records
            .range((lower, Bound::Unbounded))
            .map(|(_, r)| r)
    }

    /// The set with `record` added, or replacing the one with its key.
    pub fn with(&self, record: PermissionRecord) -> Result<CustomPermissions, PermissionError> {
        PermissionKey::check_topic(&record.key.topic)?;
        let selector = selector(&record.key)?;
        let mut records = (*self.records).clone();
        let key = record.key.clone();
        let replaces = records.insert(key.clone(), record).is_some();
        if !replaces && records.len() > MAX_PERMISSIONS {
            return Err(PermissionError::Full);
        }
        self.rebuilt(records, &key, selector)
    }

    /// The set without the permission of `key` (`None`: there is none).
    pub fn without(&self, key: &PermissionKey) -> Option<CustomPermissions> {
        let selector = selector(key).ok()?;
        let mut records = (*self.records).clone();
        records.remove(key)?;
        self.rebuilt(records, key, selector).ok()
    }

    fn rebuilt(
        &self,
        records: BTreeMap<PermissionKey, PermissionRecord>,
        key: &PermissionKey,
        changed: Selector,
    ) -> Result<CustomPermissions, PermissionError> {
        // Keys are canonical, so one identity's permissions are adjacent.
        let mine: Vec<&PermissionRecord> = records
            .range(
                PermissionKey {
                    kind: key.kind,
                    identity: key.identity.clone(),
                    topic: String::new(),
                }..,
            )
            .take_while(|(k, _)| k.kind == key.kind && k.identity == key.identity)
            .map(|(_, r)| r)
            .collect();
        if mine.len() > MAX_PER_IDENTITY {
            return Err(PermissionError::IdentityFull);
        }
        let mut compiled = self.compiled.clone();
        if mine.is_empty() {
            compiled.remove(&changed);
        } else {
            compiled.insert(changed.clone(), compile(&changed, mine)?);
        }
        Ok(CustomPermissions {
            records: Arc::new(records),
            compiled,
        })
    }

    /// The compiled custom policies that apply to a connection.
    pub fn policies_for(&self, identity: &DeviceIdentity, client_id: &str) -> Vec<&Policy> {
        if self.compiled.is_empty() {
            return Vec::new();
        }
        [
            Selector::Device(*identity),
            Selector::Ca(identity.ca_sn),
            Selector::Client(client_id.into()),
        ]
        .iter()
        .filter_map(|k| self.compiled.get(k).map(|p| p.as_ref()))
        .collect()
    }
}

/// One identity's permissions as a policy named after the identity (its
/// rule numbers follow topic order), so that logs and `explain` say which
/// permission decided.
fn compile(
    selector: &Selector,
    records: Vec<&PermissionRecord>,
) -> Result<Arc<Policy>, PermissionError> {
    let name = match selector {
        Selector::Client(id) => format!("custom permission CLIENT {id}"),
        Selector::Device(id) => format!("custom permission DEVICE {}:{}", id.ca_sn, id.device_sn),
        Selector::Ca(sn) => format!("custom permission CA {sn}"),
    };
    let mut rules = Vec::with_capacity(records.len());
    for record in records {
        let filter = PermissionKey::check_topic(&record.key.topic)?;
        rules.push(Rule {
            effect: match record.effect {
                PermitEffect::Allow => Effect::Allow,
                PermitEffect::Deny => Effect::Deny,
            },
            publish: record.action.publish(),
            subscribe: record.action.subscribe(),
            patterns: vec![Pattern::literal(&filter, &record.key.topic)],
        });
    }
    Ok(Arc::new(Policy {
        name: name.into(),
        rules,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Grants, Principal};
    use crate::record::{PermitAction, PermitEffect};
    use crate::serial::Serial;
    use crate::topic::Filter;

    fn identity(ca: u8, dev: u8) -> DeviceIdentity {
        DeviceIdentity {
            ca_sn: CaSn(Serial::from_der_content(&[ca]).unwrap()),
            device_sn: DeviceSn(Serial::from_der_content(&[dev]).unwrap()),
        }
    }

    fn record(
        kind: IdentityKind,
        identity: &str,
        topic: &str,
        action: PermitAction,
        effect: PermitEffect,
    ) -> PermissionRecord {
        PermissionRecord {
            key: PermissionKey {
                kind,
                identity: PermissionKey::canonical_identity(kind, identity).unwrap(),
                topic: topic.into(),
            },
            action,
            effect,
        }
    }

    fn grants(set: &CustomPermissions, id: &DeviceIdentity, client_id: &str) -> Grants {
        let who = Principal {
            client_id: client_id.into(),
            ..Default::default()
        };
        Grants::new(set.policies_for(id, client_id), &who)
    }

    #[test]
    fn each_identity_kind_selects_its_connections_and_deny_wins() {
        let dev = identity(1, 2);
        let set = CustomPermissions::default()
            .with(record(
                IdentityKind::Ca,
                "01",
                "fleet/#",
                PermitAction::PubSub,
                PermitEffect::Allow,
            ))
            .unwrap()
            .with(record(
                IdentityKind::Device,
                "1:02",
                "fleet/secret",
                PermitAction::Sub,
                PermitEffect::Deny,
            ))
            .unwrap()
            .with(record(
                IdentityKind::Client,
                "tool-1",
                "tools/${CommonName}",
                PermitAction::Pub,
                PermitEffect::Allow,
            ))
            .unwrap();
        let filter = |s: &str| Filter::parse(s).unwrap();
        let g = grants(&set, &dev, "meter");
        assert!(g.subscribe(&filter("fleet/status")).is_allowed());
        assert!(
            !g.subscribe(&filter("fleet/#")).is_allowed(),
            "deny overlaps"
        );
        assert!(
            g.publish("fleet/secret").is_allowed(),
            "the deny is SUB only"
        );
        // Another device of the CA has no deny.
        assert!(
            grants(&set, &identity(1, 3), "x")
                .subscribe(&filter("fleet/#"))
                .is_allowed()
        );
        // Another CA has nothing.
        assert!(
            !grants(&set, &identity(2, 2), "x")
                .publish("fleet/a")
                .is_allowed()
        );
        // A client id; its `${...}` is literal.
        let tool = grants(&set, &identity(9, 9), "tool-1");
        assert!(tool.publish("tools/${CommonName}").is_allowed());
        assert!(!tool.publish("tools/x").is_allowed());
        assert!(!tool.subscribe(&filter("tools/${CommonName}")).is_allowed());
    }

    #[test]
    fn changes_replace_and_remove_and_keys_are_canonical() {
        let set = CustomPermissions::default()
            .with(record(
                IdentityKind::Device,
                "01:0a",
                "a/#",
                PermitAction::Pub,
                PermitEffect::Allow,
            ))
            .unwrap();
        let key = PermissionKey {
            kind: IdentityKind::Device,
            identity: PermissionKey::canonical_identity(IdentityKind::Device, "01:0A").unwrap(),
            topic: "a/#".into(),
        };
        assert!(set.get(&key).is_some(), "one certificate, one key");
        let replaced = set
            .with(PermissionRecord {
                key: key.clone(),
                action: PermitAction::Pub,
                effect: PermitEffect::Deny,
            })
            .unwrap();
        assert_eq!(replaced.len(), 1);
        assert!(
            !grants(&replaced, &identity(1, 10), "c")
                .publish("a/b")
                .is_allowed()
        );
        let emptied = replaced.without(&key).unwrap();
        assert!(emptied.is_empty());
        assert!(emptied.without(&key).is_none());
        assert!(emptied.compiled.is_empty());
    }

    #[test]
    fn bad_identities_and_topics_are_refused_with_the_reason() {
        for (kind, identity, needle) in [
            (IdentityKind::Device, "01", "`<CaSn>:<DeviceSn>`"),
            (IdentityKind::Device, "2B:22:01", "without `:` separators"),
            (IdentityKind::Device, "zz:01", "CaSn before"),
            (IdentityKind::Device, "01:", "DeviceSn after"),
            (IdentityKind::Ca, "not-hex", "hex serial"),
            (IdentityKind::Client, "", "1 to"),
            (IdentityKind::Client, "a\nb", "control"),
        ] {
            let err = PermissionKey::canonical_identity(kind, identity)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{identity:?}: {err}");
        }
        for (topic, needle) in [("a/#/b", "#"), ("", "empty"), ("a+", "+")] {
            let err = PermissionKey::check_topic(topic).unwrap_err().to_string();
            assert!(err.starts_with("Topic: "), "{err}");
            assert!(err.contains(needle), "{topic:?}: {err}");
        }
        assert!(
            PermissionKey::check_topic(&"a".repeat(crate::record::MAX_TOPIC_BYTES + 1)).is_err()
        );
    }

    #[test]
    fn one_identity_holds_at_most_its_share() {
        let mut set = CustomPermissions::default();
        for i in 0..MAX_PER_IDENTITY {
            set = set
                .with(record(
                    IdentityKind::Client,
                    "c",
                    &format!("t/{i}"),
                    PermitAction::Pub,
                    PermitEffect::Allow,
                ))
                .unwrap();
        }
        let err = set
            .with(record(
                IdentityKind::Client,
                "c",
                "t/extra",
                PermitAction::Pub,
                PermitEffect::Allow,
            ))
            .unwrap_err();
        assert_eq!(err, PermissionError::IdentityFull);
        // Replacing one is not adding one.
        assert!(
            set.with(record(
                IdentityKind::Client,
                "c",
                "t/0",
                PermitAction::Sub,
                PermitEffect::Deny
            ))
            .is_ok()
        );
    }
}
