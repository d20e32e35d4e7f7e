//! Policies and the decisions they make.
//!
//! A policy is a named list of rules; a rule allows or denies `publish`
//! and/or `subscribe` on topic patterns. For one principal, the rules of
//! every policy attached to it are instantiated once (its [`Grants`]) and
//! then decide:
//! - PUBLISH to a topic: denied if a deny rule's filter matches it, else
//!   allowed if an allow rule's filter matches it, else denied;
//! - SUBSCRIBE to a filter: granted only if every topic the filter could
//!   match is allowed: an allow rule's filter contains it, and no deny
//!   rule's filter overlaps it.
//!
//! Deny wins over allow; no matching allow means deny.

use std::sync::Arc;

use super::pattern::{Pattern, Principal};
use crate::topic::Filter;

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// One rule of a policy.
#[derive(Debug, Clone)]
pub struct Rule {
    pub effect: Effect,
    pub publish: bool,
    pub subscribe: bool,
    pub patterns: Vec<Pattern>,
}

impl Rule {
    fn covers(&self, action: Action) -> bool {
        match action {
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        }
    }
}

/// A named list of rules.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    pub rules: Vec<Rule>,
}

/// Which rule decided, for logs and `certmq authz explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: Arc<str>,
    /// From 0, in the policy's order.
    pub rule: usize,
    pub pattern: Arc<str>,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policy `{}` rule {} (`{}`)",
            self.policy,
            self.rule + 1,
            self.pattern
        )
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(RuleRef),
    /// By a deny rule, or (`None`) because no allow rule covers it.
    Deny(Option<RuleRef>),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// One instantiated rule pattern.
#[derive(Debug, Clone)]
struct Grant {
    filter: Filter,
    by: RuleRef,
}

/// The rules that apply to one principal, with its values filled in:
/// made once per connection, consulted on every PUBLISH and SUBSCRIBE.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    allow_publish: Vec<Grant>,
    deny_publish: Vec<Grant>,
    allow_subscribe: Vec<Grant>,
    deny_subscribe: Vec<Grant>,
}

impl Grants {
    /// Instantiates every rule of `policies` for `who`. A pattern whose
    /// variable has a value that would widen it (empty, `/`, `+`, `#`) is
    /// left out: for an allow that grants nothing, for a deny that is
    /// still refused - a deny whose value cannot be filled in denies
    /// everything the rule's actions cover, rather than nothing.
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Policy>, who: &Principal) -> Grants {
        let mut grants = Grants::default();
        for policy in policies {
            for (index, rule) in policy.rules.iter().enumerate() {
                for pattern in &rule.patterns {
                    let by = RuleRef {
                        policy: policy.name.clone(),
                        rule: index,
                        pattern: pattern.text().into(),
                    };
                    let filter = match (pattern.instantiate(who), rule.effect) {
                        (Some(filter), _) => filter,
                        (None, Effect::Allow) => continue,
                        // Fail closed: a deny that cannot be narrowed to
                        // this principal covers every topic.
                        (None, Effect::Deny) => Filter::parse("#").expect("a valid filter"),
                    };
                    for action in [Action::Publish, Action::Subscribe] {
                        if rule.covers(action) {
                            grants.list(rule.effect, action).push(Grant {
                                filter: filter.clone(),
                                by: by.clone(),
                            });
                        }
                    }
                }
            }
        }
        grants
    }

    fn list(&mut self, effect: Effect, action: Action) -> &mut Vec<Grant> {
        match (effect, action) {
            (Effect::Allow, Action::Publish) => &mut self.allow_publish,
            (Effect::Deny, Action::Publish) => &mut self.deny_publish,
            (Effect::Allow, Action::Subscribe) => &mut self.allow_subscribe,
            (Effect::Deny, Action::Subscribe) => &mut self.deny_subscribe,
        }
    }

    /// May the principal publish to the topic name `topic`?
    pub fn publish(&self, topic: &str) -> Decision {
        if let Some(deny) = self.deny_publish.iter().find(|g| g.filter.matches(topic)) {
            return Decision::Deny(Some(deny.by.clone()));
        }
        match self.allow_publish.iter().find(|g| g.filter.matches(topic)) {
            Some(allow) => Decision::Allow(allow.by.clone()),
            None => Decision::Deny(None),
        }
    }

    /// May the principal subscribe to `filter` (every topic it can match
    /// allowed, none denied)? A shared subscription is judged by its
    /// filter: the caller strips `$share/<group>/`.
    pub fn subscribe(&self, filter: &Filter) -> Decision {
        if let Some(deny) = self
            .deny_subscribe
            .iter()
            .find(|g| g.filter.overlaps(filter))
        {
            return Decision::Deny(Some(deny.by.clone()));
        }
        match self
            .allow_subscribe
            .iter()
            .find(|g| g.filter.contains(filter))
        {
            Some(allow) => Decision::Allow(allow.by.clone()),
            None => Decision::Deny(None),
        }
    }

    /// May the principal receive a message on `topic` (it matched one of
    /// its granted filters)? The same question as for a subscription to
    /// exactly that topic.
    pub fn receive(&self, topic: &str) -> bool {
        !self.deny_subscribe.iter().any(|g| g.filter.matches(topic))
            && self.allow_subscribe.iter().any(|g| g.filter.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(effect: Effect, publish: bool, subscribe: bool, patterns: &[&str]) -> Rule {
        Rule {
            effect,
            publish,
            subscribe,
            patterns: patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
        }
    }

    fn policy(name: &str, rules: Vec<Rule>) -> Policy {
        Policy {
            name: name.into(),
            rules,
        }
    }

    fn who(cn: &str) -> Principal {
        Principal {
            common_name: cn.into(),
            device_sn: "5FC9".into(),
            ca_sn: "2B22".into(),
            client_id: cn.into(),
            ..Default::default()
        }
    }

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    fn own_namespace() -> Policy {
        policy(
            "own-namespace",
            vec![rule(
                Effect::Allow,
                true,
                true,
                &["devices/${CommonName}/#"],
            )],
        )
    }

    #[test]
    fn the_default_policy_keeps_a_device_in_its_namespace() {
        let grants = Grants::new([&own_namespace()], &who("device-1"));
        for (filter, granted) in [
            ("devices/device-1/#", true),
            ("devices/device-1/cmd", true),
            ("devices/device-1/+/x", true),
            ("#", false),
            ("devices/#", false),
            ("devices/+/cmd", false),
            ("devices/device-2/cmd", false),
            ("$SYS/#", false),
            ("+/device-1/#", false),
        ] {
            assert_eq!(
                grants.subscribe(&f(filter)).is_allowed(),
                granted,
                "subscribe {filter}"
            );
        }
        for (topic, allowed) in [
            ("devices/device-1/telemetry", true),
            ("devices/device-1", true),
            ("devices/device-2/cmd", false),
            ("devices", false),
            ("$SYS/x", false),
        ] {
            assert_eq!(
                grants.publish(topic).is_allowed(),
                allowed,
                "publish {topic}"
            );
        }
        // A CN that would widen the pattern grants nothing.
        for cn in ["#", "+", "a/b", "", "$certmq"] {
            let grants = Grants::new([&own_namespace()], &who(cn));
            assert!(!grants.subscribe(&f("#")).is_allowed());
            assert!(!grants.subscribe(&f("devices/+/#")).is_allowed());
            assert!(!grants.publish("devices/x/y").is_allowed());
        }
        // Nor may a value make a `$` first level: a CN `$certmq` under
        // `${CommonName}/#` must not reach the broker's event topics.
        let first = policy(
            "first-level",
            vec![rule(Effect::Allow, true, true, &["${CommonName}/#"])],
        );
        let grants = Grants::new([&first], &who("$certmq"));
        assert!(!grants.subscribe(&f("$certmq/events/#")).is_allowed());
        let grants = Grants::new([&first], &who("plant-1"));
        assert!(grants.subscribe(&f("plant-1/#")).is_allowed());
        let own = policy(
            "own",
            vec![rule(
                Effect::Allow,
                false,
                true,
                &["$certmq/events/${CommonName}/#"],
            )],
        );
        let grants = Grants::new([&own], &who("x"));
        assert!(grants.subscribe(&f("$certmq/events/x/#")).is_allowed());
    }

    #[test]
    fn deny_wins_and_says_which_rule() {
        let app = policy(
            "application",
            vec![
                rule(Effect::Allow, true, true, &["devices/#"]),
                rule(Effect::Deny, false, true, &["devices/+/secrets"]),
            ],
        );
        let grants = Grants::new([&app], &who("app"));
        assert!(grants.subscribe(&f("devices/+/telemetry")).is_allowed());
        // Could match devices/x/secrets: refused.
        let refused = grants.subscribe(&f("devices/#"));
        assert_eq!(
            refused,
            Decision::Deny(Some(RuleRef {
                policy: "application".into(),
                rule: 1,
                pattern: "devices/+/secrets".into()
            }))
        );
        assert!(
            grants.publish("devices/x/secrets").is_allowed(),
            "deny covers subscribe only"
        );
        assert!(!grants.receive("devices/x/secrets"));
        assert!(grants.receive("devices/x/telemetry"));
        // Several policies combine.
        let grants = Grants::new([&own_namespace(), &app], &who("device-1"));
        assert!(
            !grants
                .subscribe(&f("devices/device-1/secrets"))
                .is_allowed()
        );
        assert!(
            grants
                .subscribe(&f("devices/device-2/telemetry"))
                .is_allowed()
        );
    }

    #[test]
    fn a_deny_with_an_unfillable_variable_denies_everything_it_covers() {
        let p = policy(
            "p",
            vec![
                rule(Effect::Allow, true, true, &["#"]),
                rule(Effect::Deny, true, false, &["blocked/${Subject.OU}/#"]),
            ],
        );
        let grants = Grants::new([&p], &who("d"));
        assert!(!grants.publish("anything").is_allowed());
        assert!(grants.subscribe(&f("anything")).is_allowed());
    }
}
