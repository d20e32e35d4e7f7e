//! Fault injection, for tests only (cargo feature `fault-injection`, which
//! the test suite turns on and a release build never has).
//!
//! Some guarantees are about what happens when certmq itself goes wrong: a
//! panic in one connection's task must not take the broker down, and must
//! not leave the router slot, the session table entry, the client id or the
//! live-session gauge held. No input reaches a panic on purpose, so the
//! tests need a way to cause one in the middle of a live session.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Armed by the test suite ([`enable`]) or, for a `certmq serve` process
/// of a test build, by `CERTMQ_FAULT_INJECTION=1`: a binary that merely
/// has the feature compiled in (`cargo test --release` writes one to
/// target/release) does nothing on these topics.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Arms the hooks for this process (in-process test brokers).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn enabled() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    ENABLED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| std::env::var("CERTMQ_FAULT_INJECTION").as_deref() == Ok("1"))
}

/// A PUBLISH to this topic makes the connection task that decodes it panic.
pub const PANIC_TOPIC: &str = "certmq/fault-injection/panic";

/// Called for every PUBLISH a client sends, before it reaches the router.
pub(crate) fn on_publish(topic: &[u8]) {
    if !enabled() {
        return;
    }
    if topic == PANIC_TOPIC.as_bytes() {
        panic!("fault injection: PUBLISH to {PANIC_TOPIC}");
    }
}

/// A PUBLISH to this topic makes the timer task of the router it reaches
/// panic at its next tick (that broker's only: tests run several in one
/// process): the router then expires no session and sends no delayed
/// will, and the broker must say so (readiness) and stop.
pub const ROUTER_PANIC_TOPIC: &str = "certmq/fault-injection/router-panic";

/// Whether a message to `topic` arms its router's timer to panic.
pub(crate) fn arms_router_panic(topic: &str) -> bool {
    enabled() && topic == ROUTER_PANIC_TOPIC
}

/// A PUBLISH to this topic stalls the connection task that decodes it for
/// up to a minute, giving way only to its kill handle: what a session
/// stuck writing to a client that stopped reading looks like to the rest
/// of the broker (it handles nothing else meanwhile).
pub const SESSION_STALL_TOPIC: &str = "certmq/fault-injection/session-stall";

/// Whether this PUBLISH is to stall its session.
pub(crate) fn stalls_session(topic: &[u8]) -> bool {
    enabled() && topic == SESSION_STALL_TOPIC.as_bytes()
}

/// Whether a PUBLISH goes past topic authorization: the fault topics do,
/// once armed, so that a test can reach the hooks from any device.
pub(crate) fn bypasses_authz(topic: &[u8]) -> bool {
    enabled() && topic.starts_with(b"certmq/fault-injection/")
}

/// Change notifications that a node's change feed is to ignore, by node id
/// (tests run several nodes in one process): what a notification lost
/// between PostgreSQL and the node looks like. The heartbeat must catch
/// the node up anyway.
static LOST_NOTIFICATIONS: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// Makes node `node_id` ignore its next `count` change notifications.
pub fn lose_change_notifications(node_id: &str, count: u32) {
    let mut lost = LOST_NOTIFICATIONS.lock().unwrap_or_else(|p| p.into_inner());
    lost.retain(|(id, _)| id != node_id);
    lost.push((node_id.to_owned(), count));
}

/// Whether node `node_id` ignores this change notification.
pub(crate) fn loses_change_notification(node_id: &str) -> bool {
    let mut lost = LOST_NOTIFICATIONS.lock().unwrap_or_else(|p| p.into_inner());
    match lost.iter_mut().find(|(id, n)| id == node_id && *n > 0) {
        Some((_, n)) => {
            *n -= 1;
            true
        }
        None => false,
    }
}

/// Node ids whose change feed applies nothing while listed: what a node
/// that stopped applying (stuck, or too slow) looks like to the node
/// waiting for it. Its lease stays live.
static STALLED_FEEDS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Stalls (or resumes) node `node_id`'s change feed.
pub fn stall_feed(node_id: &str, stalled: bool) {
    let mut feeds = STALLED_FEEDS.lock().unwrap_or_else(|p| p.into_inner());
    feeds.retain(|id| id != node_id);
    if stalled {
        feeds.push(node_id.to_owned());
    }
}

/// Whether node `node_id`'s change feed is stalled.
pub(crate) fn feed_stalled(node_id: &str) -> bool {
    STALLED_FEEDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|id| id == node_id)
}
