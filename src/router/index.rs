//! The subscription index: which sessions' filters match a topic.
//!
//! Filters without wildcards (the IoT norm, `devices/<id>/cmd`) sit in a
//! hash map: matching them costs one lookup whatever their number.
//! Filters with `+` or `#` sit in a trie of levels, with a dedicated slot
//! for `+` and one for `#` at each node; matching walks the topic's levels
//! through the literal child, then `+`, then `#` (MQTT 5 section 4.7).
//! A topic whose first level starts with `$` is out of reach of a first
//! `+` or `#` (section 4.7.2).
//!
//! Each filter holds its direct subscribers and its shared groups
//! (`$share/<group>/<filter>`, section 4.8.2: one member of a group gets
//! each message, in turn). Nothing is kept for a filter once its last
//! subscriber has gone: trie nodes left empty are pruned on the way back
//! up, map entries removed.
//!
//! The index takes filters already checked (`topic::Filter::parse`, and
//! authorization): it does not validate them again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::message::{SessionKey, SubOptions};

/// One filter's subscribers.
#[derive(Debug, Default)]
struct Subscribers {
    direct: HashMap<SessionKey, SubOptions>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }

    /// Adds or replaces; `true` if the session already had it.
    fn insert(&mut self, key: SessionKey, group: Option<&str>, options: SubOptions) -> bool {
        match group {
            None => self.direct.insert(key, options).is_some(),
            Some(group) => self
                .shared
                .entry(group.into())
                .or_default()
                .insert(key, options),
        }
    }

    /// `true` if the session had it.
    fn remove(&mut self, key: SessionKey, group: Option<&str>) -> bool {
        match group {
            None => self.direct.remove(&key).is_some(),
            Some(group) => {
                let Some(members) = self.shared.get_mut(group) else {
                    return false;
                };
                let removed = members.remove(key);
                if members.members.is_empty() {
                    self.shared.remove(group);
                }
                removed
            }
        }
    }

    fn visit(&self, visit: &mut impl FnMut(Match)) {
        for (key, options) in &self.direct {
            visit(Match {
                session: *key,
                options: *options,
                shared: false,
            });
        }
        for group in self.shared.values() {
            if let Some((key, options)) = group.pick() {
                visit(Match {
                    session: key,
                    options,
                    shared: true,
                });
            }
        }
    }
}

/// A shared subscription group's members, served in turn.
#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(SessionKey, SubOptions)>,
    next: AtomicUsize,
}

impl SharedGroup {
    fn insert(&mut self, key: SessionKey, options: SubOptions) -> bool {
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => {
                member.1 = options;
                true
            }
            None => {
                self.members.push((key, options));
                false
            }
        }
    }

    fn remove(&mut self, key: SessionKey) -> bool {
        let before = self.members.len();
        self.members.retain(|(k, _)| *k != key);
        before != self.members.len()
    }

    /// The next member in turn (under a read lock: the turn is atomic).
    fn pick(&self) -> Option<(SessionKey, SubOptions)> {
        if self.members.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.members[turn % self.members.len()])
    }
}

/// One trie level.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Filters that end at this node (`a/+` ends at the `+` node).
    here: Option<Subscribers>,
    /// Filters that end with `#` after this node (`a/#` at the node `a`,
    /// `#` at the root).
    hash: Option<Subscribers>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_none()
            && self.hash.is_none()
    }

    /// The subscribers slot for `levels` below this node, made as needed.
    fn slot(&mut self, levels: &[&str]) -> &mut Subscribers {
        match levels {
            [] => self.here.get_or_insert_with(Subscribers::default),
            ["#"] => self.hash.get_or_insert_with(Subscribers::default),
            ["+", rest @ ..] => self.plus.get_or_insert_with(Box::default).slot(rest),
            [level, rest @ ..] => self.children.entry((*level).into()).or_default().slot(rest),
        }
    }

    /// Removes a subscription below this node, pruning what it leaves
    /// empty; `true` if it was there.
    fn remove(&mut self, levels: &[&str], key: SessionKey, group: Option<&str>) -> bool {
        let take = |slot: &mut Option<Subscribers>| {
            let Some(subs) = slot else { return false };
            let removed = subs.remove(key, group);
            if subs.is_empty() {
                *slot = None;
            }
            removed
        };
        match levels {
            [] => take(&mut self.here),
            ["#"] => take(&mut self.hash),
            ["+", rest @ ..] => {
                let Some(plus) = self.plus.as_mut() else {
                    return false;
                };
                let removed = plus.remove(rest, key, group);
                if plus.is_empty() {
                    self.plus = None;
                }
                removed
            }
            [level, rest @ ..] => {
                let Some(child) = self.children.get_mut(*level) else {
                    return false;
                };
                let removed = child.remove(rest, key, group);
                if child.is_empty() {
                    self.children.remove(*level);
                }
                removed
            }
        }
    }

    fn matches(&self, levels: &[&str], at_root: bool, visit: &mut impl FnMut(Match)) {
        // `$` topics are not matched by a first-level wildcard.
        let dollar = at_root && levels.first().is_some_and(|l| l.starts_with('$'));
        if !dollar {
            if let Some(hash) = &self.hash {
                hash.visit(visit);
            }
        }
        match levels {
            [] => {
                if let Some(here) = &self.here {
                    here.visit(visit);
                }
            }
            [level, rest @ ..] => {
                if let Some(child) = self.children.get(*level) {
                    child.matches(rest, false, visit);
                }
                if !dollar {
                    if let Some(plus) = &self.plus {
                        plus.matches(rest, false, visit);
                    }
                }
            }
        }
    }

    fn nodes(&self) -> usize {
        1 + self.children.values().map(Node::nodes).sum::<usize>()
            + self.plus.as_ref().map_or(0, |p| p.nodes())
    }
}

/// A subscription that matched a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub session: SessionKey,
    pub options: SubOptions,
    /// Through a shared group (delivered on its own, not merged with the
    /// session's other matches).
    pub shared: bool,
}

/// Every subscription of every session.
#[derive(Debug, Default)]
pub struct Index {
    exact: HashMap<Box<str>, Subscribers>,
    wildcards: Node,
    subscriptions: usize,
    /// Subscriptions whose filter's first level starts with `$`: the only
    /// ones that can match a `$` topic (section 4.7.2).
    dollar: usize,
}

fn has_wildcard(filter: &str) -> bool {
    filter.split('/').any(|l| l == "+" || l == "#")
}

impl Index {
    /// Adds (or replaces the options of) a subscription of `session` to
    /// `filter`, in shared group `group` if given. `true` if the session
    /// already had it (retain handling 1 sends nothing then).
    pub fn subscribe(
        &mut self,
        session: SessionKey,
        filter: &str,
        group: Option<&str>,
        options: SubOptions,
    ) -> bool {
        let existed = if has_wildcard(filter) {
            let levels: Vec<&str> = filter.split('/').collect();
            self.wildcards.slot(&levels).insert(session, group, options)
        } else {
            self.exact
                .entry(filter.into())
                .or_default()
                .insert(session, group, options)
        };
        if !existed {
            self.subscriptions += 1;
            if filter.starts_with('$') {
                self.dollar += 1;
            }
        }
        existed
    }

    /// Removes a subscription; `true` if it was there.
    pub fn unsubscribe(&mut self, session: SessionKey, filter: &str, group: Option<&str>) -> bool {
        let removed = if has_wildcard(filter) {
            let levels: Vec<&str> = filter.split('/').collect();
            self.wildcards.remove(&levels, session, group)
        } else {
            match self.exact.get_mut(filter) {
                Some(subs) => {
                    let removed = subs.remove(session, group);
                    if subs.is_empty() {
                        self.exact.remove(filter);
                    }
                    removed
                }
                None => false,
            }
        };
        if removed {
            self.subscriptions -= 1;
            if filter.starts_with('$') {
                self.dollar -= 1;
            }
        }
        removed
    }

    /// Calls `visit` for every subscription matching the topic name
    /// `topic` (one member per shared group).
    pub fn matches(&self, topic: &str, mut visit: impl FnMut(Match)) {
        if let Some(subs) = self.exact.get(topic) {
            subs.visit(&mut visit);
        }
        let levels: Vec<&str> = topic.split('/').collect();
        self.wildcards.matches(&levels, true, &mut visit);
    }

    /// Gives back the room of the exact-filter map once mostly empty.
    pub fn shrink_if_sparse(&mut self) {
        if self.exact.capacity() > 1024 && self.exact.len() * 4 < self.exact.capacity() {
            self.exact.shrink_to_fit();
        }
        if self.wildcards.children.capacity() > 1024
            && self.wildcards.children.len() * 4 < self.wildcards.children.capacity()
        {
            self.wildcards.children.shrink_to_fit();
        }
    }

    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.subscriptions
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions == 0
    }

    /// Subscriptions that can match a topic whose first level starts with
    /// `$` (their filter's does).
    pub fn dollar_subscriptions(&self) -> usize {
        self.dollar
    }

    /// Filters without wildcards with a subscriber, and trie nodes (the
    /// root counts): what the index holds, for tests and metrics.
    pub fn footprint(&self) -> (usize, usize) {
        (self.exact.len(), self.wildcards.nodes())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::router::message::QoS;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$SYS".to_owned()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("a filter has a level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                let text = levels.join("/");
                crate::topic::Filter::parse(&text).is_ok().then_some(text)
            })
    }

    proptest! {
        /// The index finds exactly the filters that match a topic, as
        /// `topic::Filter::matches` (the authorization module's reading of
        /// MQTT 5 section 4.7) decides, and keeps nothing once they go.
        #[test]
        fn the_index_agrees_with_filter_matching(
            filters in prop::collection::vec(filter(), 1..12),
            topics in prop::collection::vec(prop::collection::vec(level(), 1..5), 1..8),
        ) {
            let mut index = Index::default();
            for (key, f) in filters.iter().enumerate() {
                index.subscribe(key as u64, f, None, SubOptions::at(QoS::AtMostOnce));
            }
            for levels in &topics {
                let topic = levels.join("/");
                if topic.is_empty() {
                    continue;
                }
                let mut found: Vec<u64> = Vec::new();
                index.matches(&topic, |m| found.push(m.session));
                found.sort();
                let expected: Vec<u64> = filters
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| crate::topic::Filter::parse(f).unwrap().matches(&topic))
                    .map(|(k, _)| k as u64)
                    .collect();
                prop_assert_eq!(found, expected, "topic {:?}", topic);
            }
            for (key, f) in filters.iter().enumerate() {
                index.unsubscribe(key as u64, f, None);
            }
            prop_assert!(index.is_empty());
            prop_assert_eq!(index.footprint(), (0, 1));
        }
    }

    fn at(qos: QoS) -> SubOptions {
        SubOptions::at(qos)
    }

    fn matched(index: &Index, topic: &str) -> Vec<(SessionKey, bool)> {
        let mut out = Vec::new();
        index.matches(topic, |m| out.push((m.session, m.shared)));
        out.sort();
        out
    }

    #[test]
    fn exact_and_wildcard_filters_match_as_mqtt_says() {
        let mut index = Index::default();
        for (key, filter) in [
            (1, "a/b"),
            (2, "a/+"),
            (3, "a/#"),
            (4, "#"),
            (5, "+/b"),
            (6, "+"),
            (7, "$SYS/#"),
            (8, "a//c"),
            (9, "a/+/c"),
            (10, "/+"),
        ] {
            assert!(!index.subscribe(key, filter, None, at(QoS::AtMostOnce)));
        }
        let keys = |topic| {
            matched(&index, topic)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys("a/b"), [1, 2, 3, 4, 5]);
        assert_eq!(keys("a"), [3, 4, 6], "`a/#` matches its parent level");
        assert_eq!(keys("a/b/c"), [3, 4, 9]);
        assert_eq!(keys("a//c"), [3, 4, 8, 9]);
        assert_eq!(keys("/x"), [4, 10]);
        assert_eq!(
            keys("$SYS/uptime"),
            [7],
            "no first-level wildcard reaches $"
        );
        assert_eq!(keys("$SYS"), [7]);
        assert_eq!(keys("b"), [4, 6]);
        assert_eq!(index.len(), 10);
    }

    #[test]
    fn nothing_is_kept_once_the_last_subscriber_goes() {
        let mut index = Index::default();
        let filters = [
            "devices/1/cmd",
            "devices/+/cmd",
            "devices/#",
            "x/+/y/+/z",
            "#",
        ];
        for key in 0..3u64 {
            for f in filters {
                index.subscribe(key, f, None, at(QoS::AtLeastOnce));
                index.subscribe(key, f, Some("g"), at(QoS::AtLeastOnce));
            }
        }
        assert_eq!(index.len(), 30);
        assert!(
            index.subscribe(0, "devices/1/cmd", None, at(QoS::ExactlyOnce)),
            "a replacement"
        );
        assert_eq!(index.len(), 30);
        for key in 0..3u64 {
            for f in filters {
                assert!(index.unsubscribe(key, f, None));
                assert!(index.unsubscribe(key, f, Some("g")));
                assert!(!index.unsubscribe(key, f, Some("g")));
            }
        }
        assert!(index.is_empty());
        assert_eq!(index.footprint(), (0, 1), "only the root is left");
        assert!(!index.unsubscribe(9, "never/+", None));
    }

    #[test]
    fn a_shared_group_serves_one_member_per_message_in_turn() {
        let mut index = Index::default();
        for key in 1..=3 {
            index.subscribe(key, "jobs/+", Some("workers"), at(QoS::AtLeastOnce));
        }
        index.subscribe(9, "jobs/+", None, at(QoS::AtMostOnce));
        index.subscribe(7, "jobs/+", Some("audit"), at(QoS::AtMostOnce));
        let mut served = HashMap::new();
        for _ in 0..30 {
            let got = matched(&index, "jobs/1");
            assert!(got.contains(&(9, false)), "the direct subscriber gets each");
            assert!(got.contains(&(7, true)), "a group of one gets each");
            let workers: Vec<_> = got
                .iter()
                .filter(|(k, s)| *s && (1..=3).contains(k))
                .collect();
            assert_eq!(workers.len(), 1, "one member of the group: {got:?}");
            *served.entry(workers[0].0).or_insert(0) += 1;
        }
        assert_eq!(served.len(), 3, "in turn: {served:?}");
        assert!(served.values().all(|n| *n == 10), "{served:?}");
        index.unsubscribe(2, "jobs/+", Some("workers"));
        for _ in 0..10 {
            assert!(!matched(&index, "jobs/1").contains(&(2, true)));
        }
    }
}
