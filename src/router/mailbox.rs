//! A session's mailbox: the deliveries routed to it and not yet taken by
//! its connection, bounded.
//!
//! The router pushes (from any publisher's task, under a short lock,
//! never waiting); the session's connection takes them in batches when it
//! is ready to write. While a persistent session is offline its mailbox
//! goes on filling: that is its offline queue.
//!
//! At the bound (`mqtt.max_queued_messages`) a new delivery is dropped,
//! whatever its QoS, and counted: the messages already queued keep their
//! order and none is lost silently. Expired messages (message expiry
//! interval) are dropped when they would be taken, and counted apart.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

use super::message::Delivery;

/// Whether a delivery went into the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The mailbox was full.
    Dropped,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    dropped: u64,
    expired: u64,
}

/// One session's bounded queue of deliveries.
#[derive(Debug)]
pub struct Mailbox {
    // A std Mutex: held for a push or a batch take, never across an await.
    queue: Mutex<Queue>,
    ready: Notify,
    limit: usize,
}

impl Mailbox {
    /// A mailbox of at most `limit` deliveries (at least 1).
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            limit: limit.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, delivery: Delivery) -> Pushed {
        let mut queue = self.lock();
        if queue.items.len() >= self.limit {
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

    /// Takes up to `max` live deliveries, oldest first.
    pub fn take(&self, max: usize, now: Instant) -> Vec<Delivery> {
        let mut queue = self.lock();
        let mut taken = Vec::with_capacity(max.min(queue.items.len()));
        while taken.len() < max {
            let Some(d) = queue.items.pop_front() else {
                break;
            };
            if d.message.is_expired(now) {
                queue.expired += 1;
            } else {
                taken.push(d);
            }
        }
        if queue.items.capacity() > 64 && queue.items.len() < queue.items.capacity() / 4 {
            let keep = queue.items.len().max(16);
            queue.items.shrink_to(keep);
        }
        taken
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

    /// Deliveries dropped because the mailbox was full, and because they
    /// expired before they could be sent.
    pub fn losses(&self) -> (u64, u64) {
        let queue = self.lock();
        (queue.dropped, queue.expired)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::router::message::{Message, Passthrough, QoS};

    fn delivery(n: u8, expires_at: Option<Instant>) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from(vec![n]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Passthrough::default(),
                expires_at,
                origin: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn bounded_in_order_expired_skipped_and_counted() {
        let mailbox = Mailbox::new(3);
        let now = Instant::now();
        assert_eq!(mailbox.push(delivery(1, None)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(2, Some(now))), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(3, None)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(4, None)), Pushed::Dropped);
        // A push is remembered for the next waiter.
        tokio::time::timeout(Duration::from_secs(1), mailbox.ready())
            .await
            .unwrap();
        let taken = mailbox.take(10, now);
        let payloads: Vec<u8> = taken.iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(payloads, [1, 3]);
        assert_eq!(mailbox.losses(), (1, 1));
        mailbox.unshift(taken);
        assert_eq!(mailbox.len(), 2);
        assert_eq!(mailbox.take(1, now)[0].message.payload[0], 1);
    }
}
