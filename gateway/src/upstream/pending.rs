//! Upstream-side request ids, and the requests sent to a stdio or HTTP+SSE upstream and not
//! yet answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use super::{Related, UpstreamError};
use crate::mcp::{Message, methods};

/// Where a request's answer arrives: the response, or why the link failed it.
pub type Answer = oneshot::Receiver<Result<Message, UpstreamError>>;

struct Entry {
    reply: oneshot::Sender<Result<Message, UpstreamError>>,
    related: Option<Related>,
    progress_token: Option<Value>,
}

/// The ids a link gives its requests upstream: the client's ids are never sent, so two
/// clients' ids cannot collide on one upstream. Ids start at 1; 0 is the `initialize`
/// request (and the HTTP `server/discover` probe).
#[derive(Default)]
pub struct RequestIds(AtomicU64);

impl RequestIds {
    pub const fn new() -> Self {
        RequestIds(AtomicU64::new(0))
    }

    /// A fresh id.
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Gives `msg` a fresh id, and says which.
    pub fn number(&self, msg: &mut Message) -> u64 {
        let id = self.next();
        msg.set_id(Value::from(id));
        id
    }
}

/// In-flight requests of one link, keyed by the upstream-side id the gateway assigned.
/// The lock is per link and held only for map operations.
#[derive(Default)]
pub struct Pending {
    /// The link's request ids (its requests during the handshake are numbered here too).
    pub ids: RequestIds,
    map: Mutex<BTreeMap<u64, Entry>>,
}

impl Pending {
    /// Gives `msg` a fresh upstream-side id and waits for its answer: the id, and where the
    /// answer will arrive.
    pub fn start(&self, msg: &mut Message, related: Option<Related>) -> (u64, Answer) {
        let id = self.ids.number(msg);
        (id, self.register_request(id, msg, related))
    }

    /// Waits for the answer to request `msg`, numbered `id`; progress it asked for goes to
    /// `related`.
    pub fn register_request(&self, id: u64, msg: &Message, related: Option<Related>) -> Answer {
        self.register(id, related, msg.progress_token().cloned())
    }

    /// The call for a request registered as `id`: `sent` writes it, then the answer is
    /// awaited. If writing fails the waiter is removed; if the link ends first, the call
    /// fails with `gone`.
    pub fn call(
        self: &Arc<Self>,
        id: u64,
        answer: Answer,
        sent: impl Future<Output = Result<(), UpstreamError>> + Send + 'static,
        gone: UpstreamError,
    ) -> impl Future<Output = Result<Message, UpstreamError>> + Send + 'static {
        let pending = self.clone();
        async move {
            if let Err(e) = sent.await {
                pending.remove(id);
                return Err(e);
            }
            answer.await.map_err(|_| gone)?
        }
    }

    pub fn register(
        &self,
        id: u64,
        related: Option<Related>,
        progress_token: Option<Value>,
    ) -> Answer {
        let (reply, rx) = oneshot::channel();
        self.lock().insert(
            id,
            Entry {
                reply,
                related,
                progress_token,
            },
        );
        rx
    }

    /// Hands a response to its waiting request; false if nobody waits for it.
    pub fn complete(&self, msg: Message) -> bool {
        let Some(id) = msg.id().and_then(Value::as_u64) else {
            return false;
        };
        match self.lock().remove(&id) {
            Some(entry) => entry.reply.send(Ok(msg)).is_ok(),
            None => false,
        }
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The stream of the request that asked for progress with `token`.
    pub fn related_to_progress(&self, token: &Value) -> Option<Related> {
        self.lock()
            .values()
            .find(|e| e.progress_token.as_ref() == Some(token))
            .and_then(|e| e.related.clone())
    }

    /// The stream of the most recent in-flight request: on stdio there is no other way to
    /// tell which request a log line or a sampling request belongs to.
    pub fn latest_related(&self) -> Option<Related> {
        self.lock().values().rev().find_map(|e| e.related.clone())
    }

    /// Which client request a message from an upstream without per-request streams (stdio,
    /// HTTP+SSE) belongs to. Progress carries its token; list changes and resource updates
    /// belong to the session; anything else sent while a request is in flight is taken to
    /// belong to the most recent one.
    pub fn related_for(&self, msg: &Message) -> Option<Related> {
        match msg.method() {
            methods::PROGRESS => msg
                .params()
                .and_then(|p| p.get("progressToken"))
                .and_then(|t| self.related_to_progress(t)),
            methods::TOOLS_LIST_CHANGED
            | methods::PROMPTS_LIST_CHANGED
            | methods::RESOURCES_LIST_CHANGED
            | methods::RESOURCES_UPDATED => None,
            _ => self.latest_related(),
        }
    }

    /// Fails every waiting request (the process or connection is gone).
    pub fn fail_all(&self) {
        self.lock().clear();
    }

    /// Fails every waiting request with the error `why` makes: the link broke a bound and
    /// the answer they wait for may be what was dropped.
    pub fn fail_all_with(&self, why: impl Fn() -> UpstreamError) {
        for (_, entry) in std::mem::take(&mut *self.lock()) {
            let _ = entry.reply.send(Err(why()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // A poisoned map only means another thread panicked mid-insert; the map is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
