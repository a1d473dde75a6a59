//! `rate-limit`: limits on how often callers may call, per subject, tenant, tool, upstream,
//! method or session, in any combination. Operators' guide: `docs/rate-limit.md`.
//!
//! Request phase only. Each limit that applies to a request (by method, tool, upstream and
//! caller; see [`Limit`]) takes one request from the request's bucket; the bucket is named
//! by the limit and the values of its `per` keys. The first limit with an empty bucket
//! refuses the request, and what earlier limits took is given back, so a refused request
//! consumes nothing. The limiter (an exact token bucket) and its exactness are described in
//! [`bucket`].
//!
//! A refusal is the JSON-RPC error [`RATE_LIMITED`] (-32029) with `data.retryAfterMs` (and
//! `data.limit`, `data.rate`), at HTTP 429 with a `Retry-After` header (whole seconds,
//! rounded up) unless the sidecar sets `http-status`.
//!
//! Notifications are never limited (refusing one cannot tell the client anything), and
//! neither is anything when no limit applies.
//!
//! Buckets live in the gateway's key-value store under this plugin's name, so they survive
//! a reload of the plugin (and of its sidecar); they are per gateway process.

pub mod bucket;
mod config;
pub use policy_matchers::glob;
mod rate;

use std::cell::OnceCell;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_sdk::prelude::*;

use bucket::Outcome;
pub use config::{Config, Key, Limit};
use glob::any_match;
use policy_matchers::caller;

/// The JSON-RPC error code of a refusal: in the server range (-32000 to -32099), and ending
/// in 29 after HTTP 429 so it is easy to recognise.
pub const RATE_LIMITED: i32 = -32029;

/// The retry a request is told when its bucket was too contended to decide (see
/// [`Outcome::Contended`]): such a crowd is gone within microseconds, so soon.
const CONTENDED_RETRY_MS: u64 = 10;

/// The policy.
pub struct RateLimit;

impl Policy for RateLimit {
    type Config = Config;

    fn describe() -> Info {
        Info::new("rate-limit", env!("CARGO_PKG_VERSION"), Stage::Custom)
            .with_phases(&[Phase::Request])
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        check(config, msg, wall_clock)
    }
}

export_policy!(RateLimit);

/// The host's wall clock (WASI), the same in every instance: time since 1970.
fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

/// [`RateLimit::evaluate`] with a given clock (time since 1970): what the native tests
/// drive. It is read before the first limit and again if a later limit refuses.
pub fn check(config: &Config, msg: &Message, clock: impl Fn() -> Duration) -> Verdict {
    let method = msg.method();
    if !msg.is_request() || method.starts_with("notifications/") {
        return Verdict::allow();
    }
    let facts = Facts {
        msg,
        upstream: OnceCell::new(),
        upstream_target: OnceCell::new(),
        session: OnceCell::new(),
    };
    let mut taken: Vec<(String, &Limit, u64)> = Vec::new();
    for limit in config.limits.iter().filter(|l| facts.applies(l)) {
        let key = facts.bucket(limit);
        let retry_ms = match bucket::acquire(&key, limit.bucket, || nanos(clock())) {
            Outcome::Granted { tat } => {
                taken.push((key, limit, tat));
                continue;
            }
            Outcome::Refused { retry_ms } => {
                log::info(&format!(
                    "refused {method} {}: limit {:?} ({}) reached; retry in {retry_ms} ms",
                    msg.target().unwrap_or("-"),
                    limit.name,
                    limit.rate
                ));
                retry_ms
            }
            // Fail safe: a limit that cannot tell whether a request fits does not let it
            // through.
            Outcome::Contended => {
                log::warn(&format!(
                    "refused {method} {}: limit {:?} ({}) too contended to decide after {} tries",
                    msg.target().unwrap_or("-"),
                    limit.name,
                    limit.rate,
                    bucket::MAX_ATTEMPTS
                ));
                CONTENDED_RETRY_MS
            }
        };
        if !taken.is_empty() {
            // Afresh: what earlier limits took may have partly refilled meanwhile.
            give_back(&taken, nanos(clock()));
        }
        return refusal(config, limit, retry_ms);
    }
    Verdict::allow()
}

/// Gives back what earlier limits took from a request a later limit refused.
fn give_back(taken: &[(String, &Limit, u64)], now: u64) {
    for (key, limit, tat) in taken {
        if !bucket::release(key, limit.bucket, *tat, now) {
            log::warn(&format!(
                "limit {:?} ({}): could not give back a refused request's share after {} tries; the bucket is one request short",
                limit.name,
                limit.rate,
                bucket::MAX_ATTEMPTS
            ));
        }
    }
}

/// The refusal: JSON-RPC error with the retry time, and HTTP 429 + `Retry-After`.
fn refusal(config: &Config, limit: &Limit, retry_ms: u64) -> Verdict {
    let denial = Denial::new(
        RATE_LIMITED,
        format!(
            "rate limit exceeded ({}: {}); retry in {}.{:03} s",
            limit.name,
            limit.rate,
            retry_ms / 1000,
            retry_ms % 1000
        ),
    )
    .with_data(json!({ "retryAfterMs": retry_ms, "limit": &*limit.name, "rate": &*limit.rate }));
    if config.http_status == 200 {
        return denial.into();
    }
    denial
        .with_http_status(config.http_status)
        .with_header("Retry-After", retry_ms.div_ceil(1000).max(1).to_string())
        .into()
}

/// What limits are matched and keyed on, read from the message once each.
struct Facts<'m> {
    msg: &'m Message<'m>,
    upstream: OnceCell<Option<String>>,
    upstream_target: OnceCell<Option<String>>,
    session: OnceCell<Option<String>>,
}

impl Facts<'_> {
    fn session(&self) -> Option<&str> {
        self.session.get_or_init(|| self.msg.session()).as_deref()
    }

    fn upstream(&self) -> Option<&str> {
        self.upstream.get_or_init(|| self.msg.upstream()).as_deref()
    }

    fn upstream_target(&self) -> Option<&str> {
        self.upstream_target
            .get_or_init(|| self.msg.upstream_target())
            .as_deref()
    }

    fn identity(&self) -> Option<&Identity> {
        self.msg.identity()
    }

    fn applies(&self, limit: &Limit) -> bool {
        let method = self.msg.method();
        if !any_match(&limit.methods, method) {
            return false;
        }
        if let Some(tools) = &limit.tools {
            // The name as the client sent it, or the tool's own name at its upstream.
            let named = |n: Option<&str>| n.is_some_and(|n| any_match(tools, n));
            if method != "tools/call"
                || !(named(self.msg.target()) || named(self.upstream_target()))
            {
                return false;
            }
        }
        if let Some(upstreams) = &limit.upstreams
            && !self.upstream().is_some_and(|u| any_match(upstreams, u))
        {
            return false;
        }
        // Requests without a session (`initialize`, the stateless protocol) would all share
        // one bucket: a per-session limit does not count them.
        if limit.per.contains(&Key::Session) && self.session().is_none() {
            return false;
        }
        // A condition on the caller never holds without an identity.
        let conditions = [&limit.subjects, &limit.roles, &limit.tenants];
        match self.identity() {
            None => conditions.iter().all(|c| c.is_none()),
            Some(id) => {
                caller::subject(limit.subjects.as_deref(), id)
                    && caller::roles(limit.roles.as_deref(), id)
                    && caller::tenant(limit.tenants.as_deref(), id)
            }
        }
    }

    /// The bucket's name: the limit's prefix, then each `per` value length-prefixed (so no
    /// value can pass for two).
    fn bucket(&self, limit: &Limit) -> String {
        let mut key = String::with_capacity(limit.key_prefix.len() + 48);
        key.push_str(&limit.key_prefix);
        for k in &limit.per {
            let value = match k {
                Key::Subject => self.identity().map_or("", |i| i.subject.as_str()),
                Key::Tenant => self
                    .identity()
                    .and_then(|i| i.tenant.as_deref())
                    .unwrap_or(""),
                Key::Tool => self.msg.target().unwrap_or(self.msg.method()),
                Key::Upstream => self.upstream().unwrap_or(""),
                Key::Method => self.msg.method(),
                Key::Session => self.session().unwrap_or(""),
            };
            let _ = write!(key, "\u{1f}{}:{value}", value.len());
        }
        key
    }
}

#[cfg(test)]
mod tests;
