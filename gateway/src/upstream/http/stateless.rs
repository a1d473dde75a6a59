//! MCP 2026-07-28 over HTTP: the request headers (`MCP-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name`, `Mcp-Param-*`), the tools' `x-mcp-header` annotations learnt from
//! `tools/list`, `server/discover`, and the `subscriptions/listen` stream. Which era a link
//! speaks, and the `_meta` every 2026-07-28 request carries, are `upstream/stateless.rs`.

use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::listen::{Listen, Opened};
use super::streamable::{HttpLink, Posted, SessionState};
use crate::mcp::headers::{METHOD as MCP_METHOD, NAME as MCP_NAME, PROTOCOL_VERSION};
use crate::mcp::{Kind, Message, headers, methods, version};
use crate::upstream::UpstreamError;
use crate::upstream::stateless::{Stateless, discover_result};

/// The 2026-07-28 request headers for `msg`; `params` are the `x-mcp-header` annotations of
/// the tool a `tools/call` calls, mirrored as `Mcp-Param-*`.
pub(super) fn request_headers(msg: &Message, params: &headers::ParamHeaders) -> HeaderMap {
    let mut h = HeaderMap::new();
    add_request_headers(&mut h, msg, params);
    h
}

/// [`request_headers`], added to `h` (replacing any of the same names).
pub(super) fn add_request_headers(
    h: &mut HeaderMap,
    msg: &Message,
    params: &headers::ParamHeaders,
) {
    h.insert(
        PROTOCOL_VERSION,
        HeaderValue::from_static(version::STATELESS),
    );
    if let Ok(v) = HeaderValue::from_str(msg.method()) {
        h.insert(MCP_METHOD, v);
    }
    let name = match msg.method() {
        methods::TOOLS_CALL | methods::PROMPTS_GET => msg.param_str("name"),
        methods::RESOURCES_READ => msg.param_str("uri"),
        methods::TASKS_GET | methods::TASKS_UPDATE | methods::TASKS_CANCEL => {
            msg.param_str("taskId")
        }
        _ => None,
    };
    if let Some(v) = name.and_then(|n| HeaderValue::from_str(&headers::encode(n)).ok()) {
        h.insert(MCP_NAME, v);
    }
    let arguments = msg.params().and_then(|p| p.get("arguments"));
    for (param, path) in params {
        let Some(text) = headers::argument_text(arguments, path) else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("mcp-param-{param}").as_bytes()),
            HeaderValue::from_str(&headers::encode(&text)),
        ) {
            h.insert(name, value);
        }
    }
}

impl HttpLink {
    /// The `Mcp-Param-*` annotations of the tool `msg` calls, learnt from the upstream's
    /// `tools/list` results as they pass.
    pub(super) fn param_annotations(&self, msg: &Message) -> headers::ParamHeaders {
        if msg.method() != methods::TOOLS_CALL {
            return Vec::new();
        }
        let tools = self.tool_params.lock().unwrap_or_else(|p| p.into_inner());
        msg.param_str("name")
            .and_then(|n| tools.get(n))
            .cloned()
            .unwrap_or_default()
    }

    /// Remembers the `x-mcp-header` annotations of the tools in a `tools/list` result.
    pub(super) fn learn_tools(&self, response: &Message) {
        let Some(tools) = response
            .result_value()
            .and_then(|r| r.get("tools"))
            .and_then(Value::as_array)
        else {
            return;
        };
        let mut known = self.tool_params.lock().unwrap_or_else(|p| p.into_inner());
        for tool in tools {
            if let (Some(name), Some(schema)) = (
                tool.get("name").and_then(Value::as_str),
                tool.get("inputSchema"),
            ) {
                let annotated = headers::annotated_params(schema);
                if annotated.is_empty() {
                    known.remove(name);
                } else {
                    known.insert(name.to_string(), annotated);
                }
            }
        }
    }

    /// `server/discover`: the upstream's versions, capabilities and identity.
    pub(super) async fn discover(&self, stateless: &Stateless) -> Result<Value, UpstreamError> {
        let msg = stateless.discover_request(Value::from(0));
        let (posted, _) = self.post(&msg, None, &SessionState::default()).await?;
        let Posted::Response(reply) = posted else {
            return Err(self.protocol("server/discover was answered with 202"));
        };
        discover_result(&self.upstream.name, reply)
    }

    /// Keeps a `subscriptions/listen` stream open for list changes (what the GET stream is
    /// to a session-era upstream), reconnecting with backoff, until the link closes.
    pub(super) fn listen_for_changes(&self, stateless: &Stateless) {
        let msg = stateless.listen_request(Value::from("listen"));
        let builder = self
            .builder(reqwest::Method::POST, &SessionState::default())
            .headers(request_headers(&msg, &Vec::new()))
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .body(msg.to_bytes());
        self.set_listener(
            Listen {
                upstream: self.upstream.clone(),
                handler: self.handler.clone(),
                what: "subscriptions/listen",
                open: move |_: Option<&str>| builder.try_clone(),
                // An answer that is not a stream: the upstream does not offer listen.
                opened: |resp| {
                    if resp.status().is_success() && super::is_event_stream(resp.headers()) {
                        Opened::Stream
                    } else {
                        Opened::Stop
                    }
                },
                keep: |m| {
                    m.kind() == Kind::Notification
                        && m.method() != methods::SUBSCRIPTIONS_ACKNOWLEDGED
                },
            }
            .spawn(),
        );
    }
}
