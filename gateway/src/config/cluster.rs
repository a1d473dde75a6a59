//! `[cluster]`: what replicas of one gateway share: the Redis server that backs the plugins'
//! key-value store (`policy/kv_redis.rs`), so rate limits are exact across replicas, and the
//! key that seals session ids (`session/seal.rs`), so any replica resumes any session.

use std::time::Duration;

use serde::Deserialize;

use super::env;
use super::load::{ConfigError, key_line, line_of};

/// A Redis URL. It may carry a password, so it is never printed whole: `Debug` shows only
/// the host part.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `host:port` (or the socket path), for log lines.
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or(&*self.0, |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        rest.split(['/', '?']).next().unwrap_or(rest)
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.host())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`: the plugins' key-value store lives there,
    /// shared by every replica. `${PORTCULLIS_REDIS_URL}` reads it from the environment.
    /// Absent: an in-process store (one replica).
    pub redis: Option<RedisUrl>,
    /// Longest wait for one key-value call (connecting included); past it the plugin's call
    /// fails and its `fail-open` setting decides. Default 100ms.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Prefix of every key the gateway writes to Redis, so several gateways (or other
    /// applications) can share one server. Default `portcullis:`.
    pub redis_prefix: String,
    /// The AES-256 key that seals session ids: 32 bytes as 64 hex digits or base64.
    /// Absent: `PORTCULLIS_SESSION_KEY` from the environment if set, else random ids.
    pub session_key: Option<KeyText>,
    /// Keys sealed ids were made with before a rotation: still opened, never used to seal.
    pub previous_session_keys: Vec<KeyText>,
    /// How long a sealed session id stays valid after `initialize` (any replica resumes it
    /// until then). Default 24h.
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// The decoded keys (current first), filled by [`check`].
    #[serde(skip)]
    pub session_keys: SessionKeys,
}

/// Decoded session keys, current first. `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct SessionKeys(pub Vec<[u8; 32]>);

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionKeys({} keys)", self.0.len())
    }
}

/// A key as written in the file (never printed).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct KeyText(String);

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyText(…)")
    }
}

/// 32 bytes from 64 hex digits or base64 (standard or URL-safe, padded or not).
fn decode_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect::<Vec<u8>>()
    } else {
        let t = text.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .map_err(|_| {
                "must be 32 bytes as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)"
                    .to_string()
            })?
    };
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "must be 32 bytes (AES-256), got {} (e.g. `openssl rand -base64 32`)",
            b.len()
        )
    })
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            redis_timeout: Duration::from_millis(100),
            redis_prefix: "portcullis:".into(),
            session_key: None,
            previous_session_keys: Vec::new(),
            session_lifetime: Duration::from_secs(24 * 3600),
            session_keys: SessionKeys::default(),
        }
    }
}

/// The session key when `[cluster] session-key` is not set.
pub const SESSION_KEY_ENV: &str = "PORTCULLIS_SESSION_KEY";
/// The Redis URL when `[cluster] redis` is not set.
pub const REDIS_URL_ENV: &str = "PORTCULLIS_REDIS_URL";

/// Takes `session-key` and `redis` from the environment when the file leaves them out,
/// expands `${ENV}` in them and checks the values.
pub(super) fn check(
    config: &mut ClusterConfig,
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let err = |key: &str, message: String| {
        let line = line_of(text, "[cluster]");
        ConfigError {
            file: file.to_string(),
            line: key_line(text, line, key).or(line),
            field: format!("cluster.{key}"),
            message,
        }
    };
    // The two shared settings may come from the environment alone (a Kubernetes Secret,
    // `docker run -e`), so one portcullis.toml serves one replica and N.
    let from_env = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    if config.session_key.is_none() {
        config.session_key = from_env(SESSION_KEY_ENV).map(KeyText);
    }
    if config.redis.is_none() {
        config.redis = from_env(REDIS_URL_ENV).map(RedisUrl);
    }
    if config.redis_timeout.is_zero() {
        return Err(err("redis-timeout", "must be positive".into()));
    }
    if config.session_lifetime.is_zero() {
        return Err(err("session-lifetime", "must be positive".into()));
    }
    if config.session_key.is_none() && !config.previous_session_keys.is_empty() {
        return Err(err(
            "previous-session-keys",
            "needs a current `session-key`".into(),
        ));
    }
    let keys = config.session_key.iter().map(|k| ("session-key", k)).chain(
        config
            .previous_session_keys
            .iter()
            .map(|k| ("previous-session-keys", k)),
    );
    for (field, key) in keys {
        let text = env::expand(&key.0, lookup).map_err(|m| err(field, m))?;
        config
            .session_keys
            .0
            .push(decode_key(&text).map_err(|m| err(field, m))?);
    }
    if let Some(url) = config.redis.as_mut() {
        url.0 = env::expand(&url.0, lookup).map_err(|m| err("redis", m))?;
        let scheme = url.0.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis" | "redis+unix" | "unix") => {}
            Some("rediss") => {
                return Err(err(
                    "redis",
                    "TLS to Redis (rediss://) is not built in; reach Redis over a private network or a local TLS tunnel".into(),
                ));
            }
            _ => {
                return Err(err(
                    "redis",
                    "must be a redis:// URL (redis://host:port or redis://:password@host:port/db)"
                        .into(),
                ));
            }
        }
        // The client's own parser: the URL that passes here is the one used. Its message
        // never repeats the URL (which may hold a password).
        if let Err(e) = redis::Client::open(url.0.as_str()) {
            return Err(err(
                "redis",
                format!("not a usable Redis URL ({})", e.category()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{RedisUrl, decode_key};

    #[test]
    fn session_keys_are_32_bytes_in_hex_or_base64() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(decode_key(&hex).unwrap()[31], 0xff);
        // `openssl rand -base64 32` output.
        let b64 = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
        assert_eq!(decode_key(b64).unwrap()[0], 0xab);
        let short = decode_key("c2hvcnQ=").unwrap_err();
        assert!(short.contains("got 5"), "{short}");
        assert!(decode_key("not a key!").is_err());
    }

    #[test]
    fn cluster_values_are_checked_and_errors_name_the_key_not_the_secret() {
        let lookup = |n: &str| (n == "K").then(|| "ab".repeat(32));
        let parse = |cluster: &str| {
            crate::config::parse(
                &format!("[cluster]\n{cluster}\n[upstreams.a]\ncommand = \"x\"\n"),
                "f.toml",
                &lookup,
            )
        };
        let ok = parse("session-key = \"${K}\"\nredis = \"redis://:pw@h:1/0\"").unwrap();
        assert_eq!(ok.cluster.session_keys.0, vec![[0xab; 32]]);
        let debug = format!("{ok:?}");
        assert!(
            !debug.contains("pw") && !debug.contains("171, 171"),
            "{debug}"
        );
        for (text, field) in [
            ("redis = \"rediss://:pw@h\"", "cluster.redis"),
            ("redis = \"http://:pw@h\"", "cluster.redis"),
            ("redis-timeout = \"0s\"", "cluster.redis-timeout"),
            ("session-key = \"c2hvcnQ=\"", "cluster.session-key"),
            ("session-key = \"${NOPE}\"", "cluster.session-key"),
            (
                "previous-session-keys = [\"${K}\"]",
                "cluster.previous-session-keys",
            ),
            ("session-lifetime = \"0s\"", "cluster.session-lifetime"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(
                !e.to_string().contains("pw") && !e.to_string().contains("c2hv"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_shared_settings_may_come_from_the_environment_alone() {
        let env = |n: &str| match n {
            "PORTCULLIS_SESSION_KEY" => Some("cd".repeat(32)),
            "PORTCULLIS_REDIS_URL" => Some("redis://127.0.0.1:6379".into()),
            _ => None,
        };
        let text = "[upstreams.a]\ncommand = \"x\"\n";
        let c = crate::config::parse(text, "f.toml", &env).unwrap();
        assert_eq!(c.cluster.session_keys.0, vec![[0xcd; 32]]);
        assert_eq!(c.cluster.redis.unwrap().host(), "127.0.0.1:6379");
        // The file wins over the environment.
        let text = "[cluster]\nsession-key = \"${K}\"\n[upstreams.a]\ncommand = \"x\"\n";
        let both = |n: &str| {
            if n == "K" {
                Some("ef".repeat(32))
            } else {
                env(n)
            }
        };
        let c = crate::config::parse(text, "f.toml", &both).unwrap();
        assert_eq!(c.cluster.session_keys.0, vec![[0xef; 32]]);
        // Without either, one replica as before.
        let c =
            crate::config::parse("[upstreams.a]\ncommand = \"x\"\n", "f.toml", &|_| None).unwrap();
        assert!(c.cluster.session_keys.0.is_empty() && c.cluster.redis.is_none());
    }

    #[test]
    fn the_password_of_a_redis_url_is_never_printed() {
        let url = RedisUrl("redis://:hunter2@cache.internal:6380/2".into());
        assert_eq!(url.host(), "cache.internal:6380");
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
