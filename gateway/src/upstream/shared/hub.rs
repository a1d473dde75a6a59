//! One running shared child ([`Hub`]): the sessions attached to it and the tables that
//! route what the child sends to the one session it belongs to (or to every session).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use super::MAX_ASKED;
use super::link::SharedLink;
use super::state::{level_name, level_rank};
use crate::mcp::{IdKey, Kind, Message, codes, methods};
use crate::upstream::stdio::StdioLink;
use crate::upstream::transport::Transport;
use crate::upstream::{Hello, InboundHandler, Related, Upstream, UpstreamError};

/// One running shared child and what routes its traffic to its sessions.
pub struct Hub {
    pub(super) name: Arc<str>,
    pub(super) link: OnceLock<StdioLink>,
    pub(super) init: OnceLock<Value>,
    pub(super) routes: Mutex<Routes>,
    /// Serializes subscription and log-level changes, which wait for the child's answer
    /// while the reference counts are in between.
    pub(super) changes: tokio::sync::Mutex<()>,
    pub(super) next_session: AtomicU64,
    pub(super) next_token: AtomicU64,
}

#[derive(Default)]
pub(super) struct Routes {
    pub(super) sessions: HashMap<u64, Member>,
    /// The session that sent the latest request (for `roots/list` outside any call).
    pub(super) last_active: Option<u64>,
    /// Requests in flight: upstream id → (session, its request's stream).
    pub(super) in_flight: HashMap<u64, (u64, Option<Related>)>,
    /// Progress tokens given to the child → (session, the client's own token).
    pub(super) progress: HashMap<String, (u64, Value)>,
    /// Server→client requests waiting for a client: the child's id → (session, that id).
    pub(super) asked: HashMap<IdKey, (u64, Value)>,
    /// Resource URI → the sessions subscribed to it.
    pub(super) subscriptions: HashMap<String, BTreeSet<u64>>,
    /// The level the child was last told (a rank, see [`level_rank`]).
    pub(super) child_level: Option<u8>,
}

pub(super) struct Member {
    pub(super) handler: Weak<dyn InboundHandler>,
    /// The client's own capabilities (its `initialize`).
    pub(super) capabilities: Value,
    /// The log level it asked for, as a rank.
    pub(super) level: Option<u8>,
    pub(super) subscriptions: usize,
}

impl Hub {
    pub(super) fn new(upstream: &Arc<Upstream>) -> Self {
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

    pub(super) fn link(&self) -> Option<&StdioLink> {
        self.link.get()
    }

    pub(super) fn routes(&self) -> MutexGuard<'_, Routes> {
        // The tables stay consistent even if a holder panicked.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn sessions(&self) -> usize {
        self.routes().sessions.len()
    }

    pub(super) fn attach(
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
    pub(super) fn tell_child(&self, msg: Message) {
        if let Some(link) = self.link()
            && let Err(e) = link.write(msg)
        {
            tracing::debug!(upstream = %self.name, error = %e, "could not write to the shared child");
        }
    }

    /// Answers a server→client request in the gateway's name: refused, with why.
    pub(super) fn refuse(&self, msg: &Message, why: &str) {
        tracing::debug!(upstream = %self.name, method = msg.method(), why, "server request to a shared child's clients refused");
        let id = msg.id().cloned().unwrap_or(Value::Null);
        self.tell_child(Message::error(id, codes::INTERNAL_ERROR, why, None));
    }

    /// A request to the child on the hub's own behalf (subscriptions, log level), waiting
    /// for its answer.
    pub(super) async fn ask_child(
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
    pub(super) fn owner(
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

    pub(super) fn deliver(
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
    pub(super) fn fan_out(
        &self,
        upstream: &Arc<Upstream>,
        msg: Message,
        admit: impl Fn(&Member) -> bool,
    ) {
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

    pub(super) fn on_request(
        &self,
        upstream: &Arc<Upstream>,
        msg: Message,
        related: Option<&Related>,
    ) {
        if msg.method() == methods::PING {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            self.tell_child(Message::result(id, json!({})));
            return;
        }
        let capability = methods::client_capability(msg.method());
        let mut routes = self.routes();
        let target = match Self::owner(&routes, related) {
            Ok(Some(owner)) => owner,
            Ok(None) if msg.method() == methods::ROOTS_LIST => match routes.last_active {
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

    pub(super) fn on_notification(
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
    pub(super) fn detach(self: &Arc<Self>, key: u64) {
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
