//! {{name}}: a Portcullis policy.
//!
//! What it does (replace it with your rule): refuses any tool whose name contains one of the
//! configured words (`delete` by default) unless the caller holds one of the configured roles
//! (`admin` by default), and hides those tools from such a caller's `tools/list`.

use portcullis_sdk::prelude::*;

/// The sidecar's `[config]` table; a key not listed here is an error at load.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// A tool whose name contains one of these is refused ...
    pub words: Vec<String>,
    /// ... unless the caller holds one of these roles.
    pub roles: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            words: vec!["delete".into()],
            roles: vec!["admin".into()],
        }
    }
}

pub struct Guard;

impl Policy for Guard {
    type Config = Config;

    fn describe() -> Info {
        Info::new("{{name}}", "0.1.0", Stage::Authz).with_phases(Phase::BOTH)
    }

    fn init(config: &Config) -> Result<(), String> {
        if config.words.iter().any(|w| w.is_empty()) {
            return Err("words: an empty word would match every tool".into());
        }
        Ok(())
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        let roles = msg.identity().map(|i| i.roles.as_slice()).unwrap_or_default();
        if roles.iter().any(|r| config.roles.contains(r)) {
            return Verdict::allow();
        }
        let guarded = |tool: &str| config.words.iter().any(|w| tool.contains(w.as_str()));
        match (msg.phase(), msg.method()) {
            (Phase::Request, "tools/call") => {
                let tool = msg.target().unwrap_or_default();
                if !guarded(tool) {
                    return Verdict::allow();
                }
                log::info(&format!("refused {tool}"));
                Verdict::deny(codes::DENIED, format!("{tool} needs one of the roles {:?}", config.roles))
            }
            // The answer to `tools/list`: leave out what the caller may not call.
            (Phase::Response, "tools/list") => {
                let Some(mut result) = msg.result().cloned() else {
                    return Verdict::allow();
                };
                let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
                    return Verdict::allow();
                };
                let before = tools.len();
                tools.retain(|t| !t["name"].as_str().is_some_and(guarded));
                if tools.len() == before {
                    return Verdict::allow();
                }
                Changes::new().with_result(result).into()
            }
            _ => Verdict::allow(),
        }
    }
}

export_policy!(Guard);

#[cfg(test)]
mod tests {
    use super::*;

    fn call(tool: &str, roles: &[&str]) -> Message<'static> {
        let identity = Identity {
            subject: "alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Identity::default()
        };
        TestMessage::request("tools/call").with_target(tool).with_identity(identity).build()
    }

    #[test]
    fn refuses_a_delete_tool_to_a_non_admin() {
        let config = portcullis_sdk::parse_config::<Guard>("{}").unwrap();
        assert!(Guard::evaluate(&config, &call("files__delete_file", &["dev"])).is_deny());
        assert!(Guard::evaluate(&config, &call("files__delete_file", &["admin"])).is_allow());
        assert!(Guard::evaluate(&config, &call("files__read_file", &["dev"])).is_allow());
    }

    #[test]
    fn hides_delete_tools_from_a_non_admin_list() {
        let config = portcullis_sdk::parse_config::<Guard>("{}").unwrap();
        let list = TestMessage::response("tools/list")
            .with_result(json!({ "tools": [{ "name": "files__delete_file" }, { "name": "files__read_file" }] }))
            .build();
        let verdict = Guard::evaluate(&config, &list);
        let kept = verdict.changes().and_then(|c| c.result()).expect("a new result");
        assert_eq!(kept, json!({ "tools": [{ "name": "files__read_file" }] }));
    }
}
