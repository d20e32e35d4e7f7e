//! The admin operations on sessions by client id (query who is online,
//! close a connection) across every node: a client id may be connected to
//! any of them.
//!
//! The node that takes the call asks the others over the database it
//! already shares with them, with no new network path between nodes: a
//! `pg_notify` on [`REQUESTS`] that every node hears on its feed
//! connection, answered on [`REPLIES`]. It waits for an answer from every
//! node with a live lease (read after the request is sent, so a node that
//! joins meanwhile is asked too, or was not holding the client then) and
//! fails, naming the nodes, when one does not answer in time: "not online"
//! is never said for a node that was not asked.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Cluster, Local};
use crate::session::table::wait_all;
use crate::session::{Cut, DropReason};

/// Requests to every node.
pub(super) const REQUESTS: &str = "certmq_session";
/// Answers to the node that asked.
pub(super) const REPLIES: &str = "certmq_session_reply";

/// The largest notification payload PostgreSQL takes is 8000 bytes.
const MAX_PAYLOAD: usize = 7900;

/// How long a query waits for the other nodes.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    id: String,
    from: String,
    /// Close the connections holding these ids (else: query them).
    close: bool,
    client_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    id: String,
    node: String,
    /// Per client id of the request: online on that node.
    online: Vec<bool>,
    /// Connections closed (close requests).
    closed: usize,
    /// Set when the node could not do what was asked.
    error: Option<String>,
}

/// What every node said.
#[derive(Debug, Default)]
pub struct SessionAnswer {
    /// Per client id: online on some node.
    pub online: Vec<bool>,
    pub closed: usize,
}

/// Waiting requests of this node, by id.
pub(super) type Waiters = std::sync::Mutex<HashMap<String, mpsc::UnboundedSender<Reply>>>;

impl Cluster {
    /// Which of `client_ids` are online on any node.
    pub async fn query_sessions(&self, client_ids: &[&str]) -> Result<SessionAnswer, String> {
        self.ask(client_ids, false, QUERY_TIMEOUT).await
    }

    /// Closes the connection holding `client_id`, on whichever node it is,
    /// and waits until it is closed.
    pub async fn close_session(&self, client_id: &str) -> Result<SessionAnswer, String> {
        self.ask(&[client_id], true, self.shared.drop_timeout).await
    }

    async fn ask(
        &self,
        client_ids: &[&str],
        close: bool,
        timeout: Duration,
    ) -> Result<SessionAnswer, String> {
        let shared = &self.shared;
        let request = Request {
            id: uuid::Uuid::new_v4().simple().to_string(),
            from: shared.node_id.to_string(),
            close,
            client_ids: client_ids.iter().map(|id| (*id).to_owned()).collect(),
        };
        let payload = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        if payload.len() > MAX_PAYLOAD {
            return Err(format!(
                "the client ids are too long to ask the other nodes about ({} bytes, at most {MAX_PAYLOAD})",
                payload.len()
            ));
        }
        let (tx, mut replies) = mpsc::unbounded_channel();
        shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request.id.clone(), tx);
        let _forget = Forget(self, &request.id);
        let deadline = tokio::time::Instant::now() + timeout;
        let within = |what: &'static str| {
            let e = format!("the registry database did not answer ({what})");
            move |_| e
        };
        tokio::time::timeout_at(deadline, self.notify(REQUESTS, &payload))
            .await
            .map_err(within("sending the request"))??;
        // This node's part, while the others do theirs.
        let mut answer = SessionAnswer {
            online: vec![false; client_ids.len()],
            closed: 0,
        };
        let mine = answer_locally(&shared.local, &request, &shared.node_id).await;
        merge(&mut answer, &mine);
        let mut waiting: Vec<String> =
            tokio::time::timeout_at(deadline, super::lease::live_nodes(self))
                .await
                .map_err(within("reading the leases"))?
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|node| **node != *shared.node_id)
                .collect();
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, replies.recv()).await {
                Ok(Some(reply)) => {
                    waiting.retain(|node| *node != reply.node);
                    if let Some(e) = &reply.error {
                        return Err(format!("node {}: {e}", reply.node));
                    }
                    merge(&mut answer, &reply);
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(format!(
                        "no answer within {} ms from {}",
                        timeout.as_millis(),
                        waiting.join(", ")
                    ));
                }
            }
        }
        Ok(answer)
    }

    /// Sends a notification over the connection settling waits use,
    /// within [`QUERY_TIMEOUT`].
    async fn notify(&self, channel: &str, payload: &str) -> Result<(), String> {
        let send = async {
            let client = self
                .shared
                .settle_conn
                .client()
                .await
                .map_err(|e| e.to_string())?;
            client
                .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                .await
                .map(|_| ())
                .map_err(|e| crate::store::postgres::db_message(&e))
        };
        let sent = tokio::time::timeout(QUERY_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err("the registry database did not answer in time".into()));
        if sent.is_err() {
            self.shared.settle_conn.reset().await;
        }
        sent
    }

    /// A request heard on the feed: answers it (another node's; this
    /// node's own it answers itself).
    pub(super) fn on_request(&self, payload: &str) {
        let Ok(request) = serde_json::from_str::<Request>(payload) else {
            return;
        };
        if request.from == *self.shared.node_id {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let shared = &cluster.shared;
            let reply = answer_locally(&shared.local, &request, &shared.node_id).await;
            let Ok(payload) = serde_json::to_string(&reply) else {
                return;
            };
            if let Err(e) = cluster.notify(REPLIES, &payload).await {
                warn!(error = %e, from = %request.from, "could not answer another node's session request");
            }
        });
    }

    /// An answer heard on the feed: to the request waiting for it, if any.
    pub(super) fn on_reply(&self, payload: &str) {
        let Ok(reply) = serde_json::from_str::<Reply>(payload) else {
            return;
        };
        let waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = waiters.get(&reply.id) {
            let _ = tx.send(reply);
        }
    }
}

/// Removes a request's waiter however the request ends.
struct Forget<'a>(&'a Cluster, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.1);
    }
}

fn merge(answer: &mut SessionAnswer, reply: &Reply) {
    for (mine, theirs) in answer.online.iter_mut().zip(&reply.online) {
        *mine |= *theirs;
    }
    answer.closed += reply.closed;
}

/// What this node says to a request.
async fn answer_locally(local: &Local, request: &Request, node: &str) -> Reply {
    let online = request
        .client_ids
        .iter()
        .map(|id| local.sessions.is_online(id))
        .collect();
    let (mut closed, mut error) = (0, None);
    if request.close {
        let closings: Vec<_> = request
            .client_ids
            .iter()
            .filter_map(|id| {
                local
                    .sessions
                    .kill_client(id, DropReason::Administrative(Cut::Kicked))
            })
            .collect();
        match wait_all(closings, local.drop_timeout).await {
            Ok(n) => closed = n,
            Err(e) => error = Some(e.to_string()),
        }
    }
    Reply {
        id: request.id.clone(),
        node: node.to_owned(),
        online,
        closed,
        error,
    }
}
