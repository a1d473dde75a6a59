//! A client session's link to a shared child ([`SharedLink`]): its requests numbered from
//! the child's own ids, progress tokens swapped for hub-unique ones while a request runs,
//! and only its own answers to the child's questions passed on.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::MAX_IN_FLIGHT;
use super::hub::Hub;
use crate::mcp::{IdKey, Kind, Message, methods};
use crate::upstream::pending::RequestIds;
use crate::upstream::stateless::Stateless;
use crate::upstream::stdio::StdioLink;
use crate::upstream::transport::{Call, Transport};
use crate::upstream::{Related, UpstreamError};

/// One client session's link to a shared child.
pub struct SharedLink {
    pub(super) hub: Arc<Hub>,
    pub(super) key: u64,
}

impl Drop for SharedLink {
    fn drop(&mut self) {
        self.hub.detach(self.key);
    }
}

impl SharedLink {
    pub(super) fn inner(&self) -> Result<&StdioLink, UpstreamError> {
        self.hub.link().ok_or_else(|| UpstreamError::Exited {
            upstream: self.hub.name.clone(),
        })
    }

    pub(super) fn is_stateless(&self) -> bool {
        self.hub.link().is_some_and(|l| l.stateless.is_some())
    }

    /// What a 2026-07-28 child has no method for, answered by the gateway.
    pub(super) fn answer_locally(&self, msg: &Message) -> Option<Message> {
        self.hub.link()?.stateless.as_ref()?.answer_locally(msg)
    }
}

/// Ids for a handle whose child never started (it has no requests to number).
static NO_IDS: RequestIds = RequestIds::new();

impl Transport for SharedLink {
    fn kind(&self) -> &'static str {
        "stdio-shared"
    }

    fn is_alive(&self) -> bool {
        self.hub.link().is_some_and(Transport::is_alive)
    }

    fn stateless(&self) -> Option<&Stateless> {
        self.hub.link()?.stateless.as_ref()
    }

    fn traces_in_meta(&self) -> bool {
        true
    }

    fn ids(&self) -> &RequestIds {
        self.hub.link().map_or(&NO_IDS, Transport::ids)
    }

    /// `logging/setLevel` and `resources/(un)subscribe` change what the child does for
    /// every session: recorded per session, passed on only when the child must change.
    fn intercept(&self, msg: Message, timeout: Duration) -> Result<Call<'_>, Message> {
        if self.is_session_state(&msg) {
            Ok(Box::pin(self.session_state(msg, timeout)))
        } else {
            Err(msg)
        }
    }

    /// Sends a request for this session, numbered from the child's ids; see `StdioLink`'s
    /// `request`. The progress token is swapped for a hub-unique one for as long as the
    /// request runs.
    fn request(&self, id: u64, mut msg: Message, related: Option<Related>) -> Call<'_> {
        let hub = &self.hub;
        let link = match self.inner() {
            Ok(l) => l,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let token = msg.progress_token().cloned().map(|original| {
            let ours = format!("pc-{}", hub.next_token.fetch_add(1, Ordering::Relaxed) + 1);
            if let Some(meta) = msg
                .params_mut()
                .get_mut("_meta")
                .and_then(Value::as_object_mut)
            {
                meta.insert("progressToken".into(), Value::String(ours.clone()));
            }
            (ours, original)
        });
        {
            let mut routes = hub.routes();
            if routes.in_flight.len() >= MAX_IN_FLIGHT {
                drop(routes);
                let e = UpstreamError::Unavailable {
                    upstream: hub.name.clone(),
                    reason: format!("{MAX_IN_FLIGHT} requests in flight on the shared child"),
                };
                return Box::pin(std::future::ready(Err(e)));
            }
            routes.last_active = Some(self.key);
            if let Some((ours, original)) = &token {
                routes
                    .progress
                    .insert(ours.clone(), (self.key, original.clone()));
            }
        }
        let answer = link.request(id, msg, related.clone());
        hub.routes().in_flight.insert(id, (self.key, related));
        let done = Done {
            hub: hub.clone(),
            id,
            token: token.map(|(ours, _)| ours),
        };
        Box::pin(async move {
            let _done = done;
            answer.await
        })
    }

    /// Stops waiting for a request (after a timeout or cancellation).
    fn forget(&self, id: u64) {
        if let Some(link) = self.hub.link() {
            link.forget(id);
        }
        self.hub.routes().in_flight.remove(&id);
    }

    /// A notification from the client, or its answer to a request the child made.
    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>> {
        Box::pin(std::future::ready(self.forward(msg)))
    }
}

impl SharedLink {
    pub(super) fn forward(&self, msg: Message) -> Result<(), UpstreamError> {
        match msg.kind() {
            Kind::Response => {
                // Only an answer to a question this session was asked.
                let id = msg.id().map(IdKey::of);
                let mine = {
                    let mut routes = self.hub.routes();
                    match id {
                        Some(id) if routes.asked.get(&id).map(|(s, _)| *s) == Some(self.key) => {
                            routes.asked.remove(&id);
                            true
                        }
                        _ => false,
                    }
                };
                if !mine {
                    tracing::debug!(upstream = %self.hub.name, "answer to no question of this session; dropped");
                    return Ok(());
                }
                self.inner()?.write(msg)
            }
            // The child was initialized once, by the gateway.
            _ if msg.method() == methods::INITIALIZED => Ok(()),
            _ => self.inner()?.write(msg),
        }
    }
}

/// Removes a finished request's routes, whether it was answered, failed or dropped.
struct Done {
    hub: Arc<Hub>,
    id: u64,
    token: Option<String>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let mut routes = self.hub.routes();
        routes.in_flight.remove(&self.id);
        if let Some(t) = &self.token {
            routes.progress.remove(t);
        }
    }
}
