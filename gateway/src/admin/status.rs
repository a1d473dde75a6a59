//! What the admin API reports: readiness, and the status document of `GET /v1/status`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::policy::{PluginStatus, Policies, ReloadReport};
use crate::session::Sessions;
use crate::upstream::UpstreamStatus;

/// Whether this gateway should get traffic.
///
/// Ready means: the listener is bound and serving (the probe answered at all), the policy
/// chain is loaded with a serving version of every plugin file in the folder, and the
/// gateway is not draining. A plugin that never loaded means the chain is not the one the
/// operator deployed, so a replica with one takes no traffic (a *new* version that failed
/// keeps its last good version serving, and does not count). Upstream health does not
/// count: upstreams are shared by all replicas, so taking replicas out of service for an
/// upstream's outage would only turn one failing upstream into a failing gateway; it shows
/// in the status instead.
pub fn readiness(policies: &Policies, draining: bool) -> Result<(), String> {
    if draining {
        return Err("draining".into());
    }
    match policies.rejected() {
        0 => Ok(()),
        1 => Err("1 plugin failed to load".into()),
        n => Err(format!("{n} plugins failed to load")),
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// `ready`, `degraded` (ready, but an upstream is down or a plugin's new version was
    /// rejected) or `not-ready`.
    pub status: &'static str,
    pub ready: bool,
    /// Why not ready, or why degraded.
    pub reasons: Vec<String>,
    pub sessions: usize,
    pub tracing: bool,
    pub upstreams: Vec<UpstreamStatus>,
    pub plugins: Vec<PluginStatus>,
    pub last_reload: Option<Reload>,
}

/// One reload's outcome.
#[derive(Debug, Serialize)]
pub struct Reload {
    /// Unix seconds.
    pub at: u64,
    pub took_ms: u128,
    pub active: usize,
    pub loaded: Vec<String>,
    pub errors: Vec<String>,
}

impl From<ReloadReport> for Reload {
    fn from(r: ReloadReport) -> Self {
        Reload {
            at: unix(r.at),
            took_ms: r.took_ms,
            active: r.active,
            loaded: r.loaded,
            errors: r.errors,
        }
    }
}

pub async fn status(
    sessions: &Sessions,
    policies: &Policies,
    started: Instant,
    draining: bool,
) -> Status {
    let upstreams: Vec<UpstreamStatus> = sessions.upstreams().iter().map(|u| u.status()).collect();
    let plugins = policies.status().await;
    let ready = readiness(policies, draining);
    let mut reasons = Vec::new();
    let mut degraded = false;
    if let Err(why) = &ready {
        reasons.push(why.clone());
    }
    for p in plugins
        .iter()
        .filter(|p| p.state != "active" && p.state != "disabled")
    {
        degraded = true;
        reasons.push(format!(
            "plugin {} is {}: {}",
            p.name,
            p.state,
            p.error.as_deref().unwrap_or("")
        ));
    }
    for u in upstreams.iter().filter(|u| u.state == "down") {
        degraded = true;
        reasons.push(format!("upstream {} is down", u.name));
    }
    let status = match (&ready, degraded) {
        (Err(_), _) => "not-ready",
        (Ok(()), true) => "degraded",
        (Ok(()), false) => "ready",
    };
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: started.elapsed().as_secs(),
        status,
        ready: ready.is_ok(),
        reasons,
        sessions: sessions.len(),
        tracing: crate::observe::enabled(),
        upstreams,
        plugins,
        last_reload: policies.last_reload().map(Reload::from),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
