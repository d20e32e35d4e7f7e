//! Routing: who receives a PUBLISH. certmq's own router ([`Hub`]), in
//! pieces that each own one thing:
//!   - [`message`]: a message as it travels (shared, never copied per
//!     subscriber) and a [`Delivery`] of it to one session;
//!   - [`index`]: the subscription index (exact filters in a hash map,
//!     wildcard filters in a trie with `+` and `#` slots, `$` topics out of
//!     the wildcards' reach, shared groups), pruned as subscriptions go;
//!   - [`retained`]: the retained messages, a topic trie walked by filter;
//!   - [`mailbox`]: a session's bounded queue of deliveries, online or
//!     offline;
//!   - [`hub`]: sessions by client id (persistent ones with an expiry),
//!     and the path of a publish: index -> one delivery per session ->
//!     mailboxes.
//!
//! Memory follows what is live: a filter without subscribers holds no
//! node, a topic without a retained message holds no node, a session
//! that ended (clean, or expired) holds nothing.
//!
//! Cluster routing (a later change) goes in [`hub::Hub::publish`], where
//! the matches are known: a table of which other nodes hold subscribers
//! for which filters (a route added on a node's first local subscriber,
//! removed after its last) is consulted there, and the message forwarded
//! to those nodes once each, as EMQX does in `do_route2`.

pub mod hub;
pub mod index;
pub mod mailbox;
pub mod message;
pub mod retained;

pub use hub::Hub;
pub use message::{Delivery, Message, SubOptions};
