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
//! [phases]                  # narrows the phases `describe` declares (never widens them)
//! request = false           # never called in the request phase
//! response = ["tools/list", "notifications/*"]   # called only for these methods
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
    /// Kept as TOML here and checked by [`PhasesOverride::filters`] once the plugin has said
    /// which phases it declares: every mistake then gets a message naming the key.
    #[serde(default)]
    pub phases: PhasesOverride,
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

/// `[phases]`: for each phase, `true` (as declared, the default), `false` (never called in
/// it) or a list of methods (called only for those). It narrows what the plugin's
/// `describe` declares and never widens it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhasesOverride {
    pub request: Option<toml::Value>,
    pub response: Option<toml::Value>,
}

/// Longest list of methods one phase may name, and longest method pattern.
const MAX_METHODS: usize = 64;
const MAX_METHOD_LEN: usize = 128;

/// Which messages of one phase a plugin is called for. A method pattern is an exact method
/// name (`tools/call`), or a prefix ending in `*` (`notifications/*`; `*` alone: every
/// method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    /// Not called in this phase.
    Skip,
    /// Called for every message of the phase.
    All,
    /// Called only for messages whose method matches one of these.
    Only(Vec<String>),
}

impl Methods {
    pub fn matches(&self, method: &str) -> bool {
        match self {
            Methods::Skip => false,
            Methods::All => true,
            Methods::Only(patterns) => patterns.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => method.starts_with(prefix),
                None => p == method,
            }),
        }
    }

    /// For logs and `plugin test`: `all`, `none`, or the patterns.
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Methods::Skip => "none".into(),
            Methods::All => "all".into(),
            Methods::Only(p) => p.clone().into(),
        }
    }

    /// One phase's value: `declared` says whether the plugin's `describe` lists the phase.
    fn parse(key: &str, value: Option<&toml::Value>, declared: bool) -> Result<Self, String> {
        let Some(value) = value else {
            return Ok(if declared {
                Methods::All
            } else {
                Methods::Skip
            });
        };
        let widens = || {
            format!(
                "`phases.{key}`: the plugin does not declare the {key} phase, and `[phases]` only narrows what it declares (leave the key out or set it to false)"
            )
        };
        match value {
            toml::Value::Boolean(false) => Ok(Methods::Skip),
            toml::Value::Boolean(true) if declared => Ok(Methods::All),
            toml::Value::Boolean(true) => Err(widens()),
            toml::Value::Array(items) => {
                if items.is_empty() {
                    return Err(format!(
                        "`phases.{key}`: an empty list calls the plugin for nothing; write `{key} = false` to skip the phase"
                    ));
                }
                if items.len() > MAX_METHODS {
                    return Err(format!(
                        "`phases.{key}`: {} methods, at most {MAX_METHODS}",
                        items.len()
                    ));
                }
                let mut patterns = Vec::with_capacity(items.len());
                for item in items {
                    let Some(p) = item.as_str() else {
                        return Err(format!(
                            "`phases.{key}`: {item} is not a method name (a string such as \"tools/call\" or \"notifications/*\")"
                        ));
                    };
                    let star = p.find('*');
                    if p.is_empty()
                        || p.len() > MAX_METHOD_LEN
                        || p.chars().any(|c| c.is_whitespace() || c.is_control())
                        || star.is_some_and(|at| at != p.len() - 1)
                    {
                        return Err(format!(
                            "`phases.{key}`: {p:?} is not a method pattern: an exact method name, or a prefix ending in `*` (at most {MAX_METHOD_LEN} characters, no spaces)"
                        ));
                    }
                    patterns.push(p.to_string());
                }
                if !declared {
                    return Err(widens());
                }
                Ok(if patterns.iter().any(|p| p == "*") {
                    Methods::All
                } else {
                    Methods::Only(patterns)
                })
            }
            other => Err(format!(
                "`phases.{key}`: expected true, false or a list of methods, not {other}"
            )),
        }
    }
}

impl PhasesOverride {
    /// The methods the plugin is called for in the request and the response phase, given the
    /// phases it declares and its stage. Refuses what would widen the declared phases, skip
    /// every phase (that is `enabled = false`), or narrow an `authn` plugin's request phase
    /// (every request must pass authentication).
    pub fn filters(
        &self,
        request: bool,
        response: bool,
        stage: super::Stage,
    ) -> Result<(Methods, Methods), String> {
        let req = Methods::parse("request", self.request.as_ref(), request)?;
        let resp = Methods::parse("response", self.response.as_ref(), response)?;
        if stage == super::Stage::Authn && request && req != Methods::All {
            return Err(
                "`phases.request`: a plugin in the authn stage sees every request; its request phase cannot be narrowed".into(),
            );
        }
        if req == Methods::Skip && resp == Methods::Skip {
            return Err(
                "`[phases]` leaves the plugin no phase to run in: set `enabled = false` to take it out of the chain".into(),
            );
        }
        Ok((req, resp))
    }
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

    fn phases(text: &str) -> PhasesOverride {
        toml::from_str::<Sidecar>(text).unwrap().phases
    }

    #[test]
    fn phases_narrow_what_the_plugin_declares() {
        use super::super::Stage::{Authn, Authz, Redaction};
        // No `[phases]`: as declared.
        let none = PhasesOverride::default();
        assert_eq!(
            none.filters(true, false, Authz).unwrap(),
            (Methods::All, Methods::Skip)
        );
        let p =
            phases("[phases]\nrequest = false\nresponse = [\"tools/list\", \"notifications/*\"]\n");
        let (req, resp) = p.filters(true, true, Redaction).unwrap();
        assert_eq!(req, Methods::Skip);
        assert!(!req.matches("tools/call"));
        assert!(resp.matches("tools/list"));
        assert!(resp.matches("notifications/progress"));
        assert!(!resp.matches("tools/call"), "an exact name is not a prefix");
        assert!(!resp.matches("tools/list/x"));
        let all = phases("[phases]\nresponse = [\"*\"]\n");
        assert_eq!(all.filters(true, true, Authz).unwrap().1, Methods::All);
        // `false` for a phase the plugin does not declare changes nothing.
        let off = phases("[phases]\nresponse = false\n");
        assert_eq!(
            off.filters(true, false, Authz).unwrap(),
            (Methods::All, Methods::Skip)
        );
        // An authn plugin's response phase may be narrowed (its request phase may not).
        let only = phases("[phases]\nresponse = [\"tools/list\"]\n");
        assert!(only.filters(true, true, Authn).is_ok());
    }

    #[test]
    fn phases_that_would_widen_skip_everything_or_are_malformed_are_refused() {
        use super::super::Stage::{Authn, Authz};
        let refused = |text: &str, request: bool, response: bool, stage| {
            let err = phases(text)
                .filters(request, response, stage)
                .expect_err(text);
            assert!(err.contains("phases"), "{text}: {err}");
            err
        };
        let e = refused("[phases]\nresponse = true\n", true, false, Authz);
        assert!(e.contains("does not declare the response phase"), "{e}");
        let e = refused(
            "[phases]\nresponse = [\"tools/list\"]\n",
            true,
            false,
            Authz,
        );
        assert!(e.contains("only narrows"), "{e}");
        let e = refused("[phases]\nrequest = false\n", true, false, Authz);
        assert!(e.contains("enabled = false"), "{e}");
        let e = refused("[phases]\nrequest = []\n", true, true, Authz);
        assert!(e.contains("empty list"), "{e}");
        let e = refused("[phases]\nrequest = \"tools/call\"\n", true, true, Authz);
        assert!(e.contains("expected true, false or a list"), "{e}");
        let e = refused("[phases]\nrequest = [1]\n", true, true, Authz);
        assert!(e.contains("not a method name"), "{e}");
        for bad in ["*/list", "tools/*/x", "", "tools call"] {
            let e = refused(
                &format!("[phases]\nrequest = [{bad:?}]\n"),
                true,
                true,
                Authz,
            );
            assert!(e.contains("not a method pattern"), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("\"m{i}\"")).collect();
        let e = refused(
            &format!("[phases]\nrequest = [{}]\n", many.join(",")),
            true,
            true,
            Authz,
        );
        assert!(e.contains("at most 64"), "{e}");
        let e = refused("[phases]\nrequest = [\"tools/call\"]\n", true, true, Authn);
        assert!(e.contains("authn"), "{e}");
        // An unknown key in `[phases]` fails when the sidecar is read.
        assert!(toml::from_str::<Sidecar>("[phases]\nrequests = false\n").is_err());
    }
}
