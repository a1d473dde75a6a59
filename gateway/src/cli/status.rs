//! `portcullis status`: a running gateway's state, read from its admin API.
//!
//! Exit status: 0 when the gateway is ready (even if degraded), 1 when it answers but is not
//! ready, 2 when it cannot be asked (unreachable, wrong token, not an admin API).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct StatusArgs {
    /// Base URL of the admin API. Default: `[admin] listen` of --config, else
    /// http://127.0.0.1:9090.
    #[arg(long, env = "PORTCULLIS_ADMIN_URL")]
    admin: Option<String>,
    /// The admin token. Default: `[admin] token` of --config.
    #[arg(long, env = "PORTCULLIS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the admin address and token from this configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the status document as JSON instead of a summary.
    #[arg(long)]
    json: bool,
    /// Longest wait for the answer.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    timeout: Duration,
}

const UNREACHABLE: u8 = 2;

pub async fn run(args: StatusArgs) -> ExitCode {
    match fetch(&args).await {
        Ok(status) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                print!("{}", summary(&status));
            }
            if status["ready"] == Value::Bool(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("portcullis status: {e:#}");
            ExitCode::from(UNREACHABLE)
        }
    }
}

async fn fetch(args: &StatusArgs) -> anyhow::Result<Value> {
    use anyhow::Context as _;
    let admin_cfg = match &args.config {
        Some(path) => Some(
            portcullis::config::load(path)?
                .admin
                .with_context(|| format!("{}: no [admin] section", path.display()))?,
        ),
        None => None,
    };
    let base = match (&args.admin, &admin_cfg) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(a)) => format!("http://{}", connectable(a.listen)),
        (None, None) => "http://127.0.0.1:9090".into(),
    };
    let token = args
        .token
        .clone()
        .or_else(|| admin_cfg.map(|a| a.token))
        .context("no admin token: pass --token, set PORTCULLIS_ADMIN_TOKEN, or --config")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(args.timeout).build()?;
    let resp = client
        .get(format!("{base}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot reach the admin API at {base}: {}", e.without_url())
        })?;
    match resp.status() {
        reqwest::StatusCode::OK => {}
        reqwest::StatusCode::UNAUTHORIZED => {
            anyhow::bail!("the admin API at {base} refused the token")
        }
        s => anyhow::bail!("the admin API at {base} answered HTTP {s}"),
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer failed: {}", e.without_url()))?;
    serde_json::from_slice(&body)
        .with_context(|| format!("{base}/v1/status did not answer with a status document"))
}

/// A wildcard listen address is reached on loopback.
fn connectable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The status document as a few readable lines.
fn summary(s: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let ago = |v: &Value| match v.as_u64() {
        Some(t) => format!("{} ago", human(now.saturating_sub(t))),
        None => "never".into(),
    };
    let str_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    let mut out = format!(
        "portcullis {}: {} (up {}, {} sessions, tracing {})\n",
        str_of(&s["version"]),
        str_of(&s["status"]),
        human(s["uptime_seconds"].as_u64().unwrap_or_default()),
        s["sessions"].as_u64().unwrap_or_default(),
        if s["tracing"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        },
    );
    for reason in s["reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  ! {}\n", str_of(reason)));
    }

    out.push_str("\nUpstreams\n");
    let mut rows = vec![
        [
            "NAME",
            "STATE",
            "TRANSPORT",
            "LINKS",
            "FAILURES",
            "LAST OK",
            "ENDPOINT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in s["upstreams"].as_array().into_iter().flatten() {
        rows.push(vec![
            str_of(&u["name"]),
            str_of(&u["state"]),
            str_of(&u["transport"]),
            str_of(&u["links"]),
            str_of(&u["consecutive_failures"]),
            ago(&u["last_success"]),
            str_of(&u["endpoint"]),
        ]);
    }
    out.push_str(&table(&rows));
    for u in s["upstreams"].as_array().into_iter().flatten() {
        if let Some(e) = u["last_error"].as_str() {
            out.push_str(&format!("  {}: {e}\n", str_of(&u["name"])));
        }
    }

    let reload = &s["last_reload"];
    out.push_str(&format!(
        "\nPlugins (last reload {}: {} active, {} errors, {} ms)\n",
        ago(&reload["at"]),
        reload["active"].as_u64().unwrap_or_default(),
        reload["errors"].as_array().map_or(0, Vec::len),
        reload["took_ms"].as_u64().unwrap_or_default(),
    ));
    let mut rows = vec![
        [
            "NAME", "VERSION", "STAGE", "STATE", "SHA256", "CALLS", "DENIALS", "FAILURES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let plugins = s["plugins"].as_array().cloned().unwrap_or_default();
    for p in &plugins {
        let sha = str_of(&p["sha256"]);
        rows.push(vec![
            str_of(&p["name"]),
            str_of(&p["version"]),
            str_of(&p["stage"]),
            str_of(&p["state"]),
            sha.get(..12).unwrap_or(&sha).to_string(),
            str_of(&p["calls"]),
            str_of(&p["denials"]),
            str_of(&p["failures"]),
        ]);
    }
    if plugins.is_empty() {
        out.push_str("  (none)\n");
    } else {
        out.push_str(&table(&rows));
    }
    for p in &plugins {
        if let Some(e) = p["error"].as_str() {
            out.push_str(&format!("  {}: {e}\n", str_of(&p["name"])));
        }
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn human(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(12), "12s");
        assert_eq!(human(250), "4m 10s");
        assert_eq!(human(7500), "2h 5m");
        assert_eq!(human(3 * 86400 + 4 * 3600), "3d 4h");
    }

    #[test]
    fn the_summary_names_upstreams_and_plugins() {
        let s = serde_json::json!({
            "version": "0.1.0", "status": "degraded", "ready": true, "uptime_seconds": 5,
            "sessions": 2, "tracing": false, "reasons": ["upstream beta is down"],
            "upstreams": [
                {"name": "alpha", "state": "up", "transport": "stdio", "links": 1,
                 "consecutive_failures": 0, "last_success": null, "endpoint": "fixture"},
                {"name": "beta", "state": "down", "transport": "http", "links": 0,
                 "consecutive_failures": 3, "last_error": "upstream 'beta' is unavailable",
                 "endpoint": "http://127.0.0.1:9/mcp"}
            ],
            "plugins": [{"name": "authz", "version": "1.0.0", "stage": "authz", "state": "active",
                         "sha256": "0123456789abcdef", "calls": 4, "denials": 1, "failures": 0}],
            "last_reload": {"at": 0, "active": 1, "errors": [], "took_ms": 3}
        });
        let text = summary(&s);
        assert!(text.contains("portcullis 0.1.0: degraded"), "{text}");
        assert!(text.contains("! upstream beta is down"), "{text}");
        assert!(text.contains("beta   down"), "{text}");
        assert!(
            text.contains("authz  1.0.0    authz  active  0123456789ab"),
            "{text}"
        );
    }
}
