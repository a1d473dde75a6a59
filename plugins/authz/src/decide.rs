//! The decision: which rules concern the caller, which of those match a target, and what
//! the first match (deny rules come first) or the default says.

use std::cell::RefCell;

use portcullis_sdk::{Identity, Message};
use serde_json::Value;

use crate::config::{Condition, Config, Effect, PrefixMode, Rule};
use crate::glob::any_match;
use crate::methods::{COMPLETE, Kind};
use crate::paths;
use policy_matchers::caller;

/// What is being asked for, as rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The kind of target, or `None` for a method that is not about a tool, prompt or
    /// resource.
    pub kind: Option<Kind>,
    /// The method (for a list item: its kind's primary method).
    pub method: &'a str,
    /// The name or URI as the client sees it (possibly prefixed).
    pub client: Option<&'a str>,
    /// The upstream, `None` when it cannot be known.
    pub upstream: Option<&'a str>,
    /// The upstream's own name or URI for the target.
    pub name: Option<&'a str>,
}

/// Where argument conditions get their values.
pub enum Args<'m> {
    /// Not known (a list item): a caller may choose arguments that satisfy an allow rule or
    /// avoid a deny rule, so allow rules with conditions count and deny rules do not.
    Unknown,
    /// A request's arguments.
    Of(ArgCache<'m>),
}

/// Arguments read from the message on first use, one by one (cheaper than parsing a large
/// call's params when rules look at one field).
pub struct ArgCache<'m> {
    msg: &'m Message<'m>,
    seen: RefCell<Vec<(Box<str>, Option<Value>)>>,
}

impl<'m> ArgCache<'m> {
    pub fn new(msg: &'m Message<'m>) -> Self {
        ArgCache {
            msg,
            seen: RefCell::new(Vec::new()),
        }
    }

    fn check(&self, name: &str, cond: &Condition) -> bool {
        let mut seen = self.seen.borrow_mut();
        let at = match seen.iter().position(|(k, _)| &**k == name) {
            Some(at) => at,
            None => {
                seen.push((name.into(), self.msg.argument(name)));
                seen.len() - 1
            }
        };
        seen[at].1.as_ref().is_some_and(|v| holds(cond, v))
    }
}

/// True when `value` satisfies every operator of `cond`.
fn holds(cond: &Condition, value: &Value) -> bool {
    if let Some(expected) = &cond.equals
        && !same(expected, value)
    {
        return false;
    }
    if let Some(options) = &cond.one_of
        && !options.iter().any(|o| same(o, value))
    {
        return false;
    }
    if cond.starts_with.is_none() && cond.matches.is_none() && cond.folder.is_none() {
        return true;
    }
    let Some(text) = value.as_str() else {
        return false;
    };
    cond.starts_with
        .as_deref()
        .is_none_or(|p| text.starts_with(p))
        && cond.matches.as_ref().is_none_or(|g| g.is_match(text))
        && cond
            .folder
            .as_deref()
            .is_none_or(|folder| paths::is_under(text, folder))
}

/// JSON equality, with numbers compared by value (`5` equals `5.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// True when the rule's conditions on the caller hold.
pub fn concerns(rule: &Rule, id: &Identity) -> bool {
    caller::roles(rule.roles.as_deref(), id)
        && caller::subject(rule.subjects.as_deref(), id)
        && caller::scopes(rule.scopes.as_deref(), id)
        && caller::tenant(rule.tenants.as_deref(), id)
        && caller::attributes(&rule.attributes, id)
}

/// True when the rule's conditions on the target hold.
fn matches(rule: &Rule, item: &Item, args: &Args) -> bool {
    let deny = rule.effect == Effect::Deny;
    if let Some(methods) = &rule.methods {
        let direct = any_match(methods, item.method);
        // Completion is governed like the use of what it completes.
        let completes = item.method == COMPLETE
            && item
                .kind
                .is_some_and(|k| any_match(methods, k.primary_method()));
        if !direct && !completes {
            return false;
        }
    }
    match item.kind {
        None => {
            if rule.has_kinds() || rule.targets.is_some() {
                return false;
            }
        }
        Some(kind) => {
            if rule.has_kinds() {
                let patterns = match kind {
                    Kind::Tool => rule.tools.as_deref(),
                    Kind::Prompt => rule.prompts.as_deref(),
                    Kind::Resource => rule.resources.as_deref(),
                };
                match (patterns, item.name) {
                    (Some(p), Some(name)) if any_match(p, name) => {}
                    _ => return false,
                }
            }
            if let Some(targets) = &rule.targets {
                match item.client {
                    Some(c) if any_match(targets, c) => {}
                    _ => return false,
                }
            }
        }
    }
    if let Some(upstreams) = &rule.upstreams {
        match item.upstream {
            Some(u) => {
                if !any_match(upstreams, u) {
                    return false;
                }
            }
            // An unknown upstream could be any: an allow rule cannot vouch for it, a deny
            // rule may concern it (fail closed both ways).
            None => {
                if !deny {
                    return false;
                }
            }
        }
    }
    if !rule.arguments.is_empty() {
        match args {
            Args::Unknown => return !deny,
            Args::Of(cache) => {
                if !rule.arguments.iter().all(|(k, c)| cache.check(k, c)) {
                    return false;
                }
            }
        }
    }
    true
}

/// What decided.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'c> {
    /// A rule matched.
    Rule(&'c Rule),
    /// No rule matched: the configured default.
    Default(Effect),
}

impl<'c> Decision<'c> {
    pub fn effect(self) -> Effect {
        match self {
            Decision::Rule(r) => r.effect,
            Decision::Default(e) => e,
        }
    }

    pub fn is_allow(self) -> bool {
        self.effect() == Effect::Allow
    }

    /// The rule's name, or `default deny` / `default allow`.
    pub fn name(self) -> &'c str {
        match self {
            Decision::Rule(r) => &r.name,
            Decision::Default(Effect::Deny) => "default deny",
            Decision::Default(Effect::Allow) => "default allow",
        }
    }
}

impl std::fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Rule(r) => write!(f, "rule {:?}", &*r.name),
            Decision::Default(Effect::Deny) => f.write_str("default deny"),
            Decision::Default(Effect::Allow) => f.write_str("default allow"),
        }
    }
}

/// The first rule of `rules` (the caller's, deny rules first) that matches, or the default.
pub fn decide<'c>(default: Effect, rules: &[&'c Rule], item: &Item, args: &Args) -> Decision<'c> {
    rules
        .iter()
        .find(|r| matches(r, item, args))
        .map_or(Decision::Default(default), |r| Decision::Rule(r))
}

/// Decides over every reading of a name whose upstream is uncertain: allowed only if every
/// reading is (the decision returned is the first denial, or the first reading's allow).
pub fn decide_all<'c>(
    default: Effect,
    rules: &[&'c Rule],
    readings: &[Item],
    args: &Args,
) -> Decision<'c> {
    let mut first = None;
    for item in readings {
        let d = decide(default, rules, item, args);
        if !d.is_allow() {
            return d;
        }
        first.get_or_insert(d);
    }
    first.unwrap_or(Decision::Default(Effect::Deny))
}

/// True when `prefix` could be an upstream name (ASCII letters, digits and `-`).
fn upstream_like(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The upstream and own name a client-facing name stands for, read from its prefix:
/// `<upstream><separator><name>`, or `<upstream>+<uri>` for resources.
pub fn split<'a>(config: &Config, kind: Kind, client: &'a str) -> Option<(&'a str, &'a str)> {
    let (upstream, rest) = match kind {
        Kind::Resource => client.split_once('+')?,
        Kind::Tool | Kind::Prompt => client.split_once(&*config.separator)?,
    };
    (upstream_like(upstream) && !rest.is_empty()).then_some((upstream, rest))
}

/// The readings of a client-facing name (at most two; see [`decide_all`]).
///
/// With a known upstream (the gateway resolved the request) there is one: that upstream, and
/// its own name (`own`, or the name without the upstream's prefix). Otherwise the prefix mode
/// says: `always` splits the prefix off, `never` leaves the upstream unknown, `when-needed`
/// cannot tell a prefix from a name that contains the separator, so both readings must allow.
pub fn readings<'a>(
    config: &Config,
    kind: Kind,
    method: &'a str,
    client: &'a str,
    upstream: Option<&'a str>,
    own: Option<&'a str>,
) -> ([Item<'a>; 2], usize) {
    let item = |upstream, name| Item {
        kind: Some(kind),
        method,
        client: Some(client),
        upstream,
        name: Some(name),
    };
    if let Some(u) = upstream {
        let name = own.unwrap_or_else(|| {
            split(config, kind, client)
                .filter(|(p, _)| *p == u)
                .map_or(client, |(_, rest)| rest)
        });
        let one = item(Some(u), name);
        return ([one, one], 1);
    }
    let unknown = item(None, client);
    match (config.prefix, split(config, kind, client)) {
        (PrefixMode::Always, Some((u, rest))) => ([item(Some(u), rest), unknown], 1),
        (PrefixMode::WhenNeeded, Some((u, rest))) => ([item(Some(u), rest), unknown], 2),
        _ => ([unknown, unknown], 1),
    }
}
