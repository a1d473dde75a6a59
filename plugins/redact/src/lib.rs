//! `redact`: keeps customer data and secrets that tools return from reaching the agent
//! unmasked. Operators' guide: `docs/redact.md`.
//!
//! Response phase: the content of `tools/call` results (text, embedded resources' text,
//! `structuredContent`), `resources/read` contents and `prompts/get` messages is scanned by
//! every enabled detector in one pass per string; each finding is masked, labelled, replaced
//! by a salted hash or removed, or the whole response is refused (`block`). Upstream
//! JSON-RPC errors are redacted too (`errors`, on by default). Only string values change:
//! keys, numbers and the message's shape stay, so the result is still valid MCP and still
//! matches the tool's output schema's types.
//!
//! Requests upstreams send the client (`server-requests`, on by default): the messages and
//! system prompt of `sampling/createMessage` and the message of `elicitation/create`; a
//! `block` finding refuses the request to the upstream. Request phase (opt-in): `tools/call`
//! arguments (`arguments = true`). Notifications (`notifications`, on by default): the
//! `message` of `notifications/progress` and the `data` of `notifications/message`, in
//! whichever phase the gateway hands them over.
//!
//! Every change is tagged with `redact.<detector>=<count>` attributes for the audit trail and
//! logged with the counts — never with the values.

mod action;
mod config;
pub mod detectors;
mod encoded;
mod mcp;
mod normalize;
mod scan;
pub mod validate;
mod warm;

use portcullis_sdk::prelude::*;

pub use action::{Action, ActionKind};
pub use config::{Config, DEFAULT_DECODE_DEPTH, DEFAULT_ENCODED_MIN_LENGTH, MIN_SALT_LEN};
pub use scan::Scanner;

/// The prefix of the audit attributes, `redact.<detector>`.
pub const ATTRIBUTE_PREFIX: &str = "redact.";

/// The policy.
pub struct Redact;

impl Policy for Redact {
    type Config = Config;

    fn describe() -> Info {
        Info::new("redact", env!("CARGO_PKG_VERSION"), Stage::Redaction).with_phases(Phase::BOTH)
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        let method = msg.method();
        if method.starts_with("notifications/") {
            return if config.notifications {
                params(config, msg, "notification", |p, scan| {
                    mcp::notification(method, p, scan)
                })
            } else {
                Verdict::allow()
            };
        }
        match msg.phase() {
            Phase::Request if config.arguments && method == "tools/call" => {
                params(config, msg, "arguments", mcp::arguments)
            }
            Phase::Request => Verdict::allow(),
            Phase::Response if mcp::is_server_request(method) => {
                if config.server_requests {
                    params(config, msg, "request to the client", |p, scan| {
                        mcp::server_request(method, p, scan)
                    })
                } else {
                    Verdict::allow()
                }
            }
            Phase::Response => response(config, msg),
        }
    }
}

export_policy!(Redact);

/// What the message is about, for log lines: `tools/call alpha__echo`.
fn about(msg: &Message) -> String {
    match msg.target() {
        Some(t) => format!("{} {t}", msg.method()),
        None => msg.method().to_string(),
    }
}

fn parse(json: Option<String>) -> Option<Value> {
    serde_json::from_str(&json?).ok()
}

/// The verdict once a scan is done: a refusal if a `block` detector fired, else the changes
/// (if any) with the counts as attributes.
fn conclude(
    scan: &Scanner,
    msg: &Message,
    changed: bool,
    what: &str,
    changes: impl FnOnce() -> Changes,
) -> Verdict {
    if let Some(name) = scan.blocked_name() {
        log::warn(&format!("blocked {} ({what}): found a {name}", about(msg)));
        return Denial::new(
            codes::DENIED,
            format!("{what} withheld: it contains data the redact policy blocks ({name})"),
        )
        .with_data(json!({ "policy": "redact", "detector": name }))
        .into();
    }
    if !changed {
        return Verdict::allow();
    }
    let summary = scan.summary();
    let counts: Vec<String> = summary.iter().map(|(n, c)| format!("{n}={c}")).collect();
    log::info(&format!(
        "redacted {} ({what}): {}",
        about(msg),
        counts.join(" ")
    ));
    summary
        .iter()
        .fold(changes(), |ch, (name, count)| {
            ch.with_attribute(format!("{ATTRIBUTE_PREFIX}{name}"), count.to_string())
        })
        .into()
}

fn response(config: &Config, msg: &Message) -> Verdict {
    let method = msg.method();
    if !mcp::has_content(method) {
        return Verdict::allow();
    }
    let mut scan = Scanner::new(config);
    if let Some(mut result) = parse(msg.result_json()) {
        let changed = mcp::result(method, &mut result, &mut scan);
        return conclude(&scan, msg, changed, "result", || {
            Changes::new().with_result(result)
        });
    }
    if !config.errors {
        return Verdict::allow();
    }
    let Some(mut error) = msg.error().cloned() else {
        return Verdict::allow();
    };
    let changed = mcp::error(&mut error, &mut scan);
    if scan.blocked_name().is_some() || !changed {
        return conclude(&scan, msg, false, "error", Changes::new);
    }
    // A rewritten error travels as this policy's refusal, with the upstream's code.
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(-32603);
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let summary: Vec<String> = scan
        .summary()
        .iter()
        .map(|(n, c)| format!("{n}={c}"))
        .collect();
    log::info(&format!(
        "redacted {} (error): {}",
        about(msg),
        summary.join(" ")
    ));
    let denial = Denial::new(i32::try_from(code).unwrap_or(-32603), text);
    match error.get("data") {
        Some(data) => denial.with_data(data.clone()).into(),
        None => denial.into(),
    }
}

/// Redacts a message's params with `redact` (which says whether anything changed); `what`
/// names the part in log lines.
fn params(
    config: &Config,
    msg: &Message,
    what: &str,
    redact: impl FnOnce(&mut Value, &mut Scanner) -> bool,
) -> Verdict {
    let Some(mut params) = msg.params().cloned() else {
        return Verdict::allow();
    };
    let mut scan = Scanner::new(config);
    let changed = redact(&mut params, &mut scan);
    conclude(&scan, msg, changed, what, || {
        Changes::new().with_params(params)
    })
}

#[cfg(test)]
mod tests;
