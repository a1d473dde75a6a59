//! The sidecar's `[config]` table, read and checked into [`Config`].
//!
//! `init` runs in every fresh instance, so this is on the per-call path: patterns are
//! compiled and rates turned into buckets once per instance, and nothing else is done.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::bucket::Bucket;
use crate::glob::Glob;
use crate::rate::Rate;

/// The longest a bucket may take to fill from empty (`burst / rate`): a year, so times in
/// nanoseconds stay far from overflow.
const MAX_FILL_NS: u128 = 366 * 86_400 * 1_000_000_000;

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
    pub bucket: Bucket,
    /// What the rate was written as, for messages.
    pub rate: Box<str>,
    pub per: Vec<Key>,
    pub methods: Vec<Glob>,
    pub tools: Option<Vec<Glob>>,
    pub upstreams: Option<Vec<Glob>>,
    pub subjects: Option<Vec<Glob>>,
    pub roles: Option<Vec<Glob>>,
    pub tenants: Option<Vec<Glob>>,
    /// The prefix of this limit's bucket keys: its name and the time an empty bucket takes to
    /// fill (`burst * T`, in nanoseconds). A bucket's value, the time it is full again, reads
    /// as equally full under any limit with that fill time, so a reload keeps buckets unless
    /// the fill time changes.
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
            let period_ns = u128::from(rate.period_ms) * 1_000_000;
            let count = u128::from(rate.count);
            if count > period_ns {
                return Err(format!(
                    "limit {name:?}: {} is more than one request a nanosecond, the limiter's resolution",
                    l.rate
                ));
            }
            // T = period / count, rounded up so the limit never lets more through.
            let interval = period_ns.div_ceil(count);
            let fill = u128::from(burst).saturating_mul(interval);
            if fill > MAX_FILL_NS {
                return Err(format!(
                    "limit {name:?}: burst {burst} at {} takes more than a year to refill; use a shorter period or a smaller `burst`",
                    l.rate
                ));
            }
            // Both at most `fill`, so they fit.
            let bucket = Bucket {
                interval_ns: interval as u64,
                tolerance_ns: (fill - interval) as u64,
            };
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
                bucket,
                rate: l.rate.trim().into(),
                key_prefix: format!("{name}\u{1f}{fill}").into(),
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
