//! The sidecar's `[config]` table: read, checked and turned into ready-to-use keys once per
//! instance (inline JWKs are decoded here, not per request).

use std::collections::BTreeMap;

use portcullis_sdk::Identity;
use portcullis_sdk::serde_json::{self, Value, value::RawValue};
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::apikey;
use crate::cache::TokenCache;
use crate::jwk::{self, Alg, Key, Verifier};
use crate::remote::{self, Remote, Source};
use crate::time;

/// The `[config]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    resource_metadata: Option<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default)]
    api_key_header: Option<String>,
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
    #[serde(default)]
    jwt: Option<RawJwt>,
    #[serde(default)]
    anonymous: Option<RawAnonymous>,
}

/// One `[[config.api-keys]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawApiKey {
    sha256: String,
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    expires: Option<Timestamp>,
}

/// A timestamp: a string, or a TOML datetime written unquoted (which reaches the plugin as
/// `{"$__toml_private_datetime": "…"}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Text(String),
    Toml {
        #[serde(rename = "$__toml_private_datetime")]
        datetime: String,
    },
}

/// `[config.jwt]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJwt {
    issuer: OneOrMany,
    audience: OneOrMany,
    #[serde(default = "default_leeway")]
    leeway: u32,
    #[serde(default = "default_cache_seconds")]
    cache_seconds: u32,
    #[serde(default = "default_max_lifetime")]
    max_lifetime: u32,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    jwks: Option<Value>,
    #[serde(default)]
    jwks_file: Option<String>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    discover: bool,
    #[serde(default = "default_jwks_min")]
    jwks_min_seconds: u32,
    #[serde(default = "default_jwks_max")]
    jwks_max_seconds: u32,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u32,
    #[serde(default = "default_jwks_stale")]
    jwks_stale_seconds: u32,
    #[serde(default)]
    hs256_secret: Option<String>,
    #[serde(default = "default_subject_claim")]
    subject_claim: String,
    #[serde(default)]
    roles_claim: Option<String>,
    #[serde(default = "default_scopes_claim")]
    scopes_claim: String,
    #[serde(default)]
    tenant_claim: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

fn default_leeway() -> u32 {
    60
}

/// A minute: an agent's token is verified about once a minute instead of on every call, and
/// a key removed from `jwks-file` stops working for cached tokens within a minute.
fn default_cache_seconds() -> u32 {
    60
}

/// A day: longer than the access tokens of the common identity providers (minutes to an
/// hour; Auth0's default is a day), short enough that a token signed to last for ever is not
/// accepted as one that does.
fn default_max_lifetime() -> u32 {
    86_400
}

/// A minute: the least time a fetched key set (or discovery document) is kept, whatever the
/// provider's caching headers say.
fn default_jwks_min() -> u32 {
    60
}

/// A day: the most time a fetched key set is kept without asking again.
fn default_jwks_max() -> u32 {
    86_400
}

/// Thirty seconds between fetches caused by an unknown `kid` or a failed fetch.
fn default_jwks_refresh() -> u32 {
    30
}

/// An hour: how long past its freshness the last good key set keeps working while the
/// provider cannot be reached.
fn default_jwks_stale() -> u32 {
    3600
}

fn default_subject_claim() -> String {
    "sub".into()
}

fn default_scopes_claim() -> String {
    "scope".into()
}

/// `anonymous = { … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAnonymous {
    #[serde(default = "default_anonymous")]
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

fn default_anonymous() -> String {
    "anonymous".into()
}

/// A string or a list of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The configuration, ready to use.
#[derive(Debug)]
pub struct Config {
    /// The `resource_metadata` parameter of `WWW-Authenticate`.
    pub(crate) resource_metadata: Option<String>,
    /// Scopes every JWT must carry (also advertised as `scope=` in challenges).
    pub(crate) required_scopes: Vec<String>,
    /// A header carrying an API key (lowercase), besides `Authorization: Bearer`.
    pub(crate) api_key_header: Option<String>,
    /// The configured key hashes, in the order of [`Config::api_keys`].
    pub(crate) api_key_hashes: Vec<[u8; 32]>,
    /// What each key stands for.
    pub(crate) api_keys: Vec<ApiKey>,
    /// JWT validation, when configured.
    pub(crate) jwt: Option<JwtConfig>,
    /// The identity of callers without credentials, when anonymous access is on.
    pub(crate) anonymous: Option<Identity>,
}

/// What an API key stands for.
#[derive(Debug)]
pub struct ApiKey {
    /// The caller's identity.
    pub identity: Identity,
    /// When the key stops working (seconds since the epoch).
    pub expires: Option<i64>,
}

/// `[config.jwt]`, checked.
#[derive(Debug)]
pub struct JwtConfig {
    /// Accepted `iss` values (exact match).
    pub issuers: Vec<String>,
    /// Accepted audiences: a token's `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway: i64,
    /// The longest a token may claim to be valid, in seconds: `exp` at most this far after
    /// now (plus the leeway) and after `iat`.
    pub max_lifetime: i64,
    /// The algorithms accepted.
    pub algorithms: Vec<Alg>,
    /// Keys from `jwks` and `hs256-secret`.
    pub keys: Vec<Key>,
    /// A JWKS file read at each evaluation that needs it.
    pub jwks_file: Option<String>,
    /// The provider's key set, fetched (`jwks-url` or `discover`) and cached.
    pub remote: Option<Remote>,
    /// Where the identity comes from in the claims.
    pub claims: ClaimMap,
    /// The verified-token cache, unless `cache-seconds = 0`.
    pub cache: Option<TokenCache>,
}

/// Claim paths (dotted: `realm_access.roles`) for each part of the identity.
#[derive(Debug)]
pub struct ClaimMap {
    /// The subject (default `sub`).
    pub subject: String,
    /// Roles: an array of strings or one string.
    pub roles: Option<String>,
    /// Scopes: a space-separated string or an array (default `scope`).
    pub scopes: String,
    /// The tenant.
    pub tenant: Option<String>,
    /// Identity attributes: attribute name → claim path.
    pub attributes: Vec<(String, String)>,
}

impl<'de> Deserialize<'de> for Config {
    /// Reads the table as text first: the verified-token cache keys its entries on the whole
    /// text, so that no change to it can serve an identity computed under the old one.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        let raw: RawConfig = serde_json::from_str(text.get()).map_err(de::Error::custom)?;
        Config::build(raw, text).map_err(de::Error::custom)
    }
}

impl Config {
    /// Checks `raw`; `text` is what it was read from.
    fn build(raw: RawConfig, text: Box<RawValue>) -> Result<Self, String> {
        if let Some(url) = &raw.resource_metadata {
            let absolute = url.starts_with("https://") || url.starts_with("http://");
            let quotable = !url
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_whitespace() || c.is_control());
            if !(absolute && quotable) {
                return Err(format!(
                    "resource-metadata: {url:?} must be an absolute http(s) URL without quotes or \
                     spaces (the gateway's /.well-known/oauth-protected-resource document)"
                ));
            }
        }
        for scope in &raw.required_scopes {
            check_scope(scope).map_err(|e| format!("required-scopes: {e}"))?;
        }
        let api_key_header = match raw.api_key_header {
            Some(h) => Some(check_header_name(&h)?),
            None => None,
        };

        let mut api_key_hashes = Vec::with_capacity(raw.api_keys.len());
        let mut api_keys = Vec::with_capacity(raw.api_keys.len());
        for (i, key) in raw.api_keys.into_iter().enumerate() {
            let at = format!("api-keys[{i}]");
            let hash = apikey::parse_hash(&key.sha256).map_err(|e| format!("{at}: {e}"))?;
            if api_key_hashes.contains(&hash) {
                return Err(format!("{at}: the same sha256 is listed twice"));
            }
            if key.subject.trim().is_empty() {
                return Err(format!("{at}: subject must not be empty"));
            }
            for scope in &key.scopes {
                check_scope(scope).map_err(|e| format!("{at}.scopes: {e}"))?;
            }
            let expires = match key.expires {
                Some(Timestamp::Text(t) | Timestamp::Toml { datetime: t }) => {
                    Some(time::parse_rfc3339(&t).map_err(|e| format!("{at}.expires: {e}"))?)
                }
                None => None,
            };
            api_key_hashes.push(hash);
            api_keys.push(ApiKey {
                identity: identity(
                    key.subject,
                    key.roles,
                    key.scopes,
                    key.tenant,
                    key.attributes,
                ),
                expires,
            });
        }

        let jwt = raw.jwt.map(|j| jwt_config(j, text)).transpose()?;
        let anonymous = match raw.anonymous {
            Some(a) if a.subject.trim().is_empty() => {
                return Err("anonymous.subject must not be empty".into());
            }
            Some(a) => Some(identity(
                a.subject,
                a.roles,
                a.scopes,
                a.tenant,
                a.attributes,
            )),
            None => None,
        };
        Ok(Config {
            resource_metadata: raw.resource_metadata,
            required_scopes: raw.required_scopes,
            api_key_header,
            api_key_hashes,
            api_keys,
            jwt,
            anonymous,
        })
    }
}

fn identity(
    subject: String,
    roles: Vec<String>,
    scopes: Vec<String>,
    tenant: Option<String>,
    attributes: BTreeMap<String, String>,
) -> Identity {
    Identity {
        subject,
        roles,
        scopes,
        tenant,
        attributes: attributes.into_iter().collect(),
    }
}

fn jwt_config(raw: RawJwt, config_text: Box<RawValue>) -> Result<JwtConfig, String> {
    let issuers = raw.issuer.into_vec();
    if issuers.is_empty() || issuers.iter().any(|i| i.is_empty()) {
        return Err("jwt.issuer: name the issuer(s) whose tokens are accepted (`iss`)".into());
    }
    let audiences = raw.audience.into_vec();
    if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
        return Err(
            "jwt.audience: name this gateway's resource URI (e.g. https://mcp.example.com/mcp)"
                .into(),
        );
    }
    let algorithms = match raw.algorithms {
        None => Alg::ALL.to_vec(),
        Some(names) if names.is_empty() => {
            return Err("jwt.algorithms: list at least one algorithm".into());
        }
        Some(names) => names
            .iter()
            .map(|name| {
                if name.eq_ignore_ascii_case("none") {
                    Err("jwt.algorithms: `none` (unsigned tokens) is never accepted".to_string())
                } else {
                    Alg::parse(name).ok_or_else(|| {
                        format!(
                            "jwt.algorithms: unsupported algorithm {name:?} (supported: {})",
                            jwk::SUPPORTED
                        )
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
    };

    let mut keys = Vec::new();
    if let Some(set) = &raw.jwks {
        let parsed =
            jwk::parse_jwks(set, jwk::Mode::Strict).map_err(|e| format!("jwt.jwks: {e}"))?;
        if parsed.keys.is_empty() {
            return Err("jwt.jwks: the set has no signature verification key".into());
        }
        keys.extend(parsed.keys);
    }
    if let Some(secret) = raw.hs256_secret {
        if secret.len() < jwk::MIN_HMAC_BYTES {
            return Err(format!(
                "jwt.hs256-secret: must be at least {} bytes (RFC 7518 §3.2)",
                jwk::MIN_HMAC_BYTES
            ));
        }
        keys.push(Key::new(None, Verifier::Hmac(secret.into_bytes())));
    }
    if let Some(path) = &raw.jwks_file
        && !path.starts_with('/')
    {
        return Err(format!(
            "jwt.jwks-file: {path:?} must be an absolute path inside the granted directory (e.g. /data/jwks.json)"
        ));
    }
    let source = match (raw.jwks_url, raw.discover) {
        (Some(_), true) => {
            return Err(
                "jwt: give jwks-url or discover = true, not both (discovery finds the jwks-url)"
                    .into(),
            );
        }
        (Some(url), false) => {
            remote::check_url("jwt.jwks-url", &url)?;
            Some(Source::Jwks(url))
        }
        (None, true) => match &issuers[..] {
            [issuer] => {
                remote::check_url("jwt.issuer (discover = true)", issuer)?;
                Some(Source::Discover(issuer.clone()))
            }
            _ => {
                return Err(
                    "jwt.discover: needs exactly one issuer (run one authn plugin per provider)"
                        .into(),
                );
            }
        },
        (None, false) => None,
    };
    let (min, max) = (raw.jwks_min_seconds, raw.jwks_max_seconds);
    if min == 0 || min > max {
        return Err(format!(
            "jwt.jwks-min-seconds ({min}) must be at least 1 and at most jwt.jwks-max-seconds ({max})"
        ));
    }
    if raw.jwks_refresh_seconds == 0 {
        return Err("jwt.jwks-refresh-seconds: must be at least 1".into());
    }
    let remote = source.map(|source| Remote {
        source,
        min_fresh: i64::from(min),
        max_fresh: i64::from(max),
        refresh: i64::from(raw.jwks_refresh_seconds),
        stale: i64::from(raw.jwks_stale_seconds),
    });
    if keys.is_empty() && raw.jwks_file.is_none() && remote.is_none() {
        return Err(
            "jwt: give the verification keys: jwks, jwks-file, jwks-url, discover = true or hs256-secret"
                .into(),
        );
    }
    for key in &keys {
        let alg = key.verifier.alg();
        if !algorithms.contains(&alg) {
            return Err(format!(
                "jwt: a configured key verifies {} but jwt.algorithms does not allow it",
                alg.name()
            ));
        }
        check_selectable(&keys, key)?;
    }
    if raw.max_lifetime == 0 {
        return Err(
            "jwt.max-lifetime: give the longest a token may be valid, in seconds (default 86400)"
                .into(),
        );
    }

    for (what, path) in [
        ("subject-claim", Some(&raw.subject_claim)),
        ("roles-claim", raw.roles_claim.as_ref()),
        ("scopes-claim", Some(&raw.scopes_claim)),
        ("tenant-claim", raw.tenant_claim.as_ref()),
    ]
    .into_iter()
    .chain(raw.attributes.values().map(|p| ("attributes", Some(p))))
    {
        if path.is_some_and(|p| p.is_empty() || p.split('.').any(str::is_empty)) {
            return Err(format!(
                "jwt.{what}: {:?} is not a claim path (names joined by dots, e.g. realm_access.roles)",
                path.map(String::as_str).unwrap_or_default()
            ));
        }
    }

    Ok(JwtConfig {
        issuers,
        audiences,
        leeway: i64::from(raw.leeway),
        max_lifetime: i64::from(raw.max_lifetime),
        algorithms,
        keys,
        jwks_file: raw.jwks_file,
        remote,
        claims: ClaimMap {
            subject: raw.subject_claim,
            roles: raw.roles_claim,
            scopes: raw.scopes_claim,
            tenant: raw.tenant_claim,
            attributes: raw.attributes.into_iter().collect(),
        },
        cache: TokenCache::new(raw.cache_seconds, config_text),
    })
}

/// Checks that a token can name `key` unambiguously: its `kid` is not shared with another key
/// of its algorithm, and a key without a `kid` is the only one of its algorithm (a token
/// without `kid` is checked only against a lone key; one with a `kid` never matches a key
/// without one). Otherwise the key could never verify anything, which is a mistake to report
/// now rather than a mystery 401 later.
fn check_selectable(keys: &[Key], key: &Key) -> Result<(), String> {
    let alg = key.verifier.alg();
    let same_alg = || keys.iter().filter(|k| k.verifier.alg() == alg);
    match &key.kid {
        Some(kid) if same_alg().filter(|k| k.kid.as_ref() == Some(kid)).count() > 1 => {
            Err(format!(
                "jwt.jwks: two {} keys have the kid {kid:?}; a token's kid must name one key",
                alg.name()
            ))
        }
        None if same_alg().count() > 1 => Err(format!(
            "jwt: several {} keys are configured (jwks, hs256-secret) and one has no `kid`, so no \
             token could name it; give each a distinct kid (for HS256, a jwks key \
             {{ kty = \"oct\", kid = \"…\", k = \"<base64url secret>\" }} instead of hs256-secret)",
            alg.name()
        )),
        _ => Ok(()),
    }
}

/// A scope token as RFC 6749 §3.3 defines it (printable ASCII, no space, `"` or `\`).
fn check_scope(scope: &str) -> Result<(), String> {
    if !scope.is_empty()
        && scope
            .bytes()
            .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
    {
        Ok(())
    } else {
        Err(format!(
            "{scope:?} is not a scope (printable ASCII without spaces, quotes or backslashes)"
        ))
    }
}

/// A header name (RFC 9110 token), lowercased; not `authorization`, which is read already.
fn check_header_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let is_token = !lower.is_empty()
        && lower
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
    if !is_token {
        return Err(format!("api-key-header: {name:?} is not a header name"));
    }
    if lower == "authorization" {
        return Err(
            "api-key-header: `Authorization: Bearer <key>` is always read; name another header (e.g. x-api-key)"
                .into(),
        );
    }
    Ok(lower)
}
