//! JWT bearer tokens (RFC 7519) in JWS compact form: signature, then `exp`, `nbf`, `iat`,
//! `iss`, `aud`; then the claims mapped to an identity.
//!
//! The order matters: nothing in a token is believed before its signature checks out, and a
//! token's header can only pick among the configured keys of the algorithm it names (see
//! [`crate::jwk`]), so `alg: none` and algorithm confusion have nothing to work with. The
//! header names its key by `kid`, which must name one exactly (see [`check_signature`]).
//! Header and claims are read with [`crate::json`], which refuses a member named twice, so
//! what is checked is what every other reader of the token sees too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_sdk::Identity;
use portcullis_sdk::serde_json::{self, Map, Value};

use crate::config::{ClaimMap, JwtConfig};
use crate::jwk::{self, Alg, Key};
use crate::{json, time};

/// The longest token read (bytes): bounds the work an unauthenticated caller can cause.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The token is bad: malformed, badly signed, expired, for someone else… (HTTP 401).
    Invalid(String),
    /// The keys could not be read (the JWKS file): not the caller's fault (HTTP 503).
    Unavailable(String),
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection::Invalid(reason.into()))
}

/// A token whose signature and registered claims checked out.
#[derive(Debug)]
pub struct Verified {
    /// Its claims.
    pub claims: Map<String, Value>,
    /// Its `exp` (seconds since the epoch): every accepted token has one.
    pub expires: i64,
}

/// True if `token` has the shape of a JWS compact serialization (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|&b| b == b'.').count() == 2
}

/// Checks `token`; returns its claims and `exp`. `now` is seconds since the epoch.
pub fn validate(config: &JwtConfig, token: &str, now: i64) -> Result<Verified, Rejection> {
    if token.len() > MAX_TOKEN_LEN {
        return invalid(format!("token longer than {MAX_TOKEN_LEN} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return invalid(if token.split('.').count() == 5 {
            "encrypted tokens (JWE) are not supported"
        } else {
            "not a JWT (expected three dot-separated parts)"
        });
    };
    let header = decode_json(header_b64).map_err(|e| Rejection::Invalid(format!("header: {e}")))?;
    let alg_name = match header.get("alg") {
        Some(Value::String(alg)) => alg.as_str(),
        _ => return invalid("header has no `alg`"),
    };
    if alg_name.eq_ignore_ascii_case("none") {
        return invalid("alg `none` (an unsigned token) is never accepted");
    }
    let Some(alg) = Alg::parse(alg_name) else {
        return invalid(format!(
            "unsupported alg {:?} (supported: {})",
            clip(alg_name),
            jwk::SUPPORTED
        ));
    };
    if !config.algorithms.contains(&alg) {
        return invalid(format!(
            "alg {} is not allowed by jwt.algorithms",
            alg.name()
        ));
    }
    if header.contains_key("crit") {
        return invalid("header has `crit` extensions, none of which this policy understands");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return invalid("header `kid` is not a string"),
    };
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature_b64) else {
        return invalid("signature is not unpadded base64url");
    };
    let input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    check_signature(config, alg, kid, input, &signature, now)?;

    let claims =
        decode_json(payload_b64).map_err(|e| Rejection::Invalid(format!("claims: {e}")))?;
    let expires = check_times(config, &claims, now)?;
    match claims.get("iss") {
        Some(Value::String(iss)) if config.issuers.iter().any(|i| i == iss) => {}
        Some(Value::String(iss)) => {
            return invalid(format!("issuer {:?} is not accepted", clip(iss)));
        }
        _ => return invalid("no `iss` claim"),
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => config.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| config.audiences.iter().any(|a| a == aud)),
        _ => return invalid("no `aud` claim"),
    };
    if !audience_ok {
        return invalid(format!(
            "audience {} does not include {:?}",
            clip(&claims["aud"].to_string()),
            config
                .audiences
                .first()
                .map(String::as_str)
                .unwrap_or_default()
        ));
    }
    Ok(Verified { claims, expires })
}

/// Checks the signature with the one key the header selects:
///
/// - with a `kid`: the keys of `alg` that carry exactly that `kid`, inline first, then the
///   `jwks-file`, then the provider's set (`jwks-url` or discovery; fetched again, rate
///   limited, when it lacks the `kid`: see [`crate::remote`]). A `kid` no key of `alg` carries is refused, whatever the algorithm (a key
///   configured without a `kid` never stands in for one);
/// - without a `kid`: the key of `alg`, if exactly one is configured (inline and in the
///   `jwks-file` together). With several, the token is refused rather than tried against each:
///   which key signed it must never be a guess, and a token cannot make the gateway run
///   several signature checks.
fn check_signature(
    config: &JwtConfig,
    alg: Alg,
    kid: Option<&str>,
    input: &[u8],
    signature: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let Some(kid) = kid else {
        let inline = selected(&config.keys, alg, None);
        let file = match &config.jwks_file {
            // With two inline keys the answer is known without the file.
            Some(path) if inline.len() < 2 => {
                load_jwks_file(path).map_err(Rejection::Unavailable)?
            }
            _ => Vec::new(),
        };
        let remote = match &config.remote {
            Some(remote) if inline.len() < 2 => {
                remote.keys(now, false).map_err(Rejection::Unavailable)?
            }
            _ => Vec::new(),
        };
        return match inline
            .iter()
            .copied()
            .chain(selected(&file, alg, None))
            .chain(selected(&remote, alg, None))
            .collect::<Vec<_>>()[..]
        {
            [] => invalid(format!("no configured key verifies alg {}", alg.name())),
            [key] if key.verify(input, signature) => Ok(()),
            [_] => invalid(format!("bad signature (alg {}, no kid)", alg.name())),
            _ => invalid(format!(
                "no `kid` in the header, and more than one configured key verifies alg {}: \
                 the token must name its key",
                alg.name()
            )),
        };
    };
    let inline = selected(&config.keys, alg, Some(kid));
    let mut tried = inline.len();
    if inline.iter().any(|key| key.verify(input, signature)) {
        return Ok(());
    }
    if let Some(path) = &config.jwks_file {
        let file = load_jwks_file(path).map_err(Rejection::Unavailable)?;
        let keys = selected(&file, alg, Some(kid));
        tried += keys.len();
        if keys.iter().any(|key| key.verify(input, signature)) {
            return Ok(());
        }
    }
    if let Some(remote) = &config.remote
        && tried == 0
    {
        let mut keys = remote.keys(now, false).map_err(Rejection::Unavailable)?;
        // A kid the provider's cached set lacks: it may have rotated; ask again (at most
        // once per jwks-refresh-seconds).
        if selected(&keys, alg, Some(kid)).is_empty() && remote.may_refresh(now) {
            keys = remote.keys(now, true).map_err(Rejection::Unavailable)?;
        }
        let keys = selected(&keys, alg, Some(kid));
        tried += keys.len();
        if keys.iter().any(|key| key.verify(input, signature)) {
            return Ok(());
        }
    }
    if tried == 0 {
        invalid(format!(
            "unknown key id {:?} for alg {}",
            clip(kid),
            alg.name()
        ))
    } else {
        invalid(format!(
            "bad signature (alg {}, kid {:?})",
            alg.name(),
            clip(kid)
        ))
    }
}

/// The keys of `alg` with exactly this `kid` (any `kid`, or none, when `kid` is `None`).
fn selected<'k>(keys: &'k [Key], alg: Alg, kid: Option<&str>) -> Vec<&'k Key> {
    keys.iter()
        .filter(|key| key.verifier.alg() == alg)
        .filter(|key| kid.is_none() || key.kid.as_deref() == kid)
        .collect()
}

/// Reads the JWKS file (it may have changed since the last call: it is read every time).
fn load_jwks_file(path: &str) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("jwt.jwks-file {path}: cannot read it ({e}); is the sidecar's [grants] dir set?")
    })?;
    let set: Value =
        serde_json::from_str(&text).map_err(|e| format!("jwt.jwks-file {path}: not JSON ({e})"))?;
    let parsed = jwk::parse_jwks(&set, jwk::Mode::Lenient)
        .map_err(|e| format!("jwt.jwks-file {path}: {e}"))?;
    for skipped in &parsed.skipped {
        portcullis_sdk::log::debug(&format!("jwt.jwks-file {path}: skipped {skipped}"));
    }
    Ok(parsed.keys)
}

/// A NumericDate claim (RFC 7519 §2): whole seconds since 1970, never negative. RFC 7519
/// allows a fraction, which no identity provider sends; refusing anything but an integer
/// means `1e300`, `1.7e9` or `-1` can never be rounded, saturated or wrapped into a time.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) if t >= 0 => Ok(Some(t)),
            _ => invalid(format!(
                "`{name}` is {}, not a whole number of seconds from 0 to {}",
                clip(&n.to_string()),
                i64::MAX
            )),
        },
        Some(_) => invalid(format!("`{name}` is not a number")),
    }
}

/// Checks `exp`, `nbf` and `iat`; returns `exp`.
///
/// Besides expiry and `nbf`, a token may not claim more than `max-lifetime`: its `exp` must
/// be at most that far from now (plus the leeway), and from its `iat` when it has one. A
/// stolen token that never expires is what a signed `exp` of 1e300 would be, and a
/// future `iat` is a token minted ahead of time.
fn check_times(
    config: &JwtConfig,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<i64, Rejection> {
    let Some(exp) = numeric_date(claims, "exp")? else {
        return invalid("no `exp` claim (tokens without an expiry are not accepted)");
    };
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let leeway = config.leeway;
    if now >= exp.saturating_add(leeway) {
        return invalid(format!(
            "expired at {} (now {}, leeway {leeway}s)",
            time::format(exp),
            time::format(now),
        ));
    }
    if exp
        > now
            .saturating_add(leeway)
            .saturating_add(config.max_lifetime)
    {
        return invalid(format!(
            "expires at {}, beyond jwt.max-lifetime ({}s) from now {} (leeway {leeway}s)",
            time::format(exp),
            config.max_lifetime,
            time::format(now),
        ));
    }
    if let Some(nbf) = nbf
        && now.saturating_add(leeway) < nbf
    {
        return invalid(format!(
            "not valid before {} (now {}, leeway {leeway}s)",
            time::format(nbf),
            time::format(now),
        ));
    }
    if let Some(iat) = iat {
        if now.saturating_add(leeway) < iat {
            return invalid(format!(
                "issued in the future, at {} (now {}, leeway {leeway}s)",
                time::format(iat),
                time::format(now),
            ));
        }
        if exp.saturating_sub(iat) > config.max_lifetime {
            return invalid(format!(
                "lifetime from `iat` to `exp` is {}s, beyond jwt.max-lifetime ({}s)",
                exp.saturating_sub(iat),
                config.max_lifetime
            ));
        }
    }
    Ok(exp)
}

fn decode_json(part: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| "not unpadded base64url".to_string())?;
    json::object(&bytes)
}

/// At most 80 characters of a value from a token, for log lines.
pub(crate) fn clip(text: &str) -> &str {
    match text.char_indices().nth(80) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// The claim at a dotted path. At each level the rest of the path is first tried as one name
/// (claims such as `https://example.com/roles` contain dots), then split at the first dot.
pub fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut rest = path;
    let mut at = claims;
    loop {
        if let Some(value) = at.get(rest) {
            return Some(value);
        }
        let (head, tail) = rest.split_once('.')?;
        at = at.get(head)?.as_object()?;
        rest = tail;
    }
}

/// A claim's strings: an array's string items, or one string (split at spaces if `split`).
fn strings(value: Option<&Value>, split: bool) -> Vec<String> {
    match value {
        Some(Value::String(s)) if split => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A claim as one attribute value: strings as they are, numbers and booleans as text, lists
/// of those joined with commas, anything else as JSON.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
            Some(items.iter().filter_map(text).collect::<Vec<_>>().join(","))
        }
        _ => Some(value.to_string()),
    }
}

/// The caller's identity from validated claims.
pub fn identity(map: &ClaimMap, claims: &Map<String, Value>) -> Result<Identity, Rejection> {
    let subject = match claim(claims, &map.subject) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return invalid(format!("no subject claim `{}`", map.subject)),
    };
    let mut identity = Identity::new(subject);
    if let Some(path) = &map.roles {
        identity.roles = strings(claim(claims, path), false);
    }
    identity.scopes = strings(claim(claims, &map.scopes), true);
    if let Some(path) = &map.tenant {
        identity.tenant = claim(claims, path).and_then(text);
    }
    for (name, path) in &map.attributes {
        if let Some(value) = claim(claims, path).and_then(text) {
            identity = identity.with_attribute(name.clone(), value);
        }
    }
    Ok(identity)
}
