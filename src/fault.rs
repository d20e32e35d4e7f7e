//! Fault injection, for tests only (cargo feature `fault-injection`, which
//! the test suite turns on and a release build never has).
//!
//! Some guarantees are about what happens when certmq itself goes wrong: a
//! panic in one connection's task must not take the broker down, and must
//! not leave the router slot, the session table entry, the client id or the
//! live-session gauge held. No input reaches a panic on purpose, so the
//! tests need a way to cause one in the middle of a live session.

/// A PUBLISH to this topic makes the connection task that decodes it panic.
pub const PANIC_TOPIC: &str = "certmq/fault-injection/panic";

/// Called for every PUBLISH a client sends, before it reaches the router.
pub(crate) fn on_publish(topic: &[u8]) {
    if topic == PANIC_TOPIC.as_bytes() {
        panic!("fault injection: PUBLISH to {PANIC_TOPIC}");
    }
}
