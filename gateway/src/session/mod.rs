//! Client sessions: what the gateway remembers about one connected MCP client.
//!
//! A [`Session`] owns one lazily created upstream link per upstream it uses (see
//! `upstream/`), its router (`catalog/router.rs`: where its requests go, and its catalog
//! cache), its SSE streams, and the id maps that let
//! notifications and server→client requests travel both ways:
//! - client request ids are restored on the way back (upstream ids are the gateway's own);
//! - progress tokens pass unchanged (each link serves one client, so they cannot collide);
//! - a server→client request gets a gateway id (`s<n>`), and the client's answer is routed
//!   back to the upstream that asked, under that upstream's own id.
//!
//! Messages an upstream sends outside any request (list changes, resource updates, late log
//! lines, requests to the client) go to the standalone stream, and changes also to
//! `subscriptions/listen` streams. When a [`Screen`] is active (a policy reads the response
//! phase) they pass it first, in order, through the session's outbox task (`outbox.rs`).
//!
//! Where the work lives: `handle.rs` client messages and upstream messages (forwarding, id
//! maps), `links.rs` its links to the upstreams as its router sees them (name/URI
//! resolution and list merging are the router's, `catalog/router.rs`), `input.rs` the
//! `input_required` bridge, `stream.rs` resumable SSE streams, `tasks.rs` task ids (sealed,
//! per owner) and the `tasks/*` methods.
//!
//! [`Sessions`] is the store (`store.rs`). Session ids are 128-bit random values, or, with
//! `[cluster] session-key`, sealed ids any replica resumes (`seal.rs`), carrying the
//! upstream sessions opened at `initialize` (`opening.rs`); state lives in this process.
//! With the cluster bus (`cluster/`), what a session sends outside any request reaches its
//! streams on other replicas too.

mod bus;
mod handle;
mod input;
mod links;
mod opening;
mod outbox;
pub mod seal;
mod store;
pub mod stream;
mod tasks;

pub use crate::catalog::{Resolved, Route};
pub use bus::SessionBus;
use outbox::Outgoing;
pub use outbox::Screen;
pub use store::{Refused, SessionBounds, Sessions};
pub use tasks::TaskIds;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::catalog::Router;
use crate::mcp::{IdKey, Message};
use crate::policy::Identity;
use crate::upstream::{Hello, Slot};
use stream::EventStream;

/// POST streams kept per session for `Last-Event-ID` resumption.
const KEPT_STREAMS: usize = 64;

/// Id of the session's standalone (GET) stream; POST streams count up from 1.
pub const STANDALONE_STREAM: u64 = 0;

pub struct Session {
    pub id: Arc<str>,
    /// What logs, spans and audit records name it by, never the id: [`crate::observe::session_tag`].
    pub tag: Arc<str>,
    /// Negotiated protocol revision.
    pub version: &'static str,
    hello: Hello,
    slots: Vec<Slot>,
    /// Where its requests go: name and URI resolution, list merging (`catalog/router.rs`).
    router: Arc<Router>,
    /// Messages not tied to a request: the GET stream.
    pub standalone: EventStream,
    /// Change notifications (list changes, resource updates) for `subscriptions/listen`
    /// streams (2026-07-28), which subscribe here.
    pub changes: tokio::sync::broadcast::Sender<Message>,
    streams: Mutex<VecDeque<Arc<EventStream>>>,
    next_stream: AtomicU64,
    /// Client requests in progress, for `notifications/cancelled`.
    inflight: DashMap<IdKey, CancellationToken>,
    /// Server→client requests awaiting the client's answer: gateway id → (upstream, its id).
    server_requests: DashMap<String, (usize, Value)>,
    /// The gateway's own questions to the client (a 2026-07-28 upstream's `input_required`
    /// asked of a session-era client), by gateway id.
    local_requests: DashMap<String, tokio::sync::oneshot::Sender<Message>>,
    next_server_request: AtomicU64,
    log_level: Mutex<Option<Value>>,
    last_seen: Mutex<Instant>,
    /// The subject of the identity that opened the session, when a policy established one:
    /// only that caller may use the session.
    pub owner: std::sync::OnceLock<String>,
    /// The identity of the caller's latest request, for screening what the session sends
    /// outside any request.
    caller: ArcSwapOption<Identity>,
    /// The bearer token authn last accepted from the owner: what token-exchange upstreams
    /// exchange (`upstream/credential.rs`). Set by the front once a request is identified.
    pub subject: crate::upstream::SubjectSlot,
    /// Who opened the session, for `max-sessions-per-caller` (see [`Sessions::open_as`]).
    quota: Option<String>,
    /// Byte cap of each of its SSE streams (`max-stream-buffer-kib`).
    stream_cap: usize,
    screen: Option<Arc<dyn Screen>>,
    /// Seals the task ids its clients see (`tasks.rs`).
    task_ids: Arc<TaskIds>,
    /// Messages outside any request, in order, through the screen (created on first need).
    outbox: OnceLock<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
    /// The cluster bus: other replicas' streams of this session (`cluster/`).
    bus: Option<Arc<dyn SessionBus>>,
    /// The handler of the links opened at `initialize`, before the session existed
    /// (`opening.rs`); kept here for as long as they live.
    _handover: Option<Arc<opening::Handover>>,
    me: Weak<Session>,
}

impl Session {
    /// Whether a caller with this subject (`None`: no identity was established) may use the
    /// session. A session opened by an identified caller belongs to that caller.
    pub fn admits(&self, subject: Option<&str>) -> bool {
        match self.owner.get() {
            Some(owner) => subject == Some(owner.as_str()),
            None => true,
        }
    }

    /// Remembers who is calling (the identity authn established for the latest request).
    pub fn remember_caller(&self, identity: Option<&Identity>) {
        let known = self.caller.load();
        if known.as_deref() != identity {
            self.caller.store(identity.cloned().map(Arc::new));
        }
    }

    /// The identity of the caller's latest request, if authn established one.
    pub fn caller(&self) -> Option<Arc<Identity>> {
        self.caller.load_full()
    }

    /// A fresh id for a request to the client: `s<n>`, and in a cluster `s<n>.<replica>`, so
    /// the client's answer finds this replica wherever it is posted.
    fn server_request_id(&self) -> String {
        let n = self.next_server_request.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bus {
            Some(bus) => format!("s{n}.{}", bus.replica()),
            None => format!("s{n}"),
        }
    }

    /// What names this session on every replica's bus: a session-era session by its
    /// (sealed) id, a 2026-07-28 caller's internal session by the caller's subject (each
    /// replica has its own internal session for that caller).
    pub fn bus_topic(&self) -> String {
        if self.version == crate::mcp::version::STATELESS {
            format!("c:{}", self.owner.get().map_or("", String::as_str))
        } else {
            format!("s:{}", self.id)
        }
    }

    pub fn touch(&self) {
        *self.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// A new POST stream, kept for resumption.
    pub fn open_stream(&self) -> Arc<EventStream> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let stream = Arc::new(EventStream::new(id, self.stream_cap, self.tag.clone()));
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        // Finished streams are kept for resumption within one stream's byte cap in all, the
        // oldest dropped first: a session that made many streaming calls does not hold
        // every answer it ever streamed.
        let mut kept: usize = streams
            .iter()
            .filter(|s| s.is_finished())
            .map(|s| s.kept_bytes())
            .sum();
        while kept > self.stream_cap {
            let Some(at) = streams.iter().position(|s| s.is_finished()) else {
                break;
            };
            if let Some(old) = streams.remove(at) {
                kept = kept.saturating_sub(old.kept_bytes());
            }
        }
        if streams.len() >= KEPT_STREAMS {
            // Drop the oldest finished stream (or the oldest at all if none finished).
            let at = streams.iter().position(|s| s.is_finished()).unwrap_or(0);
            streams.remove(at);
        }
        streams.push_back(stream.clone());
        stream
    }

    /// The POST stream with this id, for resumption.
    pub fn stream(&self, id: u64) -> Option<Arc<EventStream>> {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.iter().find(|s| s.id == id).cloned()
    }

    fn close(&self) {
        self.standalone.finish();
        for s in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            s.finish();
        }
        for (_, token) in self.inflight.clone() {
            token.cancel();
        }
    }
}
