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
//!   instead of losing messages. The waiting deliveries are parked in the
//!   mailbox in arrival order and admitted first come, first served as the
//!   connection takes from the queue (a publisher that arrives later waits
//!   behind them), so with a thousand publishers on one subscriber each
//!   waits its turn instead of some starving while others race ahead.
//!   A publisher whose delivery was not admitted in that time gives up: it
//!   is dropped, and the mailbox marked overflowing: until it has drained
//!   to half, new deliveries to it are dropped at once (and counted), so a
//!   stuck subscriber holds each publisher up once, not for every message;
//! - while its session is offline, a new delivery is dropped and counted
//!   (and so are the parked ones when it goes offline).
//!
//! The messages already queued keep their order. (Expired messages are
//! left to the connection, which drops them when it would send them.)

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Notify, oneshot};

use super::message::{Delivery, QoS};

/// Whether a delivery went into the mailbox.
#[derive(Debug)]
pub enum Pushed {
    Queued,
    /// The mailbox was full (offline, or overflowing).
    Dropped,
    /// The mailbox is full and its connection online: the delivery is
    /// parked, for the publisher to wait until it is admitted.
    Waiting(Admission),
}

/// A parked delivery's place in line, for its publisher.
#[derive(Debug)]
pub struct Admission {
    ticket: u64,
    /// Resolves when the delivery was admitted to the queue, or (an error)
    /// when the mailbox dropped it (its session went offline or ended).
    pub decided: oneshot::Receiver<()>,
}

impl Admission {
    pub fn ticket(&self) -> u64 {
        self.ticket
    }
}

#[derive(Debug)]
struct Parked {
    ticket: u64,
    delivery: Delivery,
    admitted: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// Deliveries waiting for room, oldest first; non-empty only while
    /// `items` is at the bound.
    parked: VecDeque<Parked>,
    next_ticket: u64,
    dropped: u64,
    overflowing: bool,
}

impl Queue {
    /// Admits parked deliveries while there is room, in order; answers
    /// how many.
    fn admit(&mut self, limit: usize) -> usize {
        let mut admitted = 0;
        while self.items.len() < limit {
            let Some(parked) = self.parked.pop_front() else {
                break;
            };
            self.items.push_back(parked.delivery);
            let _ = parked.admitted.send(());
            admitted += 1;
        }
        admitted
    }
}

/// One session's bounded queue of deliveries.
#[derive(Debug)]
pub struct Mailbox {
    // A std Mutex: held for a push or a batch take, never across an await.
    queue: Mutex<Queue>,
    ready: Notify,
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
            limit: limit.max(1),
            online: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `delivery`. At the bound (or behind parked deliveries):
    /// parked (`Waiting`) if `may_wait` and the connection is online and
    /// not overflowing, else `Dropped`.
    pub fn push(&self, delivery: Delivery, may_wait: bool) -> Pushed {
        let mut queue = self.lock();
        if queue.items.len() >= self.limit || !queue.parked.is_empty() {
            if may_wait && !queue.overflowing && self.is_online() {
                let ticket = queue.next_ticket;
                queue.next_ticket += 1;
                let (admitted, decided) = oneshot::channel();
                queue.parked.push_back(Parked {
                    ticket,
                    delivery,
                    admitted,
                });
                return Pushed::Waiting(Admission { ticket, decided });
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
        let admitted = queue.admit(self.limit);
        if queue.overflowing && queue.items.len() <= self.limit / 2 {
            queue.overflowing = false;
        }
        drop(queue);
        if admitted > 0 {
            // What got in is due to the connection like any push: it may
            // have drained the queue and be waiting for the next one.
            self.ready.notify_one();
        }
        taken
    }

    /// A publisher gave up waiting for `ticket`: if its delivery is still
    /// parked it is dropped (answers true; counted), and the mailbox drops
    /// new deliveries until it has drained to half.
    pub fn give_up(&self, ticket: u64) -> bool {
        let mut queue = self.lock();
        let Some(at) = queue.parked.iter().position(|p| p.ticket == ticket) else {
            return false;
        };
        queue.parked.remove(at);
        queue.overflowing = true;
        queue.dropped += 1;
        true
    }

    /// Online: publishers may wait for room. Going offline drops the
    /// parked deliveries (answers how many; their publishers are told).
    pub fn set_online(&self, online: bool) -> usize {
        self.online
            .store(online, std::sync::atomic::Ordering::Release);
        if online {
            return 0;
        }
        let mut queue = self.lock();
        let parked = std::mem::take(&mut queue.parked);
        queue.dropped += parked.len() as u64;
        parked.len()
    }

    pub fn is_online(&self) -> bool {
        self.online.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Empties the mailbox (its session ended); answers how many parked
    /// deliveries it dropped (their publishers are told).
    pub fn clear(&self) -> usize {
        self.online
            .store(false, std::sync::atomic::Ordering::Release);
        let mut queue = self.lock();
        queue.items = VecDeque::new();
        let parked = std::mem::take(&mut queue.parked);
        queue.dropped += parked.len() as u64;
        parked.len()
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
        // Online: parked for the publisher to wait; after it gives up,
        // overflowing (dropped at once) until drained to half.
        mailbox.set_online(true);
        let Pushed::Waiting(admission) = mailbox.push(delivery(5, QoS::AtMostOnce), true) else {
            panic!("parked");
        };
        assert!(matches!(
            mailbox.push(delivery(5, QoS::AtMostOnce), false),
            Pushed::Dropped
        ));
        assert!(mailbox.give_up(admission.ticket()));
        assert!(!mailbox.give_up(admission.ticket()), "once");
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
        let taken = mailbox.take(10, 1);
        assert_eq!(payloads(&taken), [1, 2], "stops before the second QoS 1");
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

    #[tokio::test]
    async fn parked_deliveries_are_admitted_first_come_first_served() {
        let mailbox = Mailbox::new(2);
        mailbox.set_online(true);
        let park = |n| match mailbox.push(delivery(n, QoS::AtMostOnce), true) {
            Pushed::Waiting(admission) => admission,
            other => panic!("{n}: {other:?}"),
        };
        assert!(matches!(
            mailbox.push(delivery(1, QoS::AtMostOnce), true),
            Pushed::Queued
        ));
        assert!(matches!(
            mailbox.push(delivery(2, QoS::AtMostOnce), true),
            Pushed::Queued
        ));
        let (mut third, mut fourth) = (park(3), park(4));
        let payloads = |d: &[Delivery]| d.iter().map(|d| d.message.payload[0]).collect::<Vec<u8>>();
        // One slot freed: the first in line gets it, the second waits.
        assert_eq!(payloads(&mailbox.take(1, 0)), [1]);
        tokio::time::timeout(Duration::from_secs(1), &mut third.decided)
            .await
            .expect("admitted")
            .expect("not dropped");
        assert!(fourth.decided.try_recv().is_err(), "still waiting");
        // A newcomer does not jump the line even once there is room.
        let fifth = park(5);
        // The pushes so far left the connection a wake-up: take it, as a
        // connection that drained the queue would have.
        tokio::time::timeout(Duration::from_secs(1), mailbox.ready())
            .await
            .expect("pushes are announced");
        assert_eq!(payloads(&mailbox.take(10, 0)), [2, 3]);
        // What that take admitted (4 and 5) is announced like a push.
        tokio::time::timeout(Duration::from_secs(1), mailbox.ready())
            .await
            .expect("admitted deliveries wake the connection");
        assert_eq!(payloads(&mailbox.take(10, 0)), [4, 5]);
        fourth.decided.await.expect("admitted in turn");
        // Going offline drops what is parked, and its publisher is told.
        assert!(matches!(
            mailbox.push(delivery(6, QoS::AtMostOnce), true),
            Pushed::Queued
        ));
        assert!(matches!(
            mailbox.push(delivery(7, QoS::AtMostOnce), true),
            Pushed::Queued
        ));
        let eighth = park(8);
        assert_eq!(mailbox.set_online(false), 1);
        assert!(eighth.decided.await.is_err(), "dropped");
        assert!(!mailbox.give_up(fifth.ticket()), "long admitted");
        assert_eq!(payloads(&mailbox.take(10, 0)), [6, 7]);
    }
}
