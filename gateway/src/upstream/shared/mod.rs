//! Shared stdio upstreams (`share = "shared"`): many client sessions served by one child
//! process (or `pool` children) instead of one child each.
//!
//! A [`Pool`] belongs to the [`Upstream`]; each of its children is a [`Hub`], one running
//! [`StdioLink`] plus the routing tables that let it serve many sessions. A session's link to
//! a shared upstream is a [`SharedLink`]: a handle on the hub it was given (the hub with the
//! fewest sessions), which it keeps until the child dies or the session ends.
//!
//! What the gateway does so that every session sees its own server:
//! - **Ids.** Every request is numbered from the child's own ids (`Transport::ids` of its
//!   `StdioLink`, unique per child), and the link restores the client's own id on the
//!   answer; a cancellation names the upstream id, so it reaches only the request it cancels.
//! - **Progress tokens** are replaced by hub-unique ones on the way in and restored on the
//!   way out, so two sessions' tokens cannot collide and progress reaches only its caller.
//! - **Server→client requests and log lines** carry nothing on the stdio wire that ties them
//!   to a request. While requests of exactly one session are in flight they belong to that
//!   session (and to its most recent request's stream). While requests of several sessions
//!   are in flight a server→client request cannot be attributed: it is refused with a
//!   JSON-RPC error to the child rather than risk asking the wrong client (fail closed), and
//!   a log line is treated as the server's own (below). `roots/list` with nothing in flight
//!   is answered by the session that used the child last; other requests with nothing in
//!   flight are refused. A session whose client did not declare the capability a request
//!   needs (`sampling`, `elicitation`, `roots`) never sees it: the child gets an error.
//!   `ping` from the child is answered by the gateway.
//! - **List changes** go to every session of the child.
//! - **`resources/subscribe`** is reference-counted: the child is subscribed while at least
//!   one session is, and `notifications/resources/updated` reaches only the sessions
//!   subscribed to that URI.
//! - **`logging/setLevel`**: the child has one level, so it is told the most verbose level
//!   any of its sessions asked for, and each session gets only lines at or above its own
//!   level (a session that never set one gets what the child sends, as with its own child).
//!   Log lines no single session's request explains go to every session whose level admits
//!   them.
//! - **`initialize`** is sent once per child, with the gateway's own identity and every
//!   client capability the gateway can relay (`roots`, `sampling`, `elicitation`).
//!
//! A child that dies fails the requests in flight on it; each session's next message starts
//! a new one (the first does the work, the rest attach to it) with the same backoff as a
//! per-session child, counted once for the pool slot. Subscriptions and the log level are
//! not replayed into the new child, as with a restarted per-session child. When the last
//! session of a child ends, the child is stopped; the next session starts it again.
//!
//! Where the work lives: this file the pool of children and their restart backoff,
//! `hub.rs` one child's routing tables and what it sends (to which session), `link.rs` a
//! session's link (its requests numbered from the child's ids, progress tokens swapped),
//! `state.rs` what the child holds for all its sessions (log level, resource
//! subscriptions), reference-counted per session.

mod hub;
mod link;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Weak};

use serde_json::{Value, json};
use tokio::time::Instant;

use super::stdio::StdioLink;
use super::transport::Transport;
use super::{Hello, InboundHandler, Upstream, UpstreamError};
use hub::Hub;
pub use link::SharedLink;

/// Most requests in flight on one shared child, across its sessions; more are refused at
/// once with a clear error. Bounds the hub's tables (and the `StdioLink`'s pending table)
/// whatever the clients do: 4,096 concurrent calls is far more than one server process
/// answers in time.
const MAX_IN_FLIGHT: usize = 4096;
/// Most server→client requests of one child waiting for a client's answer.
const MAX_ASKED: usize = 1024;
/// Most distinct resource URIs one child is subscribed to on behalf of its sessions, and
/// most subscriptions one session may hold on it.
const MAX_SUBSCRIPTIONS: usize = 10_000;
const MAX_SESSION_SUBSCRIPTIONS: usize = 256;

/// The client capabilities a shared child is told about: everything the gateway relays to
/// its clients. A session that lacks one is protected per request (see the module docs).
fn gateway_hello() -> Hello {
    Hello {
        capabilities: json!({
            "roots": { "listChanged": true },
            "sampling": {},
            "elicitation": {},
        }),
        client_info: json!({
            "name": "portcullis-shared",
            "version": env!("CARGO_PKG_VERSION"),
        }),
    }
}

/// The children of one shared upstream.
pub struct Pool {
    slots: Vec<tokio::sync::Mutex<PoolSlot>>,
}

/// One place in the pool: the child running there (if any) and its restart backoff.
#[derive(Default)]
struct PoolSlot {
    hub: Weak<Hub>,
    started: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.slots.len())
            .finish()
    }
}

impl Pool {
    pub fn new(size: usize) -> Self {
        Pool {
            slots: (0..size.max(1)).map(|_| Default::default()).collect(),
        }
    }

    /// A link for one client session: onto the running child with the fewest sessions,
    /// starting (or restarting, after backoff) one when needed. Returns the child's
    /// `initialize` result.
    pub async fn attach(
        &self,
        upstream: &Arc<Upstream>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
    ) -> Result<(SharedLink, Value), UpstreamError> {
        let idx = self.least_loaded();
        let mut slot = self.slots[idx].lock().await;
        if let Some(hub) = slot.hub.upgrade() {
            if hub.link().is_some_and(Transport::is_alive) {
                return Ok(hub.attach(hello, handler));
            }
            // It died with sessions on it: a crash, unless it had run stably.
            let lived = slot.started.map(|s| s.elapsed()).unwrap_or_default();
            if slot.retry_at.is_none() {
                slot.failures = if lived >= super::slot::STABLE_AFTER {
                    1
                } else {
                    slot.failures + 1
                };
                slot.retry_at = Some(
                    Instant::now() + super::slot::backoff(slot.failures).saturating_sub(lived),
                );
            }
            slot.hub = Weak::new();
        }
        if let Some(at) = slot.retry_at
            && Instant::now() < at
        {
            return Err(UpstreamError::Unavailable {
                upstream: upstream.name.clone(),
                reason: format!(
                    "restarting the shared child after a failure; next attempt in {} ms",
                    (at - Instant::now()).as_millis()
                ),
            });
        }
        let hub = Arc::new(Hub::new(upstream));
        let weak = Arc::downgrade(&hub) as Weak<dyn InboundHandler>;
        match StdioLink::connect(upstream, &gateway_hello(), weak, true).await {
            Ok((link, init)) => {
                let stateless = link.stateless.is_some();
                let _ = hub.link.set(link);
                let _ = hub.init.set(init);
                tracing::info!(upstream = %upstream.name, slot = idx, stateless, "shared stdio child started");
                slot.hub = Arc::downgrade(&hub);
                slot.started = Some(Instant::now());
                slot.retry_at = None;
                if slot.failures > 0 {
                    // The counter resets once the child has run stably (see above).
                    tracing::info!(upstream = %upstream.name, slot = idx, "shared stdio child restarted");
                }
                Ok(hub.attach(hello, handler))
            }
            Err(e) => {
                slot.failures += 1;
                slot.retry_at = Some(Instant::now() + super::slot::backoff(slot.failures));
                Err(e)
            }
        }
    }

    fn least_loaded(&self) -> usize {
        if self.slots.len() == 1 {
            return 0;
        }
        // `try_lock`: a slot being started is busy; count it as full rather than wait here.
        (0..self.slots.len())
            .min_by_key(|&i| match self.slots[i].try_lock() {
                Ok(s) => s.hub.upgrade().map_or(0, |h| h.sessions()),
                Err(_) => usize::MAX,
            })
            .unwrap_or(0)
    }
}
