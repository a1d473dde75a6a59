//! What `plugin test` prints: one entry per message with each plugin's verdict, and the summary.

use serde_json::{Value, json};

use portcullis::mcp::{Kind, Message};
use portcullis::policy::trace::{Pass, Verdict};
use portcullis::policy::{Denial, Identity, Phase};

/// One entry per message the chain ran over, in order: where it came from, each plugin's
/// verdict, what became of it.
pub(super) fn reports(passes: &[Pass], upstream_received: &[Message]) -> Vec<Value> {
    // The upstream gets one answer per request of its that a policy refused, in order.
    let mut refusals = upstream_received
        .iter()
        .filter(|m| m.kind() == Kind::Response);
    passes
        .iter()
        .map(|p| {
            let (from, message, after) = match (p.phase, p.is_answer()) {
                (Phase::Request, _) => (
                    "client",
                    p.start.request.as_ref(),
                    p.end.as_ref().map(|e| e.request.as_ref()),
                ),
                (Phase::Response, true) => (
                    "upstream",
                    p.start
                        .response
                        .as_deref()
                        .unwrap_or(p.start.request.as_ref()),
                    p.end.as_ref().and_then(|e| e.response.as_deref()),
                ),
                (Phase::Response, false) => (
                    "upstream",
                    p.start.request.as_ref(),
                    p.end.as_ref().map(|e| e.request.as_ref()),
                ),
            };
            let steps: Vec<Value> = p
                .steps
                .iter()
                .map(|s| match &s.verdict {
                    Verdict::Allow => json!({ "plugin": &*s.plugin, "verdict": "allow" }),
                    Verdict::Modify(what) => {
                        json!({ "plugin": &*s.plugin, "verdict": "modify", "changed": what })
                    }
                    Verdict::Deny(d) => json!({
                        "plugin": &*s.plugin, "verdict": "deny",
                        "error": { "code": d.code, "message": d.message },
                    }),
                    Verdict::FailedOpen(why) => {
                        json!({ "plugin": &*s.plugin, "verdict": "failed-open", "error": why })
                    }
                    Verdict::Skipped => json!({
                        "plugin": &*s.plugin, "verdict": "skipped",
                        "reason": "its sidecar's [phases] leaves this method out: not called",
                    }),
                })
                .collect();
            let outcome = match (p.phase, &p.end, message.kind()) {
                _ if p.steps.is_empty() => {
                    "passed unseen: no plugin in the chain handles this phase"
                }
                _ if !p.seen() => {
                    "passed unseen: every plugin of this phase skips this method ([phases])"
                }
                (Phase::Request, Some(_), _) => "forwarded",
                (Phase::Request, None, _) => "denied; the client gets the error",
                (_, Some(_), _) => "to the client",
                (_, None, Kind::Request) => {
                    "answered to the upstream with the error; the client never sees it"
                }
                (_, None, Kind::Response) => "replaced by the error; the client gets the error",
                (_, None, Kind::Notification) => "dropped; the client never sees it",
            };
            let mut report = json!({
                "from": from,
                "phase": if p.phase == Phase::Request { "request" } else { "response" },
                "method": match p.is_answer() {
                    true => format!("answer to {}", p.start.request.method()),
                    false => message.method().to_string(),
                },
                "message": message.clone().into_value(),
                "plugins": steps,
                "outcome": outcome,
            });
            if let Some(after) = after {
                report["after"] = after.clone().into_value();
            }
            if p.phase == Phase::Response
                && p.end.is_none()
                && message.kind() == Kind::Request
                && let Some(answer) = refusals.next()
            {
                report["upstream_got"] = answer.clone().into_value();
            }
            report
        })
        .collect()
}

/// The overall verdict and the summary fields (request as forwarded, identity, route,
/// answer, server message) from the passes.
pub(super) fn summarize(
    out: &mut Value,
    passes: &[Pass],
    supplied: Option<&Identity>,
    client: &[Message],
) {
    let seen: Vec<&Pass> = passes.iter().filter(|p| p.seen()).collect();
    let refusal = seen.iter().find_map(|p| {
        p.steps.iter().find_map(|s| match &s.verdict {
            Verdict::Deny(d) => Some((*p, d.clone())),
            _ => None,
        })
    });
    let changed = seen.iter().any(|p| {
        p.steps
            .iter()
            .any(|s| matches!(s.verdict, Verdict::Modify(_)))
    });
    out["verdict"] = match (&refusal, changed, seen.is_empty()) {
        (Some(_), _, _) => "deny",
        (None, true, _) => "modify",
        (None, false, false) => "allow",
        (None, false, true) => "unseen",
    }
    .into();
    if let Some(request) = passes.iter().find(|p| p.phase == Phase::Request)
        && let Some(end) = &request.end
    {
        out["request"] = end.request.as_ref().clone().into_value();
        out["identity"] = json!(end.identity);
        out["identity_changed"] = (end.identity.as_ref() != supplied).into();
        out["attributes"] = json!(end.attributes);
        if request.routed {
            out["route"] = json!({ "upstream": end.upstream, "target": end.upstream_target });
        }
    }
    if let Some(answer) = client.iter().rev().find(|m| m.kind() == Kind::Response) {
        out["response"] = answer.clone().into_value();
    }
    if let Some(first) = passes
        .iter()
        .find(|p| p.phase == Phase::Response && !p.is_answer())
        && let Some(end) = &first.end
    {
        out["server_message"] = end.request.as_ref().clone().into_value();
        let set: serde_json::Map<String, Value> = end
            .attributes
            .iter()
            .filter(|(k, v)| first.start.attributes.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        out["server_message_attributes"] = set.into();
    }
    if let Some((pass, denial)) = refusal {
        let phase = if pass.phase == Phase::Request {
            "request"
        } else {
            "response"
        };
        let summary = denied(&denial, phase, Value::Null);
        for key in ["phase", "denied_by", "error", "http_status", "http_headers"] {
            out[key] = summary[key].clone();
        }
        if pass.phase == Phase::Response && !pass.is_answer() {
            out["server_message_outcome"] = if pass.start.request.kind() == Kind::Request {
                "answered to the upstream with the error; the client never sees it"
            } else {
                "dropped; the client never sees it"
            }
            .into();
        }
    }
}

pub(super) fn denied(d: &Denial, phase: &str, plugins: Value) -> Value {
    json!({
        "verdict": "deny",
        "phase": phase,
        "plugins": plugins,
        "denied_by": &*d.plugin,
        "error": { "code": d.code, "message": d.message, "data": d.data },
        "http_status": d.http_status,
        "http_headers": d.http_headers,
    })
}

pub(super) fn print_text(o: &Value) {
    let names: Vec<&str> = o["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    println!("chain:      {}", names.join(" → "));
    if !o["caller"].is_null() {
        println!("caller:     {} (given with --identity)", o["caller"]);
    }
    println!("verdict:    {}", o["verdict"].as_str().unwrap_or("?"));
    if o["verdict"] == "deny" {
        println!(
            "denied by:  {} (in the {} phase)",
            o["denied_by"].as_str().unwrap_or("?"),
            o["phase"].as_str().unwrap_or("?")
        );
        println!(
            "error:      {} {}",
            o["error"]["code"],
            o["error"]["message"].as_str().unwrap_or("")
        );
        if !o["error"]["data"].is_null() {
            println!("data:       {}", o["error"]["data"]);
        }
        if let Some(what) = o["server_message_outcome"].as_str() {
            println!("message:    {what}");
        }
        if let Some(status) = o["http_status"].as_u64() {
            println!("http:       {status}");
            for h in o["http_headers"].as_array().into_iter().flatten() {
                println!(
                    "            {}: {}",
                    h[0].as_str().unwrap_or(""),
                    h[1].as_str().unwrap_or("")
                );
            }
        }
    }
    if o["identity_changed"] == true {
        println!("identity:   {} (set by the chain)", o["identity"]);
    }
    if !o["route"].is_null() {
        println!("route:      {}", o["route"]);
    }
    if o["attributes"].as_object().is_some_and(|a| !a.is_empty()) {
        println!("attributes: {}", o["attributes"]);
    }
    for (n, m) in o["messages"].as_array().into_iter().flatten().enumerate() {
        println!(
            "message {}:  {} {} ({} phase)",
            n + 1,
            m["from"].as_str().unwrap_or("?"),
            m["method"].as_str().unwrap_or("?"),
            m["phase"].as_str().unwrap_or("?")
        );
        for s in m["plugins"].as_array().into_iter().flatten() {
            let detail = match s["verdict"].as_str() {
                Some("modify") => format!(" ({})", join(&s["changed"])),
                Some("deny") => format!(
                    " ({} {})",
                    s["error"]["code"],
                    s["error"]["message"].as_str().unwrap_or("")
                ),
                Some("failed-open") => format!(" ({})", s["error"].as_str().unwrap_or("")),
                Some("skipped") => " (not called: [phases] in its sidecar)".to_string(),
                _ => String::new(),
            };
            println!(
                "  {:<18} {}{detail}",
                s["plugin"].as_str().unwrap_or("?"),
                s["verdict"].as_str().unwrap_or("?")
            );
        }
        println!("  → {}", m["outcome"].as_str().unwrap_or("?"));
        if !m["upstream_got"].is_null() {
            println!("  upstream gets: {}", m["upstream_got"]);
        }
    }
    if o["messages"].as_array().is_some()
        && o["answer_recorded"] == false
        && o["response"].is_null()
        && o["verdict"] != "deny"
    {
        println!("answer:     not recorded (give it with --upstream-answer)");
    }
    if !o["request"].is_null() {
        println!("request:    {}", o["request"]);
    }
    for m in o["client"].as_array().into_iter().flatten() {
        println!("client:     {m}");
    }
    for m in o["session_stream"].as_array().into_iter().flatten() {
        println!("client:     {m} (on the session's stream)");
    }
    if o["server_message_attributes"]
        .as_object()
        .is_some_and(|a| !a.is_empty())
    {
        println!(
            "attributes: {} (on the server message)",
            o["server_message_attributes"]
        );
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}
