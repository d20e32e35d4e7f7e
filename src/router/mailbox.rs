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
//! order and none is lost silently. (Expired messages are left to the
//! connection, which drops them when it would send them.)

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::message::{Delivery, QoS};

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
        taken
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
        assert_eq!(mailbox.push(delivery(1, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(2, QoS::AtMostOnce)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(3, QoS::AtLeastOnce)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(4, QoS::AtMostOnce)), Pushed::Queued);
        assert_eq!(mailbox.push(delivery(5, QoS::AtMostOnce)), Pushed::Dropped);
        assert_eq!(mailbox.dropped(), 1);
        // A push is remembered for the next waiter.
        tokio::time::timeout(Duration::from_secs(1), mailbox.ready())
            .await
            .unwrap();
        let payloads = |d: &[Delivery]| d.iter().map(|d| d.message.payload[0]).collect::<Vec<u8>>();
        let taken = mailbox.take(10, 1);
        assert_eq!(payloads(&taken), [1, 2], "stops before the second QoS 1");
        mailbox.unshift(taken);
        assert_eq!(mailbox.len(), 4);
        assert_eq!(payloads(&mailbox.take(10, 2)), [1, 2, 3, 4]);
        assert!(mailbox.is_empty());
    }
}
