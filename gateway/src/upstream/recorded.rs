//! A recorded upstream: a [`Transport`] that answers from a [`Recording`] instead of a
//! server, so `portcullis plugin test` runs a request through the pipeline `serve` runs
//! without any MCP server behind it.
//!
//! It behaves as a real upstream does on the wire: when the recorded request arrives, it
//! first sends what the recording holds about that request — notifications (progress, log
//! lines) and requests to the client (sampling, elicitation, roots) — to the session's
//! inbound handler with the request's stream, exactly where a stdio or HTTP link delivers
//! them, and then answers. Its lists offer the one item the recorded request names, so the
//! catalog resolves that name as it would against a real server. What the gateway sends it
//! (answers to its requests, notifications) is kept in [`Recording::received`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::pending::RequestIds;
use super::transport::{Call, Transport};
use super::{InboundHandler, Related, Upstream, UpstreamError};
use crate::mcp::ListKind;
use crate::mcp::{Message, codes};

/// What the recorded answer says when none was recorded.
pub const NOT_RECORDED: &str = "no answer recorded for this request";

/// What a recorded upstream sends, and what it was sent.
#[derive(Debug, Default)]
pub struct Recording {
    /// The method of the request the recording is about.
    pub method: String,
    /// What the upstream sends about that request before its answer, in order.
    pub before: Vec<Message>,
    /// Its answer (the id is the request's). `None`: a JSON-RPC error saying
    /// [`NOT_RECORDED`].
    pub answer: Option<Message>,
    /// The item its `kind` list offers (a tool, prompt or resource, under the upstream's
    /// own name), so the catalog finds the one the request names.
    pub offers: Option<(ListKind, Value)>,
    /// What the gateway sent it, in order (e.g. a policy's refusal of its sampling request).
    pub received: Mutex<Vec<Message>>,
    /// How many of [`Recording::before`] it has sent.
    pub sent: AtomicUsize,
}

impl Recording {
    /// What the gateway sent it so far.
    pub fn received(&self) -> Vec<Message> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Its answer to a request: the recorded exchange, a list holding what it offers, or
    /// "method not found".
    fn answer(&self, id: u64, msg: &Message) -> Message {
        let id = Value::from(id);
        if msg.method() == self.method {
            let mut answer = self.answer.clone().unwrap_or_else(|| {
                Message::error(Value::Null, codes::INTERNAL_ERROR, NOT_RECORDED, None)
            });
            answer.set_id(id);
            return answer;
        }
        match ListKind::from_method(msg.method()) {
            Some(kind) => {
                let items: Vec<Value> = self
                    .offers
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, item)| item.clone())
                    .collect();
                Message::result(id, json!({ kind.items_key(): items }))
            }
            None => Message::error(
                id,
                codes::METHOD_NOT_FOUND,
                &format!("Method not found: {} (not recorded)", msg.method()),
                None,
            ),
        }
    }
}

/// A link to a recorded upstream.
pub(super) struct RecordedLink {
    upstream: Arc<Upstream>,
    recording: Arc<Recording>,
    handler: Weak<dyn InboundHandler>,
    ids: RequestIds,
}

impl RecordedLink {
    /// The link and the `initialize` result a server with tools, prompts, resources and
    /// logging gives.
    pub(super) fn connect(
        upstream: &Arc<Upstream>,
        recording: &Arc<Recording>,
        handler: Weak<dyn InboundHandler>,
    ) -> (Box<dyn Transport>, Value) {
        let link = RecordedLink {
            upstream: upstream.clone(),
            recording: recording.clone(),
            handler,
            ids: RequestIds::new(),
        };
        let init = json!({
            "protocolVersion": crate::mcp::version::LATEST,
            "capabilities": { "tools": {}, "prompts": {}, "resources": {}, "logging": {} },
            "serverInfo": { "name": format!("recorded {}", upstream.name), "version": "0" },
        });
        (Box::new(link), init)
    }
}

impl Transport for RecordedLink {
    fn kind(&self) -> &'static str {
        "recorded"
    }

    fn ids(&self) -> &RequestIds {
        &self.ids
    }

    fn request(&self, id: u64, msg: Message, related: Option<Related>) -> Call<'_> {
        Box::pin(async move {
            if msg.method() == self.recording.method
                && let Some(handler) = self.handler.upgrade()
            {
                for m in &self.recording.before {
                    handler.on_message(&self.upstream, m.clone(), related.as_ref());
                }
                let sent = self.recording.before.len();
                self.recording.sent.fetch_add(sent, Ordering::Relaxed);
            }
            Ok(self.recording.answer(id, &msg))
        })
    }

    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>> {
        self.recording
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(msg);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(answer: Option<Message>) -> Recording {
        Recording {
            method: "tools/call".into(),
            answer,
            offers: Some((ListKind::Tools, json!({ "name": "read_file" }))),
            ..Recording::default()
        }
    }

    #[test]
    fn answers_the_recorded_request_under_the_link_id() {
        let r = recording(Some(Message::result(json!(3), json!({ "content": [] }))));
        let call = Message::request(json!(9), "tools/call", Some(json!({ "name": "read_file" })));
        let answer = r.answer(5, &call);
        assert_eq!(answer.id(), Some(&json!(5)));
        assert_eq!(answer.result_value(), Some(&json!({ "content": [] })));
    }

    #[test]
    fn an_answer_not_recorded_is_an_error_saying_so() {
        let call = Message::request(json!(9), "tools/call", None);
        let answer = recording(None).answer(1, &call);
        assert_eq!(answer.error_value().unwrap()["message"], NOT_RECORDED);
    }

    #[test]
    fn lists_offer_what_the_request_names_and_nothing_else() {
        let r = recording(None);
        let tools = r.answer(1, &Message::request(json!(0), "tools/list", None));
        assert_eq!(
            tools.result_value(),
            Some(&json!({ "tools": [{ "name": "read_file" }] }))
        );
        let prompts = r.answer(2, &Message::request(json!(0), "prompts/list", None));
        assert_eq!(prompts.result_value(), Some(&json!({ "prompts": [] })));
        let other = r.answer(3, &Message::request(json!(0), "completion/complete", None));
        assert_eq!(
            other.error_value().unwrap()["code"],
            codes::METHOD_NOT_FOUND
        );
    }
}
