//! Client sessions: what the gateway remembers about one connected MCP client.
//!
//! A [`Session`] owns one lazily created upstream link per upstream it uses (see
//! `upstream/`), the client's catalog cache, its SSE streams, and the id maps that let
//! notifications and server→client requests travel both ways:
//! - client request ids are restored on the way back (upstream ids are the gateway's own);
//! - progress tokens pass unchanged (each link serves one client, so they cannot collide);
//! - a server→client request gets a gateway id (`s<n>`), and the client's answer is routed
//!   back to the upstream that asked, under that upstream's own id.
//!
//! Messages an upstream sends outside any request (list changes, resource updates, late log
//! lines, requests to the client) go to the standalone stream, and changes also to
//! `subscriptions/listen` streams. When a [`Screen`] is active (a policy reads the response
//! phase) they pass it first, in order, through the session's outbox task.
//!
//! Where the work lives: `handle.rs` client messages and upstream messages (forwarding, id
//! maps), `links.rs` its links to the upstreams as its router sees them (name/URI
//! resolution and list merging are the router's, `catalog/router.rs`), `input.rs` the
//! `input_required` bridge, `stream.rs` resumable SSE streams, `tasks.rs` task ids (sealed,
//! per owner) and the `tasks/*` methods.
//!
//! [`Sessions`] is the store. Session ids are 128-bit random values, or, with
//! `[cluster] session-key`, sealed ids any replica resumes (`seal.rs`); state lives in this
//! process. With the cluster bus (`cluster/`), what a session sends outside any request
//! reaches its streams on other replicas too.

mod handle;
mod input;
mod links;
pub mod seal;
pub mod stream;
mod tasks;

pub use crate::catalog::{Resolved, Route};
pub use tasks::TaskIds;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Names, Router};
use crate::mcp::{IdKey, Kind, Message};
use crate::policy::Identity;
use crate::upstream::{Hello, Slot, Upstream};
use stream::EventStream;

/// POST streams kept per session for `Last-Event-ID` resumption.
const KEPT_STREAMS: usize = 64;

/// Id of the session's standalone (GET) stream; POST streams count up from 1.
pub const STANDALONE_STREAM: u64 = 0;

/// Checks server→client messages (notifications, requests) that no request caused before
/// any client sees them (the policy chain's response phase; see `front/relay.rs`).
pub trait Screen: Send + Sync {
    /// Whether messages need screening now. When not, they go out at once.
    fn active(&self) -> bool;
    /// The message as it may go out, or `None` when it must not (the screen answered a
    /// refused request itself).
    fn message<'a>(
        &'a self,
        session: &'a Session,
        upstream: &'a str,
        msg: Message,
    ) -> BoxFuture<'a, Option<Message>>;
}

/// A message waiting in the session's outbox.
struct Outgoing {
    upstream: Arc<str>,
    msg: Message,
    /// A change (list changed, resource updated): for the GET stream and listen streams.
    /// Otherwise for the GET stream only.
    change: bool,
}

pub struct Session {
    pub id: Arc<str>,
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
    /// Who opened the session, for `max-sessions-per-caller` (see [`Sessions::open`]).
    quota: Option<String>,
    /// Byte cap of each of its SSE streams (`max-stream-buffer-kib`).
    stream_cap: usize,
    screen: Option<Arc<dyn Screen>>,
    /// Seals the task ids its clients see (`tasks.rs`).
    task_ids: Arc<TaskIds>,
    /// Messages outside any request, in order, through the screen (created on first need).
    outbox: OnceLock<tokio::sync::mpsc::UnboundedSender<Outgoing>>,
    /// The cluster bus: other replicas' streams of this session (`cluster/`).
    bus: Option<Arc<crate::cluster::Bus>>,
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

    /// Sends a message no request caused to the client: a `change` to the GET stream and
    /// listen streams, anything else to the GET stream. Through the screen when it is
    /// active (and, once the outbox exists, always, to keep the order).
    pub(crate) fn send_unrelated(&self, upstream: &Arc<str>, msg: Message, change: bool) {
        let outbox = match (self.outbox.get(), &self.screen) {
            (Some(tx), _) => Some(tx),
            (None, Some(screen)) if screen.active() => {
                Some(self.outbox.get_or_init(|| self.open_outbox(screen.clone())))
            }
            _ => None,
        };
        let outgoing = Outgoing {
            upstream: upstream.clone(),
            msg,
            change,
        };
        let outgoing = match outbox {
            Some(tx) => match tx.send(outgoing) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => outgoing,
        };
        self.deliver(&outgoing);
    }

    fn deliver(&self, outgoing: &Outgoing) {
        let Some(bus) = &self.bus else {
            self.deliver_here(&outgoing.msg, outgoing.change);
            return;
        };
        // A stream of this session here takes it; otherwise another replica may hold one.
        // Changes go out always: 2026-07-28 callers may listen on several replicas.
        let (upstream, msg, change) = (&outgoing.upstream, &outgoing.msg, outgoing.change);
        let here = self.standalone.has_listener() || (change && self.changes.receiver_count() > 0);
        if here {
            self.deliver_here(msg, change);
            if change {
                bus.publish_session(self, upstream, msg, change, None);
            }
            return;
        }
        // Nobody heard it (or Redis is down): kept here, for a stream opened here later.
        let me = self.me.clone();
        let kept = msg.clone();
        let unheard = Box::new(move || {
            if let Some(session) = me.upgrade() {
                session.deliver_here(&kept, change);
            }
        });
        bus.publish_session(self, upstream, msg, change, Some(unheard));
    }

    /// Delivers a message this session's copy on another replica sent. A list change also
    /// drops this replica's cached part of that upstream's list: the upstream changed it.
    pub(crate) fn deliver_remote(&self, upstream: &str, msg: &Message, change: bool) {
        let changed = crate::catalog::ListKind::from_list_changed(msg.method());
        if !changed.is_empty()
            && let Some(idx) = self
                .slots
                .iter()
                .position(|s| &*s.upstream.name == upstream)
        {
            for kind in changed {
                self.router.catalog().invalidate(*kind, idx);
            }
        }
        self.deliver_here(msg, change);
    }

    /// Delivers to this replica's streams of the session (and its replay buffer).
    pub(crate) fn deliver_here(&self, msg: &Message, change: bool) {
        if change {
            self.announce(msg);
        } else {
            self.standalone.push(msg);
        }
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

    /// The task that screens this session's unrelated messages one at a time, in order. It
    /// ends with the session (the sender lives in it).
    fn open_outbox(&self, screen: Arc<dyn Screen>) -> tokio::sync::mpsc::UnboundedSender<Outgoing> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let me = self.me.clone();
        tokio::spawn(async move {
            while let Some(mut outgoing) = rx.recv().await {
                let Some(session) = me.upgrade() else { return };
                if outgoing.msg.kind() != Kind::Response && screen.active() {
                    let msg = std::mem::replace(&mut outgoing.msg, Message::notification("", None));
                    match screen.message(&session, &outgoing.upstream, msg).await {
                        Some(m) => outgoing.msg = m,
                        None => continue,
                    }
                }
                session.deliver(&outgoing);
            }
        });
        tx
    }

    /// Sends a change notification to whoever listens: the GET stream and any
    /// `subscriptions/listen` stream.
    pub(crate) fn announce(&self, msg: &Message) {
        self.standalone.push(msg);
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(msg.clone());
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
        let stream = Arc::new(EventStream::new(id, self.stream_cap, self.id.clone()));
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

/// Why no session was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max-sessions` sessions are open.
    Full,
    /// This caller has `max-sessions-per-caller` sessions open.
    Caller,
}

/// The bounds on what clients may make the sessions hold (`[server]` keys).
#[derive(Debug, Clone, Copy)]
pub struct SessionBounds {
    /// `max-sessions`.
    pub max: usize,
    /// `max-sessions-per-caller`.
    pub per_caller: usize,
    /// `max-stream-buffer-kib`, in bytes.
    pub stream_buffer: usize,
}

impl SessionBounds {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        SessionBounds {
            max: c.max_sessions,
            per_caller: c.max_sessions_per_caller,
            stream_buffer: c.max_stream_buffer_kib.saturating_mul(1024),
        }
    }
}

/// All client sessions, plus what they share: the upstreams and the naming rules.
pub struct Sessions {
    map: DashMap<Arc<str>, Arc<Session>>,
    /// Sessions open per caller (see [`Sessions::open`]).
    per_caller: DashMap<String, usize>,
    /// `initialize` requests refused for the per-caller bound, since start.
    pub refused_per_caller: AtomicU64,
    /// Stateless (2026-07-28) callers → the internal session that serves them.
    callers: DashMap<String, Arc<str>>,
    upstreams: Vec<Arc<Upstream>>,
    names: Arc<Names>,
    page_size: usize,
    bounds: SessionBounds,
    screen: OnceLock<Arc<dyn Screen>>,
    /// Seals new session ids and resumes sealed ones (`[cluster] session-key`).
    sealer: OnceLock<Arc<seal::Sealer>>,
    /// Seals task ids: from the session key when there is one, else a key of this process.
    task_ids: OnceLock<Arc<TaskIds>>,
    /// Shares sessions' streams with other replicas (`[cluster]` redis and key).
    bus: OnceLock<Arc<crate::cluster::Bus>>,
}

impl Sessions {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        names: Arc<Names>,
        page_size: usize,
        bounds: SessionBounds,
    ) -> Self {
        Sessions {
            map: DashMap::new(),
            per_caller: DashMap::new(),
            refused_per_caller: AtomicU64::new(0),
            callers: DashMap::new(),
            upstreams,
            names,
            page_size,
            bounds,
            screen: OnceLock::new(),
            sealer: OnceLock::new(),
            task_ids: OnceLock::new(),
            bus: OnceLock::new(),
        }
    }

    /// Seals task ids with these (derived from `[cluster] session-key`), so every replica
    /// opens them. Without it, task ids open only in this process.
    pub fn set_task_ids(&self, ids: TaskIds) {
        let _ = self.task_ids.set(Arc::new(ids));
    }

    /// Seals session ids from now on, and resumes sealed ids this process does not hold.
    pub fn set_sealer(&self, sealer: Arc<seal::Sealer>) {
        let _ = self.sealer.set(sealer);
    }

    /// Shares the streams of sessions created from now on with the other replicas.
    pub fn set_bus(&self, bus: Arc<crate::cluster::Bus>) {
        let _ = self.bus.set(bus);
    }

    /// The cluster bus, when replicas share streams.
    pub fn bus(&self) -> Option<&Arc<crate::cluster::Bus>> {
        self.bus.get()
    }

    pub fn bounds(&self) -> &SessionBounds {
        &self.bounds
    }

    /// Screens what sessions send outside any request (sessions created from now on).
    pub fn set_screen(&self, screen: Arc<dyn Screen>) {
        let _ = self.screen.set(screen);
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Creates a session for a client that sent `initialize`; `None` when at capacity.
    pub fn create(&self, version: &'static str, hello: Hello) -> Option<Arc<Session>> {
        self.open(version, hello, None).ok()
    }

    /// Creates a session for `caller` (a key naming who asks: the authenticated subject, else
    /// the client's address; `None`: not counted), unless `max-sessions` are open or the
    /// caller has `max-sessions-per-caller` open. Nothing is allocated when refused.
    pub fn open(
        &self,
        version: &'static str,
        hello: Hello,
        caller: Option<&str>,
    ) -> Result<Arc<Session>, Refused> {
        self.open_as(version, hello, caller, None)
    }

    /// [`Sessions::open`] for a session that belongs to `owner` (the subject authn
    /// established): only that subject may use it, also on a replica that resumes it.
    pub fn open_as(
        &self,
        version: &'static str,
        hello: Hello,
        caller: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Arc<Session>, Refused> {
        let id: Arc<str> = match self.sealer.get() {
            Some(s) => s.seal(version, &hello, owner).into(),
            None => format!("{:032x}", rand::random::<u128>()).into(),
        };
        self.insert(id, version, hello, caller, owner)
    }

    fn insert(
        &self,
        id: Arc<str>,
        version: &'static str,
        hello: Hello,
        caller: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Arc<Session>, Refused> {
        if self.map.len() >= self.bounds.max {
            return Err(Refused::Full);
        }
        if let Some(key) = caller {
            // The entry holds its shard's lock: check and count are one step.
            let mut open = self.per_caller.entry(key.to_string()).or_insert(0);
            if *open >= self.bounds.per_caller {
                drop(open);
                self.refused_per_caller.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Caller);
            }
            *open += 1;
        }
        let cap = self.bounds.stream_buffer;
        let session = Arc::new_cyclic(|me| Session {
            id: id.clone(),
            version,
            hello,
            slots: self
                .upstreams
                .iter()
                .map(|u| Slot::for_client(u.clone(), version != crate::mcp::version::STATELESS))
                .collect(),
            router: Arc::new(Router::new(self.names.clone(), self.page_size)),
            standalone: EventStream::new(STANDALONE_STREAM, cap, id.clone()),
            changes: tokio::sync::broadcast::channel(64).0,
            streams: Mutex::new(VecDeque::new()),
            next_stream: AtomicU64::new(0),
            inflight: DashMap::new(),
            server_requests: DashMap::new(),
            local_requests: DashMap::new(),
            next_server_request: AtomicU64::new(0),
            log_level: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
            owner: std::sync::OnceLock::new(),
            caller: ArcSwapOption::empty(),
            subject: Default::default(),
            quota: caller.map(str::to_string),
            stream_cap: cap,
            screen: self.screen.get().cloned(),
            task_ids: self
                .task_ids
                .get_or_init(|| Arc::new(TaskIds::random()))
                .clone(),
            outbox: OnceLock::new(),
            bus: self.bus.get().cloned(),
            me: me.clone(),
        });
        if let Some(owner) = owner {
            let _ = session.owner.set(owner.to_string());
        }
        // A resumed id may race with itself: the first one in wins.
        Ok(self.map.entry(id).or_insert(session).clone())
    }

    /// The internal session serving a stateless (2026-07-28) caller, created on first use.
    /// `caller` is the subject authn established ("" without authn: every unauthenticated
    /// caller is the same caller). Callers never share a session, hence never an upstream
    /// session or child process. `None` when at capacity.
    pub fn for_caller(&self, caller: &str, hello: impl FnOnce() -> Hello) -> Option<Arc<Session>> {
        if let Some(id) = self.callers.get(caller)
            && let Some(s) = self.get(&id)
        {
            return Some(s);
        }
        // Two first requests of one caller may race here; the loser's session idles out.
        let session = self.create(crate::mcp::version::STATELESS, hello())?;
        if !caller.is_empty() {
            let _ = session.owner.set(caller.to_string());
        }
        tracing::info!(session = %session.id, caller, "internal session for a stateless caller");
        self.callers.insert(caller.to_string(), session.id.clone());
        Some(session)
    }

    /// The session `id` names: held here, or resumed from a sealed id another replica (or
    /// this one before a restart) issued. `None`: unknown, ended here, forged, expired.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        if let Some(s) = self.map.get(id) {
            return Some(s.clone());
        }
        let opened = self.sealer.get()?.open(id);
        let Some(opened) = opened else {
            tracing::debug!(
                len = id.len(),
                "session id not held here and not a valid sealed id"
            );
            return None;
        };
        let session = self
            .insert(
                id.into(),
                opened.version,
                opened.hello,
                None,
                opened.owner.as_deref(),
            )
            .ok()?;
        tracing::info!(session = %crate::observe::clip(id), version = opened.version, "session resumed from its sealed id");
        Some(session)
    }

    /// Ends a session: its streams close, its in-flight requests are cancelled, and its
    /// upstream links (child processes, upstream sessions) go when the last request finishes.
    /// A sealed id is remembered as ended, so this replica does not resume it.
    pub fn remove(&self, id: &str) -> bool {
        if let Some(sealer) = self.sealer.get() {
            sealer.end(id);
        }
        self.forget(id)
    }

    /// Frees what this process holds for a session. A sealed id stays valid: the next
    /// request resumes it (idle reaping and shutdown; a DELETE uses [`Sessions::remove`]).
    fn forget(&self, id: &str) -> bool {
        match self.map.remove(id) {
            Some((_, s)) => {
                self.callers.retain(|_, sid| &**sid != id);
                if let Some(key) = &s.quota {
                    self.per_caller.remove_if_mut(key, |_, open| {
                        *open = open.saturating_sub(1);
                        *open == 0
                    });
                }
                s.close();
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends sessions idle for longer than `timeout` (a connected GET stream counts as use).
    pub fn reap_idle(&self, timeout: Duration) -> usize {
        let idle: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|s| {
                s.idle_for() > timeout
                    && !s.standalone.has_listener()
                    && s.changes.receiver_count() == 0
                    && s.inflight.is_empty()
            })
            .map(|s| s.id.clone())
            .collect();
        for id in &idle {
            tracing::info!(session = %id, "session idle; closing");
            self.forget(id);
        }
        idle.len()
    }

    pub fn ids(&self) -> Vec<Arc<str>> {
        self.map.iter().map(|s| s.id.clone()).collect()
    }

    pub fn close_all(&self) {
        for id in self.ids() {
            self.forget(&id);
        }
    }
}
