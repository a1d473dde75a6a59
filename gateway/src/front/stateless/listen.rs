//! `subscriptions/listen`: the 2026-07-28 stream of change notifications.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Response;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{Shape, frame};
use crate::front::Front;
use crate::front::response::{self, Body};
use crate::mcp::Message;
use crate::mcp::methods::{self, meta};
use crate::session::{Session, stream};

impl Front {
    /// `subscriptions/listen`: an SSE stream that starts with the acknowledgment and carries
    /// the change notifications the client opted in to, each tagged with the subscription id.
    pub(super) async fn listen(
        &self,
        session: Arc<Session>,
        msg: Message,
        shape: Shape,
    ) -> Response<Body> {
        let wanted = msg
            .params()
            .and_then(|p| p.get("notifications"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let flag = |k: &str| wanted.get(k).and_then(Value::as_bool).unwrap_or(false);
        let (tools, prompts, resources) = (
            flag("toolsListChanged"),
            flag("promptsListChanged"),
            flag("resourcesListChanged"),
        );
        // Resource subscriptions go to the upstreams on the caller's session.
        let mut uris = Vec::new();
        for uri in wanted
            .get("resourceSubscriptions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let (tx, _rx) = mpsc::unbounded_channel();
            let n = self.parked.next_id.fetch_add(1, Ordering::Relaxed);
            let sub = Message::request(
                json!(format!("m{n}")),
                methods::RESOURCES_SUBSCRIBE,
                Some(json!({ "uri": uri })),
            );
            let answer = session.handle_request(sub, tx, None, None).await;
            if answer.is_error() {
                tracing::debug!(uri = %crate::observe::clip(uri), "resource subscription refused upstream");
            } else {
                uris.push(uri.to_string());
            }
        }
        let mut agreed = Map::new();
        for (key, on) in [
            ("toolsListChanged", tools),
            ("promptsListChanged", prompts),
            ("resourcesListChanged", resources),
        ] {
            if on {
                agreed.insert(key.into(), Value::Bool(true));
            }
        }
        if !uris.is_empty() {
            agreed.insert("resourceSubscriptions".into(), json!(uris));
        }
        let sub_id = shape.client_id.clone();
        let tag = move |mut m: Message| {
            let params = m.params_mut();
            let meta = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(meta::SUBSCRIPTION_ID.into(), sub_id.clone());
            }
            m
        };
        let mut changes = session.changes.subscribe();
        let (frames_tx, frames) =
            stream::channel(self.sessions.bounds().stream_buffer, session.tag.clone());
        let ack = Message::notification(
            methods::SUBSCRIPTIONS_ACKNOWLEDGED,
            Some(json!({ "notifications": agreed })),
        );
        let _ = frames_tx.send(frame(&tag(ack)));
        // Changes the caller's sessions on other replicas hear reach this stream too.
        if let Some(bus) = self.bus.as_ref() {
            bus.follow(&session, frames.gone()).await;
        }
        let closing = self.closing.clone();
        let client_id = shape.client_id.clone();
        self.tasks.spawn(async move {
            loop {
                let m = tokio::select! {
                    m = changes.recv() => m,
                    _ = closing.cancelled() => {
                        // Graceful end: the listen request's own response, then close.
                        let mut done = Message::result(client_id.clone(), json!({ "resultType": "complete" }));
                        if let Some(r) = done.result_mut() {
                            r["_meta"] = json!({ meta::SUBSCRIPTION_ID: client_id });
                        }
                        let _ = frames_tx.send(frame(&done));
                        return;
                    }
                    _ = frames_tx.closed() => return,
                };
                let m = match m {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a subscriptions/listen stream fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let wanted = match m.method() {
                    methods::TOOLS_LIST_CHANGED => tools,
                    methods::PROMPTS_LIST_CHANGED => prompts,
                    methods::RESOURCES_LIST_CHANGED => resources,
                    methods::RESOURCES_UPDATED => m
                        .param_str("uri")
                        .is_some_and(|u| uris.iter().any(|s| s == u)),
                    _ => false,
                };
                if wanted && frames_tx.send(frame(&tag(m))).is_err() {
                    return;
                }
            }
        });
        response::sse(frames)
    }
}
