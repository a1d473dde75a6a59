//! `[cluster]`: what replicas of one gateway share. Today: the Redis server that backs the
//! plugins' key-value store (`policy/kv_redis.rs`), so rate limits are exact across replicas.

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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: None,
            redis_timeout: Duration::from_millis(100),
            redis_prefix: "portcullis:".into(),
        }
    }
}

/// Expands `${ENV}` in `redis` and checks the values.
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
    if config.redis_timeout.is_zero() {
        return Err(err("redis-timeout", "must be positive".into()));
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
    use super::RedisUrl;

    #[test]
    fn the_password_of_a_redis_url_is_never_printed() {
        let url = RedisUrl("redis://:hunter2@cache.internal:6380/2".into());
        assert_eq!(url.host(), "cache.internal:6380");
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
