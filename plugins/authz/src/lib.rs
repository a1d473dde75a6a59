//! `authz`: role rules over upstreams, tools, prompts, resources and methods, with conditions
//! on the caller (roles, subject, scopes, tenant, attributes) and on tool arguments; and
//! `*/list` results filtered to what the caller may use. Operators' guide: `docs/authz.md`.
//!
//! Request phase:
//! - no identity: denied (an `authn` policy must run first);
//! - session plumbing (`initialize`, `ping`, `logging/setLevel`, `notifications/*`) and list
//!   requests: allowed (lists are filtered on the way back);
//! - everything else: the first matching rule decides, deny rules before allow rules (so deny
//!   wins), else the `default` (deny unless configured otherwise). A denial answers exactly as
//!   the gateway answers for a target that does not exist, so a caller cannot tell "forbidden"
//!   from "unknown". An allowed request is tagged with the attribute `authz.rule`.
//!
//! Response phase: `tools/list`, `prompts/list`, `resources/list` and
//! `resources/templates/list` results keep only the items the caller could use.

mod config;
mod decide;
pub use policy_matchers::glob;
mod lists;
mod methods;
mod paths;

use portcullis_sdk::prelude::*;

use config::Rule;
pub use config::{Config, Effect, PrefixMode};
use decide::{ArgCache, Args, Decision, Item, concerns, decide, decide_all, readings};
use methods::{COMPLETE, Kind};

/// The attribute naming the rule that allowed a request (`default allow` without one).
pub const RULE_ATTRIBUTE: &str = "authz.rule";

/// JSON-RPC code the gateway uses for `resources/*` of a URI no upstream serves.
const RESOURCE_NOT_FOUND: i32 = -32002;
/// JSON-RPC code for an unknown method.
const METHOD_NOT_FOUND: i32 = -32601;

/// The policy.
pub struct Authz;

impl Policy for Authz {
    type Config = Config;

    fn describe() -> Info {
        Info::new("authz", env!("CARGO_PKG_VERSION"), Stage::Authz).with_phases(Phase::BOTH)
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        if msg.is_response() {
            respond(config, msg)
        } else {
            request(config, msg)
        }
    }
}

export_policy!(Authz);

/// The rules that concern this caller, in decision order.
fn rules_for<'c>(config: &'c Config, id: &Identity) -> Vec<&'c Rule> {
    config.rules.iter().filter(|r| concerns(r, id)).collect()
}

/// What a request is about: its kind and client-facing name or URI.
enum Target<'m> {
    /// A tool, prompt or resource.
    Named(Kind, &'m str),
    /// A method that names nothing (and is neither plumbing nor a list).
    Other,
    /// A request that should name something and does not (or cannot be read).
    Unreadable,
}

fn target<'m>(msg: &'m Message<'m>) -> Target<'m> {
    let method = msg.method();
    if method == COMPLETE {
        let reference = msg.params().and_then(|p| p.get("ref"));
        let named = |key| reference.and_then(|r| r.get(key)).and_then(Value::as_str);
        let found = match reference
            .and_then(|r| r.get("type"))
            .and_then(Value::as_str)
        {
            Some("ref/prompt") => named("name").map(|n| (Kind::Prompt, n)),
            Some("ref/resource") => named("uri").map(|u| (Kind::Resource, u)),
            _ => None,
        };
        return found.map_or(Target::Unreadable, |(k, n)| Target::Named(k, n));
    }
    match methods::target_kind(method) {
        Some(kind) => msg
            .target()
            .map_or(Target::Unreadable, |t| Target::Named(kind, t)),
        None => Target::Other,
    }
}

fn request(config: &Config, msg: &Message) -> Verdict {
    let method = msg.method();
    let target = target(msg);
    let client = match target {
        Target::Named(_, name) => Some(name),
        _ => None,
    };
    let Some(id) = msg.identity() else {
        log::warn(&format!(
            "denied {method} {}: no identity (an authn policy must run before authz)",
            client.unwrap_or("-")
        ));
        return refusal(method, client);
    };
    if methods::is_lifecycle(method) || methods::list_kind(method).is_some() {
        return Verdict::allow();
    }
    let rules = rules_for(config, id);
    let upstream = msg.upstream();
    let own = msg.upstream_target();
    let args = Args::Of(ArgCache::new(msg));
    // The upstream as the decision saw it (from the gateway, else from the prefix).
    let (decision, seen_upstream) = match target {
        Target::Named(kind, client) => {
            let (items, n) = readings(
                config,
                kind,
                method,
                client,
                upstream.as_deref(),
                own.as_deref(),
            );
            let decision = decide_all(config.default, &rules, &items[..n], &args);
            (decision, items[0].upstream)
        }
        Target::Other => {
            let item = Item {
                kind: None,
                method,
                client: None,
                upstream: upstream.as_deref(),
                name: None,
            };
            (decide(config.default, &rules, &item, &args), item.upstream)
        }
        Target::Unreadable => {
            log::info(&format!(
                "denied {method} for subject {:?}: no target name in the request",
                id.subject
            ));
            return refusal(method, None);
        }
    };
    if decision.is_allow() {
        return Changes::new()
            .with_attribute(RULE_ATTRIBUTE, decision.name())
            .into();
    }
    log_denial(method, client, seen_upstream, id, decision);
    refusal(method, client)
}

fn log_denial(
    method: &str,
    client: Option<&str>,
    upstream: Option<&str>,
    id: &Identity,
    decision: Decision,
) {
    let target = client.map(|c| format!(" {c:?}")).unwrap_or_default();
    log::info(&format!(
        "denied {method}{target} (upstream {}) for subject {:?} (roles {:?}): {decision}",
        upstream.unwrap_or("?"),
        id.subject,
        id.roles,
    ));
}

/// The refusal for a denied request: exactly what the gateway answers when the target does
/// not exist, so that "forbidden" and "unknown" cannot be told apart.
fn refusal(method: &str, client: Option<&str>) -> Verdict {
    match (method, client) {
        ("tools/call", Some(name)) => {
            Verdict::deny(codes::INVALID_PARAMS, format!("Unknown tool: {name}"))
        }
        ("prompts/get", Some(name)) => {
            Verdict::deny(codes::INVALID_PARAMS, format!("Unknown prompt: {name}"))
        }
        ("tools/call" | "prompts/get", None) => {
            Verdict::deny(codes::INVALID_PARAMS, "missing \"name\"")
        }
        ("resources/read" | "resources/subscribe" | "resources/unsubscribe", Some(uri)) => {
            Denial::new(RESOURCE_NOT_FOUND, format!("Resource not found: {uri}"))
                .with_data(json!({ "uri": uri }))
                .into()
        }
        ("resources/read" | "resources/subscribe" | "resources/unsubscribe", None) => {
            Verdict::deny(codes::INVALID_PARAMS, "missing \"uri\"")
        }
        (COMPLETE, _) => Verdict::deny(codes::INVALID_PARAMS, "unknown completion reference"),
        (m, _) if methods::is_lifecycle(m) || methods::list_kind(m).is_some() => {
            Verdict::deny(codes::DENIED, "access denied")
        }
        (m, _) => Verdict::deny(METHOD_NOT_FOUND, format!("Method not found: {m}")),
    }
}

fn respond(config: &Config, msg: &Message) -> Verdict {
    let method = msg.method();
    let Some(list) = methods::list_kind(method) else {
        return Verdict::allow();
    };
    let Some(result) = msg.result() else {
        return Verdict::allow();
    };
    let Some(id) = msg.identity() else {
        log::warn(&format!(
            "denied {method} result: no identity (an authn policy must run before authz)"
        ));
        return refusal(method, None);
    };
    let rules = rules_for(config, id);
    let upstream = msg.upstream();
    let filtered = lists::filter(config, &rules, list, upstream.as_deref(), result);
    match filtered.result {
        Some(json) => {
            log::debug(&format!(
                "{method} for subject {:?}: {} of {} items hidden",
                id.subject, filtered.hidden, filtered.total
            ));
            Changes::new().with_result_json(json).into()
        }
        None => Verdict::allow(),
    }
}

#[cfg(test)]
mod tests;
