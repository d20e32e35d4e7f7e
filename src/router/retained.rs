//! Retained messages: at most one per topic name (MQTT 5 section
//! 3.3.1.3), in a trie of topic levels that a new subscription's filter
//! walks to find those it matches.
//!
//! A PUBLISH with RETAIN and an empty payload removes the topic's message
//! and the nodes it leaves empty. Expired messages (message expiry
//! interval) are never returned: each lookup drops those it meets, and
//! [`Retained::sweep`] drops the rest in deadline order.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;

#[derive(Debug, Default)]
struct Node {
    message: Option<Arc<Message>>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }

    /// Removes the message at `levels`, pruning; returns it.
    fn take(&mut self, levels: &[&str]) -> Option<Arc<Message>> {
        match levels {
            [] => self.message.take(),
            [level, rest @ ..] => {
                let child = self.children.get_mut(*level)?;
                let taken = child.take(rest);
                if child.is_empty() {
                    self.children.remove(*level);
                }
                taken
            }
        }
    }

    /// Every message under this node (this one included), `$` first
    /// levels left out at the root.
    fn all(&self, at_root: bool, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &self.message {
            out.push(m.clone());
        }
        for (level, child) in &self.children {
            if !(at_root && level.starts_with('$')) {
                child.all(false, out);
            }
        }
    }

    fn matching(&self, filter: &[&str], at_root: bool, out: &mut Vec<Arc<Message>>) {
        match filter {
            [] => {
                if let Some(m) = &self.message {
                    out.push(m.clone());
                }
            }
            ["#"] => self.all(at_root, out),
            ["+", rest @ ..] => {
                for (level, child) in &self.children {
                    if !(at_root && level.starts_with('$')) {
                        child.matching(rest, false, out);
                    }
                }
            }
            [level, rest @ ..] => {
                if let Some(child) = self.children.get(*level) {
                    child.matching(rest, false, out);
                }
            }
        }
    }
}

/// The retained store is full: a new topic's message was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedFull;

/// The retained messages, at most `limit` topics.
#[derive(Debug)]
pub struct Retained {
    root: Node,
    count: usize,
    limit: usize,
    /// Messages that expire, by deadline.
    deadlines: BTreeSet<(Instant, Arc<str>)>,
}

impl Default for Retained {
    fn default() -> Self {
        Retained::with_limit(usize::MAX)
    }
}

impl Retained {
    /// A store of at most `limit` retained topics (`mqtt.max_retained_messages`).
    pub fn with_limit(limit: usize) -> Retained {
        Retained {
            root: Node::default(),
            count: 0,
            limit,
            deadlines: BTreeSet::new(),
        }
    }

    /// Stores `message` as its topic's retained message, or removes that
    /// one if its payload is empty. Returns the message it replaced; a
    /// message for a new topic when the store holds `limit` is not kept.
    pub fn put(&mut self, message: Arc<Message>) -> Result<Option<Arc<Message>>, RetainedFull> {
        let topic = message.topic.clone();
        let levels: Vec<&str> = topic.split('/').collect();
        let previous = self.root.take(&levels);
        if previous.is_none() && !message.payload.is_empty() && self.count >= self.limit {
            return Err(RetainedFull);
        }
        if let Some(old) = &previous {
            self.count -= 1;
            if let Some(at) = old.expires_at {
                self.deadlines.remove(&(at, old.topic.clone()));
            }
        }
        if !message.payload.is_empty() {
            if let Some(at) = message.expires_at {
                self.deadlines.insert((at, topic.clone()));
            }
            let mut node = &mut self.root;
            for level in &levels {
                node = node.children.entry((*level).into()).or_default();
            }
            node.message = Some(message);
            self.count += 1;
        }
        Ok(previous)
    }

    /// The live retained messages whose topics `filter` matches.
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Vec::new();
        self.root.matching(&levels, true, &mut found);
        let (live, expired): (Vec<_>, Vec<_>) = found.into_iter().partition(|m| !m.is_expired(now));
        for message in expired {
            self.remove(&message);
        }
        live
    }

    /// Drops the messages expired by `now`; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((at, topic)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let levels: Vec<&str> = topic.split('/').collect();
            if self.root.take(&levels).is_some() {
                self.count -= 1;
                dropped += 1;
            }
        }
        dropped
    }

    fn remove(&mut self, message: &Arc<Message>) {
        let levels: Vec<&str> = message.topic.split('/').collect();
        if let Some(taken) = self.root.take(&levels) {
            self.count -= 1;
            if let Some(at) = taken.expires_at {
                self.deadlines.remove(&(at, taken.topic.clone()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the trie holds nothing at all (no message, no node).
    pub fn is_pruned(&self) -> bool {
        self.root.is_empty() && self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::router::message::{Passthrough, QoS};

    fn message(topic: &str, payload: &str, expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Passthrough::default(),
            expires_at,
            origin: None,
        })
    }

    fn topics(found: Vec<Arc<Message>>) -> Vec<String> {
        let mut t: Vec<String> = found.iter().map(|m| m.topic.to_string()).collect();
        t.sort();
        t
    }

    #[test]
    fn filters_find_the_retained_messages_they_match() {
        let mut r = Retained::default();
        let now = Instant::now();
        for t in ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "b//c"] {
            r.put(message(t, "m", None)).unwrap();
        }
        assert_eq!(topics(r.matching("a/+", now)), ["a/b", "a/c"]);
        assert_eq!(topics(r.matching("a/#", now)), ["a", "a/b", "a/b/c", "a/c"]);
        assert_eq!(
            topics(r.matching("#", now)),
            ["a", "a/b", "a/b/c", "a/c", "b//c"]
        );
        assert_eq!(topics(r.matching("+/+", now)), ["a/b", "a/c"]);
        assert_eq!(topics(r.matching("$SYS/#", now)), ["$SYS/x"]);
        assert_eq!(topics(r.matching("b/+/c", now)), ["b//c"]);
        assert_eq!(topics(r.matching("a/b", now)), ["a/b"]);
        // Replaced, then deleted by an empty payload, the trie pruned.
        let old = r.put(message("a/b", "new", None)).unwrap().unwrap();
        assert_eq!(&old.payload[..], b"m");
        assert_eq!(r.len(), 6);
        for t in ["a", "a/b", "a/c", "a/b/c", "$SYS/x", "b//c"] {
            assert!(r.put(message(t, "", None)).unwrap().is_some());
        }
        assert!(r.is_empty() && r.is_pruned());
    }

    #[test]
    fn expired_messages_are_never_returned_and_are_swept() {
        let mut r = Retained::default();
        let now = Instant::now();
        r.put(message("x/1", "m", Some(now + Duration::from_secs(1))))
            .unwrap();
        r.put(message("x/2", "m", Some(now + Duration::from_secs(10))))
            .unwrap();
        r.put(message("x/3", "m", None)).unwrap();
        let later = now + Duration::from_secs(2);
        assert_eq!(topics(r.matching("x/1", later)), Vec::<String>::new());
        assert_eq!(r.len(), 2, "dropped when met");
        assert_eq!(r.sweep(now + Duration::from_secs(11)), 1);
        assert_eq!(topics(r.matching("x/#", later)), ["x/3"]);
        r.put(message("x/3", "", None)).unwrap();
        assert!(r.is_pruned());
        // Bounded: a new topic beyond the limit is refused, a known one
        // replaced, a deletion always taken.
        let mut small = Retained::with_limit(1);
        small.put(message("a", "1", None)).unwrap();
        assert!(matches!(
            small.put(message("b", "1", None)),
            Err(RetainedFull)
        ));
        assert!(small.put(message("a", "2", None)).unwrap().is_some());
        small.put(message("a", "", None)).unwrap();
        small.put(message("b", "1", None)).unwrap();
        assert_eq!(small.len(), 1);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$SYS".to_owned()),
        ]
    }

    proptest! {
        /// A filter finds exactly the retained topics it matches (as
        /// `topic::Filter::matches` decides, MQTT 5 section 4.7).
        #[test]
        fn filters_find_what_filter_matching_says(
            names in prop::collection::vec(prop::collection::vec(level(), 1..4), 1..10),
            filter in (prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4), any::<bool>()),
        ) {
            let (mut levels, hash) = filter;
            if hash {
                levels.push("#".to_owned());
            }
            let text = levels.join("/");
            let Ok(parsed) = crate::topic::Filter::parse(&text) else {
                return Ok(());
            };
            let mut r = Retained::default();
            let mut stored: Vec<String> = names.iter().map(|l| l.join("/")).filter(|t| !t.is_empty()).collect();
            stored.sort();
            stored.dedup();
            for t in &stored {
                r.put(message(t, "m", None)).unwrap();
            }
            let now = Instant::now();
            let expected: Vec<String> = stored.iter().filter(|t| parsed.matches(t)).cloned().collect();
            prop_assert_eq!(topics(r.matching(&text, now)), expected);
        }
    }
}
