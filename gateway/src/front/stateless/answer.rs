//! Turning what the session sends about one 2026-07-28 request into its HTTP answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{CACHEABLE, NAMED, Shape, frame};
use crate::front::Front;
use crate::front::pipeline::{Admitted, server_info};
use crate::front::response::{self, Body};
use crate::mcp::methods::{self, meta};
use crate::mcp::{Kind, Message, codes};
use crate::policy::Chain;
use crate::session::{Session, stream};

impl Front {
    /// Sends the request into the caller's session under an id of the gateway's own (two
    /// clients of one caller may both use id 1) and answers with what comes back.
    pub(super) async fn start(
        self: &Arc<Self>,
        session: Arc<Session>,
        mut admitted: Admitted,
        chain: Arc<Chain>,
        shape: Shape,
    ) -> Response<Body> {
        let n = self.parked.next_id.fetch_add(1, Ordering::Relaxed);
        let internal_id = Value::String(format!("m{n}"));
        admitted.msg.set_id(internal_id.clone());
        // The same request task as the session era (routing, shadow, response phase, audit).
        let rx = self.spawn_request(session.clone(), admitted, chain, shape.started);
        self.answer(session, rx, internal_id, shape).await
    }

    /// Turns what the session sends about one request into the HTTP answer: JSON when the
    /// final response comes first, an SSE stream when related notifications come before
    /// it, and an `input_required` result when the upstream asks the client something.
    pub(super) async fn answer(
        self: &Arc<Self>,
        session: Arc<Session>,
        mut rx: mpsc::UnboundedReceiver<Message>,
        internal_id: Value,
        shape: Shape,
    ) -> Response<Body> {
        let mut cancel = CancelOnDrop {
            session: session.clone(),
            id: Some(internal_id.clone()),
        };
        // Until the first message worth sending, the answer can still be plain JSON.
        let first = loop {
            match rx.recv().await {
                None => {
                    cancel.disarm();
                    return response::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        codes::INTERNAL_ERROR,
                        "request handler failed",
                    );
                }
                Some(m) => match self.classify(&session, m, &shape).await {
                    Next::Skip => continue,
                    next => break next,
                },
            }
        };
        let first = match first {
            Next::Related(m) => m,
            Next::Final(m) => {
                cancel.disarm();
                // An upstream's own MissingRequiredClientCapability is a 400 too.
                let code = m
                    .error_value()
                    .and_then(|e| e.get("code"))
                    .and_then(Value::as_i64);
                let status = if code == Some(codes::MISSING_REQUIRED_CLIENT_CAPABILITY) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                return response::json(status, &m);
            }
            Next::Ask(requests) => {
                cancel.disarm();
                let m = self.park(session, rx, internal_id, requests, &shape);
                return response::json(StatusCode::OK, &m);
            }
            // The call is cancelled when `cancel` drops.
            Next::Refuse(m) => return response::json(StatusCode::BAD_REQUEST, &m),
            // The loop above never stops on a skip.
            Next::Skip => return response::empty(StatusCode::ACCEPTED),
        };
        let (frames_tx, frames) =
            stream::channel(self.sessions.bounds().stream_buffer, session.tag.clone());
        let _ = frames_tx.send(frame(&first));
        let front = self.clone();
        self.tasks.spawn(async move {
            while let Some(m) = rx.recv().await {
                let out = match front.classify(&session, m, &shape).await {
                    Next::Skip => continue,
                    Next::Related(m) => m,
                    Next::Refuse(m) => {
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                    Next::Final(m) => {
                        cancel.disarm();
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                    Next::Ask(requests) => {
                        cancel.disarm();
                        let m = front.park(session, rx, internal_id, requests, &shape);
                        let _ = frames_tx.send(frame(&m));
                        return;
                    }
                };
                if frames_tx.send(frame(&out)).is_err() {
                    // The client closed the stream: that cancels the request (CancelOnDrop).
                    return;
                }
            }
        });
        response::sse(frames)
    }

    /// What to do with one message the session sent about a stateless request.
    pub(super) async fn classify(&self, session: &Session, mut m: Message, shape: &Shape) -> Next {
        match m.kind() {
            Kind::Response => Next::Final(finish(m, shape)),
            Kind::Notification => {
                if m.method() == methods::MESSAGE && !shape.wants_logs {
                    // 2026-07-28: no log messages for a request that did not ask for them.
                    return Next::Skip;
                }
                Next::Related(m)
            }
            Kind::Request => {
                let gateway_id = m.id().cloned().unwrap_or(Value::Null);
                let needed = methods::client_capability(m.method());
                let capable = needed.is_some_and(|c| shape.capabilities.get(c).is_some());
                if !NAMED.contains(&shape.method.as_str()) || !capable {
                    // The client cannot take this input request: the upstream gets an error.
                    let why = if capable {
                        format!("{} cannot ask for input", shape.method)
                    } else {
                        format!("the client does not support {}", m.method())
                    };
                    session
                        .handle_response(Message::error(
                            gateway_id,
                            codes::METHOD_NOT_FOUND,
                            &why,
                            None,
                        ))
                        .await;
                    if let Some(cap) = needed.filter(|_| !capable) {
                        // 2026-07-28: the client hears which capability it lacks.
                        return Next::Refuse(Message::error(
                            shape.client_id.clone(),
                            codes::MISSING_REQUIRED_CLIENT_CAPABILITY,
                            &format!("This request needs the client capability '{cap}'"),
                            Some(json!({ "requiredCapabilities": { cap: {} } })),
                        ));
                    }
                    return Next::Skip;
                }
                let key = gateway_id.as_str().unwrap_or_default().to_string();
                let params = m.params_mut().clone();
                Next::Ask(vec![(
                    key,
                    gateway_id,
                    json!({ "method": m.method(), "params": params }),
                )])
            }
        }
    }
}

/// One step of a stateless request's answer.
pub(super) enum Next {
    /// Nothing for the client.
    Skip,
    /// A notification about the request (progress, a log message).
    Related(Message),
    /// The final response, shaped for 2026-07-28.
    Final(Message),
    /// The upstream asks the client: `(input key, gateway id, request)`.
    Ask(Vec<(String, Value, Value)>),
    /// The request cannot be served to this client (400): the call is cancelled.
    Refuse(Message),
}

/// Shapes a final response for a 2026-07-28 client: its own id, `resultType`, caching
/// hints on cacheable results, the gateway's identity, and the 2026 error code for a
/// resource that does not exist.
pub(super) fn finish(mut m: Message, shape: &Shape) -> Message {
    m.set_id(shape.client_id.clone());
    if let Some(r) = m.result_mut().and_then(Value::as_object_mut) {
        r.entry("resultType")
            .or_insert_with(|| Value::String("complete".into()));
        if CACHEABLE.contains(&shape.method.as_str()) {
            // Lists are merged from upstreams that may change them at any time (the gateway
            // re-fetches on their list_changed), so clients should not assume freshness;
            // a listen stream tells them when to re-fetch.
            r.entry("ttlMs").or_insert(json!(0));
            // With policies in the chain a list (or a read) may be filtered per caller.
            let scope = if shape.private { "private" } else { "public" };
            r.insert("cacheScope".into(), json!(scope));
        }
        let meta = r
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(meta::SERVER_INFO.into(), server_info());
        }
    } else if shape.method == methods::RESOURCES_READ
        && m.error_value()
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
            == Some(codes::RESOURCE_NOT_FOUND)
        && let Some(e) = m.error_mut()
    {
        e["code"] = json!(codes::INVALID_PARAMS);
    }
    m
}

pub(super) async fn cancel(session: &Session, id: Value) {
    session
        .handle_notification(Message::notification(
            methods::CANCELLED,
            Some(json!({ "requestId": id, "reason": "the client closed the stream" })),
        ))
        .await;
}

/// Cancels a request whose client went away before its answer (the HTTP response future
/// or the SSE stream was dropped) — closing the stream is cancellation in 2026-07-28.
struct CancelOnDrop {
    session: Arc<Session>,
    id: Option<Value>,
}

impl CancelOnDrop {
    /// The request finished: nothing to cancel.
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let session = self.session.clone();
            tokio::spawn(async move { cancel(&session, id).await });
        }
    }
}
