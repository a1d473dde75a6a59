//! The sidecar file beside a plugin: `<name>.toml` next to `<name>.wasm`.
//!
//! ```toml
//! enabled = true            # false keeps the plugin out of the chain
//! stage = "authz"           # overrides the stage the plugin declares
//! priority = 10             # order within a stage (lower first; default 0)
//! fail-open = false         # on a trap, timeout or limit breach: pass instead of deny
//! warm = 0                  # >0: reuse an instance for up to this many calls (pure policies)
//! preinit = true            # false: run `init` in every fresh instance (see snapshot.rs)
//! expose-headers = ["x-api-key"]   # request headers the plugin may read
//!
//! [limits]
//! timeout = "20ms"          # CPU deadline per call
//! memory-mib = 32           # linear memory cap
//! output-kib = 1024         # largest params/result a verdict may carry
//!
//! [grants]
//! dir = "/srv/policy-data"  # a directory the plugin may read (mounted at /data)
//! writable = false
//! http = ["https://login.example.com"]  # origins it may call over wasi:http (http_grant.rs)
//!
//! [config]                  # handed to the plugin's `init` as JSON
//! blocked = ["delete_*"]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Stage;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Sidecar {
    pub enabled: Option<bool>,
    pub stage: Option<Stage>,
    pub priority: Option<i32>,
    pub fail_open: Option<bool>,
    pub warm: Option<u32>,
    pub preinit: Option<bool>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub limits: LimitsOverride,
    pub grants: Option<Grants>,
    pub config: Option<toml::Table>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsOverride {
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub memory_mib: Option<u32>,
    pub output_kib: Option<u32>,
}

/// What a plugin may reach: a directory it may read (and, if `writable`, write), mounted at
/// `/data`; origins it may call over `wasi:http` (see `http_grant.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Grants {
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub http_timeout: Option<Duration>,
    pub http_max_kib: Option<u32>,
    pub http_concurrency: Option<u32>,
}

impl Sidecar {
    /// Reads `path` if it exists; a missing sidecar means all defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| format!("{}: {}", path.display(), e.message().trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sidecar::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The `[config]` table as the JSON text `init` receives.
    pub fn config_json(&self) -> String {
        match &self.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".into()),
            None => "{}".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_key_and_turns_config_into_json() {
        let s: Sidecar = toml::from_str(
            "enabled = true\nstage = \"routing\"\npriority = -1\nfail-open = true\nwarm = 100\nexpose-headers = [\"x-a\"]\n[limits]\ntimeout = \"5ms\"\nmemory-mib = 8\n[config]\nlist = [1, 2]\n",
        )
        .unwrap();
        assert_eq!(s.stage, Some(Stage::Routing));
        assert_eq!(s.limits.timeout, Some(Duration::from_millis(5)));
        assert_eq!(s.config_json(), r#"{"list":[1,2]}"#);
        assert!(toml::from_str::<Sidecar>("enabld = true").is_err());
    }
}
