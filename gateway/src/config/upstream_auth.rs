//! `[upstreams.<name>.auth]`: the credential an HTTP upstream receives.
//!
//! The client's own `Authorization` never goes upstream (the MCP authorization spec: a
//! server "MUST NOT accept or transit any other tokens"). An upstream gets either nothing,
//! a static secret (`kind = "static"`, the same as the older `bearer-token` key), or a token
//! made for it and for this caller (`kind = "token-exchange"`: RFC 8693 at the provider's
//! token endpoint, the caller's accepted bearer token as the subject, the upstream's
//! `audience` / RFC 8707 `resource`). The token endpoint is given (`token-endpoint`) or found
//! from the provider's `issuer` by discovery (OpenID Connect Discovery, then RFC 8414). The
//! runtime side is `upstream/credential.rs` and `upstream/credential/discovery.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::UpstreamConfig;
use super::env;
use super::load::{ConfigError, key_line, line_of};

/// `[upstreams.<name>.auth]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UpstreamAuth {
    /// `static` or `token-exchange`.
    pub kind: AuthKind,
    /// `static`: sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// `token-exchange`: the provider's OAuth token endpoint (`https://`; `http://` only on
    /// a loopback address). Or give `issuer` instead.
    pub token_endpoint: Option<String>,
    /// `token-exchange`: the provider's issuer identifier; the token endpoint is discovered
    /// from `<issuer>/.well-known/openid-configuration` (then RFC 8414's
    /// `/.well-known/oauth-authorization-server`), whose `issuer` must equal this exactly.
    pub issuer: Option<String>,
    /// `token-exchange` with `issuer`: how long a discovered token endpoint is used before
    /// the document is fetched again. Default 1h, at most 24h.
    #[serde(default, with = "humantime_serde")]
    pub discovery_ttl: Option<Duration>,
    /// `token-exchange`: the gateway's client id at the provider.
    pub client_id: Option<String>,
    /// `token-exchange`: its secret. Write `${ENV_NAME}` to keep it out of the file.
    pub client_secret: Option<String>,
    /// `token-exchange`: how the client authenticates: `basic` (HTTP Basic,
    /// `client_secret_basic`, the default) or `post` (`client_secret_post`).
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
    /// `token-exchange`: the `audience` parameter: the logical name of the upstream at the
    /// provider.
    pub audience: Option<String>,
    /// `token-exchange`: the `resource` parameter (RFC 8707): the upstream's URI.
    pub resource: Option<String>,
    /// `token-exchange`: the `scope` parameter (space-separated).
    pub scope: Option<String>,
    /// `token-exchange`: an exchanged token is used until this long before it expires, then
    /// exchanged again. Default 30s (never more than half the token's lifetime).
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    pub refresh_before: Duration,
    /// `token-exchange`: longest wait for the token endpoint, connect included. Default 10s.
    #[serde(default = "default_exchange_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `token-exchange`: most exchanged tokens kept (one per caller token); the oldest-
    /// expiring ones are dropped beyond it. Default 4096.
    #[serde(default = "default_max_cached")]
    pub max_cached: usize,
}

/// Kinds of upstream credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    /// One configured secret for every caller.
    Static,
    /// RFC 8693 token exchange per caller.
    TokenExchange,
}

/// How the gateway authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` with the form-encoded id and secret (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

impl std::fmt::Debug for UpstreamAuth {
    /// Secrets never reach a log: only whether they are set.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamAuth")
            .field("kind", &self.kind)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("token_endpoint", &self.token_endpoint)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("client_auth", &self.client_auth)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A token endpoint answer cannot carry a longer access token (bounds what the cache holds).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A discovered token endpoint is used this long before the discovery document is fetched
/// again: providers move their endpoints rarely, and an hour bounds how long a move (or a
/// provider that was replaced) goes unnoticed. `discovery-ttl` overrides it.
pub const DEFAULT_DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Longest `discovery-ttl`: a day.
pub const MAX_DISCOVERY_TTL: Duration = Duration::from_secs(24 * 3600);

fn default_refresh_before() -> Duration {
    Duration::from_secs(30)
}

fn default_exchange_timeout() -> Duration {
    Duration::from_secs(10)
}

/// 4096 callers' tokens of at most [`MAX_TOKEN_BYTES`] each: 32 MiB at worst per upstream,
/// a few MiB with real (1-2 KiB) tokens.
fn default_max_cached() -> usize {
    4096
}

/// Expands `${ENV}` in the `auth` table of upstream `name`, checks it, and turns
/// `kind = "static"` into the `bearer-token` it is the same as.
pub(super) fn check(
    name: &str,
    up: &mut UpstreamConfig,
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Some(auth) = up.auth.as_mut() else {
        return Ok(());
    };
    let table = line_of(text, &format!("[upstreams.{name}.auth]"));
    let err = |key: &str, message: String| ConfigError {
        file: file.to_string(),
        line: key_line(text, table, key).or(table),
        field: format!("upstreams.{name}.auth.{key}"),
        message,
    };
    for (key, value) in [
        ("token", &mut auth.token),
        ("token-endpoint", &mut auth.token_endpoint),
        ("issuer", &mut auth.issuer),
        ("client-id", &mut auth.client_id),
        ("client-secret", &mut auth.client_secret),
        ("audience", &mut auth.audience),
        ("resource", &mut auth.resource),
        ("scope", &mut auth.scope),
    ] {
        if let Some(v) = value.as_mut() {
            *v = env::expand(v, lookup).map_err(|m| err(key, m))?;
            if v.trim().is_empty() {
                return Err(err(key, "must not be empty".into()));
            }
        }
    }
    if up.command.is_some() {
        return Err(err(
            "kind",
            "applies to HTTP upstreams (`url`) only: a stdio upstream gets no HTTP credential"
                .into(),
        ));
    }
    if up.bearer_token.is_some() {
        return Err(err(
            "kind",
            format!("set `bearer-token` or [upstreams.{name}.auth], not both"),
        ));
    }
    if up
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("authorization"))
    {
        return Err(err(
            "kind",
            format!("set `Authorization` in `headers` or [upstreams.{name}.auth], not both"),
        ));
    }
    let exchange_keys = [
        ("token-endpoint", auth.token_endpoint.is_some()),
        ("issuer", auth.issuer.is_some()),
        ("discovery-ttl", auth.discovery_ttl.is_some()),
        ("client-id", auth.client_id.is_some()),
        ("client-secret", auth.client_secret.is_some()),
        ("audience", auth.audience.is_some()),
        ("resource", auth.resource.is_some()),
        ("scope", auth.scope.is_some()),
    ];
    match auth.kind {
        AuthKind::Static => {
            if let Some((key, _)) = exchange_keys.iter().find(|(_, set)| *set) {
                return Err(err(key, "applies to kind = \"token-exchange\" only".into()));
            }
            let Some(token) = auth.token.take() else {
                return Err(err("token", "kind = \"static\" needs `token`".into()));
            };
            if http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                // Never print the value: it is a secret.
                return Err(err("token", "is not a valid header value".into()));
            }
            up.bearer_token = Some(token);
            up.auth = None;
        }
        AuthKind::TokenExchange => {
            if auth.token.is_some() {
                return Err(err("token", "applies to kind = \"static\" only".into()));
            }
            for (key, set) in &exchange_keys[3..5] {
                if !set {
                    return Err(err(key, "kind = \"token-exchange\" needs it".into()));
                }
            }
            match (&auth.token_endpoint, &auth.issuer) {
                (None, None) => {
                    return Err(err(
                        "token-endpoint",
                        "kind = \"token-exchange\" needs `token-endpoint`, or `issuer` to discover it".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(err(
                        "issuer",
                        "set `token-endpoint` or `issuer` (to discover it), not both".into(),
                    ));
                }
                (Some(endpoint), None) => {
                    let u = reqwest::Url::parse(endpoint)
                        .map_err(|e| err("token-endpoint", format!("invalid URL: {e}")))?;
                    secure_endpoint(&u).map_err(|m| err("token-endpoint", m))?;
                    if auth.discovery_ttl.is_some() {
                        return Err(err("discovery-ttl", "applies with `issuer` only".into()));
                    }
                }
                (None, Some(issuer)) => {
                    let u = reqwest::Url::parse(issuer)
                        .map_err(|e| err("issuer", format!("invalid URL: {e}")))?;
                    secure_endpoint(&u).map_err(|m| err("issuer", m))?;
                    // RFC 8414 §2 and OpenID Connect Discovery §2: an issuer has neither.
                    if u.query().is_some() || u.fragment().is_some() {
                        return Err(err(
                            "issuer",
                            "must not contain a query or a fragment (an issuer identifier has neither)".into(),
                        ));
                    }
                    let ttl = auth.discovery_ttl.get_or_insert(DEFAULT_DISCOVERY_TTL);
                    if ttl.is_zero() || *ttl > MAX_DISCOVERY_TTL {
                        return Err(err(
                            "discovery-ttl",
                            "must be positive and at most 24h".into(),
                        ));
                    }
                }
            }
            if auth.audience.is_none() && auth.resource.is_none() {
                return Err(err(
                    "audience",
                    "set `audience` or `resource` (or both): the exchanged token must be made for this upstream".into(),
                ));
            }
            if let Some(resource) = &auth.resource {
                match reqwest::Url::parse(resource) {
                    Ok(u) if u.fragment().is_none() => {}
                    Ok(_) => {
                        return Err(err(
                            "resource",
                            "must not contain a fragment (RFC 8707)".into(),
                        ));
                    }
                    Err(e) => {
                        return Err(err(
                            "resource",
                            format!("must be an absolute URI (RFC 8707): {e}"),
                        ));
                    }
                }
            }
            if auth.timeout.is_zero() {
                return Err(err("timeout", "must be positive".into()));
            }
            if auth.max_cached == 0 {
                return Err(err("max-cached", "must be at least 1".into()));
            }
        }
    }
    Ok(())
}

/// The rule for every URL the client secret or tokens cross (a token endpoint, given or
/// discovered) and for an issuer: `https://`, or `http://` on a loopback address.
pub fn secure_endpoint(u: &reqwest::Url) -> Result<(), String> {
    match u.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(u) => Ok(()),
        "http" => Err("must be https:// (the client secret and tokens cross it); http:// is accepted on a loopback address only".into()),
        _ => Err("must be an https:// URL".into()),
    }
}

fn is_loopback(u: &reqwest::Url) -> bool {
    match u.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn check(auth: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[upstreams.gh]\nurl = \"https://gh.internal/mcp\"\n\n[upstreams.gh.auth]\n{auth}"
        );
        parse(&text, "t.toml", &|n| {
            (n == "SECRET").then(|| "s3cr3t".to_string())
        })
        .map_err(|e| e.to_string())
    }

    const EXCHANGE: &str = "kind = \"token-exchange\"\ntoken-endpoint = \"https://login.example.com/token\"\nclient-id = \"portcullis\"\nclient-secret = \"${SECRET}\"\n";

    #[test]
    fn a_token_exchange_is_accepted_with_its_secret_from_the_environment() {
        let c = check(&format!(
            "{EXCHANGE}audience = \"gh\"\nresource = \"https://gh.internal/mcp\"\n"
        ))
        .unwrap();
        let auth = c.upstreams["gh"].auth.as_ref().unwrap();
        assert_eq!(auth.client_secret.as_deref(), Some("s3cr3t"));
        assert!(
            !format!("{auth:?}").contains("s3cr3t"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn static_is_the_bearer_token() {
        let c = check("kind = \"static\"\ntoken = \"${SECRET}\"\n").unwrap();
        assert_eq!(c.upstreams["gh"].bearer_token.as_deref(), Some("s3cr3t"));
        assert!(c.upstreams["gh"].auth.is_none());
    }

    #[test]
    fn mistakes_get_errors_naming_the_key() {
        let cases = [
            (EXCHANGE.to_string(), "upstreams.gh.auth.audience: set `audience` or `resource`"),
            ("kind = \"token-exchange\"\nclient-id = \"a\"\nclient-secret = \"b\"\naudience = \"x\"\n".into(), "auth.token-endpoint: kind = \"token-exchange\" needs `token-endpoint`, or `issuer`"),
            (EXCHANGE.replace("https://login", "http://login") + "audience = \"x\"\n", "http:// is accepted on a loopback address only"),
            (format!("{EXCHANGE}resource = \"https://gh/#x\"\n"), "must not contain a fragment"),
            (format!("{EXCHANGE}resource = \"gh\"\n"), "must be an absolute URI"),
            (format!("{EXCHANGE}audience = \"x\"\nmax-cached = 0\n"), "max-cached: must be at least 1"),
            ("kind = \"static\"\n".into(), "auth.token: kind = \"static\" needs `token`"),
            ("kind = \"static\"\ntoken = \"t\"\naudience = \"x\"\n".into(), "auth.audience: applies to kind = \"token-exchange\" only"),
            (format!("{EXCHANGE}audience = \"x\"\nclient-secret2 = \"x\"\n"), "unknown field"),
            ("kind = \"static\"\ntoken = \"${MISSING}\"\n".into(), "environment variable MISSING is not set"),
        ];
        for (auth, want) in cases {
            let e = check(&auth).expect_err(&auth);
            assert!(e.contains(want), "{auth}\n→ {e}");
        }
        let loopback = EXCHANGE.replace("https://login.example.com", "http://127.0.0.1:9")
            + "audience = \"x\"\n";
        check(&loopback).expect("http on loopback");
    }

    #[test]
    fn auth_is_for_http_upstreams_and_excludes_bearer_token() {
        let stdio = "[upstreams.gh]\ncommand = \"x\"\n\n[upstreams.gh.auth]\nkind = \"static\"\ntoken = \"t\"\n";
        let e = parse(stdio, "t.toml", &|_| None).unwrap_err().to_string();
        assert!(e.contains("applies to HTTP upstreams"), "{e}");
        let both = "[upstreams.gh]\nurl = \"https://gh/mcp\"\nbearer-token = \"a\"\n\n[upstreams.gh.auth]\nkind = \"static\"\ntoken = \"t\"\n";
        let e = parse(both, "t.toml", &|_| None).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
    }

    /// `token-exchange` by issuer: the token endpoint is left to discovery.
    const BY_ISSUER: &str = "kind = \"token-exchange\"\nissuer = \"https://login.example.com/realms/acme\"\nclient-id = \"portcullis\"\nclient-secret = \"${SECRET}\"\naudience = \"gh\"\n";

    #[test]
    fn an_issuer_stands_in_for_the_token_endpoint() {
        let c = check(BY_ISSUER).unwrap();
        let auth = c.upstreams["gh"].auth.as_ref().unwrap();
        assert_eq!(
            auth.issuer.as_deref(),
            Some("https://login.example.com/realms/acme")
        );
        assert!(auth.token_endpoint.is_none());
        assert_eq!(
            auth.discovery_ttl,
            Some(super::DEFAULT_DISCOVERY_TTL),
            "the default lifetime is filled in"
        );
        let c = check(&format!("{BY_ISSUER}discovery-ttl = \"5m\"\n")).unwrap();
        assert_eq!(
            c.upstreams["gh"].auth.as_ref().unwrap().discovery_ttl,
            Some(std::time::Duration::from_secs(300))
        );
        check(&BY_ISSUER.replace("https://login.example.com", "http://[::1]:8080"))
            .expect("http on loopback");
    }

    #[test]
    fn issuer_mistakes_get_errors_naming_the_key() {
        let cases = [
            (
                format!("{BY_ISSUER}token-endpoint = \"https://login.example.com/token\"\n"),
                "auth.issuer: set `token-endpoint` or `issuer` (to discover it), not both",
            ),
            (
                BY_ISSUER.replace("https://login", "http://login"),
                "auth.issuer: must be https://",
            ),
            (
                BY_ISSUER.replace("/realms/acme", "/realms/acme?x=1"),
                "auth.issuer: must not contain a query or a fragment",
            ),
            (
                BY_ISSUER.replace("https://login", "ftp://login"),
                "auth.issuer: must be an https:// URL",
            ),
            (
                BY_ISSUER.replace("https://login.example.com", "login.example.com"),
                "auth.issuer: invalid URL",
            ),
            (
                format!("{BY_ISSUER}discovery-ttl = \"25h\"\n"),
                "auth.discovery-ttl: must be positive and at most 24h",
            ),
            (
                format!("{BY_ISSUER}discovery-ttl = \"0s\"\n"),
                "auth.discovery-ttl: must be positive",
            ),
            (
                format!("{EXCHANGE}audience = \"x\"\ndiscovery-ttl = \"1h\"\n"),
                "auth.discovery-ttl: applies with `issuer` only",
            ),
            (
                "kind = \"static\"\ntoken = \"t\"\nissuer = \"https://x\"\n".into(),
                "auth.issuer: applies to kind = \"token-exchange\" only",
            ),
        ];
        for (auth, want) in cases {
            let e = check(&auth).expect_err(&auth);
            assert!(e.contains(want), "{auth}\n→ {e}");
        }
    }
}
