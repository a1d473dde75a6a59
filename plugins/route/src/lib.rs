//! `route`: where each tool call goes, and what each caller's catalog looks like.
//! Operators' guide: `docs/route.md`.
//!
//! Request phase, `tools/call` only:
//! 1. **Catalog.** The entries that concern the caller say what the called name means: a
//!    name given by `rename` or `aliases` is mapped back to its original (the request's
//!    `params.name` becomes the original's client-facing name, and with `prefix = "always"`
//!    the verdict also names its upstream and target); a name hidden by `hide`, or the old
//!    name of a renamed tool, is refused exactly as the gateway refuses an unknown tool.
//! 2. **Routes.** The first route whose conditions hold (client-facing name, the tool's own
//!    name, the upstream the gateway would choose, the caller, argument values) decides:
//!    one upstream, or a weighted split (random per call through WASI `random`, or sticky by
//!    a stable hash of the subject, tenant or session), optionally with a new target name.
//!    Its `shadow` sets the attributes `shadow` (and `shadow-target`) for the gateway to send
//!    a copy of the call to a second upstream, whose answer is discarded.
//!
//! Response phase, `tools/list` only: the result is rewritten by the same entries (renamed,
//! aliased, re-described, hidden), so what a caller sees is exactly what it can call.
//!
//! The verdict carries `route.rule` (the deciding route's name) and `route.upstream` (the
//! upstream it chose) for the audit trail.

mod catalog;
mod config;
pub use policy_matchers::glob;
pub mod pick;
mod who;

use portcullis_sdk::prelude::*;

use catalog::Called;
use config::Route as Rule;
pub use config::{Config, PrefixMode, Sticky};
use glob::any_match;

/// The attribute naming the route that decided.
pub const RULE_ATTRIBUTE: &str = "route.rule";
/// The attribute naming the upstream a route chose.
pub const UPSTREAM_ATTRIBUTE: &str = "route.upstream";
/// The attribute the gateway reads to send a shadow copy of a `tools/call` to an upstream.
pub const SHADOW_ATTRIBUTE: &str = "shadow";
/// The target name at the shadow upstream (the call's own target when absent).
pub const SHADOW_TARGET_ATTRIBUTE: &str = "shadow-target";

/// The policy.
pub struct Route;

impl Policy for Route {
    type Config = Config;

    fn describe() -> Info {
        Info::new("route", env!("CARGO_PKG_VERSION"), Stage::Routing).with_phases(Phase::BOTH)
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        if msg.is_response() {
            respond(config, msg)
        } else {
            request(config, msg, &mut pick::random)
        }
    }
}

export_policy!(Route);

/// The request phase, with `draw` as the source of random numbers (WASI `random` in the
/// gateway; anything in a test).
pub fn request(config: &Config, msg: &Message, draw: &mut dyn FnMut() -> u64) -> Verdict {
    if msg.method() != "tools/call" || (config.routes.is_empty() && config.catalog.is_empty()) {
        return Verdict::allow();
    }
    let Some(sent) = msg.target() else {
        return Verdict::allow();
    };
    let id = msg.identity();
    let entries = catalog::entries_for(config, id);
    let mut changes = Changes::new();
    let (upstream, own) = match catalog::resolve(&entries, sent) {
        Called::Hidden => {
            log::debug(&format!(
                "refused tools/call {sent:?}: hidden from subject {:?} by the catalog",
                id.map_or("-", |i| i.subject.as_str())
            ));
            return Verdict::deny(codes::INVALID_PARAMS, format!("Unknown tool: {sent}"));
        }
        Called::Mapped(original) => {
            let mut params = match msg.params() {
                Some(Value::Object(p)) => p.clone(),
                _ => Default::default(),
            };
            params.insert("name".into(), Value::String(original.to_string()));
            changes = changes.with_params(Value::Object(params));
            match config.split_name(original) {
                Some((u, o)) => {
                    changes = changes.with_upstream(u).with_target(o);
                    (Some(u.to_string()), Some(o.to_string()))
                }
                None => (None, None),
            }
        }
        Called::AsIs => (msg.upstream(), msg.upstream_target()),
    };
    let call = Call {
        msg,
        sent,
        upstream: upstream.as_deref(),
        own: own.as_deref(),
        id,
    };
    if let Some(rule) = config.routes.iter().find(|r| call.matches(r)) {
        changes = apply(rule, &call, changes, draw);
    }
    if changes.is_empty() {
        Verdict::allow()
    } else {
        changes.into()
    }
}

/// A call as routes see it.
struct Call<'a> {
    msg: &'a Message<'a>,
    /// The name the client sent.
    sent: &'a str,
    /// The upstream the gateway would choose, when known.
    upstream: Option<&'a str>,
    /// The tool's name at that upstream, when known.
    own: Option<&'a str>,
    id: Option<&'a Identity>,
}

impl Call<'_> {
    fn matches(&self, rule: &Rule) -> bool {
        let named = |globs: &Option<Vec<glob::Glob>>, name: Option<&str>| {
            globs
                .as_ref()
                .is_none_or(|g| name.is_some_and(|n| any_match(g, n)))
        };
        named(&rule.targets, Some(self.sent))
            && named(&rule.tools, self.own)
            && named(&rule.upstreams, self.upstream)
            && who::concerns(&rule.who, self.id)
            && rule.arguments.iter().all(|(name, globs)| {
                self.msg
                    .argument(name)
                    .as_ref()
                    .and_then(as_text)
                    .is_some_and(|text| any_match(globs, &text))
            })
    }

    /// The value a sticky split hashes, if the call has it.
    fn sticky_value(&self, sticky: Sticky) -> Option<String> {
        match sticky {
            Sticky::Subject => self.id.map(|i| i.subject.clone()),
            Sticky::Tenant => self.id.and_then(|i| i.tenant.clone()),
            Sticky::Session => self.msg.session(),
        }
    }
}

/// An argument as text for patterns: strings as they are, numbers and booleans written out;
/// anything else matches no pattern.
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn apply(rule: &Rule, call: &Call, mut changes: Changes, draw: &mut dyn FnMut() -> u64) -> Changes {
    changes = changes.with_attribute(RULE_ATTRIBUTE, &*rule.name);
    let chosen = match rule.split.len() {
        0 => None,
        1 => rule.split.first(),
        _ => {
            let point = rule
                .sticky
                .and_then(|s| call.sticky_value(s))
                .map(|v| pick::stable_hash(&rule.name, &v))
                .unwrap_or_else(&mut *draw);
            pick::choose(&rule.split, point)
        }
    };
    if let Some(d) = chosen {
        changes = changes
            .with_upstream(&*d.upstream)
            .with_attribute(UPSTREAM_ATTRIBUTE, &*d.upstream);
        // Name the target whenever it is known, so later stages see the whole route.
        if let Some(t) = d.target.as_deref().or(call.own) {
            changes = changes.with_target(t);
        }
    }
    if let Some(shadow) = &rule.shadow
        && pick::sampled(shadow.percent, draw())
    {
        changes = changes.with_attribute(SHADOW_ATTRIBUTE, &*shadow.upstream);
        if let Some(t) = shadow.target.as_deref().or(call.own) {
            changes = changes.with_attribute(SHADOW_TARGET_ATTRIBUTE, t);
        }
    }
    changes
}

/// The response phase: `tools/list` as this caller's catalog shows it.
fn respond(config: &Config, msg: &Message) -> Verdict {
    if config.catalog.is_empty() || msg.method() != "tools/list" {
        return Verdict::allow();
    }
    let entries = catalog::entries_for(config, msg.identity());
    if entries.is_empty() {
        return Verdict::allow();
    }
    let Some(result) = msg.result() else {
        return Verdict::allow();
    };
    match catalog::rewrite_list(&entries, result) {
        Some(rewritten) => Changes::new().with_result_json(rewritten).into(),
        None => Verdict::allow(),
    }
}

#[cfg(test)]
mod tests;
