//! What the gateway knows of each upstream's health, learnt from real traffic (connects and
//! requests of every client session), without probes of its own: an upstream no client has
//! used yet is `unknown`.
//!
//! Updated on every upstream request, so it is lock-free on success; only a failure takes a
//! lock, to keep its message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{Upstream, UpstreamError};
use crate::config::TransportKind;

#[derive(Debug, Default)]
pub struct Health {
    /// Live links (client sessions connected to this upstream).
    links: AtomicUsize,
    /// Failures since the last success.
    failures: AtomicU32,
    /// Unix milliseconds of the last success / failure; 0 for never.
    last_ok: AtomicU64,
    last_failure: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Its part of an aggregate list came too late or not at all, and no part came since.
    list_late: AtomicBool,
    /// Aggregate lists answered without it: it failed / it was too slow.
    left_out_failed: AtomicU64,
    left_out_late: AtomicU64,
}

impl Health {
    pub(super) fn succeeded(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        self.last_ok.store(now_ms(), Relaxed);
    }

    pub(super) fn failed(&self, e: &UpstreamError) {
        // The client's own doing, the gateway's own cap, or a caller without a credential
        // (token exchange): not the upstream's.
        if matches!(
            e,
            UpstreamError::Cancelled
                | UpstreamError::TooManyChildren { .. }
                | UpstreamError::Credential { .. }
        ) {
            return;
        }
        self.failures.fetch_add(1, Relaxed);
        self.last_failure.store(now_ms(), Relaxed);
        // Upstream errors name the upstream and what failed, never its credentials.
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    pub(super) fn record<T>(&self, outcome: &Result<T, UpstreamError>) {
        match outcome {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
    }

    pub(super) fn link_opened(&self) {
        self.links.fetch_add(1, Relaxed);
    }

    pub(super) fn link_closed(&self) {
        self.links.fetch_sub(1, Relaxed);
    }
}

/// Why an aggregate list was answered without an upstream's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    /// Connecting or listing failed.
    Failed,
    /// No answer within its `list-timeout`.
    Late,
}

impl LeftOut {
    pub fn as_str(self) -> &'static str {
        match self {
            LeftOut::Failed => "failed",
            LeftOut::Late => "timeout",
        }
    }
}

impl Upstream {
    /// How long an aggregate list waits for this upstream's part: `list-timeout`, or
    /// `list-timeout-failing` while it is seen failing.
    pub fn list_timeout(&self) -> std::time::Duration {
        let h = &self.health;
        if h.failures.load(Relaxed) > 0 || h.list_late.load(Relaxed) {
            self.config
                .list_timeout_failing
                .min(self.config.list_timeout)
        } else {
            self.config.list_timeout
        }
    }

    /// An aggregate list was answered without this upstream's part.
    pub fn list_left_out(&self, why: LeftOut) {
        let h = &self.health;
        match why {
            LeftOut::Failed => h.left_out_failed.fetch_add(1, Relaxed),
            LeftOut::Late => {
                h.list_late.store(true, Relaxed);
                h.left_out_late.fetch_add(1, Relaxed)
            }
        };
    }

    /// This upstream's part of a list arrived.
    pub fn list_arrived(&self) {
        if self.health.list_late.load(Relaxed) {
            self.health.list_late.store(false, Relaxed);
        }
    }

    /// Aggregate lists answered without this upstream: (it failed, it was too slow).
    pub fn lists_left_out(&self) -> (u64, u64) {
        let h = &self.health;
        (
            h.left_out_failed.load(Relaxed),
            h.left_out_late.load(Relaxed),
        )
    }
}

/// One upstream as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// Where it is: the program's file name (never its arguments) or the URL without
    /// credentials or query.
    pub endpoint: String,
    /// `up` (its last connect or request succeeded), `down` (it failed since), or
    /// `unknown` (no client has used it yet).
    pub state: &'static str,
    /// Client sessions connected to it now.
    pub links: usize,
    pub consecutive_failures: u32,
    /// Unix seconds.
    pub last_success: Option<u64>,
    pub last_failure: Option<u64>,
    pub last_error: Option<String>,
}

impl Upstream {
    pub fn status(&self) -> UpstreamStatus {
        let h = &self.health;
        let (ok, failed) = (h.last_ok.load(Relaxed), h.last_failure.load(Relaxed));
        let failures = h.failures.load(Relaxed);
        let state = if failures > 0 {
            "down"
        } else if ok > 0 {
            "up"
        } else {
            "unknown"
        };
        let secs = |ms: u64| (ms > 0).then_some(ms / 1000);
        UpstreamStatus {
            name: self.name.to_string(),
            transport: match self.config.transport() {
                TransportKind::Stdio => "stdio",
                TransportKind::Http => "http",
            },
            endpoint: self.endpoint_display(),
            state,
            links: h.links.load(Relaxed),
            consecutive_failures: failures,
            last_success: secs(ok),
            last_failure: secs(failed),
            last_error: (failures > 0)
                .then(|| {
                    h.last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                })
                .flatten(),
        }
    }

    /// Host and port of an HTTP upstream.
    pub(crate) fn endpoint_address(&self) -> Option<(&str, u16)> {
        let url = &self.http.as_ref()?.url;
        Some((url.host_str()?, url.port_or_known_default()?))
    }

    fn endpoint_display(&self) -> String {
        match &self.http {
            Some(c) => {
                let u = &c.url;
                let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                format!(
                    "{}://{}{port}{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.path()
                )
            }
            None => {
                let cmd = self.config.command.as_deref().unwrap_or_default();
                std::path::Path::new(cmd)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| cmd.to_string())
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::UpstreamConfig;

    fn upstream(toml: &str) -> Arc<Upstream> {
        // An HTTP upstream builds a reqwest client, which needs a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg: UpstreamConfig = toml::from_str(toml).unwrap();
        Upstream::new("u", cfg).unwrap()
    }

    #[test]
    fn state_follows_the_last_outcome() {
        let u = upstream("command = \"/usr/bin/server\"\nargs = [\"--token\", \"s3cret\"]");
        assert_eq!(u.status().state, "unknown");
        assert_eq!(u.status().endpoint, "server");
        u.health.failed(&UpstreamError::Exited {
            upstream: "u".into(),
        });
        let s = u.status();
        assert_eq!((s.state, s.consecutive_failures), ("down", 1));
        assert!(s.last_error.unwrap().contains("exited"));
        u.health.failed(&UpstreamError::Cancelled);
        assert_eq!(u.status().consecutive_failures, 1);
        u.health.succeeded();
        let s = u.status();
        assert_eq!((s.state, s.consecutive_failures), ("up", 0));
        assert!(s.last_error.is_none());
    }

    #[test]
    fn the_endpoint_never_shows_credentials() {
        let u = upstream("url = \"https://user:pw@example.com:8443/mcp?key=s3cret\"");
        assert_eq!(u.status().endpoint, "https://example.com:8443/mcp");
        assert_eq!(u.endpoint_address(), Some(("example.com", 8443)));
    }
}
