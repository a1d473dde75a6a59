//! The sidecar's `[config]` table, read and checked into [`Config`].
//!
//! `init` runs in every fresh instance, so this is on the per-call path: patterns are
//! compiled and rates turned into windows once per instance, and nothing else is done.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::glob::Glob;
use crate::rate::Rate;
use crate::window::Window;

/// The longest window a limit may have (`burst / rate`): a year, so counters' lifetimes and
/// slot arithmetic stay far from overflow.
const MAX_WINDOW_MS: u64 = 366 * 86_400_000;

/// What a bucket is keyed by; a limit's `per` is any combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Key {
    /// The caller's subject (empty without an identity: every anonymous caller shares one).
    Subject,
    /// The caller's tenant (callers without a tenant share one bucket).
    Tenant,
    /// The tool (prompt, resource) as the client named it; the method for requests that
    /// name nothing.
    Tool,
    /// The upstream the gateway will send the request to.
    Upstream,
    /// The JSON-RPC method.
    Method,
    /// The client session.
    Session,
}

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::Subject => "subject",
            Key::Tenant => "tenant",
            Key::Tool => "tool",
            Key::Upstream => "upstream",
            Key::Method => "method",
            Key::Session => "session",
        }
    }
}

/// The configuration, compiled.
#[derive(Debug)]
pub struct Config {
    /// HTTP status of a refusal (429 by default; 200 answers in-band only).
    pub http_status: u16,
    /// Every limit, in file order. A request is checked against each that applies.
    pub limits: Vec<Limit>,
}

/// One limit.
#[derive(Debug)]
pub struct Limit {
    pub name: Box<str>,
    pub window: Window,
    /// What the rate was written as, for messages.
    pub rate: Box<str>,
    pub per: Vec<Key>,
    pub methods: Vec<Glob>,
    pub tools: Option<Vec<Glob>>,
    pub upstreams: Option<Vec<Glob>>,
    pub subjects: Option<Vec<Glob>>,
    pub roles: Option<Vec<Glob>>,
    pub tenants: Option<Vec<Glob>>,
    /// The prefix of this limit's bucket keys: its name and window length, so a limit whose
    /// rate changes on reload starts afresh instead of misreading old counters.
    pub key_prefix: Box<str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    http_status: Option<u16>,
    #[serde(default)]
    limits: Vec<RawLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimit {
    name: String,
    #[serde(default)]
    description: Option<IgnoredAny>,
    rate: String,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    per: Vec<Key>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default)]
    upstreams: Option<Vec<String>>,
    #[serde(default)]
    subjects: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawConfig::deserialize(d)?;
        Config::compile(raw).map_err(serde::de::Error::custom)
    }
}

fn patterns(
    limit: &str,
    field: &str,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<Glob>>, String> {
    let Some(list) = list else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(format!(
            "limit {limit:?}: `{field}` is empty, so the limit would apply to nothing (leave it out to not restrict)"
        ));
    }
    let globs: Vec<Glob> = list.iter().map(|p| Glob::new(p)).collect();
    if globs.iter().any(Glob::is_empty) {
        return Err(format!("limit {limit:?}: `{field}` has an empty pattern"));
    }
    Ok(Some(globs))
}

impl Config {
    fn compile(raw: RawConfig) -> Result<Config, String> {
        let http_status = raw.http_status.unwrap_or(429);
        if http_status != 200 && !(400..=599).contains(&http_status) {
            return Err(format!(
                "http-status = {http_status}: use 429 (the default), another 4xx/5xx, or 200 to answer with the JSON-RPC error only"
            ));
        }
        let mut names = BTreeSet::new();
        let mut limits = Vec::with_capacity(raw.limits.len());
        for l in raw.limits {
            let name = l.name.trim();
            if name.is_empty() {
                return Err("a limit has an empty `name`".into());
            }
            if !names.insert(name.to_string()) {
                return Err(format!(
                    "limit {name:?} is defined twice (names key the counters, so they must be unique)"
                ));
            }
            let rate = Rate::parse(&l.rate).map_err(|e| format!("limit {name:?}: {e}"))?;
            let burst = l.burst.unwrap_or(rate.count);
            if burst == 0 {
                return Err(format!("limit {name:?}: `burst` must be at least 1"));
            }
            // W = burst / rate = burst * period / count.
            let ms = u128::from(burst) * u128::from(rate.period_ms) / u128::from(rate.count);
            let ms = u64::try_from(ms).unwrap_or(u64::MAX);
            if ms > MAX_WINDOW_MS {
                return Err(format!(
                    "limit {name:?}: burst {burst} at {} spans more than a year; use a shorter period or a smaller `burst`",
                    l.rate
                ));
            }
            if ms == 0 {
                return Err(format!(
                    "limit {name:?}: burst {burst} at {} refills in under a millisecond; raise `burst`",
                    l.rate
                ));
            }
            let mut per = l.per;
            let given = per.len();
            per.sort();
            per.dedup();
            if per.len() != given {
                return Err(format!("limit {name:?}: `per` names a key twice"));
            }
            let methods = match patterns(name, "methods", l.methods)? {
                Some(m) => m,
                None => vec![Glob::new("tools/call")],
            };
            limits.push(Limit {
                name: name.into(),
                window: Window { ms, burst },
                rate: l.rate.trim().into(),
                key_prefix: format!("{name}\u{1f}{ms}").into(),
                per,
                methods,
                tools: patterns(name, "tools", l.tools)?,
                upstreams: patterns(name, "upstreams", l.upstreams)?,
                subjects: patterns(name, "subjects", l.subjects)?,
                roles: patterns(name, "roles", l.roles)?,
                tenants: patterns(name, "tenants", l.tenants)?,
            });
            let _ = l.description;
        }
        Ok(Config {
            http_status,
            limits,
        })
    }
}
