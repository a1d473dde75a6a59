//! `[log]`, `[tracing]` and `[admin]`: how the gateway reports on itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::load::{ConfigError, key_line, line_of};
use super::{Config, env};

/// `[log]`: the gateway's own log lines, on stderr.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LogConfig {
    /// `pretty`: one human-readable line per event (coloured on a terminal); `json`: one JSON
    /// object per line, for log shippers. Default `pretty`.
    pub format: LogFormat,
    /// Which events to keep, in `RUST_LOG` syntax: a default level and per-module levels,
    /// e.g. `info,portcullis::policy=debug`. `RUST_LOG`, when set, wins. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (protobuf). Off unless
/// `otlp-endpoint` is set; when off, no span is created and no trace context is read or sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://otel-collector:4318` (`/v1/traces` is
    /// appended unless the URL already ends with it). Default: none (tracing off).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default `portcullis`.
    pub service_name: String,
    /// Extra headers sent to the receiver (e.g. an API key); `${ENV}` is expanded.
    pub headers: BTreeMap<String, String>,
    /// Share of new traces recorded (0.0 to 1.0). A trace the client started keeps the
    /// client's sampling decision. Default 1.0.
    pub sample_ratio: f64,
    /// Longest wait for one export. Default 10s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: "portcullis".into(),
            headers: BTreeMap::new(),
            sample_ratio: 1.0,
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[admin]`: the admin API (status, reload, metrics) and health probes on a listener of
/// their own. Absent: no admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// Address to listen on. Default `127.0.0.1:9090`; port 0 picks a free port.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The bearer token every admin request but `/healthz` and `/readyz` must carry
    /// (`Authorization: Bearer …`). Required, at least 16 characters; write it as
    /// `${ENV_VAR}` to keep it out of the file.
    pub token: String,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Expands `${ENV}` in the secrets of these sections and checks their values.
pub(super) fn check(
    config: &mut Config,
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let err = |table: &str, key: &str, message: String| {
        let line = line_of(text, &format!("[{table}]"));
        ConfigError {
            file: file.to_string(),
            line: key_line(text, line, key).or(line),
            field: format!("{table}.{key}"),
            message,
        }
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&config.log.level) {
        return Err(err("log", "level", format!("not a valid filter: {e}")));
    }
    let tracing = &mut config.tracing;
    if let Some(endpoint) = tracing.otlp_endpoint.as_mut() {
        *endpoint =
            env::expand(endpoint, lookup).map_err(|m| err("tracing", "otlp-endpoint", m))?;
        match reqwest::Url::parse(endpoint) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(err(
                    "tracing",
                    "otlp-endpoint",
                    "must be an http:// or https:// URL, e.g. http://localhost:4318".into(),
                ));
            }
        }
    }
    for (k, v) in tracing.headers.iter_mut() {
        *v = env::expand(v, lookup).map_err(|m| err("tracing", "headers", m))?;
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(err(
                "tracing",
                "headers",
                format!("{k:?} is not a valid header name"),
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            // The value may be a secret: name the header only.
            return Err(err(
                "tracing",
                "headers",
                format!("the value of {k:?} is not a valid header value"),
            ));
        }
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        return Err(err(
            "tracing",
            "sample-ratio",
            "must be between 0.0 and 1.0".into(),
        ));
    }
    if tracing.timeout.is_zero() {
        return Err(err("tracing", "timeout", "must be positive".into()));
    }
    if tracing.service_name.trim().is_empty() {
        return Err(err("tracing", "service-name", "must not be empty".into()));
    }
    if let Some(admin) = config.admin.as_mut() {
        admin.token = env::expand(&admin.token, lookup).map_err(|m| err("admin", "token", m))?;
        // Never echo the token, not even in part.
        if admin.token.chars().count() < MIN_TOKEN_LEN {
            return Err(err(
                "admin",
                "token",
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        if admin
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(err(
                "admin",
                "token",
                "must not contain whitespace or control characters".into(),
            ));
        }
        if !admin.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %admin.listen,
                "admin.listen is beyond loopback: the admin API is reachable from the network (it still needs the token)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const UPSTREAM: &str = "[upstreams.a]\ncommand = \"x\"\n";

    fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<super::Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&format!("{text}\n{UPSTREAM}"), "t.toml", &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_and_pretty() {
        let c = parse_with("", &[]).unwrap();
        assert!(c.admin.is_none());
        assert!(c.tracing.otlp_endpoint.is_none());
        assert_eq!(c.log.format, super::LogFormat::Pretty);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_and_is_never_echoed() {
        let c = parse_with(
            "[admin]\ntoken = \"${ADMIN}\"\n",
            &[("ADMIN", "0123456789abcdef0123")],
        )
        .unwrap();
        let admin = c.admin.unwrap();
        assert_eq!(admin.token, "0123456789abcdef0123");
        assert_eq!(admin.listen.to_string(), "127.0.0.1:9090");

        let e = parse_with(
            "[admin]\ntoken = \"${ADMIN}\"\n",
            &[("ADMIN", "short-secret")],
        )
        .unwrap_err();
        assert!(
            e.contains("t.toml:2: admin.token: must be at least 16"),
            "{e}"
        );
        assert!(!e.contains("short-secret"), "{e}");

        let e = parse_with("[admin]\nlisten = \"127.0.0.1:0\"\n", &[]).unwrap_err();
        assert!(e.contains("token"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let e = parse_with("[log]\nformat = \"xml\"\n", &[]).unwrap_err();
        assert!(e.contains("t.toml:2"), "{e}");
        let e = parse_with("[log]\nlevel = \"info,=[\"\n", &[]).unwrap_err();
        assert!(e.contains("log.level"), "{e}");
        let e = parse_with("[tracing]\notlp-endpoint = \"localhost:4318\"\n", &[]).unwrap_err();
        assert!(e.contains("t.toml:2: tracing.otlp-endpoint"), "{e}");
        let e = parse_with("[tracing]\nsample-ratio = 2.0\n", &[]).unwrap_err();
        assert!(e.contains("tracing.sample-ratio"), "{e}");
    }
}
