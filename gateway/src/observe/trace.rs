//! The spans of one client request, and W3C trace context in and out.
//!
//! - **request** (kind server), one per client POST that carries an MCP message, named
//!   `{mcp.method.name} {target}` as the OpenTelemetry MCP semantic conventions name it;
//!   attributes `mcp.method.name`, `mcp.session.id`, `mcp.protocol.version`,
//!   `jsonrpc.request.id`, `gen_ai.tool.name` + `gen_ai.operation.name = execute_tool` for
//!   `tools/call`, `gen_ai.prompt.name`, `mcp.resource.uri`, `portcullis.upstream`,
//!   `portcullis.outcome` (`ok`, `error`, `tool_error`, `denied`), `error.type` and
//!   `rpc.jsonrpc.error_code`.
//! - **plugin** (internal), one per plugin evaluation, a child of the request:
//!   `portcullis.plugin.name`, `.version`, `.stage`, `.phase`, `.verdict` (`allow`,
//!   `modify`, `deny`, `error`).
//! - **upstream** (kind client), one per request sent to an upstream, a child of the
//!   request: `mcp.method.name`, `gen_ai.tool.name`, `portcullis.upstream`,
//!   `network.transport` (`pipe` for stdio, `tcp` for HTTP), `server.address`/`server.port`.
//!
//! Trace context: the request span's parent is `params._meta.traceparent` (+ `tracestate`)
//! when the message carries a valid one (the MCP convention), else the `traceparent` HTTP
//! header. The upstream span's context goes upstream as the `traceparent`/`tracestate`
//! headers of an HTTP upstream and as `params._meta.traceparent` to a stdio upstream (and
//! to an HTTP upstream whose message already carried one, so the two never disagree).

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{Map, Value};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::enabled;
use crate::mcp::{Message, methods};

/// The `tracing` target of the exported spans: the exporter takes these and the log lines
/// leave them out.
pub const SPAN_TARGET: &str = "portcullis::trace";

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The span of one client request, its parent taken from the W3C `traceparent` header.
/// `Span::none()` when export is off.
pub fn request_span(headers: &HeaderMap) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "mcp.request",
        otel.name = "mcp",
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_message = Empty,
        mcp.method.name = Empty,
        mcp.session.id = Empty,
        mcp.protocol.version = Empty,
        mcp.resource.uri = Empty,
        jsonrpc.request.id = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.tool.name = Empty,
        gen_ai.prompt.name = Empty,
        network.transport = "tcp",
        network.protocol.name = "http",
        portcullis.upstream = Empty,
        portcullis.outcome = Empty,
        error.type = Empty,
        rpc.jsonrpc.error_code = Empty,
    );
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    span
}

/// Names the current request span after the parsed message, and makes a `traceparent` in
/// its `_meta` the span's parent. Call inside the request span, before any child span.
/// `session` is the client's `Mcp-Session-Id`; the span records its tag (`tag.rs`).
pub fn on_message(msg: &Message, session: Option<&str>, version: Option<&str>) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    let method = msg.method();
    span.record("mcp.method.name", method);
    if let Some(id) = msg.id() {
        span.record("jsonrpc.request.id", tracing::field::display(id));
    }
    if let Some(s) = session {
        span.record("mcp.session.id", super::session_tag(s));
    }
    if let Some(v) = version {
        span.record("mcp.protocol.version", v);
    }
    let target = match method {
        methods::TOOLS_CALL => msg.param_str("name").inspect(|name| {
            span.record("gen_ai.tool.name", *name);
            span.record("gen_ai.operation.name", "execute_tool");
        }),
        methods::PROMPTS_GET => msg
            .param_str("name")
            .inspect(|name| _ = span.record("gen_ai.prompt.name", *name)),
        m if m.starts_with(methods::RESOURCES_PREFIX) => msg
            .param_str("uri")
            .inspect(|uri| _ = span.record("mcp.resource.uri", *uri)),
        _ => None,
    };
    span.record("otel.name", span_name(method, target).as_str());
    if let Some(meta) = meta(msg) {
        let cx = TraceContextPropagator::new().extract(&MetaExtractor(meta));
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// Records the answer's outcome on `span` (a request or an upstream span).
pub fn record_response(span: &Span, response: &Message) {
    if !enabled() || span.is_none() {
        return;
    }
    if let Some(err) = response.error_value() {
        let code = err.get("code").and_then(Value::as_i64).unwrap_or_default();
        span.record("portcullis.outcome", "error");
        span.record("rpc.jsonrpc.error_code", code);
        span.record("error.type", code.to_string().as_str());
        span.record("otel.status_code", "ERROR");
        if let Some(m) = err.get("message").and_then(Value::as_str) {
            span.record("otel.status_message", m);
        }
    } else if response
        .result_value()
        .is_some_and(|r| r.get("isError") == Some(&Value::Bool(true)))
    {
        span.record("portcullis.outcome", "tool_error");
        span.record("error.type", "tool_error");
        span.record("otel.status_code", "ERROR");
    } else {
        span.record("portcullis.outcome", "ok");
    }
}

/// Records on the current request span that a policy refused the message.
pub fn record_denial(plugin: &str, code: i64) {
    if !enabled() {
        return;
    }
    let span = Span::current();
    span.record("portcullis.outcome", "denied");
    span.record("rpc.jsonrpc.error_code", code);
    span.record("error.type", code.to_string().as_str());
    span.record("otel.status_code", "ERROR");
    span.record(
        "otel.status_message",
        format!("denied by policy '{plugin}'").as_str(),
    );
}

/// Records on the current request span which upstream serves it.
pub fn record_upstream(name: &str) {
    if enabled() {
        Span::current().record("portcullis.upstream", name);
    }
}

/// The span of one plugin evaluation (`phase`: `request` or `response`).
pub fn plugin_span(name: &str, version: &str, stage: &str, phase: &'static str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        target: SPAN_TARGET,
        "portcullis.plugin",
        otel.name = format!("policy {name}").as_str(),
        otel.kind = "internal",
        otel.status_code = Empty,
        portcullis.plugin.name = name,
        portcullis.plugin.version = version,
        portcullis.plugin.stage = stage,
        portcullis.plugin.phase = phase,
        portcullis.plugin.verdict = Empty,
    )
}

/// Records a plugin's verdict (`allow`, `modify`, `deny`, `error`) on its span.
pub fn record_plugin_verdict(span: &Span, verdict: &'static str) {
    if span.is_none() {
        return;
    }
    span.record("portcullis.plugin.verdict", verdict);
    if verdict == "error" {
        span.record("otel.status_code", "ERROR");
    }
}

/// How an upstream is reached, as its request spans name it.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'a> {
    /// A child's stdin/stdout.
    Pipe,
    /// An HTTP endpoint: its host and port, when the URL names them.
    Tcp(Option<(&'a str, u16)>),
}

/// A failed upstream request, as a span records it: its message (which names the upstream
/// and the failure, never credentials) and a short type.
pub trait Failure: std::fmt::Display {
    /// `error.type`: `timeout`, `exited`, `http_error`, …
    fn error_type(&self) -> &'static str;
}

/// The span of one request sent to the upstream named `upstream`, reached over `peer`.
pub fn upstream_span(upstream: &str, peer: Peer<'_>, msg: &Message) -> Span {
    if !enabled() {
        return Span::none();
    }
    let method = msg.method();
    let tool = (method == methods::TOOLS_CALL)
        .then(|| msg.param_str("name"))
        .flatten();
    let target = tool.or_else(|| msg.param_str("name").or_else(|| msg.param_str("uri")));
    let (transport, address, port) = match peer {
        Peer::Pipe => ("pipe", None, None),
        Peer::Tcp(endpoint) => {
            let (host, port) = endpoint.unzip();
            ("tcp", host, port)
        }
    };
    tracing::info_span!(
        target: SPAN_TARGET,
        "mcp.upstream",
        otel.name = span_name(method, target).as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_message = Empty,
        mcp.method.name = method,
        gen_ai.tool.name = tool,
        portcullis.upstream = upstream,
        network.transport = transport,
        server.address = address,
        server.port = port,
        portcullis.outcome = Empty,
        error.type = Empty,
        rpc.jsonrpc.error_code = Empty,
    )
}

/// Records how an upstream request ended on its span.
pub fn record_upstream_outcome<E: Failure>(span: &Span, outcome: &Result<Message, E>) {
    if span.is_none() {
        return;
    }
    match outcome {
        Ok(m) => record_response(span, m),
        Err(e) => {
            span.record("portcullis.outcome", "error");
            span.record("error.type", e.error_type());
            span.record("otel.status_code", "ERROR");
            // Upstream errors name the upstream and the failure, never credentials.
            span.record("otel.status_message", e.to_string().as_str());
        }
    }
}

/// Writes `span`'s context into the message's `_meta.traceparent`/`tracestate`: always
/// (`always`, for stdio upstreams) or only where the client already put one.
pub fn inject_meta(span: &Span, msg: &mut Message, always: bool) {
    if span.is_none() || !(always || meta(msg).is_some_and(|m| m.contains_key(TRACEPARENT))) {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let params = msg.params_mut();
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(meta) = meta {
        meta.remove(TRACESTATE);
        TraceContextPropagator::new().inject_context(&cx, &mut MetaInjector(meta));
    }
}

/// Adds the current span's `traceparent`/`tracestate` to an HTTP request's headers.
pub fn inject_headers(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

fn span_name(method: &str, target: Option<&str>) -> String {
    match target {
        Some(t) => format!("{method} {t}"),
        None => method.to_string(),
    }
}

fn meta(msg: &Message) -> Option<&Map<String, Value>> {
    msg.params()?.get("_meta")?.as_object()
}

struct MetaExtractor<'a>(&'a Map<String, Value>);

impl Extractor for MetaExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MetaInjector<'a>(&'a mut Map<String, Value>);

impl Injector for MetaInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), Value::String(value));
    }
}

/// An injector that replaces rather than appends (a header set twice would be two parents).
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
