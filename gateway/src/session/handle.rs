//! What a session does with each client message, and with each message an upstream sends.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Resolved, Route, Session};
use crate::catalog::{Dispatch, Forward};
use crate::mcp::{IdKey, Kind, Message, codes, methods};
use crate::upstream::{InboundHandler, Related, Upstream, UpstreamError};

impl Session {
    /// Handles one client request; the result is the response to send. Related messages
    /// (progress, logs, server→client requests) are sent to `out` meanwhile.
    ///
    /// `route` is a routing policy's choice of upstream and/or target name; it overrides
    /// what the catalog would pick. `resolved` is where the catalog sent the request when
    /// the pipeline asked before the policy chain ran ([`Session::resolve`]): reused as long
    /// as the chain left the name or URI alone, so a call is resolved once. Where it goes is
    /// the router's call (`catalog/router.rs`); the session answers what concerns only it
    /// and forwards.
    pub async fn handle_request(
        &self,
        msg: Message,
        out: Related,
        route: Option<&Route>,
        resolved: Option<&Resolved>,
    ) -> Message {
        self.touch();
        let id = msg.id().cloned().unwrap_or(Value::Null);
        // A task lives where it was created: its id says where, whatever a route says.
        if super::tasks::addresses_task(msg.method()) {
            return self.task_request(msg, out).await;
        }
        if msg.method() == methods::TASKS_LIST {
            return self.task_list(&msg).await;
        }
        if route.is_none() {
            match msg.method() {
                methods::PING => return Message::result(id, json!({})),
                methods::INITIALIZE => {
                    return Message::error(
                        id,
                        codes::INVALID_REQUEST,
                        "session is already initialized",
                        None,
                    );
                }
                methods::LOGGING_SET_LEVEL => return self.set_level(msg).await,
                _ => {}
            }
        }
        match self.router.dispatch(self, msg, route, resolved).await {
            Dispatch::Answer(answer) => answer,
            Dispatch::Forward(Forward {
                upstream,
                msg,
                back,
            }) => {
                let mut answer = self.forward(upstream, msg, out).await;
                self.router.restore(back, upstream, &mut answer);
                answer
            }
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
            let answer = session
                .handle_request(copy, related, Some(&route), None)
                .await;
            tracing::debug!(
                upstream = route.upstream.as_deref().unwrap_or_default(),
                failed = answer.is_error(),
                "shadow copy answered (discarded)"
            );
        });
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
            // In a cluster the id names the replica that asked; the answer goes there.
            if let Some(bus) = &self.bus
                && let Some(owner) = bus.asker(&key)
            {
                bus.publish_answer(owner, &self.id, msg);
                return;
            }
            tracing::debug!(session = %self.tag, id = %key, "response to no pending server request");
            return;
        };
        msg.set_id(upstream_id);
        self.reveal_task_refs(idx, &mut msg);
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
    pub(super) async fn forward(&self, idx: usize, mut msg: Message, out: Related) -> Message {
        crate::observe::record_upstream(&self.slots[idx].upstream.name);
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let method = msg.method().to_string();
        let link = match self.link(idx).await {
            Ok(l) => l,
            Err(e) => return e.to_response(id),
        };
        Self::drop_unsupported_task(link.capabilities(), &mut msg);
        let bridge = link.is_stateless() && self.version != crate::mcp::version::STATELESS;
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
            let (Some(asks), Some(again)) = (asks, retry) else {
                break Ok(response);
            };
            rounds += 1;
            let timeout = link.upstream.timeout();
            match self
                .answer_input(&id, rounds, &asks, again, &out, timeout)
                .await
            {
                Ok(retry) => msg = retry,
                Err(answer) => break Ok(answer),
            }
        };
        self.inflight.remove(&key);
        let mut response = result.unwrap_or_else(|e| {
            if !matches!(e, UpstreamError::Cancelled) {
                tracing::warn!(session = %self.tag, error = %e, "upstream request failed");
            }
            e.to_response(id)
        });
        self.expose_tasks(idx, &method, &mut response);
        response
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
    fn subject(&self) -> Option<Arc<crate::upstream::Subject>> {
        self.subject.get()
    }

    fn on_message(&self, upstream: &Arc<Upstream>, mut msg: Message, related: Option<&Related>) {
        let Some(idx) = self.upstream_index(upstream) else {
            return;
        };
        if msg.kind() != Kind::Response && !self.expose_task_refs(idx, &mut msg) {
            tracing::warn!(upstream = %upstream.name, method = %crate::observe::clip(msg.method()), "message with a task id too long to carry; dropped");
            return;
        }
        match msg.kind() {
            Kind::Response => {}
            Kind::Request => {
                let gateway_id = self.server_request_id();
                let upstream_id = msg.id().cloned().unwrap_or(Value::Null);
                self.server_requests
                    .insert(gateway_id.clone(), (idx, upstream_id));
                msg.set_id(Value::String(gateway_id));
                self.to_client(upstream, msg, related);
            }
            Kind::Notification => {
                let method = msg.method().to_string();
                if self.router.upstream_changed(idx, &method) {
                    self.send_unrelated(&upstream.name, msg, true);
                    return;
                }
                match method.as_str() {
                    methods::RESOURCES_UPDATED => {
                        if let Some(uri) = msg.param_str("uri").map(str::to_string) {
                            let exposed = self.router.catalog().expose_uri(idx, &uri);
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
