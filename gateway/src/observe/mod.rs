//! How the gateway reports on itself: its log lines and its OpenTelemetry traces.
//!
//! | file | job |
//! | --- | --- |
//! | `telemetry.rs` | the `tracing` subscriber: log format and filter, the OTLP pipeline, flush |
//! | `clip.rs` | client-controlled text in log lines, cut to a bounded length |
//! | `tag.rs` | the session tag: a session's name in logs, spans and audit records, never its id |
//! | `otlp.rs` | the OTLP/HTTP exporter's HTTP client: the workspace's reqwest on our runtime |
//! | `trace.rs` | the spans (client request, plugin, upstream call) and W3C trace context |
//!
//! Tracing export is off unless `[tracing] otlp-endpoint` is set. Off, every hook in the
//! request path is one relaxed atomic load: no span is created, no trace context is read
//! from the client or written to an upstream, and no OpenTelemetry code runs.

mod clip;
mod otlp;
mod tag;
mod telemetry;
mod trace;

use std::sync::atomic::{AtomicBool, Ordering};

pub use clip::{Clip, LOG_FIELD_BYTES, clip};
pub use tag::{SESSION_TAG_LEN, session_tag};
pub use telemetry::{Telemetry, init, init_default};
pub use trace::{
    Failure, Peer, SPAN_TARGET, inject_headers, inject_meta, on_message, plugin_span,
    record_denial, record_plugin_verdict, record_response, record_upstream,
    record_upstream_outcome, request_span, upstream_span,
};

/// Whether spans are exported: set once, at start-up, before any request.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace export is on. The request path asks this before doing any tracing work.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}
