//! A session's mailbox: the deliveries routed to it and not yet taken by
//! its connection, bounded.
//!
//! The router pushes (from any publisher's task, under a short lock,
//! never waiting); the session's connection takes them in batches when it
//! is ready to write. While a persistent session is offline its mailbox
//! goes on filling: that is its offline queue.
//!
//! At the bound (`mqtt.max_queued_messages`):
//! - while its connection is online, a publisher waits for room (at most
//!   `mqtt.max_publish_wait_ms`, see `session::pump`): a subscriber that
//!   reads slower than publishers write slows them down to its pace
//!   instead of losing messages. One that does not make room in that time
//!   is marked overflowing: until it has drained to half, new deliveries
//!   to it are dropped at once (and counted), so a stuck subscriber holds
//!   each publisher up once, not for every message;
//! - while its session is offline, a new delivery is dropped and counted.
//!
//! The messages already queued keep their order. (Expired messages are
//! left to the connection, which drops them when it would send them.)

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::message::{Delivery, QoS};

/// Whether a delivery went into the mailbox.
#[derive(Debug)]
pub enum Pushed {
    Queued,
    /// The mailbox was full (offline, or overflowing).
    Dropped,
    /// The mailbox is full and its connection online: the delivery is
    /// handed back, for the publisher to wait for room.
    Full(Delivery),
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    dropped: u64,
    overflowing: bool,
}

/// One session's bounded queue of deliveries.
#[derive(Debug)]
pub struct Mailbox {
    // A std Mutex: held for a push or a batch take, never across an await.
    queue: Mutex<Queue>,
    ready: Notify,
    /// Signalled when a take made room.
    space: Notify,
    limit: usize,
    /// A connection is attached (publishers may wait for room).
    online: std::sync::atomic::AtomicBool,
}

impl Mailbox {
    /// A mailbox of at most `limit` deliveries (at least 1).
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            space: Notify::new(),
            limit: limit.max(1),
            online: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `delivery`. At the bound: `Full` (handing it back) if
    /// `may_wait` and the connection is online and not overflowing, else
    /// `Dropped`.
    pub fn push(&self, delivery: Delivery, may_wait: bool) -> Pushed {
        let mut queue = self.lock();
        if queue.items.len() >= self.limit {
            if may_wait && !queue.overflowing && self.is_online() {
                return Pushed::Full(delivery);
            }
            queue.dropped += 1;
            return Pushed::Dropped;
        }
        queue.items.push_back(delivery);
        drop(queue);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Puts deliveries back at the front, in order (a connection that took
    /// them but could not send them all), beyond the bound if need be:
    /// they were admitted once.
    pub fn unshift(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for d in deliveries.into_iter().rev() {
            queue.items.push_front(d);
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Takes up to `max` deliveries, oldest first, of which at most
    /// `max_acknowledged` of QoS 1 or 2 (the connection's in-flight room):
    /// it stops before the first that would exceed it, so order holds.
    pub fn take(&self, max: usize, max_acknowledged: usize) -> Vec<Delivery> {
        let mut queue = self.lock();
        let mut taken = Vec::with_capacity(max.min(queue.items.len()));
        let mut acknowledged = 0;
        while taken.len() < max {
            let Some(front) = queue.items.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if acknowledged == max_acknowledged {
                    break;
                }
                acknowledged += 1;
            }
            taken.extend(queue.items.pop_front());
        }
        if queue.items.capacity() > 64 && queue.items.len() < queue.items.capacity() / 4 {
            let keep = queue.items.len().max(16);
            queue.items.shrink_to(keep);
        }
        if queue.overflowing && queue.items.len() <= self.limit / 2 {
            queue.overflowing = false;
        }
        drop(queue);
        if !taken.is_empty() {
            self.space.notify_waiters();
        }
        taken
    }

    /// Resolves after the next take that made room. Create it (and
    /// `enable` it) before the push that found the mailbox full, so that
    /// no take in between is missed.
    pub fn space(&self) -> tokio::sync::futures::Notified<'_> {
        self.space.notified()
    }

    /// A publisher gave up waiting: drop for this mailbox until it has
    /// drained to half (counted as one drop now).
    pub fn overflow(&self) {
        let mut queue = self.lock();
        queue.overflowing = true;
        queue.dropped += 1;
    }

    pub fn set_online(&self, online: bool) {
        self.online
            .store(online, std::sync::atomic::Ordering::Release);
    }

    pub fn is_online(&self) -> bool {
        self.online.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Empties the mailbox (its session ended).
    pub fn clear(&self) {
        let mut queue = self.lock();
        queue.items = VecDeque::new();
    }

    /// Resolves once something was pushed since the last take found the
    /// mailbox empty (a push while nobody waits is remembered).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deliveries dropped because the mailbox was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::router::message::{Message, Passthrough};

    fn delivery(n: u8, qos: QoS) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from(vec![n]),
                qos,
                retain: false,
                properties: Passthrough::default(),
                expires_at: None,
                origin: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn bounded_in_order_and_the_window_respected() {
        let mailbox = Mailbox::new(4);
        let queued = |p: Pushed| matches!(p, Pushed::Queued);
        assert!(queued(mailbox.push(delivery(1, QoS::AtLeastOnce), true)));
        assert!(queued(mailbox.push(delivery(2, QoS::AtMostOnce), true)));
        assert!(queued(mailbox.push(delivery(3, QoS::AtLeastOnce), true)));
        assert!(queued(mailbox.push(delivery(4, QoS::AtMostOnce), true)));
        // Offline: dropped at the bound.
        assert!(matches!(
            mailbox.push(delivery(5, QoS::AtMostOnce), true),
            Pushed::Dropped
        ));
        assert_eq!(mailbox.dropped(), 1);
        // Online: handed back for the publisher to wait; after it gives up,
        // overflowing (dropped at once) until drained to half.
        mailbox.set_online(true);
        assert!(matches!(
            mailbox.push(delivery(5, QoS::AtMostOnce), true),
            Pushed::Full(_)
        ));
        assert!(matches!(
            mailbox.push(delivery(5, QoS::AtMostOnce), false),
            Pushed::Dropped
        ));
        mailbox.overflow();
        assert!(matches!(
            mailbox.push(delivery(5, QoS::AtMostOnce), true),
            Pushed::Dropped
        ));
        assert_eq!(mailbox.dropped(), 4);
        // A push is remembered for the next waiter.
        tokio::time::timeout(Duration::from_secs(1), mailbox.ready())
            .await
            .unwrap();
        let payloads = |d: &[Delivery]| d.iter().map(|d| d.message.payload[0]).collect::<Vec<u8>>();
        let space = mailbox.space();
        tokio::pin!(space);
        space.as_mut().enable();
        let taken = mailbox.take(10, 1);
        assert_eq!(payloads(&taken), [1, 2], "stops before the second QoS 1");
        tokio::time::timeout(Duration::from_secs(1), space)
            .await
            .expect("a take that made room wakes the waiting publisher");
        assert!(
            matches!(
                mailbox.push(delivery(6, QoS::AtMostOnce), true),
                Pushed::Queued
            ),
            "drained to half: no longer overflowing"
        );
        mailbox.unshift(taken);
        assert_eq!(mailbox.len(), 5);
        assert_eq!(payloads(&mailbox.take(10, 2)), [1, 2, 3, 4, 6]);
        assert!(mailbox.is_empty());
    }
}
