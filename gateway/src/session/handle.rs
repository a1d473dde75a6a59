//! What a session does with each client message, and with each message an upstream sends.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Route, Session};

/// Most `input_required` rounds one request may take before the gateway gives up.
const MAX_INPUT_ROUNDS: usize = 8;
use crate::catalog::{ListKind, Target, page};
use crate::mcp::{IdKey, Kind, Message, codes, methods};
use crate::upstream::{Fresh, InboundHandler, Link, Related, Upstream, UpstreamError};

/// Most pages fetched from one upstream for one list (guards against a cursor loop).
const MAX_UPSTREAM_PAGES: usize = 100;

impl Session {
    fn handler(&self) -> std::sync::Weak<dyn InboundHandler> {
        self.me.clone() as std::sync::Weak<dyn InboundHandler>
    }

    /// The link to upstream `idx`, connecting on first use. A new link after a restart drops
    /// the cached catalog of that upstream and gets the client's log level again.
    pub(super) async fn link(&self, idx: usize) -> Result<Arc<Link>, UpstreamError> {
        let (link, fresh) = self.slots[idx].get(&self.hello, self.handler()).await?;
        if fresh == Fresh::Restarted {
            self.catalog.invalidate_upstream(idx);
        }
        if fresh != Fresh::No {
            let level = self
                .log_level
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(level) = level
                && link.capabilities().get("logging").is_some()
            {
                let set = Message::request(
                    json!(0),
                    methods::LOGGING_SET_LEVEL,
                    Some(json!({ "level": level })),
                );
                let link = link.clone();
                tokio::spawn(async move {
                    let _ = link.request(set, None, &CancellationToken::new()).await;
                });
            }
        }
        Ok(link)
    }

    /// Handles one client request; the result is the response to send. Related messages
    /// (progress, logs, server→client requests) are sent to `out` meanwhile.
    ///
    /// `route` is a routing policy's choice of upstream and/or target name; it overrides
    /// what the catalog would pick.
    pub async fn handle_request(
        &self,
        msg: Message,
        out: Related,
        route: Option<&Route>,
    ) -> Message {
        self.touch();
        let id = msg.id().cloned().unwrap_or(Value::Null);
        if let Some(r) = route {
            return self.routed(msg, out, r).await;
        }
        match msg.method() {
            methods::PING => Message::result(id, json!({})),
            methods::INITIALIZE => Message::error(
                id,
                codes::INVALID_REQUEST,
                "session is already initialized",
                None,
            ),
            methods::LOGGING_SET_LEVEL => self.set_level(msg).await,
            methods::TOOLS_CALL => self.by_name(ListKind::Tools, msg, out).await,
            methods::PROMPTS_GET => self.by_name(ListKind::Prompts, msg, out).await,
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => self.by_uri(msg, out).await,
            methods::COMPLETION_COMPLETE => self.complete(msg, out).await,
            method => match ListKind::from_method(method) {
                Some(kind) => self.list(kind, &msg).await,
                None if self.slots.len() == 1 => self.forward(0, msg, out).await,
                None => Message::error(
                    id,
                    codes::METHOD_NOT_FOUND,
                    &format!("Method not found: {method}"),
                    None,
                ),
            },
        }
    }

    /// Sends a copy of a request to another upstream — a route policy's `shadow`, for trying
    /// a new server on real traffic — and discards the answer. It runs on its own: the
    /// client's answer never waits for it, and nothing it sends reaches the client.
    pub fn shadow(self: &Arc<Self>, msg: &Message, upstream: &str, target: Option<&str>) {
        let mut copy = msg.clone();
        let n = self.next_server_request.fetch_add(1, Ordering::Relaxed) + 1;
        copy.set_id(Value::String(format!("shadow-{n}")));
        let route = Route {
            upstream: Some(upstream.to_string()),
            target: target.map(str::to_string),
        };
        let session = self.clone();
        tokio::spawn(async move {
            // Related messages of the copy (progress, logs, questions) land here and are
            // dropped with it.
            let (related, _dropped) = tokio::sync::mpsc::unbounded_channel();
            let answer = session.handle_request(copy, related, Some(&route)).await;
            tracing::debug!(
                upstream = route.upstream.as_deref().unwrap_or_default(),
                failed = answer.is_error(),
                "shadow copy answered (discarded)"
            );
        });
    }

    /// A request whose destination a routing policy chose. The name or URI is resolved as
    /// usual, then replaced by what the policy said.
    async fn routed(&self, mut msg: Message, out: Related, route: &Route) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let natural = self.resolve(&msg).await;
        let upstream = match &route.upstream {
            Some(name) => match self.slots.iter().position(|s| &*s.upstream.name == name) {
                Some(idx) => Some(idx),
                None => {
                    return Message::error(
                        id,
                        codes::INTERNAL_ERROR,
                        &format!("policy routed to unknown upstream '{name}'"),
                        None,
                    );
                }
            },
            None => natural.as_ref().map(|t| t.upstream),
        };
        let Some(upstream) = upstream else {
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                "no upstream for this request",
                None,
            );
        };
        let key = match msg.method() {
            methods::TOOLS_CALL | methods::PROMPTS_GET => Some("name"),
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => Some("uri"),
            _ => None,
        };
        if let Some(key) = key {
            let name = route.target.clone().or(natural.map(|t| t.name));
            match name {
                Some(n) => {
                    msg.params_mut().insert(key.into(), Value::String(n));
                }
                None => {
                    return Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        &format!("unknown {key}"),
                        None,
                    );
                }
            }
        }
        self.forward(upstream, msg, out).await
    }

    /// Where the catalog would send a request: (upstream index, its own name for the target).
    pub(crate) async fn resolve(&self, msg: &Message) -> Option<Target> {
        match msg.method() {
            methods::TOOLS_CALL => {
                self.route_name(ListKind::Tools, msg.param_str("name")?)
                    .await
            }
            methods::PROMPTS_GET => {
                self.route_name(ListKind::Prompts, msg.param_str("name")?)
                    .await
            }
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => self.route_uri(msg.param_str("uri")?).await,
            _ => None,
        }
    }

    /// [`Session::resolve`] as (upstream name, target name at that upstream).
    pub async fn resolve_named(&self, msg: &Message) -> Option<(String, String)> {
        self.resolve(msg)
            .await
            .map(|t| (self.slots[t.upstream].upstream.name.to_string(), t.name))
    }

    /// Handles a client notification.
    pub async fn handle_notification(&self, msg: Message) {
        self.touch();
        match msg.method() {
            methods::INITIALIZED => {}
            methods::CANCELLED => {
                let id = msg.params().and_then(|p| p.get("requestId"));
                if let Some(token) = id.and_then(|id| self.inflight.get(&IdKey::of(id))) {
                    token.cancel();
                }
            }
            // Roots changes, client progress and anything unknown: every upstream this client
            // is talking to may care.
            _ => {
                for slot in &self.slots {
                    if let Some(link) = slot.current().await
                        && let Err(e) = link.send(msg.clone()).await
                    {
                        tracing::debug!(upstream = %link.upstream.name, error = %e, "notification not delivered");
                    }
                }
            }
        }
    }

    /// Handles the client's answer to a server→client request.
    pub async fn handle_response(&self, mut msg: Message) {
        self.touch();
        let key = msg
            .id()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some((_, waiter)) = self.local_requests.remove(&key) {
            let _ = waiter.send(msg);
            return;
        }
        let Some((_, (idx, upstream_id))) = self.server_requests.remove(&key) else {
            tracing::debug!(session = %self.id, id = %key, "response to no pending server request");
            return;
        };
        msg.set_id(upstream_id);
        match self.slots[idx].current().await {
            Some(link) => {
                if let Err(e) = link.send(msg).await {
                    tracing::warn!(upstream = %link.upstream.name, error = %e, "could not relay a client response");
                }
            }
            None => {
                tracing::debug!(upstream = %self.slots[idx].upstream.name, "upstream gone before the client answered")
            }
        }
    }

    /// Sends a request to upstream `idx` and returns its response (with the client's id).
    ///
    /// A 2026-07-28 upstream asks its questions (sampling, elicitation, roots) as an
    /// `input_required` result. A session-era client gets them as server→client requests on
    /// the request's stream, and the request is retried upstream with the answers; a
    /// 2026-07-28 client gets the result as it is and retries itself.
    async fn forward(&self, idx: usize, mut msg: Message, out: Related) -> Message {
        crate::observe::record_upstream(&self.slots[idx].upstream.name);
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let link = match self.link(idx).await {
            Ok(l) => l,
            Err(e) => return e.to_response(id),
        };
        let bridge = link.is_stateless() && self.version != crate::mcp::version::MODERN;
        let key = IdKey::of(&id);
        let token = CancellationToken::new();
        self.inflight.insert(key.clone(), token.clone());
        let mut rounds = 0;
        let result = loop {
            let retry = bridge.then(|| msg.clone());
            let response = match link.request(msg, Some(out.clone()), &token).await {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let asks = response
                .result_value()
                .filter(|r| r["resultType"] == "input_required")
                .cloned();
            let (Some(asks), Some(mut again)) = (asks, retry) else {
                break Ok(response);
            };
            rounds += 1;
            if rounds > MAX_INPUT_ROUNDS {
                break Ok(Message::error(
                    id.clone(),
                    codes::INTERNAL_ERROR,
                    &format!("upstream asked for input {MAX_INPUT_ROUNDS} times without finishing"),
                    None,
                ));
            }
            match self.ask_client(&asks, &out, link.upstream.timeout()).await {
                Ok(answers) => {
                    let params = again.params_mut();
                    params.insert("inputResponses".into(), Value::Object(answers));
                    match asks.get("requestState") {
                        Some(state) => params.insert("requestState".into(), state.clone()),
                        None => params.remove("requestState"),
                    };
                    msg = again;
                }
                Err(why) => {
                    break Ok(Message::error(
                        id.clone(),
                        codes::INTERNAL_ERROR,
                        &why,
                        None,
                    ));
                }
            }
        };
        self.inflight.remove(&key);
        result.unwrap_or_else(|e| {
            if !matches!(e, UpstreamError::Cancelled) {
                tracing::warn!(session = %self.id, error = %e, "upstream request failed");
            }
            e.to_response(id)
        })
    }

    /// Asks a session-era client an `input_required` result's questions as server→client
    /// requests on the request's stream; gives the answers keyed as the questions were.
    async fn ask_client(
        &self,
        asks: &Value,
        out: &Related,
        timeout: std::time::Duration,
    ) -> Result<serde_json::Map<String, Value>, String> {
        let mut waiting = Vec::new();
        for (key, request) in asks["inputRequests"].as_object().into_iter().flatten() {
            let n = self.next_server_request.fetch_add(1, Ordering::Relaxed) + 1;
            let gateway_id = format!("s{n}");
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.local_requests.insert(gateway_id.clone(), tx);
            let method = request["method"].as_str().unwrap_or_default();
            let question = Message::request(
                Value::String(gateway_id.clone()),
                method,
                request.get("params").cloned(),
            );
            if out.send(question).is_err() {
                self.local_requests.remove(&gateway_id);
                return Err("the client went away before answering the upstream".into());
            }
            waiting.push((key.clone(), gateway_id, rx));
        }
        let mut answers = serde_json::Map::new();
        for (key, gateway_id, rx) in waiting {
            let answer = tokio::time::timeout(timeout, rx).await;
            self.local_requests.remove(&gateway_id);
            match answer {
                Ok(Ok(m)) => match m.result_value() {
                    Some(result) => {
                        answers.insert(key, result.clone());
                    }
                    None => {
                        return Err(format!(
                            "the client refused the upstream's question: {}",
                            m.error_value().cloned().unwrap_or_default()
                        ));
                    }
                },
                _ => return Err("the client did not answer the upstream's question".into()),
            }
        }
        Ok(answers)
    }

    async fn by_name(&self, kind: ListKind, mut msg: Message, out: Related) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let Some(name) = msg.param_str("name").map(str::to_string) else {
            return Message::error(id, codes::INVALID_PARAMS, "missing \"name\"", None);
        };
        let Some(target) = self.route_name(kind, &name).await else {
            let what = if kind == ListKind::Tools {
                "tool"
            } else {
                "prompt"
            };
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                &format!("Unknown {what}: {name}"),
                None,
            );
        };
        msg.params_mut()
            .insert("name".into(), Value::String(target.name));
        self.forward(target.upstream, msg, out).await
    }

    async fn by_uri(&self, mut msg: Message, out: Related) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let Some(uri) = msg.param_str("uri").map(str::to_string) else {
            return Message::error(id, codes::INVALID_PARAMS, "missing \"uri\"", None);
        };
        let Some(target) = self.route_uri(&uri).await else {
            return Message::error(
                id,
                codes::RESOURCE_NOT_FOUND,
                &format!("Resource not found: {uri}"),
                Some(json!({ "uri": uri })),
            );
        };
        let real = target.name.clone();
        msg.params_mut()
            .insert("uri".into(), Value::String(target.name));
        let read = msg.method() == methods::RESOURCES_READ;
        let mut response = self.forward(target.upstream, msg, out).await;
        if read
            && let Some(contents) = response
                .result_mut()
                .and_then(|r| r.get_mut("contents"))
                .and_then(Value::as_array_mut)
        {
            for c in contents {
                if let Some(u) = c.get("uri").and_then(Value::as_str) {
                    let exposed = if u == real {
                        uri.clone()
                    } else {
                        self.catalog.expose_uri(target.upstream, u)
                    };
                    c["uri"] = Value::String(exposed);
                }
            }
        }
        response
    }

    async fn complete(&self, mut msg: Message, out: Related) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let reference = msg
            .params()
            .and_then(|p| p.get("ref"))
            .cloned()
            .unwrap_or_default();
        let (key, target) = match reference["type"].as_str() {
            Some("ref/prompt") => {
                let name = reference["name"].as_str().unwrap_or_default();
                ("name", self.route_name(ListKind::Prompts, name).await)
            }
            Some("ref/resource") => {
                let uri = reference["uri"].as_str().unwrap_or_default();
                ("uri", self.route_template(uri).await)
            }
            _ => {
                return Message::error(
                    id,
                    codes::INVALID_PARAMS,
                    "unknown completion reference",
                    None,
                );
            }
        };
        let Some(target) = target else {
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                "unknown completion reference",
                None,
            );
        };
        if let Some(r) = msg.params_mut().get_mut("ref") {
            r[key] = Value::String(target.name);
        }
        self.forward(target.upstream, msg, out).await
    }

    async fn set_level(&self, msg: Message) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let Some(level) = msg.params().and_then(|p| p.get("level")).cloned() else {
            return Message::error(id, codes::INVALID_PARAMS, "missing \"level\"", None);
        };
        *self.log_level.lock().unwrap_or_else(|p| p.into_inner()) = Some(level);
        let sends = (0..self.slots.len()).map(|idx| {
            let msg = msg.clone();
            async move {
                let Some(link) = self.slots[idx].current().await else { return };
                if link.capabilities().get("logging").is_some()
                    && let Err(e) = link.request(msg, None, &CancellationToken::new()).await
                {
                    tracing::warn!(upstream = %link.upstream.name, error = %e, "logging/setLevel failed");
                }
            }
        });
        join_all(sends).await;
        Message::result(id, json!({}))
    }

    /// A merged list page; upstreams that fail or are late are left out and logged
    /// (`lists.rs`).
    async fn list(&self, kind: ListKind, msg: &Message) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let merged = self.merged(kind).await;
        match page(&merged.items, msg.param_str("cursor"), self.page_size) {
            Ok((items, next)) => {
                let mut result = json!({ kind.items_key(): items });
                if let Some(next) = next {
                    result["nextCursor"] = Value::String(next);
                }
                Message::result(id, result)
            }
            Err(_) => Message::error(id, codes::INVALID_PARAMS, "invalid cursor", None),
        }
    }

    /// The definition of the tool clients know as `name`, from the merged catalog.
    pub async fn tool(&self, name: &str) -> Option<Value> {
        self.merged(ListKind::Tools)
            .await
            .items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    }

    async fn merged(&self, kind: ListKind) -> Arc<crate::catalog::Merged> {
        self.gather(kind).await
    }

    /// Every page of one upstream's list.
    pub(super) async fn fetch_list(
        &self,
        idx: usize,
        kind: ListKind,
    ) -> Result<Vec<Value>, UpstreamError> {
        let link = self.link(idx).await?;
        if link.capabilities().get(kind.capability()).is_none() {
            return Ok(Vec::new());
        }
        let mut items = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let params = cursor.take().map(|c| json!({ "cursor": c }));
            let request = Message::request(json!(0), kind.method(), params);
            let mut response = link
                .request(request, None, &CancellationToken::new())
                .await?;
            if let Some(err) = response.error_value() {
                if err["code"] == codes::METHOD_NOT_FOUND {
                    return Ok(items); // e.g. resources without templates
                }
                return Err(UpstreamError::Protocol {
                    upstream: link.upstream.name.clone(),
                    detail: format!("{} failed: {err}", kind.method()),
                });
            }
            let mut result = response.take_result().unwrap_or_default();
            if let Some(Value::Array(page)) = result.get_mut(kind.items_key()).map(Value::take) {
                items.extend(page);
            }
            match result.get("nextCursor") {
                Some(c @ Value::String(_)) => cursor = Some(c.clone()),
                _ => return Ok(items),
            }
        }
        Ok(items)
    }

    async fn route_name(&self, kind: ListKind, exposed: &str) -> Option<Target> {
        let names = &self.catalog.names;
        let split = || {
            names.split(exposed).map(|(upstream, name)| Target {
                upstream,
                name: name.into(),
            })
        };
        if names.mode == crate::config::PrefixMode::Always {
            return split();
        }
        self.merged(kind).await.route(exposed).or_else(split)
    }

    async fn route_uri(&self, uri: &str) -> Option<Target> {
        if let Some((upstream, name)) = self.catalog.names.split_uri(uri) {
            return Some(Target {
                upstream,
                name: name.into(),
            });
        }
        let resources = self.merged(ListKind::Resources).await;
        if let Some(t) = resources.route(uri) {
            return Some(t);
        }
        if let Some(upstream) = resources.sole_owner(uri) {
            return Some(Target {
                upstream,
                name: uri.into(),
            });
        }
        if let Some(t) = self.merged(ListKind::Templates).await.template_owner(uri) {
            return Some(t);
        }
        (self.slots.len() == 1).then(|| Target {
            upstream: 0,
            name: uri.into(),
        })
    }

    async fn route_template(&self, uri: &str) -> Option<Target> {
        if let Some((upstream, name)) = self.catalog.names.split_uri(uri) {
            return Some(Target {
                upstream,
                name: name.into(),
            });
        }
        let templates = self.merged(ListKind::Templates).await;
        templates.route(uri).or_else(|| {
            templates.sole_owner(uri).map(|upstream| Target {
                upstream,
                name: uri.into(),
            })
        })
    }

    fn upstream_index(&self, upstream: &Arc<Upstream>) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| Arc::ptr_eq(&s.upstream, upstream))
    }

    /// Sends a message to the client: on the related request's stream if it is still open,
    /// otherwise on the standalone (GET) stream.
    fn to_client(&self, upstream: &Upstream, msg: Message, related: Option<&Related>) {
        let msg = match related {
            Some(r) => match r.send(msg) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => msg,
        };
        self.send_unrelated(&upstream.name, msg, false);
    }
}

impl InboundHandler for Session {
    fn on_message(&self, upstream: &Arc<Upstream>, mut msg: Message, related: Option<&Related>) {
        let Some(idx) = self.upstream_index(upstream) else {
            return;
        };
        match msg.kind() {
            Kind::Response => {}
            Kind::Request => {
                let n = self.next_server_request.fetch_add(1, Ordering::Relaxed) + 1;
                let gateway_id = format!("s{n}");
                let upstream_id = msg.id().cloned().unwrap_or(Value::Null);
                self.server_requests
                    .insert(gateway_id.clone(), (idx, upstream_id));
                msg.set_id(Value::String(gateway_id));
                self.to_client(upstream, msg, related);
            }
            Kind::Notification => {
                let method = msg.method().to_string();
                let changed = ListKind::from_list_changed(&method);
                if !changed.is_empty() {
                    for kind in changed {
                        self.catalog.invalidate(*kind, idx);
                    }
                    self.send_unrelated(&upstream.name, msg, true);
                    return;
                }
                match method.as_str() {
                    methods::RESOURCES_UPDATED => {
                        if let Some(uri) = msg.param_str("uri").map(str::to_string) {
                            let exposed = self.catalog.expose_uri(idx, &uri);
                            msg.params_mut()
                                .insert("uri".into(), Value::String(exposed));
                        }
                        self.send_unrelated(&upstream.name, msg, true);
                    }
                    methods::CANCELLED => {
                        // The upstream withdrew one of its own requests to the client.
                        let upstream_id = msg.params().and_then(|p| p.get("requestId")).cloned();
                        let found = self
                            .server_requests
                            .iter()
                            .find(|e| {
                                e.value().0 == idx && Some(&e.value().1) == upstream_id.as_ref()
                            })
                            .map(|e| e.key().clone());
                        if let Some(gateway_id) = found {
                            self.server_requests.remove(&gateway_id);
                            msg.params_mut()
                                .insert("requestId".into(), Value::String(gateway_id));
                            self.to_client(upstream, msg, related);
                        }
                    }
                    _ => self.to_client(upstream, msg, related),
                }
            }
        }
    }
}

impl Session {
    /// Names (tools or prompts) that more than one upstream exposes, with their upstreams.
    pub async fn collisions(&self, kind: ListKind) -> Vec<(String, Vec<usize>)> {
        self.merged(kind).await.collisions()
    }
}
