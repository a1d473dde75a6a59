//! Portcullis's authentication policy (stage `authn`, request phase).
//!
//! Establishes who is calling from an API key or a JWT bearer token and sets the message's
//! identity (plus the attribute `authn.method`), or refuses the request at the HTTP level:
//!
//! - no credentials: 401 with `WWW-Authenticate: Bearer resource_metadata="…"` (and
//!   `scope="…"` when `required-scopes` is set), unless anonymous access is configured;
//! - bad credentials: the same 401 with `error="invalid_token"` added;
//! - a valid JWT without the `required-scopes`: 403 with `error="insufficient_scope"`.
//!
//! A JWT's identity, once verified, is kept in the gateway's key-value store for the next
//! request with the same token (at most `cache-seconds`, never past `exp`): see `cache.rs`.
//!
//! Clients get a generic message; the precise reason goes to the gateway's log. The
//! operator's guide is `docs/authn.md`; the settings are described on [`Config`].
//!
//! API keys are configured only as hashes: [`hash_key`] defines the hash; `portcullis authn
//! new-key` makes a key in the recommended format (`pk_` + 32 random bytes in base64url).
#![deny(missing_docs)]

mod apikey;
mod cache;
mod config;
mod json;
mod jwk;
mod jwt;
mod remote;
mod time;
#[cfg(feature = "jsonwebtoken")]
mod via_jsonwebtoken;

use portcullis_sdk::prelude::*;

pub use apikey::{KEY_PREFIX, hash_key};
pub use config::Config;

use config::JwtConfig;

/// The attribute naming how the caller authenticated: `api-key`, `jwt` or `anonymous`.
pub const METHOD: &str = "authn.method";

/// The JSON-RPC message of a 401.
pub const UNAUTHENTICATED_MESSAGE: &str = "authentication required";
/// The JSON-RPC message of a 403 for missing scopes.
pub const INSUFFICIENT_SCOPE_MESSAGE: &str = "insufficient scope";
/// The JSON-RPC message when the keys cannot be read (HTTP 503).
pub const UNAVAILABLE_MESSAGE: &str = "authentication unavailable";

/// The policy.
pub struct Authn;

impl Policy for Authn {
    type Config = Config;

    fn describe() -> Info {
        Info::new("authn", env!("CARGO_PKG_VERSION"), Stage::Authn).with_phases(&[Phase::Request])
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        authenticate(config, msg, time::now())
    }
}

export_policy!(Authn);

/// What the request carries.
enum Credential {
    /// Nothing: no `Authorization`, no API key header.
    None,
    /// An `Authorization` header with another scheme (e.g. `Basic`).
    OtherScheme,
    /// An API key, and the header it came in.
    Key(String, String),
    /// A JWT from `Authorization: Bearer`.
    Token(String),
}

fn credential(config: &Config, msg: &Message) -> Credential {
    if let Some(header) = &config.api_key_header
        && let Some(value) = msg.header(header)
    {
        return Credential::Key(value.trim().to_string(), header.clone());
    }
    let Some(value) = msg.header("authorization") else {
        return Credential::None;
    };
    let value = value.trim();
    let (scheme, rest) = value
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::OtherScheme;
    }
    let token = rest.trim();
    if config.jwt.is_some() && jwt::looks_like_jwt(token) {
        Credential::Token(token.to_string())
    } else {
        Credential::Key(token.to_string(), "authorization".into())
    }
}

/// [`Policy::evaluate`] at a given time (seconds since the Unix epoch).
pub fn authenticate(config: &Config, msg: &Message, now: i64) -> Verdict {
    match credential(config, msg) {
        Credential::None => match &config.anonymous {
            Some(identity) => success(identity.clone(), "anonymous"),
            None => {
                log::info(&format!("{}: no credentials", msg.method()));
                unauthorized(config, false)
            }
        },
        Credential::OtherScheme => {
            log::warn(&format!(
                "{}: Authorization header is not `Bearer`",
                msg.method()
            ));
            unauthorized(config, false)
        }
        Credential::Key(key, header) => match check_key(config, &key, now) {
            Ok(identity) => success(identity, "api-key"),
            Err(reason) => {
                log::warn(&format!(
                    "{}: API key in {header} rejected: {reason}",
                    msg.method()
                ));
                unauthorized(config, true)
            }
        },
        Credential::Token(token) => check_token(config, msg, &token, now),
    }
}

fn check_key(config: &Config, key: &str, now: i64) -> Result<Identity, String> {
    if key.is_empty() {
        return Err("empty".into());
    }
    if config.api_keys.is_empty() {
        return Err(if jwt::looks_like_jwt(key) {
            "it looks like a JWT, but jwt is not configured".into()
        } else {
            "no api-keys are configured".into()
        });
    }
    let (found, digest) = apikey::find(&config.api_key_hashes, key);
    let Some(entry) = found.and_then(|i| config.api_keys.get(i)) else {
        return Err(format!(
            "unknown key (sha256 {}…)",
            &apikey::hex(&digest)[..12]
        ));
    };
    match entry.expires {
        Some(expires) if now >= expires => Err(format!(
            "the key of {:?} expired at {}",
            entry.identity.subject,
            time::format(expires)
        )),
        _ => Ok(entry.identity.clone()),
    }
}

fn check_token(config: &Config, msg: &Message, token: &str, now: i64) -> Verdict {
    let Some(jwt_config) = &config.jwt else {
        return unauthorized(config, true);
    };
    match token_identity(jwt_config, token, now) {
        Ok(identity) => {
            let missing: Vec<&str> = config
                .required_scopes
                .iter()
                .filter(|s| !identity.has_scope(s))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                success(identity, "jwt")
            } else {
                log::warn(&format!(
                    "{}: JWT of {:?} lacks scope(s) {}",
                    msg.method(),
                    identity.subject,
                    missing.join(" ")
                ));
                insufficient_scope(config)
            }
        }
        Err(jwt::Rejection::Invalid(reason)) => {
            log::warn(&format!("{}: JWT rejected: {reason}", msg.method()));
            unauthorized(config, true)
        }
        Err(jwt::Rejection::Unavailable(reason)) => {
            log::error(&format!("{}: cannot check a JWT: {reason}", msg.method()));
            Denial::new(codes::INTERNAL_ERROR, UNAVAILABLE_MESSAGE)
                .with_http_status(503)
                .into()
        }
    }
}

/// The identity of a valid token: from the verified-token cache, or verified and mapped (and
/// then cached).
fn token_identity(config: &JwtConfig, token: &str, now: i64) -> Result<Identity, jwt::Rejection> {
    let verify = || -> Result<(Identity, i64), jwt::Rejection> {
        let verified = jwt::validate(config, token, now)?;
        Ok((
            jwt::identity(&config.claims, &verified.claims)?,
            verified.expires,
        ))
    };
    let Some(cache) = &config.cache else {
        return verify().map(|(identity, _)| identity);
    };
    let key = cache.key(token);
    if let Some(identity) = cache.lookup(&key, now) {
        return Ok(identity);
    }
    let (identity, expires) = verify()?;
    cache.store(&key, &identity, expires, now);
    Ok(identity)
}

fn success(identity: Identity, method: &str) -> Verdict {
    Changes::new()
        .with_identity(identity)
        .with_attribute(METHOD, method)
        .into()
}

/// The `scope` parameter of a challenge, if scopes are configured.
fn scope_param(config: &Config) -> Option<String> {
    (!config.required_scopes.is_empty())
        .then(|| format!("scope=\"{}\"", config.required_scopes.join(" ")))
}

fn metadata_param(config: &Config) -> Option<String> {
    config
        .resource_metadata
        .as_ref()
        .map(|url| format!("resource_metadata=\"{url}\""))
}

fn challenge(params: impl IntoIterator<Item = Option<String>>) -> String {
    let params: Vec<String> = params.into_iter().flatten().collect();
    if params.is_empty() {
        "Bearer".into()
    } else {
        format!("Bearer {}", params.join(", "))
    }
}

/// HTTP 401: `Bearer resource_metadata="…", scope="…"`, plus `error="invalid_token"` when a
/// credential was presented and refused.
fn unauthorized(config: &Config, bad_token: bool) -> Verdict {
    let header = challenge([
        metadata_param(config),
        scope_param(config),
        bad_token.then(|| "error=\"invalid_token\"".to_string()),
    ]);
    Denial::new(codes::UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
        .with_http_status(401)
        .with_header("WWW-Authenticate", header)
        .into()
}

/// HTTP 403: `Bearer error="insufficient_scope", scope="…", resource_metadata="…"`.
fn insufficient_scope(config: &Config) -> Verdict {
    let header = challenge([
        Some("error=\"insufficient_scope\"".to_string()),
        scope_param(config),
        metadata_param(config),
    ]);
    Denial::new(codes::DENIED, INSUFFICIENT_SCOPE_MESSAGE)
        .with_http_status(403)
        .with_header("WWW-Authenticate", header)
        .into()
}

#[cfg(test)]
mod tests;
