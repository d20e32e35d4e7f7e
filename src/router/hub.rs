//! The hub: sessions by client id, and the path of a publish.
//!
//! A session here is what outlives a connection: its subscriptions, its
//! mailbox, the in-flight state its connection parked, its pending will.
//! A connection [`Hub::attach`]es to its client id's session (clean start
//! discards an old one; otherwise it resumes) and [`Hub::detach`]es when
//! it ends, with the session expiry interval: 0 frees everything at once,
//! more keeps the session (its mailbox goes on filling, bounded) until
//! [`Hub::tick`] finds it expired. Take-over is the client id's business
//! (`SessionTable` kills the old connection first); a detach from an
//! attachment that is no longer current changes nothing.
//!
//! A publish ([`Hub::publish`]): the retained store first (RETAIN), then
//! the index under a read lock, then one delivery per session (overlapping
//! subscriptions merged: the highest QoS, every subscription identifier;
//! each shared group's pick delivered on its own), then each session's
//! mailbox. Nothing on this path waits: a full mailbox drops and counts.
//!
//! Forwarding to other nodes (cluster routing, a later change) belongs at
//! the end of [`Hub::publish`], after the local deliveries: look up which
//! nodes hold subscriptions matching the topic and send the message to
//! each once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::index::{Index, Match};
use super::mailbox::{Admission, Mailbox, Pushed};
use super::message::{Delivery, Message, RetainHandling, SessionKey, SubOptions};
use super::retained::Retained;

/// Bounds of the hub (from `[mqtt]`).
#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    /// Deliveries a session's mailbox holds at most.
    pub max_queued_messages: usize,
    /// The longest a session outlives its connection (caps a 5 client's
    /// session expiry interval; the lifetime of a 3.1.1 persistent one).
    pub max_session_expiry: Duration,
    /// Topics with a retained message, at most.
    pub max_retained_messages: usize,
}

/// Counters the hub bumps (`certmq_messages_dropped_total`).
#[derive(Debug, Clone, Default)]
pub struct DropCounters {
    pub queue_full: Option<prometheus::IntCounter>,
    pub retained_full: Option<prometheus::IntCounter>,
}

/// A message its connection took and the client has not acknowledged,
/// kept for redelivery when a persistent session resumes (MQTT 5
/// section 4.4: resent with DUP, under the same packet identifier).
#[derive(Debug, Clone)]
pub struct Unacked {
    pub packet_id: u16,
    pub delivery: Delivery,
    /// PUBREL was sent (QoS 2): only PUBREL is resent.
    pub released: bool,
}

/// What a connection parks in its session when it ends, for the next.
#[derive(Debug, Clone, Default)]
pub struct Parked {
    pub unacked: Vec<Unacked>,
    /// QoS 2 packet identifiers received, PUBREL not yet (the next
    /// connection must not route them again).
    pub incoming_qos2: Vec<u16>,
}

#[derive(Debug, Default)]
struct Life {
    /// The current attachment, if a connection is attached.
    attached: Option<u64>,
    parked: Parked,
    /// When it expires, while detached.
    expires_at: Option<Instant>,
    /// Its will, when the will delay interval is running.
    will_at: Option<Instant>,
}

/// A session in the hub.
#[derive(Debug)]
pub struct HubSession {
    key: SessionKey,
    client_id: Arc<str>,
    /// Its deliveries, taken by its connection.
    pub mailbox: Mailbox,
    /// Its subscriptions, as the client wrote the filters.
    subscriptions: Mutex<HashMap<Box<str>, SubOptions>>,
    life: Mutex<Life>,
}

impl HubSession {
    pub fn key(&self) -> SessionKey {
        self.key
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Its subscriptions' filters, as written.
    pub fn filters(&self) -> Vec<String> {
        lock(&self.subscriptions)
            .keys()
            .map(|f| f.to_string())
            .collect()
    }

    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        lock(&self.life)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A connection's hold on its session.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<HubSession>,
    attachment: u64,
    /// A stored session was resumed (CONNACK's session present).
    pub present: bool,
    /// What the previous connection left in flight.
    pub parked: Parked,
}

/// `$share/<group>/<filter>` as (group, filter); other filters as they are.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, plain)) => (Some(group), plain),
            None => (None, filter),
        },
        None => (None, filter),
    }
}

/// What the hub holds, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub sessions: usize,
    pub subscriptions: usize,
    pub exact_filters: usize,
    pub trie_nodes: usize,
    pub retained: usize,
    pub timers: usize,
}

#[derive(Debug, Default)]
struct Timers {
    expiries: BTreeSet<(Instant, SessionKey)>,
    wills: BTreeMap<(Instant, SessionKey), Arc<Message>>,
}

#[derive(Debug)]
struct Shared {
    settings: HubSettings,
    index: RwLock<Index>,
    retained: Mutex<Retained>,
    sessions: DashMap<SessionKey, Arc<HubSession>>,
    /// Serialises attach and detach (and expiry) per hub: each is short.
    by_client: Mutex<HashMap<Arc<str>, SessionKey>>,
    timers: Mutex<Timers>,
    next_key: AtomicU64,
    next_attachment: AtomicU64,
    dropped: AtomicU64,
    /// Fault injection: the timer panics at its next tick.
    #[cfg(feature = "fault-injection")]
    timer_panic: std::sync::atomic::AtomicBool,
    /// The same count, for `certmq_messages_dropped_total{reason="queue_full"}`,
    /// and the retained messages refused at `max_retained_messages`.
    counters: DropCounters,
    expired_sessions: AtomicU64,
    /// `Index::dollar_subscriptions`, readable without the index's lock
    /// (set under its write lock after every change).
    dollar_subscriptions: AtomicUsize,
}

/// The router's state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// What a publish reached.
#[derive(Debug, Default)]
pub struct Routed {
    pub delivered: usize,
    /// Deliveries dropped at a full mailbox.
    pub dropped: usize,
    /// Online sessions whose mailbox was full, with the place in line of
    /// what is parked for them: the publisher waits until it is admitted
    /// ([`Hub::publish_waiting`] only).
    pub blocked: Vec<(Arc<HubSession>, Admission)>,
}

impl Hub {
    pub fn new(settings: HubSettings) -> Hub {
        Hub::with_counters(settings, DropCounters::default())
    }

    /// A hub that also counts what it drops in `counters`.
    pub fn with_counters(settings: HubSettings, counters: DropCounters) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                settings,
                index: RwLock::new(Index::default()),
                retained: Mutex::new(Retained::with_limit(settings.max_retained_messages)),
                sessions: DashMap::new(),
                by_client: Mutex::new(HashMap::new()),
                timers: Mutex::new(Timers::default()),
                next_key: AtomicU64::new(1),
                next_attachment: AtomicU64::new(1),
                dropped: AtomicU64::new(0),
                #[cfg(feature = "fault-injection")]
                timer_panic: std::sync::atomic::AtomicBool::new(false),
                counters,
                expired_sessions: AtomicU64::new(0),
                dollar_subscriptions: AtomicUsize::new(0),
            }),
        }
    }

    /// Attaches a connection to `client_id`'s session: a new one with
    /// `clean_start` (an old one is discarded, its pending will published)
    /// or when there is none; else the stored one, its expiry and pending
    /// will cancelled.
    pub fn attach(&self, client_id: &str, clean_start: bool, now: Instant) -> Attached {
        let attachment = self.shared.next_attachment.fetch_add(1, Ordering::Relaxed);
        let mut by_client = lock(&self.shared.by_client);
        let existing = by_client
            .get(client_id)
            .and_then(|key| self.shared.sessions.get(key).map(|s| s.clone()));
        if let Some(session) = existing {
            if !clean_start {
                let mut life = session.life();
                life.attached = Some(attachment);
                session.mailbox.set_online(true);
                let parked = std::mem::take(&mut life.parked);
                let (expiry, will) = (life.expires_at.take(), life.will_at.take());
                drop(life);
                let mut timers = lock(&self.shared.timers);
                if let Some(at) = expiry {
                    timers.expiries.remove(&(at, session.key));
                }
                if let Some(at) = will {
                    timers.wills.remove(&(at, session.key));
                }
                return Attached {
                    session,
                    attachment,
                    present: true,
                    parked,
                };
            }
            by_client.remove(client_id);
            self.end(&session, now);
        }
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = client_id.into();
        let session = Arc::new(HubSession {
            key,
            client_id: client_id.clone(),
            mailbox: Mailbox::new(self.shared.settings.max_queued_messages),
            subscriptions: Mutex::new(HashMap::new()),
            life: Mutex::new(Life {
                attached: Some(attachment),
                ..Life::default()
            }),
        });
        session.mailbox.set_online(true);
        self.shared.sessions.insert(key, session.clone());
        by_client.insert(client_id, key);
        Attached {
            session,
            attachment,
            present: false,
            parked: Parked::default(),
        }
    }

    /// Ends a connection's attachment. `expiry`: how long the session
    /// outlives it (capped by `max_session_expiry`; zero ends it now).
    /// `will`: published once `will_delay` has passed or the session
    /// ends, whichever is first (a resumption before cancels it).
    /// `parked`: its in-flight state, for the next connection.
    pub fn detach(
        &self,
        attached: Attached,
        expiry: Duration,
        will: Option<(Message, Duration)>,
        parked: Parked,
        now: Instant,
    ) {
        let session = attached.session;
        let by_client = lock(&self.shared.by_client);
        let mut life = session.life();
        if life.attached != Some(attached.attachment) {
            // Taken over: the session is the new connection's now.
            drop(life);
            drop(by_client);
            if let Some((will, _)) = will {
                self.publish(will, now);
            }
            return;
        }
        life.attached = None;
        let dropped = session.mailbox.set_online(false);
        for _ in 0..dropped {
            self.count_drop();
        }
        let expiry = expiry.min(self.shared.settings.max_session_expiry);
        if expiry.is_zero() {
            drop(life);
            drop(by_client);
            self.forget_key(session.key, now);
            if let Some((will, _)) = will {
                self.publish(will, now);
            }
            return;
        }
        life.parked = parked;
        let expires_at = now + expiry;
        life.expires_at = Some(expires_at);
        let mut timers = lock(&self.shared.timers);
        timers.expiries.insert((expires_at, session.key));
        let mut publish_now = None;
        if let Some((will, delay)) = will {
            if delay.is_zero() {
                publish_now = Some(will);
            } else {
                let at = (now + delay).min(expires_at);
                life.will_at = Some(at);
                timers.wills.insert((at, session.key), Arc::new(will));
            }
        }
        drop(timers);
        drop(life);
        drop(by_client);
        if let Some(will) = publish_now {
            self.publish(will, now);
        }
    }

    /// Discards `client_id`'s session, live or stored (its connection, if
    /// any, is the caller's to close); its pending will is not published
    /// (an operator removed the device's access). `true` if there was one.
    pub fn forget(&self, client_id: &str) -> bool {
        let key = lock(&self.shared.by_client).remove(client_id);
        match key {
            Some(key) => {
                if let Some((_, session)) = self.shared.sessions.remove(&key) {
                    let will_at = session.life().will_at.take();
                    if let Some(at) = will_at {
                        lock(&self.shared.timers).wills.remove(&(at, key));
                    }
                    self.free(&session);
                }
                true
            }
            None => false,
        }
    }

    fn forget_key(&self, key: SessionKey, now: Instant) {
        if let Some((_, session)) = self.shared.sessions.remove(&key) {
            let mut by_client = lock(&self.shared.by_client);
            if by_client.get(&session.client_id) == Some(&key) {
                by_client.remove(&session.client_id);
            }
            drop(by_client);
            self.end_removed(&session, now);
        }
    }

    /// Ends a session already removed from `by_client`.
    fn end(&self, session: &Arc<HubSession>, now: Instant) {
        self.shared.sessions.remove(&session.key);
        self.end_removed(session, now);
    }

    /// Frees a removed session and publishes its pending will.
    fn end_removed(&self, session: &Arc<HubSession>, now: Instant) {
        let (expiry, will_at) = {
            let mut life = session.life();
            (life.expires_at.take(), life.will_at.take())
        };
        let will = {
            let mut timers = lock(&self.shared.timers);
            if let Some(at) = expiry {
                timers.expiries.remove(&(at, session.key));
            }
            will_at.and_then(|at| timers.wills.remove(&(at, session.key)))
        };
        self.free(session);
        if let Some(will) = will {
            self.route(will, false, now);
        }
    }

    /// Removes a session's subscriptions from the index and empties it.
    fn free(&self, session: &HubSession) {
        let filters: Vec<Box<str>> = lock(&session.subscriptions)
            .drain()
            .map(|(f, _)| f)
            .collect();
        let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        for filter in &filters {
            let (group, plain) = split_shared(filter);
            index.unsubscribe(session.key, plain, group);
        }
        self.note_dollar(&index);
        drop(index);
        for _ in 0..session.mailbox.clear() {
            self.count_drop();
        }
        *session.life() = Life::default();
    }

    /// Subscribes `session` to `filter` (`$share/<group>/...` for a shared
    /// subscription); returns the retained messages to send it now, as
    /// its retain handling says (none for a shared subscription).
    pub fn subscribe(
        &self,
        session: &HubSession,
        filter: &str,
        options: SubOptions,
        now: Instant,
    ) -> Vec<Delivery> {
        let (group, plain) = split_shared(filter);
        let existed = {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            let existed = index.subscribe(session.key, plain, group, options);
            self.note_dollar(&index);
            existed
        };
        lock(&session.subscriptions).insert(filter.into(), options);
        let send = group.is_none()
            && match options.retain_handling {
                RetainHandling::AtSubscribe => true,
                RetainHandling::IfNew => !existed,
                RetainHandling::Never => false,
            };
        if !send {
            return Vec::new();
        }
        lock(&self.shared.retained)
            .matching(plain, now)
            .into_iter()
            .map(|message| Delivery {
                qos: message.qos.min(options.qos),
                message,
                retain: true,
                subscription_ids: options.subscription_id.into_iter().collect(),
            })
            .collect()
    }

    /// `true` if the session had the subscription.
    pub fn unsubscribe(&self, session: &HubSession, filter: &str) -> bool {
        let (group, plain) = split_shared(filter);
        lock(&session.subscriptions).remove(filter);
        let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        let removed = index.unsubscribe(session.key, plain, group);
        self.note_dollar(&index);
        removed
    }

    /// Whether any session (online or parked) holds a subscription that
    /// can match a topic starting with `$` (`$certmq/events/...`, say): a
    /// message for such a topic that nobody can receive need not be made.
    /// A subscription counts from before its SUBACK is sent.
    pub fn has_dollar_subscriptions(&self) -> bool {
        self.shared.dollar_subscriptions.load(Ordering::SeqCst) > 0
    }

    /// Publishes the index's count of `$` subscriptions; called with the
    /// index's write lock held, so that the count follows every change.
    fn note_dollar(&self, index: &Index) {
        self.shared
            .dollar_subscriptions
            .store(index.dollar_subscriptions(), Ordering::SeqCst);
    }

    /// Routes a message: retained (RETAIN; an empty payload removes the
    /// topic's retained message), then delivered to every session with a
    /// matching subscription.
    pub fn publish(&self, message: Message, now: Instant) -> Routed {
        self.publish_as(message, false, now)
    }

    /// [`Hub::publish`] for a client's PUBLISH: online sessions whose
    /// mailbox is full come back in [`Routed::blocked`], for the publisher
    /// to wait for room (see `mailbox`).
    pub fn publish_waiting(&self, message: Message, now: Instant) -> Routed {
        self.publish_as(message, true, now)
    }

    fn publish_as(&self, message: Message, may_wait: bool, now: Instant) -> Routed {
        #[cfg(feature = "fault-injection")]
        if crate::fault::arms_router_panic(&message.topic) {
            self.shared.timer_panic.store(true, Ordering::Relaxed);
        }
        let message = Arc::new(message);
        if message.retain && lock(&self.shared.retained).put(message.clone()).is_err() {
            // Still routed to the subscribers there are; not kept.
            if let Some(counter) = &self.shared.counters.retained_full {
                counter.inc();
            }
        }
        self.route(message, may_wait, now)
    }

    /// A publisher gave up waiting for its delivery to `session` to be
    /// admitted: dropped (and counted) unless it got in meanwhile.
    pub fn gave_up(&self, session: &HubSession, admission: &Admission) {
        if session.mailbox.give_up(admission.ticket()) {
            self.count_drop();
        }
    }

    /// Counts a delivery dropped at a full mailbox.
    pub fn count_drop(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = &self.shared.counters.queue_full {
            counter.inc();
        }
    }

    fn route(&self, message: Arc<Message>, may_wait: bool, now: Instant) -> Routed {
        let _ = now;
        let mut matches: Vec<Match> = Vec::new();
        self.shared
            .index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(&message.topic, |m| matches.push(m));
        let mut routed = Routed::default();
        if matches.is_empty() {
            return routed;
        }
        // One delivery per session for its direct subscriptions; shared
        // picks on their own.
        matches.sort_by_key(|m| (m.session, m.shared));
        let mut pending: Option<(SessionKey, Delivery)> = None;
        for m in matches {
            if m.options.no_local && message.origin == Some(m.session) {
                continue;
            }
            let qos = message.qos.min(m.options.qos);
            let retain = message.retain && m.options.retain_as_published;
            if !m.shared {
                if let Some((key, d)) = &mut pending {
                    if *key == m.session {
                        d.qos = d.qos.max(qos);
                        d.retain |= retain;
                        d.subscription_ids.extend(m.options.subscription_id);
                        continue;
                    }
                }
            }
            if let Some((key, d)) = pending.take() {
                self.deliver(key, d, may_wait, &mut routed);
            }
            let delivery = Delivery {
                message: message.clone(),
                qos,
                retain,
                subscription_ids: m.options.subscription_id.into_iter().collect(),
            };
            if m.shared {
                self.deliver(m.session, delivery, may_wait, &mut routed);
            } else {
                pending = Some((m.session, delivery));
            }
        }
        if let Some((key, d)) = pending {
            self.deliver(key, d, may_wait, &mut routed);
        }
        routed
    }

    fn deliver(&self, key: SessionKey, delivery: Delivery, may_wait: bool, routed: &mut Routed) {
        let Some(session) = self.shared.sessions.get(&key).map(|s| s.clone()) else {
            return;
        };
        match session.mailbox.push(delivery, may_wait) {
            Pushed::Queued => routed.delivered += 1,
            Pushed::Dropped => {
                routed.dropped += 1;
                self.count_drop();
            }
            Pushed::Waiting(admission) => routed.blocked.push((session, admission)),
        }
    }

    /// Publishes the wills whose delay has passed, ends the sessions that
    /// expired, drops expired retained messages; returns the client ids
    /// of the sessions that ended. Run about once a second.
    pub fn tick(&self, now: Instant) -> Vec<Arc<str>> {
        let (wills, expired) = {
            let mut timers = lock(&self.shared.timers);
            let mut wills = Vec::new();
            while let Some(entry) = timers.wills.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let ((_, key), will) = entry.remove_entry();
                wills.push((key, will));
            }
            let mut expired = Vec::new();
            while let Some(&(at, key)) = timers.expiries.first() {
                if at > now {
                    break;
                }
                timers.expiries.pop_first();
                expired.push(key);
            }
            (wills, expired)
        };
        for (key, will) in wills {
            if let Some(session) = self.shared.sessions.get(&key).map(|s| s.clone()) {
                session.life().will_at = None;
            }
            self.route(will, false, now);
        }
        let mut ended = Vec::with_capacity(expired.len());
        for key in expired {
            let session = self.shared.sessions.get(&key).map(|s| s.clone());
            let Some(session) = session else { continue };
            if session.life().expires_at.is_some_and(|at| at <= now) {
                self.forget_key(key, now);
                self.shared.expired_sessions.fetch_add(1, Ordering::Relaxed);
                ended.push(session.client_id.clone());
            }
        }
        lock(&self.shared.retained).sweep(now);
        self.shrink_if_sparse();
        ended
    }

    /// Gives back the room of maps that emptied (after a burst of
    /// sessions, or of subscriptions, that has gone): memory follows what
    /// is live, not what was.
    fn shrink_if_sparse(&self) {
        let sparse = |len: usize, capacity: usize| capacity > 1024 && len * 4 < capacity;
        if sparse(self.shared.sessions.len(), self.shared.sessions.capacity()) {
            self.shared.sessions.shrink_to_fit();
        }
        {
            let mut by_client = lock(&self.shared.by_client);
            if sparse(by_client.len(), by_client.capacity()) {
                by_client.shrink_to_fit();
            }
        }
        let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
        index.shrink_if_sparse();
    }

    /// The session of `client_id`, if the hub holds one.
    pub fn session_of(&self, client_id: &str) -> Option<Arc<HubSession>> {
        let key = *lock(&self.shared.by_client).get(client_id)?;
        self.shared.sessions.get(&key).map(|s| s.clone())
    }

    /// Deliveries dropped at full mailboxes, and sessions that expired,
    /// since the start.
    pub fn losses(&self) -> (u64, u64) {
        (
            self.shared.dropped.load(Ordering::Relaxed),
            self.shared.expired_sessions.load(Ordering::Relaxed),
        )
    }

    pub fn footprint(&self) -> Footprint {
        let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
        let (exact_filters, trie_nodes) = index.footprint();
        let timers = lock(&self.shared.timers);
        Footprint {
            sessions: self.shared.sessions.len(),
            subscriptions: index.len(),
            exact_filters,
            trie_nodes,
            retained: lock(&self.shared.retained).len(),
            timers: timers.expiries.len() + timers.wills.len(),
        }
    }
}

/// How often the timer ends expired sessions and sends delayed wills.
const TICK: Duration = Duration::from_millis(200);

/// Runs [`Hub::tick`] until `shutdown`; `after_tick` hears, every tick,
/// of the client ids whose sessions expired (their claims can go).
pub async fn run_timer(
    hub: Hub,
    after_tick: impl Fn(&[Arc<str>]),
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        #[cfg(feature = "fault-injection")]
        if hub.shared.timer_panic.swap(false, Ordering::Relaxed) {
            panic!(
                "fault injection: PUBLISH to {}",
                crate::fault::ROUTER_PANIC_TOPIC
            );
        }
        after_tick(&hub.tick(Instant::now()));
    }
}

#[cfg(test)]
#[path = "hub_tests.rs"]
mod tests;
