//! Keys fetched from the identity provider: `jwks-url`, or OIDC discovery from the `issuer`
//! (`discover = true`: `<issuer>/.well-known/openid-configuration` → `jwks_uri`).
//!
//! The plugin fetches over `wasi:http` (the sidecar must grant the provider's origin) and keeps
//! what it fetched in the gateway's key-value store, so a fresh instance per call does not
//! mean a fetch per call:
//!
//! - **Fresh** for the provider's `Cache-Control: max-age` (`Expires` is not read), clamped to
//!   `jwks-min-seconds`…`jwks-max-seconds`; without caching headers, 5 minutes (clamped too).
//!   `no-store`/`no-cache` count as `jwks-min-seconds`.
//! - **Unknown `kid`**: the set is fetched again at once, at most once per
//!   `jwks-refresh-seconds` (a provider that rotated keys is followed within seconds; a flood
//!   of made-up `kid`s costs one fetch per interval).
//! - **Provider unreachable** (or answering garbage): the last good set keeps working for
//!   `jwks-stale-seconds` past its freshness, with a warning each time a fetch fails; after
//!   that, tokens are refused with 503 until the provider answers. Failed fetches are retried
//!   at most once per `jwks-refresh-seconds`, so a provider that is down does not make every
//!   request wait for a timeout.
//! - The discovery document is cached the same way; its `issuer` must be exactly the
//!   configured one (OpenID Connect Discovery §4.3).
//!
//! Entries are keyed by URL (`jwks:<url>`, `oidc:<issuer>`) and are only ever written from a
//! successful, parsed response.

use std::time::Duration;

use portcullis_sdk::http;
use portcullis_sdk::kv;
use portcullis_sdk::serde_json::{self, Value};
use serde::{Deserialize, Serialize};

use crate::jwk::{self, Key};

/// Largest document read from the provider.
pub const MAX_BYTES: usize = 256 * 1024;
/// Per request (the gateway's `grants.http-timeout` may cut it shorter).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Freshness when the provider sends no caching headers (clamped to the configured bounds).
const DEFAULT_FRESH: i64 = 300;

/// Where the keys come from, and how long they are kept.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `jwks-url`, or the issuer to discover it from.
    pub source: Source,
    /// Bounds on freshness, seconds.
    pub min_fresh: i64,
    /// See [`Remote::min_fresh`].
    pub max_fresh: i64,
    /// Least time between two fetches caused by unknown `kid`s or failures, seconds.
    pub refresh: i64,
    /// How long past its freshness the last good set is used when the provider cannot be
    /// reached, seconds.
    pub stale: i64,
}

/// `jwks-url` or discovery.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JWKS URL.
    Jwks(String),
    /// The issuer, whose discovery document names the JWKS URL.
    Discover(String),
}

/// A cached document.
#[derive(Serialize, Deserialize)]
struct Entry {
    /// When it was fetched.
    fetched: i64,
    /// Until when it is fresh.
    fresh_until: i64,
    /// The JWKS text, or the discovery document's `jwks_uri`.
    value: String,
}

/// Why no keys could be had: the keys are unavailable (503), not the token bad.
pub type Unavailable = String;

impl Remote {
    /// The provider's keys: from the store while fresh, else fetched; `unknown_kid` asks for a
    /// fetch now (rate-limited) because a token names a key the cached set does not have.
    pub fn keys(&self, now: i64, unknown_kid: bool) -> Result<Vec<Key>, Unavailable> {
        let url = self.jwks_url(now)?;
        let text = self.document(&format!("jwks:{url}"), &url, now, unknown_kid, |body| {
            let set: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON ({e})"))?;
            jwk::parse_jwks(&set, jwk::Mode::Lenient)?;
            String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_string())
        })?;
        let set: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))?;
        let parsed =
            jwk::parse_jwks(&set, jwk::Mode::Lenient).map_err(|e| format!("{url}: {e}"))?;
        Ok(parsed.keys)
    }

    /// True when a fetch for an unknown `kid` is allowed now (once per `jwks-refresh-seconds`).
    pub fn may_refresh(&self, now: i64) -> bool {
        let url = match &self.source {
            Source::Jwks(url) => url.clone(),
            Source::Discover(issuer) => issuer.clone(),
        };
        self.attempt(&format!("kid:{url}"), now)
    }

    fn jwks_url(&self, now: i64) -> Result<String, Unavailable> {
        match &self.source {
            Source::Jwks(url) => Ok(url.clone()),
            Source::Discover(issuer) => {
                let url = discovery_url(issuer);
                self.document(&format!("oidc:{issuer}"), &url, now, false, |body| {
                    jwks_uri(issuer, body)
                })
            }
        }
    }

    /// One cached document: `key` in the store, fetched from `url` when stale (or `force`d),
    /// checked and reduced by `accept` before it is stored.
    fn document(
        &self,
        key: &str,
        url: &str,
        now: i64,
        force: bool,
        accept: impl Fn(&[u8]) -> Result<String, String>,
    ) -> Result<String, Unavailable> {
        let cached: Option<Entry> = kv::get(key).and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(entry) = &cached
            && now < entry.fresh_until
            && !force
        {
            return Ok(entry.value.clone());
        }
        // Stale (or forced): one caller per interval tries the provider; the others keep
        // using the last good document while it is within its staleness bound.
        let usable = cached
            .as_ref()
            .filter(|e| now < e.fresh_until.saturating_add(self.stale));
        if let Some(entry) = usable
            && !force
            && !self.attempt(&format!("try:{key}"), now)
        {
            return Ok(entry.value.clone());
        }
        match fetch(url).and_then(|(body, max_age)| Ok((accept(&body)?, max_age))) {
            Ok((value, max_age)) => {
                let fresh = max_age
                    .unwrap_or(DEFAULT_FRESH)
                    .clamp(self.min_fresh, self.max_fresh);
                let entry = Entry {
                    fetched: now,
                    fresh_until: now.saturating_add(fresh),
                    value: value.clone(),
                };
                if let Ok(bytes) = serde_json::to_vec(&entry) {
                    // Kept a day past its last usable second, so that a refusal can say
                    // how old the last good copy is; never used past fresh + stale.
                    let ttl = fresh.saturating_add(self.stale).saturating_add(86_400) as u64;
                    kv::set(key, &bytes, Some(Duration::from_secs(ttl)));
                }
                Ok(value)
            }
            Err(why) => match usable {
                Some(entry) => {
                    portcullis_sdk::log::warn(&format!(
                        "{url}: {why}; using the copy fetched {}s ago (usable for {}s more)",
                        now - entry.fetched,
                        entry.fresh_until.saturating_add(self.stale) - now
                    ));
                    Ok(entry.value.clone())
                }
                None => Err(match &cached {
                    Some(entry) => format!(
                        "{url}: {why}; the last good copy (fetched {}s ago) is past jwks-stale-seconds",
                        now - entry.fetched
                    ),
                    None => format!("{url}: {why}"),
                }),
            },
        }
    }

    /// True for the first caller per `jwks-refresh-seconds` under `key`.
    fn attempt(&self, key: &str, _now: i64) -> bool {
        let interval = Duration::from_secs(self.refresh.max(1) as u64);
        kv::incr(key, 1, Some(interval)) == 1
    }
}

/// `<issuer>/.well-known/openid-configuration` (a trailing `/` of the issuer is dropped).
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The `jwks_uri` of a discovery document, which must be for `issuer`.
fn jwks_uri(issuer: &str, body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let doc: Discovery = serde_json::from_slice(body)
        .map_err(|e| format!("not an OpenID discovery document ({e})"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "the discovery document is for issuer {:?}, not {issuer:?}",
            doc.issuer
        ));
    }
    check_url("jwks_uri", &doc.jwks_uri)?;
    Ok(doc.jwks_uri)
}

/// An absolute `https://` URL, or `http://` (for a provider on the same host or network).
pub fn check_url(what: &str, url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty() && !rest.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!("{what}: {url:?} is not an absolute http(s) URL")),
    }
}

/// GETs `url`: the body and the freshness its caching headers give (seconds).
fn fetch(url: &str) -> Result<(Vec<u8>, Option<i64>), String> {
    let response = http::get(url, &[("accept", "application/json")], TIMEOUT, MAX_BYTES)
        .map_err(|e| match e {
            http::Error::Denied => "refused by the gateway: grant the provider's origin in the sidecar ([grants] http = [\"https://…\"])".to_string(),
            http::Error::Failed(why) => format!("unreachable ({why})"),
        })?;
    if response.status != 200 {
        return Err(format!("answered HTTP {}", response.status));
    }
    let fresh = max_age(&response);
    Ok((response.body, fresh))
}

/// Seconds of freshness from `Cache-Control` (`no-store`/`no-cache`: 0; `max-age`). Without
/// it the default applies (`Expires` is not read: providers send `max-age` with it).
fn max_age(response: &http::Response) -> Option<i64> {
    let cc = response.header("cache-control")?;
    let mut age = None;
    for directive in cc.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v.trim_matches('"').parse::<i64>().ok();
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_gives_the_freshness() {
        let r = |cc: &str| max_age(&http::Response::new(200, "").with_header("Cache-Control", cc));
        assert_eq!(r("public, max-age=3600"), Some(3600));
        assert_eq!(r("no-store"), Some(0));
        assert_eq!(r("max-age=60, no-cache"), Some(0));
        assert_eq!(r("public"), None);
        assert_eq!(max_age(&http::Response::new(200, "")), None);
    }

    #[test]
    fn discovery_is_for_the_configured_issuer_only() {
        let doc = |iss: &str, uri: &str| {
            format!(r#"{{"issuer":"{iss}","jwks_uri":"{uri}","token_endpoint":"x"}}"#)
        };
        let iss = "https://idp.example/realms/a";
        assert_eq!(
            jwks_uri(iss, doc(iss, "https://idp.example/certs").as_bytes()).unwrap(),
            "https://idp.example/certs"
        );
        assert!(
            jwks_uri(
                iss,
                doc("https://evil.example", "https://idp.example/c").as_bytes()
            )
            .is_err()
        );
        assert!(jwks_uri(iss, doc(iss, "file:///etc/passwd").as_bytes()).is_err());
        assert!(jwks_uri(iss, b"{}").is_err());
        assert_eq!(
            discovery_url("https://t.auth0.com/"),
            "https://t.auth0.com/.well-known/openid-configuration"
        );
    }
}
