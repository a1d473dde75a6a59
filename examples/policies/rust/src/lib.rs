//! `path-guard`: refuses a `tools/call` whose arguments name a filesystem path outside the
//! allowed folders, and tags the calls it checked for later stages.
//!
//! A string argument (at any depth) counts as a path when it starts with `/`, `~` or
//! `file://`, or has a `..` component. Paths are resolved lexically (`/srv/data/../../etc`
//! is `/etc`) and compared component by component with `allowed-prefixes`.
//!
//! Sidecar (`path-guard.toml`):
//!
//! ```toml
//! [config]
//! allowed-prefixes = ["/srv/data", "~/projects"]
//! tag-identity = true   # also record the check on the caller's identity
//! ```

mod paths;

use portcullis_sdk::prelude::*;
use serde::Deserialize;

use paths::NormalPath;

/// The attribute set on every call path-guard checked and let through.
pub const CHECKED: &str = "path-guard.checked";
/// The attribute giving how many path arguments the call had.
pub const PATHS: &str = "path-guard.paths";

/// The sidecar's `[config]` table, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    allowed_prefixes: Vec<String>,
    #[serde(default)]
    tag_identity: bool,
}

/// The configuration, with the allowed folders parsed once per instance.
#[derive(Debug, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    allowed: Vec<NormalPath>,
    tag_identity: bool,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        let allowed = raw
            .allowed_prefixes
            .iter()
            .map(|prefix| match NormalPath::parse(prefix) {
                Some(folder) if folder.is_anchored() => Ok(folder),
                _ => Err(format!(
                    "allowed-prefixes: {prefix:?} must be an absolute path or start with `~`"
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Config {
            allowed,
            tag_identity: raw.tag_identity,
        })
    }
}

/// The policy.
pub struct PathGuard;

impl Policy for PathGuard {
    type Config = Config;

    fn describe() -> Info {
        Info::new("path-guard", env!("CARGO_PKG_VERSION"), Stage::Authz)
            .with_phases(&[Phase::Request])
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        if msg.method() != "tools/call" {
            return Verdict::allow();
        }
        let Some(arguments) = msg.params().and_then(|p| p.get("arguments")) else {
            return Verdict::allow();
        };
        if let Some(at) = paths::first_outside(arguments, &config.allowed, &mut String::new()) {
            log::info(&format!(
                "refused {}: argument {at} is outside the allowed folders",
                msg.target().unwrap_or("?")
            ));
            return Denial::new(
                codes::DENIED,
                format!("path-guard: argument `{at}` names a path outside the allowed folders"),
            )
            .with_data(json!({ "argument": at }))
            .into();
        }
        let mut changes = Changes::new()
            .with_attribute(CHECKED, "true")
            .with_attribute(PATHS, paths::count_paths(arguments).to_string());
        if config.tag_identity
            && let Some(identity) = msg.identity()
        {
            changes = changes.with_identity(identity.clone().with_attribute(CHECKED, "true"));
        }
        changes.into()
    }
}

export_policy!(PathGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        portcullis_sdk::parse_config::<PathGuard>(json).unwrap()
    }

    fn call(arguments: Value) -> Message<'static> {
        TestMessage::request("tools/call")
            .with_target("fs__read_file")
            .with_params(json!({ "name": "read_file", "arguments": arguments }))
            .with_identity(Identity::new("alice"))
            .build()
    }

    #[test]
    fn refuses_a_path_outside_and_says_which_argument() {
        let cfg = config(r#"{ "allowed-prefixes": ["/srv/data"] }"#);
        let verdict =
            PathGuard::evaluate(&cfg, &call(json!({ "path": "/srv/data/../../etc/passwd" })));
        let denial = verdict.denial().expect("denied");
        assert_eq!(denial.code, codes::DENIED);
        assert_eq!(denial.data, Some(json!({ "argument": "path" })));
        assert!(
            !denial.message.contains("passwd"),
            "the message names the argument, not the path"
        );
    }

    #[test]
    fn lets_allowed_paths_through_and_tags_the_call() {
        let cfg = config(r#"{ "allowed-prefixes": ["/srv/data"], "tag-identity": true }"#);
        let verdict = PathGuard::evaluate(
            &cfg,
            &call(json!({ "path": "/srv/data/a.txt", "mode": "r" })),
        );
        let changes = verdict.changes().expect("tagged");
        assert_eq!(changes.attribute(CHECKED), Some("true"));
        assert_eq!(changes.attribute(PATHS), Some("1"));
        assert_eq!(
            changes.identity().and_then(|i| i.attribute(CHECKED)),
            Some("true")
        );
    }

    #[test]
    fn ignores_other_methods_and_calls_without_arguments() {
        let cfg = config("{}");
        assert!(PathGuard::evaluate(&cfg, &TestMessage::request("tools/list").build()).is_allow());
        let bare = TestMessage::request("tools/call")
            .with_params(json!({ "name": "now" }))
            .build();
        assert!(PathGuard::evaluate(&cfg, &bare).is_allow());
    }

    #[test]
    fn with_no_allowed_prefixes_every_path_is_refused() {
        assert!(PathGuard::evaluate(&config("{}"), &call(json!({ "p": "~/notes" }))).is_deny());
    }

    #[test]
    fn rejects_relative_or_misspelt_settings_at_load() {
        let err = portcullis_sdk::parse_config::<PathGuard>(r#"{ "allowed-prefixes": ["data"] }"#)
            .unwrap_err();
        assert!(err.contains("must be an absolute path"), "{err}");
        let err = portcullis_sdk::parse_config::<PathGuard>(r#"{ "allowed-prefix": ["/srv"] }"#)
            .unwrap_err();
        assert!(err.contains("unknown field `allowed-prefix`"), "{err}");
    }
}
