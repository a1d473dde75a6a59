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

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::pending::RequestIds;
use super::stateless::Stateless;
use super::stdio::StdioLink;
use super::transport::{Call, Transport};
use super::{Hello, InboundHandler, Related, Upstream, UpstreamError};
use crate::mcp::{IdKey, Kind, Message, codes, methods};

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

/// One running shared child and what routes its traffic to its sessions.
pub struct Hub {
    name: Arc<str>,
    link: OnceLock<StdioLink>,
    init: OnceLock<Value>,
    routes: Mutex<Routes>,
    /// Serializes subscription and log-level changes, which wait for the child's answer
    /// while the reference counts are in between.
    changes: tokio::sync::Mutex<()>,
    next_session: AtomicU64,
    next_token: AtomicU64,
}

#[derive(Default)]
struct Routes {
    sessions: HashMap<u64, Member>,
    /// The session that sent the latest request (for `roots/list` outside any call).
    last_active: Option<u64>,
    /// Requests in flight: upstream id → (session, its request's stream).
    in_flight: HashMap<u64, (u64, Option<Related>)>,
    /// Progress tokens given to the child → (session, the client's own token).
    progress: HashMap<String, (u64, Value)>,
    /// Server→client requests waiting for a client: the child's id → (session, that id).
    asked: HashMap<IdKey, (u64, Value)>,
    /// Resource URI → the sessions subscribed to it.
    subscriptions: HashMap<String, BTreeSet<u64>>,
    /// The level the child was last told (a rank, see [`level_rank`]).
    child_level: Option<u8>,
}

struct Member {
    handler: Weak<dyn InboundHandler>,
    /// The client's own capabilities (its `initialize`).
    capabilities: Value,
    /// The log level it asked for, as a rank.
    level: Option<u8>,
    subscriptions: usize,
}

impl Hub {
    fn new(upstream: &Arc<Upstream>) -> Self {
        Hub {
            name: upstream.name.clone(),
            link: OnceLock::new(),
            init: OnceLock::new(),
            routes: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            next_session: AtomicU64::new(0),
            next_token: AtomicU64::new(0),
        }
    }

    fn link(&self) -> Option<&StdioLink> {
        self.link.get()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // The tables stay consistent even if a holder panicked.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sessions(&self) -> usize {
        self.routes().sessions.len()
    }

    fn attach(
        self: &Arc<Self>,
        hello: &Hello,
        handler: Weak<dyn InboundHandler>,
    ) -> (SharedLink, Value) {
        let key = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        self.routes().sessions.insert(
            key,
            Member {
                handler,
                capabilities: hello.capabilities.clone(),
                level: None,
                subscriptions: 0,
            },
        );
        let init = self.init.get().cloned().unwrap_or_default();
        (
            SharedLink {
                hub: self.clone(),
                key,
            },
            init,
        )
    }

    /// Sends a message to the child, logging (not failing) when it is gone.
    fn tell_child(&self, msg: Message) {
        if let Some(link) = self.link()
            && let Err(e) = link.write(msg)
        {
            tracing::debug!(upstream = %self.name, error = %e, "could not write to the shared child");
        }
    }

    /// Answers a server→client request in the gateway's name: refused, with why.
    fn refuse(&self, msg: &Message, why: &str) {
        tracing::debug!(upstream = %self.name, method = msg.method(), why, "server request to a shared child's clients refused");
        let id = msg.id().cloned().unwrap_or(Value::Null);
        self.tell_child(Message::error(id, codes::INTERNAL_ERROR, why, None));
    }

    /// A request to the child on the hub's own behalf (subscriptions, log level), waiting
    /// for its answer.
    async fn ask_child(
        &self,
        mut msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let link = self.link().ok_or_else(|| UpstreamError::Exited {
            upstream: self.name.clone(),
        })?;
        let id = link.ids().number(&mut msg);
        let answer = link.request(id, msg, None);
        match tokio::time::timeout(timeout, answer).await {
            Ok(r) => r,
            Err(_) => {
                link.forget(id);
                Err(UpstreamError::Timeout {
                    upstream: self.name.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// The session a message without a progress token belongs to: the only session with
    /// requests in flight, with `related` if that is its stream. `Err(())` when requests of
    /// several sessions are in flight.
    fn owner(
        routes: &Routes,
        related: Option<&Related>,
    ) -> Result<Option<(u64, Option<Related>)>, ()> {
        let mut owner = None;
        for (session, _) in routes.in_flight.values() {
            match owner {
                None => owner = Some(*session),
                Some(o) if o != *session => return Err(()),
                Some(_) => {}
            }
        }
        let Some(owner) = owner else { return Ok(None) };
        let stream = related.filter(|r| {
            routes
                .in_flight
                .values()
                .any(|(s, rel)| *s == owner && rel.as_ref().is_some_and(|x| x.same_channel(r)))
        });
        Ok(Some((owner, stream.cloned())))
    }

    fn deliver(
        &self,
        upstream: &Arc<Upstream>,
        handler: &Weak<dyn InboundHandler>,
        msg: Message,
        related: Option<&Related>,
    ) {
        if let Some(h) = handler.upgrade() {
            h.on_message(upstream, msg, related);
        }
    }

    /// Every session, or those `admit` lets through, gets a copy.
    fn fan_out(&self, upstream: &Arc<Upstream>, msg: Message, admit: impl Fn(&Member) -> bool) {
        let targets: Vec<Weak<dyn InboundHandler>> = self
            .routes()
            .sessions
            .values()
            .filter(|m| admit(m))
            .map(|m| m.handler.clone())
            .collect();
        for handler in targets {
            self.deliver(upstream, &handler, msg.clone(), None);
        }
    }

    fn on_request(&self, upstream: &Arc<Upstream>, msg: Message, related: Option<&Related>) {
        if msg.method() == methods::PING {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            self.tell_child(Message::result(id, json!({})));
            return;
        }
        let capability = match msg.method() {
            "sampling/createMessage" => Some("sampling"),
            "elicitation/create" => Some("elicitation"),
            "roots/list" => Some("roots"),
            _ => None,
        };
        let mut routes = self.routes();
        let target = match Self::owner(&routes, related) {
            Ok(Some(owner)) => owner,
            Ok(None) if msg.method() == "roots/list" => match routes.last_active {
                Some(s) => (s, None),
                None => {
                    drop(routes);
                    return self.refuse(&msg, "no client session is using this shared server");
                }
            },
            Ok(None) => {
                drop(routes);
                return self.refuse(
                    &msg,
                    "no client request is in flight on this shared server, so no client to ask",
                );
            }
            Err(()) => {
                drop(routes);
                return self.refuse(
                    &msg,
                    "requests of several client sessions are in flight on this shared server; \
                     which one asks cannot be told on stdio (use share = \"per-session\")",
                );
            }
        };
        let (session, stream) = target;
        let Some(member) = routes.sessions.get(&session) else {
            drop(routes);
            return self.refuse(&msg, "the client session has ended");
        };
        if let Some(cap) = capability
            && member.capabilities.get(cap).is_none()
        {
            drop(routes);
            return self.refuse(&msg, &format!("the client does not support {cap}"));
        }
        if routes.asked.len() >= MAX_ASKED {
            drop(routes);
            return self.refuse(&msg, "too many requests to clients waiting for an answer");
        }
        let handler = member.handler.clone();
        if let Some(id) = msg.id() {
            routes.asked.insert(IdKey::of(id), (session, id.clone()));
        }
        drop(routes);
        self.deliver(upstream, &handler, msg, stream.as_ref());
    }

    fn on_notification(
        &self,
        upstream: &Arc<Upstream>,
        mut msg: Message,
        related: Option<&Related>,
    ) {
        match msg.method() {
            methods::PROGRESS => {
                let token = msg
                    .params()
                    .and_then(|p| p.get("progressToken"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let routes = self.routes();
                let Some((session, original)) =
                    token.and_then(|t| routes.progress.get(&t).cloned())
                else {
                    // Late progress for a finished call: nobody to tell.
                    return;
                };
                let Some(handler) = routes.sessions.get(&session).map(|m| m.handler.clone()) else {
                    return;
                };
                // Only the caller's stream: `related` was found by the token, which is ours.
                let stream = related.filter(|r| {
                    routes.in_flight.values().any(|(s, rel)| {
                        *s == session && rel.as_ref().is_some_and(|x| x.same_channel(r))
                    })
                });
                let stream = stream.cloned();
                drop(routes);
                msg.params_mut().insert("progressToken".into(), original);
                self.deliver(upstream, &handler, msg, stream.as_ref());
            }
            methods::TOOLS_LIST_CHANGED
            | methods::PROMPTS_LIST_CHANGED
            | methods::RESOURCES_LIST_CHANGED => self.fan_out(upstream, msg, |_| true),
            methods::RESOURCES_UPDATED => {
                let uri = msg.param_str("uri").unwrap_or_default();
                let routes = self.routes();
                let targets: Vec<_> = routes
                    .subscriptions
                    .get(uri)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| routes.sessions.get(s).map(|m| m.handler.clone()))
                    .collect();
                drop(routes);
                for handler in targets {
                    self.deliver(upstream, &handler, msg.clone(), None);
                }
            }
            methods::MESSAGE => {
                let rank = msg
                    .params()
                    .and_then(|p| p.get("level"))
                    .and_then(Value::as_str)
                    .and_then(level_rank);
                let admits = move |m: &Member| match (m.level, rank) {
                    (Some(min), Some(r)) => r >= min,
                    // No level asked for, or a level the spec does not know: as the child sent it.
                    _ => true,
                };
                let routes = self.routes();
                if let Ok(Some((session, stream))) = Self::owner(&routes, related)
                    && let Some(member) = routes.sessions.get(&session)
                {
                    let handler = admits(member).then(|| member.handler.clone());
                    drop(routes);
                    if let Some(handler) = handler {
                        self.deliver(upstream, &handler, msg, stream.as_ref());
                    }
                    return;
                }
                drop(routes);
                self.fan_out(upstream, msg, admits);
            }
            methods::CANCELLED => {
                // The child withdrew one of its requests to a client.
                let id = msg.params().and_then(|p| p.get("requestId")).map(IdKey::of);
                let mut routes = self.routes();
                let Some((session, _)) = id.and_then(|id| routes.asked.remove(&id)) else {
                    return;
                };
                let handler = routes.sessions.get(&session).map(|m| m.handler.clone());
                drop(routes);
                if let Some(handler) = handler {
                    self.deliver(upstream, &handler, msg, None);
                }
            }
            _ => {
                let routes = self.routes();
                match Self::owner(&routes, related) {
                    Ok(Some((session, stream))) => {
                        let handler = routes.sessions.get(&session).map(|m| m.handler.clone());
                        drop(routes);
                        if let Some(handler) = handler {
                            self.deliver(upstream, &handler, msg, stream.as_ref());
                        }
                    }
                    _ => {
                        drop(routes);
                        self.fan_out(upstream, msg, |_| true);
                    }
                }
            }
        }
    }

    /// A session left: its subscriptions, its level and its unanswered questions go with it.
    fn detach(self: &Arc<Self>, key: u64) {
        let mut routes = self.routes();
        if routes.sessions.remove(&key).is_none() {
            return;
        }
        if routes.last_active == Some(key) {
            routes.last_active = None;
        }
        routes.in_flight.retain(|_, (s, _)| *s != key);
        routes.progress.retain(|_, (s, _)| *s != key);
        let mut unanswered = Vec::new();
        routes.asked.retain(|_, (s, id)| {
            let keep = *s != key;
            if !keep {
                unanswered.push(id.clone());
            }
            keep
        });
        let mut dropped = Vec::new();
        routes.subscriptions.retain(|uri, subscribers| {
            subscribers.remove(&key);
            if subscribers.is_empty() {
                dropped.push(uri.clone());
            }
            !subscribers.is_empty()
        });
        let level = routes.sessions.values().filter_map(|m| m.level).min();
        let relevel = level.filter(|l| Some(*l) != routes.child_level);
        if relevel.is_some() {
            routes.child_level = relevel;
        }
        let alive = self.link().is_some_and(StdioLink::is_alive);
        drop(routes);
        if !alive {
            return;
        }
        for id in unanswered {
            self.tell_child(Message::error(
                id,
                codes::INTERNAL_ERROR,
                "the client session ended before answering",
                None,
            ));
        }
        if dropped.is_empty() && relevel.is_none() {
            return;
        }
        // Tell the child what no session needs any more, off the session's own path.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hub = self.clone();
        runtime.spawn(async move {
            let _changing = hub.changes.lock().await;
            let timeout = Duration::from_secs(10);
            for uri in dropped {
                // A session may have subscribed again meanwhile.
                if hub.routes().subscriptions.contains_key(&uri) {
                    continue;
                }
                let msg = Message::request(
                    Value::Null,
                    methods::RESOURCES_UNSUBSCRIBE,
                    Some(json!({ "uri": uri })),
                );
                let _ = hub.ask_child(msg, timeout).await;
            }
            if let Some(level) = relevel.and_then(level_name) {
                let msg = Message::request(
                    Value::Null,
                    methods::LOGGING_SET_LEVEL,
                    Some(json!({ "level": level })),
                );
                let _ = hub.ask_child(msg, timeout).await;
            }
        });
    }
}

impl InboundHandler for Hub {
    fn on_message(&self, upstream: &Arc<Upstream>, msg: Message, related: Option<&Related>) {
        match msg.kind() {
            Kind::Response => {}
            Kind::Request => self.on_request(upstream, msg, related),
            Kind::Notification => self.on_notification(upstream, msg, related),
        }
    }
}

/// Severity rank of an MCP log level: `debug` 0 … `emergency` 7.
fn level_rank(level: &str) -> Option<u8> {
    LEVELS.iter().position(|l| *l == level).map(|r| r as u8)
}

fn level_name(rank: u8) -> Option<&'static str> {
    LEVELS.get(rank as usize).copied()
}

const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// One client session's link to a shared child.
pub struct SharedLink {
    hub: Arc<Hub>,
    key: u64,
}

impl Drop for SharedLink {
    fn drop(&mut self) {
        self.hub.detach(self.key);
    }
}

impl SharedLink {
    fn inner(&self) -> Result<&StdioLink, UpstreamError> {
        self.hub.link().ok_or_else(|| UpstreamError::Exited {
            upstream: self.hub.name.clone(),
        })
    }

    fn is_stateless(&self) -> bool {
        self.hub.link().is_some_and(|l| l.stateless.is_some())
    }

    /// What a 2026-07-28 child has no method for, answered by the gateway.
    fn answer_locally(&self, msg: &Message) -> Option<Message> {
        self.hub.link()?.stateless.as_ref()?.answer_locally(msg)
    }

    /// Whether `msg` changes state the child holds for all its sessions (handled by
    /// [`SharedLink::session_state`] instead of being forwarded as it is).
    fn is_session_state(&self, msg: &Message) -> bool {
        match msg.method() {
            methods::LOGGING_SET_LEVEL => true,
            methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => !self.is_stateless(),
            _ => false,
        }
    }

    /// `logging/setLevel`, `resources/subscribe`, `resources/unsubscribe` for this session:
    /// recorded here, and passed to the child only when they change what the child must do.
    async fn session_state(
        &self,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message, UpstreamError> {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let hub = &self.hub;
        let _changing = hub.changes.lock().await;
        match msg.method() {
            methods::LOGGING_SET_LEVEL => {
                let Some(rank) = msg.param_str("level").and_then(level_rank) else {
                    return Ok(Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        "\"level\" must be one of debug, info, notice, warning, error, critical, alert, emergency",
                        None,
                    ));
                };
                let tell = {
                    let mut routes = hub.routes();
                    if let Some(m) = routes.sessions.get_mut(&self.key) {
                        m.level = Some(rank);
                    }
                    let min = routes.sessions.values().filter_map(|m| m.level).min();
                    min.filter(|m| Some(*m) != routes.child_level)
                };
                let Some(level) = tell else {
                    return Ok(Message::result(id, json!({})));
                };
                if self.is_stateless() {
                    // Becomes the child-wide `_meta` log level.
                    let set = Message::request(
                        Value::Null,
                        methods::LOGGING_SET_LEVEL,
                        Some(json!({ "level": level_name(level) })),
                    );
                    self.answer_locally(&set);
                    hub.routes().child_level = Some(level);
                    return Ok(Message::result(id, json!({})));
                }
                let set = Message::request(
                    Value::Null,
                    methods::LOGGING_SET_LEVEL,
                    Some(json!({ "level": level_name(level) })),
                );
                let mut answer = hub.ask_child(set, timeout).await?;
                if !answer.is_error() {
                    hub.routes().child_level = Some(level);
                }
                answer.set_id(id);
                Ok(answer)
            }
            methods::RESOURCES_SUBSCRIBE => {
                let Some(uri) = msg.param_str("uri").map(str::to_string) else {
                    return Ok(Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        "missing \"uri\"",
                        None,
                    ));
                };
                {
                    let routes = hub.routes();
                    if routes
                        .subscriptions
                        .get(&uri)
                        .is_some_and(|s| s.contains(&self.key))
                    {
                        return Ok(Message::result(id, json!({})));
                    }
                    let held = routes
                        .sessions
                        .get(&self.key)
                        .map_or(0, |m| m.subscriptions);
                    if held >= MAX_SESSION_SUBSCRIPTIONS
                        || (!routes.subscriptions.contains_key(&uri)
                            && routes.subscriptions.len() >= MAX_SUBSCRIPTIONS)
                    {
                        return Ok(Message::error(
                            id,
                            codes::INVALID_REQUEST,
                            &format!(
                                "too many resource subscriptions on shared upstream '{}'",
                                hub.name
                            ),
                            None,
                        ));
                    }
                }
                let first = !hub.routes().subscriptions.contains_key(&uri);
                let mut answer = if first {
                    let mut answer = hub.ask_child(msg, timeout).await?;
                    if answer.is_error() {
                        answer.set_id(id);
                        return Ok(answer);
                    }
                    answer.set_id(id);
                    answer
                } else {
                    Message::result(id, json!({}))
                };
                let mut routes = hub.routes();
                if routes.sessions.contains_key(&self.key) {
                    routes
                        .subscriptions
                        .entry(uri)
                        .or_default()
                        .insert(self.key);
                    if let Some(m) = routes.sessions.get_mut(&self.key) {
                        m.subscriptions += 1;
                    }
                }
                drop(routes);
                // The result of the first subscriber's request is what every one gets.
                if let Some(r) = answer.result_mut()
                    && !r.is_object()
                {
                    *r = json!({});
                }
                Ok(answer)
            }
            _ => {
                // Unsubscribe.
                let Some(uri) = msg.param_str("uri").map(str::to_string) else {
                    return Ok(Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        "missing \"uri\"",
                        None,
                    ));
                };
                let last = {
                    let mut routes = hub.routes();
                    let held = routes
                        .subscriptions
                        .get_mut(&uri)
                        .is_some_and(|s| s.remove(&self.key));
                    if held && let Some(m) = routes.sessions.get_mut(&self.key) {
                        m.subscriptions = m.subscriptions.saturating_sub(1);
                    }
                    let empty = routes
                        .subscriptions
                        .get(&uri)
                        .is_some_and(BTreeSet::is_empty);
                    if empty {
                        routes.subscriptions.remove(&uri);
                    }
                    held && empty
                };
                if !last {
                    return Ok(Message::result(id, json!({})));
                }
                let mut answer = hub.ask_child(msg, timeout).await?;
                answer.set_id(id);
                Ok(answer)
            }
        }
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
    fn forward(&self, msg: Message) -> Result<(), UpstreamError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A session as the hub sees it: records what reaches it.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Message>>);

    impl InboundHandler for Recorder {
        fn on_message(&self, _: &Arc<Upstream>, msg: Message, _: Option<&Related>) {
            self.0.lock().unwrap().push(msg);
        }
    }

    impl Recorder {
        fn methods(&self) -> Vec<String> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|m| m.method().to_string())
                .collect()
        }
    }

    fn hub() -> (Arc<Upstream>, Arc<Hub>) {
        let config = toml::from_str("command = \"x\"\nshare = \"shared\"").unwrap();
        let upstream = Upstream::new("u", config).unwrap();
        let hub = Arc::new(Hub::new(&upstream));
        (upstream, hub)
    }

    fn member(hub: &Arc<Hub>, capabilities: Value) -> (Arc<Recorder>, SharedLink) {
        let recorder = Arc::new(Recorder::default());
        let weak = Arc::downgrade(&recorder) as Weak<dyn InboundHandler>;
        let hello = Hello {
            capabilities,
            client_info: json!({}),
        };
        let (link, _) = hub.attach(&hello, weak);
        (recorder, link)
    }

    fn in_flight(hub: &Hub, id: u64, session: &SharedLink) {
        hub.routes().in_flight.insert(id, (session.key, None));
    }

    #[test]
    fn list_changes_reach_everyone_and_updates_only_subscribers() {
        let (upstream, hub) = hub();
        let (a, la) = member(&hub, json!({}));
        let (b, _lb) = member(&hub, json!({}));
        hub.routes()
            .subscriptions
            .entry("file:///x".into())
            .or_default()
            .insert(la.key);
        hub.on_message(
            &upstream,
            Message::notification(methods::TOOLS_LIST_CHANGED, None),
            None,
        );
        hub.on_message(
            &upstream,
            Message::notification(
                methods::RESOURCES_UPDATED,
                Some(json!({ "uri": "file:///x" })),
            ),
            None,
        );
        assert_eq!(
            a.methods(),
            [methods::TOOLS_LIST_CHANGED, methods::RESOURCES_UPDATED]
        );
        assert_eq!(b.methods(), [methods::TOOLS_LIST_CHANGED]);
    }

    #[test]
    fn progress_goes_to_its_caller_with_the_callers_token() {
        let (upstream, hub) = hub();
        let (a, la) = member(&hub, json!({}));
        let (b, lb) = member(&hub, json!({}));
        in_flight(&hub, 1, &la);
        in_flight(&hub, 2, &lb);
        hub.routes()
            .progress
            .insert("pc-2".into(), (lb.key, json!(1)));
        let progress = json!({ "progressToken": "pc-2", "progress": 5 });
        hub.on_message(
            &upstream,
            Message::notification(methods::PROGRESS, Some(progress)),
            None,
        );
        assert!(a.methods().is_empty());
        let got = b.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].params().unwrap()["progressToken"], json!(1));
    }

    #[test]
    fn a_question_goes_to_the_one_session_in_flight_and_is_refused_when_several_are() {
        let (upstream, hub) = hub();
        let (a, la) = member(&hub, json!({ "sampling": {} }));
        let (b, lb) = member(&hub, json!({}));
        let sample = |id: u64| {
            Message::request(
                json!(id),
                "sampling/createMessage",
                Some(json!({ "messages": [] })),
            )
        };
        in_flight(&hub, 1, &la);
        hub.on_message(&upstream, sample(100), None);
        assert_eq!(a.methods(), ["sampling/createMessage"]);
        // Only a may answer it.
        assert_eq!(
            hub.routes()
                .asked
                .get(&IdKey::of(&json!(100)))
                .map(|(s, _)| *s),
            Some(la.key)
        );
        in_flight(&hub, 2, &lb);
        hub.on_message(&upstream, sample(101), None);
        assert_eq!(a.methods().len(), 1, "ambiguous: nobody is asked");
        assert!(b.methods().is_empty());
        // b alone, but its client cannot sample: refused.
        hub.routes().in_flight.remove(&1);
        hub.on_message(&upstream, sample(102), None);
        assert!(b.methods().is_empty());
    }

    #[test]
    fn log_lines_are_filtered_by_each_sessions_level() {
        let (upstream, hub) = hub();
        let (a, la) = member(&hub, json!({}));
        let (b, lb) = member(&hub, json!({}));
        let (c, _lc) = member(&hub, json!({}));
        hub.routes().sessions.get_mut(&la.key).unwrap().level = level_rank("error");
        hub.routes().sessions.get_mut(&lb.key).unwrap().level = level_rank("debug");
        let line = json!({ "level": "info", "data": "hello" });
        hub.on_message(
            &upstream,
            Message::notification(methods::MESSAGE, Some(line)),
            None,
        );
        assert!(a.methods().is_empty());
        assert_eq!(b.methods(), [methods::MESSAGE]);
        assert_eq!(c.methods(), [methods::MESSAGE], "no level set: as sent");
    }

    #[test]
    fn a_session_that_leaves_takes_its_routes_with_it() {
        let (_upstream, hub) = hub();
        let (_a, la) = member(&hub, json!({}));
        let (_b, lb) = member(&hub, json!({}));
        let key = la.key;
        in_flight(&hub, 1, &la);
        hub.routes()
            .subscriptions
            .entry("u:1".into())
            .or_default()
            .insert(key);
        hub.routes()
            .subscriptions
            .entry("u:2".into())
            .or_default()
            .extend([key, lb.key]);
        drop(la);
        let routes = hub.routes();
        assert_eq!(routes.sessions.len(), 1);
        assert!(routes.in_flight.is_empty());
        assert!(!routes.subscriptions.contains_key("u:1"));
        assert_eq!(routes.subscriptions["u:2"].len(), 1);
    }

    #[test]
    fn levels_rank_from_debug_to_emergency() {
        assert_eq!(level_rank("debug"), Some(0));
        assert_eq!(level_rank("warning"), Some(3));
        assert_eq!(level_rank("emergency"), Some(7));
        assert_eq!(level_rank("loud"), None);
        assert_eq!(level_name(1), Some("info"));
    }
}
