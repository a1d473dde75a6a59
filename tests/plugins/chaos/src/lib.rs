//! `chaos`: one test policy, many behaviours, chosen by the sidecar's `[config]`.
//!
//! ```toml
//! [config]
//! mode = "deny"          # see `Mode` for every mode and the settings each one reads
//! code = -32003
//! message = "no"
//! phases = ["request"]   # act only in these phases (default: the mode's natural phases)
//! methods = ["tools/call"]   # act only on these methods (default: all)
//! targets = ["crash"]    # act only on targets containing one of these (default: all)
//! ```
//!
//! `describe` runs without a config, so it always says stage `custom` and both phases; the
//! sidecar's `stage` moves it. On a message it does not act on, chaos allows. Without
//! `phases`, a mode acts in its natural phases: the request for `modify-params`, `tag`,
//! `route`, `read-params`, `kv-count` and `flood`; the response for `modify-result` and
//! `filter-list`; both for the others.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;

use portcullis_sdk::prelude::*;
use serde::Deserialize;

/// What chaos does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Allow.
    #[default]
    Allow,
    /// Deny with `code` (default -32003), `message` and optional `data`.
    Deny,
    /// Deny at the HTTP level: `status` (default 401) with a `WWW-Authenticate` header
    /// (`www-authenticate`).
    DenyHttp,
    /// Set `params.arguments.<argument>` (default `chaos`) to `value` (default `"modified"`).
    ModifyParams,
    /// Replace the result with `result` (default: one text content item).
    ModifyResult,
    /// Drop the items of a `tools/list` (`prompts/list`, `resources/list`) result whose name
    /// contains `contains`.
    FilterList,
    /// Set the identity (`subject`, default `chaos`; `roles` added, default `["chaos"]`) and
    /// the `attributes` (default `chaos.tagged = "true"`).
    Tag,
    /// Route to `upstream` and/or `target`.
    Route,
    /// Read the params (as text, or parsed with `parse = true`) and allow: payload cost.
    ReadParams,
    /// Spin forever (the CPU deadline must stop it).
    Loop,
    /// Allocate until memory runs out (the memory cap must stop it).
    Oom,
    /// Execute `unreachable`.
    Trap,
    /// Panic (a trap, with a message on stderr).
    Panic,
    /// Write `lines` (default 10 000) log lines of `line-bytes` (default 1024), and
    /// `stdio-bytes` (default 32 KiB, twice the gateway's cap) of such lines to each of
    /// stdout and stderr, then allow. The defaults take about 10 ms in a debug build of the
    /// gateway, well inside the default deadline; lines over the gateway's 4096-byte cap on a
    /// line (`line-bytes = 8192`) cost about 4 times as much.
    Flood,
    /// Return params (request phase) or a result (response phase) of `bytes` (default 4 MiB).
    /// The output is built in the plugin's memory, so `bytes` must fit under the memory cap
    /// (4 MiB needs about 6 MiB); set the sidecar's `output-kib` below `bytes` to hit the
    /// output limit rather than the memory limit.
    HugeOutput,
    /// Count calls in the kv store under `key` (default `count`, expiring after `ttl-ms`);
    /// allow (with attribute `chaos.count`) up to `limit` (default 3), deny after.
    KvCount,
    /// Refuse every configuration in `init`.
    RejectConfig,
    /// Write to its own memory on every call (a 64 KiB buffer kept in a static list) and set
    /// `params.arguments.<argument>` (default `chaos`) to `calls-seen-<n>`, where `n` is how
    /// many calls this instance's memory remembers, this one included: always 1 when every
    /// call starts from a fresh instance, 1, 2, 3… when an instance is reused.
    Remember,
}

impl Mode {
    fn natural_phases(self) -> &'static [Phase] {
        match self {
            Mode::ModifyParams
            | Mode::Tag
            | Mode::Route
            | Mode::ReadParams
            | Mode::KvCount
            | Mode::Remember
            | Mode::Flood => &[Phase::Request],
            Mode::ModifyResult | Mode::FilterList => &[Phase::Response],
            _ => Phase::BOTH,
        }
    }
}

/// A phase named in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    /// The request phase.
    Request,
    /// The response phase.
    Response,
}

impl From<PhaseName> for Phase {
    fn from(p: PhaseName) -> Self {
        match p {
            PhaseName::Request => Phase::Request,
            PhaseName::Response => Phase::Response,
        }
    }
}

/// The sidecar's `[config]`: `mode` plus the settings that mode reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// What to do (default `allow`).
    #[serde(default)]
    pub mode: Mode,
    /// Act only in these phases; allow in the others.
    pub phases: Option<Vec<PhaseName>>,
    /// Act only on these methods (exact names).
    pub methods: Option<Vec<String>>,
    /// Act only on messages whose target contains one of these.
    pub targets: Option<Vec<String>>,
    /// `deny`, `kv-count`: the JSON-RPC error code.
    pub code: Option<i32>,
    /// `deny`, `kv-count`: the JSON-RPC error message.
    pub message: Option<String>,
    /// `deny`: the JSON-RPC error data.
    pub data: Option<Value>,
    /// `deny-http`: the HTTP status.
    pub status: Option<u16>,
    /// `deny-http`: the `WWW-Authenticate` header.
    pub www_authenticate: Option<String>,
    /// `modify-params`: the argument to set.
    pub argument: Option<String>,
    /// `modify-params`: its new value.
    pub value: Option<Value>,
    /// `modify-result`: the new result.
    pub result: Option<Value>,
    /// `filter-list`: drop items whose name contains this.
    pub contains: Option<String>,
    /// `tag`: the identity's subject.
    pub subject: Option<String>,
    /// `tag`: roles to add.
    pub roles: Option<Vec<String>>,
    /// `tag`: attributes to set.
    pub attributes: Option<BTreeMap<String, String>>,
    /// `route`: the upstream.
    pub upstream: Option<String>,
    /// `route`: the target name at the upstream.
    pub target: Option<String>,
    /// `read-params`: parse the params instead of only copying them.
    #[serde(default)]
    pub parse: bool,
    /// `flood`: how many lines.
    pub lines: Option<usize>,
    /// `flood`: bytes per line.
    pub line_bytes: Option<usize>,
    /// `flood`: bytes written to each of stdout and stderr.
    pub stdio_bytes: Option<usize>,
    /// `huge-output`: size of the output.
    pub bytes: Option<usize>,
    /// `kv-count`: the counter's key.
    pub key: Option<String>,
    /// `kv-count`: calls allowed before denying.
    pub limit: Option<i64>,
    /// `kv-count`: the counter's expiry.
    pub ttl_ms: Option<u64>,
    /// Any mode: `init` busies itself for this many milliseconds (an expensive `init`).
    pub init_ms: Option<u64>,
}

/// Fits in the 8 MiB memory cap the gateway's tests give hostile plugins, and is over any
/// `output-kib` of up to 4096.
const DEFAULT_HUGE_BYTES: usize = 4 * 1024 * 1024;

/// The policy.
pub struct Chaos;

impl Policy for Chaos {
    type Config = Config;

    fn describe() -> Info {
        Info::new("chaos", env!("CARGO_PKG_VERSION"), Stage::Custom).with_phases(Phase::BOTH)
    }

    fn init(config: &Config) -> Result<(), String> {
        if let Some(ms) = config.init_ms {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        match config.mode {
            Mode::RejectConfig => {
                Err("chaos: mode reject-config rejects every configuration".into())
            }
            Mode::FilterList if config.contains.is_none() => {
                Err("chaos: filter-list needs `contains`".into())
            }
            Mode::Route if config.upstream.is_none() && config.target.is_none() => {
                Err("chaos: route needs `upstream` or `target`".into())
            }
            _ => Ok(()),
        }
    }

    fn evaluate(config: &Config, msg: &Message) -> Verdict {
        if !acts_on(config, msg) {
            return Verdict::allow();
        }
        match config.mode {
            Mode::Allow | Mode::RejectConfig => Verdict::allow(),
            Mode::Deny => deny(config),
            Mode::DenyHttp => {
                let challenge = config
                    .www_authenticate
                    .as_deref()
                    .unwrap_or(r#"Bearer realm="chaos""#);
                Verdict::deny_http(
                    config.status.unwrap_or(401),
                    [("WWW-Authenticate", challenge)],
                )
            }
            Mode::ModifyParams => modify_params(config, msg),
            Mode::ModifyResult => {
                let result = config
                    .result
                    .clone()
                    .unwrap_or_else(|| text_result("modified by chaos"));
                Changes::new().with_result(result).into()
            }
            Mode::FilterList => filter_list(config.contains.as_deref().unwrap_or_default(), msg),
            Mode::Tag => tag(config, msg),
            Mode::Route => route(config),
            Mode::ReadParams => {
                if config.parse {
                    black_box(msg.params());
                } else {
                    black_box(msg.params_json());
                }
                Verdict::allow()
            }
            Mode::Loop => spin(),
            Mode::Oom => hoard(),
            Mode::Trap => trap(),
            Mode::Panic => panic!("chaos: panic mode"),
            Mode::Flood => flood(
                config.lines.unwrap_or(10_000),
                config.line_bytes.unwrap_or(1024),
                config.stdio_bytes.unwrap_or(32 * 1024),
            ),
            Mode::HugeOutput => huge_output(config.bytes.unwrap_or(DEFAULT_HUGE_BYTES), msg),
            Mode::KvCount => kv_count(config),
            Mode::Remember => remember(config, msg),
        }
    }
}

portcullis_sdk::export_policy!(Chaos);

fn acts_on(config: &Config, msg: &Message) -> bool {
    let phase = match &config.phases {
        Some(phases) => phases.iter().any(|p| Phase::from(*p) == msg.phase()),
        None => config.mode.natural_phases().contains(&msg.phase()),
    };
    let method = config
        .methods
        .as_ref()
        .is_none_or(|methods| methods.iter().any(|m| m == msg.method()));
    let target = config.targets.as_ref().is_none_or(|targets| {
        msg.target()
            .is_some_and(|target| targets.iter().any(|t| target.contains(t.as_str())))
    });
    phase && method && target
}

fn deny(config: &Config) -> Verdict {
    let message = config.message.as_deref().unwrap_or("denied by chaos");
    let mut denial = Denial::new(config.code.unwrap_or(codes::DENIED), message);
    if let Some(data) = &config.data {
        denial = denial.with_data(data.clone());
    }
    denial.into()
}

fn text_result(text: &str) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": false })
}

fn modify_params(config: &Config, msg: &Message) -> Verdict {
    let mut params = match msg.params() {
        Some(Value::Object(params)) => params.clone(),
        _ => Default::default(),
    };
    let arguments = params.entry("arguments").or_insert_with(|| json!({}));
    if !arguments.is_object() {
        *arguments = json!({});
    }
    if let Some(arguments) = arguments.as_object_mut() {
        let name = config.argument.clone().unwrap_or_else(|| "chaos".into());
        arguments.insert(
            name,
            config.value.clone().unwrap_or_else(|| json!("modified")),
        );
    }
    Changes::new().with_params(Value::Object(params)).into()
}

/// What this instance's memory has kept of earlier calls: one 64 KiB buffer each.
static REMEMBERED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn remember(config: &Config, msg: &Message) -> Verdict {
    let seen = {
        let mut kept = REMEMBERED.lock().unwrap_or_else(|p| p.into_inner());
        kept.push(black_box(vec![0xa5; 64 * 1024]));
        kept.len()
    };
    let config = Config {
        value: Some(json!(format!("calls-seen-{seen}"))),
        ..config.clone()
    };
    modify_params(&config, msg)
}

fn filter_list(needle: &str, msg: &Message) -> Verdict {
    let key = match msg.method() {
        "tools/list" => "tools",
        "prompts/list" => "prompts",
        "resources/list" => "resources",
        _ => return Verdict::allow(),
    };
    let Some(mut result) = msg.result().cloned() else {
        return Verdict::allow();
    };
    let Some(items) = result.get_mut(key).and_then(Value::as_array_mut) else {
        return Verdict::allow();
    };
    let before = items.len();
    items.retain(|item| {
        !item
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.contains(needle))
    });
    if items.len() == before {
        return Verdict::allow();
    }
    Changes::new().with_result(result).into()
}

fn tag(config: &Config, msg: &Message) -> Verdict {
    let mut identity = msg.identity().cloned().unwrap_or_default();
    identity.subject = config.subject.clone().unwrap_or_else(|| "chaos".into());
    for role in config.roles.clone().unwrap_or_else(|| vec!["chaos".into()]) {
        if !identity.has_role(&role) {
            identity.roles.push(role);
        }
    }
    let default_attributes = BTreeMap::from([("chaos.tagged".to_string(), "true".to_string())]);
    let attributes = config.attributes.as_ref().unwrap_or(&default_attributes);
    attributes
        .iter()
        .fold(Changes::new().with_identity(identity), |c, (k, v)| {
            c.with_attribute(k, v)
        })
        .into()
}

fn route(config: &Config) -> Verdict {
    let mut changes = Changes::new();
    if let Some(upstream) = &config.upstream {
        changes = changes.with_upstream(upstream);
    }
    if let Some(target) = &config.target {
        changes = changes.with_target(target);
    }
    changes.into()
}

fn spin() -> Verdict {
    let mut n: u64 = 0;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

fn hoard() -> Verdict {
    const CHUNK: usize = 1024 * 1024;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // An allocation that fails aborts: the instance traps on the memory cap.
        hoard.push(black_box(vec![1u8; CHUNK]));
        black_box(&hoard);
    }
}

fn trap() -> Verdict {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort();
}

fn flood(lines: usize, line_bytes: usize, stdio_bytes: usize) -> Verdict {
    let line = format!("chaos flood {}\n", "x".repeat(line_bytes));
    for _ in 0..lines {
        log::info(line.trim_end());
    }
    // Buffered so the cost is the bytes, not one host call per line; write errors (a closed
    // stream) are ignored: flooding is the point, not delivery.
    let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr().lock());
    for _ in 0..stdio_bytes.div_ceil(line.len()) {
        let _ = stdout.write_all(line.as_bytes());
        let _ = stderr.write_all(line.as_bytes());
    }
    let _ = stdout.flush();
    let _ = stderr.flush();
    Verdict::allow()
}

fn huge_output(bytes: usize, msg: &Message) -> Verdict {
    let (head, tail) = match msg.phase() {
        Phase::Request => (r#"{"name":"chaos","arguments":{"blob":""#, r#""}}"#),
        Phase::Response => (r#"{"content":[{"type":"text","text":""#, r#""}]}"#),
    };
    let fill = bytes.saturating_sub(head.len() + tail.len());
    let mut json = String::with_capacity(head.len() + fill + tail.len());
    json.push_str(head);
    json.extend(std::iter::repeat_n('x', fill));
    json.push_str(tail);
    match msg.phase() {
        Phase::Request => Changes::new().with_params_json(json).into(),
        Phase::Response => Changes::new().with_result_json(json).into(),
    }
}

fn kv_count(config: &Config) -> Verdict {
    let key = config.key.as_deref().unwrap_or("count");
    let ttl = config.ttl_ms.map(std::time::Duration::from_millis);
    let count = kv::incr(key, 1, ttl);
    let limit = config.limit.unwrap_or(3);
    if count > limit {
        let message = config
            .message
            .clone()
            .unwrap_or_else(|| format!("chaos: limit of {limit} calls reached"));
        return Verdict::deny(config.code.unwrap_or(codes::DENIED), message);
    }
    Changes::new()
        .with_attribute("chaos.count", count.to_string())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: Value) -> Config {
        portcullis_sdk::parse_config::<Chaos>(&json.to_string()).unwrap()
    }

    #[test]
    fn config_errors_name_the_problem() {
        let err = portcullis_sdk::parse_config::<Chaos>(r#"{"mode":"explode"}"#).unwrap_err();
        assert!(err.contains("unknown variant `explode`"), "{err}");
        let err = portcullis_sdk::parse_config::<Chaos>(r#"{"mode":"reject-config"}"#).unwrap_err();
        assert!(err.contains("rejects every configuration"), "{err}");
        assert!(portcullis_sdk::parse_config::<Chaos>(r#"{"mode":"allow","typo":1}"#).is_err());
    }

    #[test]
    fn deny_http_carries_status_and_challenge() {
        let verdict = Chaos::evaluate(
            &config(json!({"mode": "deny-http"})),
            &TestMessage::request("tools/list").build(),
        );
        let denial = verdict.denial().unwrap();
        assert_eq!(denial.http_status, Some(401));
        assert_eq!(denial.http_headers[0].0, "WWW-Authenticate");
    }

    #[test]
    fn modify_params_sets_one_argument_and_keeps_the_rest() {
        let msg = TestMessage::request("tools/call")
            .with_params(json!({"name": "echo", "arguments": {"text": "hi"}}))
            .build();
        let verdict = Chaos::evaluate(
            &config(json!({"mode": "modify-params", "argument": "n", "value": 7})),
            &msg,
        );
        let params = verdict.changes().and_then(Changes::params).unwrap();
        assert_eq!(
            params,
            json!({"name": "echo", "arguments": {"text": "hi", "n": 7}})
        );
    }

    #[test]
    fn filter_list_drops_matching_tools_in_the_response_only() {
        let cfg = config(json!({"mode": "filter-list", "contains": "secret"}));
        let result = json!({"tools": [{"name": "a__echo"}, {"name": "a__secret_dump"}]});
        let response = TestMessage::response("tools/list")
            .with_result(result)
            .build();
        let filtered = Chaos::evaluate(&cfg, &response)
            .changes()
            .and_then(Changes::result)
            .unwrap();
        assert_eq!(filtered, json!({"tools": [{"name": "a__echo"}]}));
        assert!(Chaos::evaluate(&cfg, &TestMessage::request("tools/list").build()).is_allow());
    }

    #[test]
    fn kv_count_denies_after_the_limit() {
        let cfg = config(json!({"mode": "kv-count", "limit": 2}));
        let msg = TestMessage::request("tools/call").build();
        assert_eq!(
            Chaos::evaluate(&cfg, &msg)
                .changes()
                .and_then(|c| c.attribute("chaos.count")),
            Some("1")
        );
        assert!(!Chaos::evaluate(&cfg, &msg).is_deny());
        assert!(Chaos::evaluate(&cfg, &msg).is_deny());
    }

    #[test]
    fn huge_output_is_valid_json_of_the_asked_size() {
        let verdict = Chaos::evaluate(
            &config(json!({"mode": "huge-output", "bytes": 1000})),
            &TestMessage::response("tools/call").build(),
        );
        let text = verdict.changes().and_then(Changes::result_json).unwrap();
        assert_eq!(text.len(), 1000);
        assert!(serde_json_ok(text));
    }

    fn serde_json_ok(text: &str) -> bool {
        portcullis_sdk::serde_json::from_str::<Value>(text).is_ok()
    }

    #[test]
    fn tag_sets_identity_and_attributes_and_phases_are_respected() {
        let cfg = config(json!({"mode": "tag", "subject": "bob", "roles": ["admin"]}));
        let verdict = Chaos::evaluate(&cfg, &TestMessage::request("tools/call").build());
        let changes = verdict.changes().unwrap();
        assert_eq!(
            changes
                .identity()
                .map(|i| (i.subject.as_str(), i.has_role("admin"))),
            Some(("bob", true))
        );
        assert_eq!(changes.attribute("chaos.tagged"), Some("true"));
        let denying_responses = config(json!({"mode": "deny", "phases": ["response"]}));
        assert!(
            Chaos::evaluate(&denying_responses, &TestMessage::request("ping").build()).is_allow()
        );
        assert!(
            Chaos::evaluate(&denying_responses, &TestMessage::response("ping").build()).is_deny()
        );
    }
}
