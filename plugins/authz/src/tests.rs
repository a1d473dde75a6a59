use serde_json::json;

use super::*;

fn config(value: Value) -> Config {
    portcullis_sdk::parse_config::<Authz>(&value.to_string()).unwrap()
}

fn config_error(value: Value) -> String {
    match portcullis_sdk::parse_config::<Authz>(&value.to_string()) {
        Ok(_) => panic!("accepted {value}"),
        Err(e) => e,
    }
}

/// Two roles over three upstreams, as in docs/authz.md.
fn example() -> Config {
    config(json!({
        "rules": [
            { "name": "admins", "effect": "allow", "roles": ["admin"] },
            { "name": "devs-read", "effect": "allow", "roles": ["dev"],
              "upstreams": ["github"], "tools": ["get_*", "list_*"] },
            { "name": "devs-files", "effect": "allow", "roles": ["dev"],
              "upstreams": ["fs"], "tools": ["read_file"],
              "arguments": { "path": { "path-under": "/srv/shared" } } },
            { "name": "devs-prompts", "effect": "allow", "roles": ["dev"], "prompts": ["review*"] },
            { "name": "devs-docs", "effect": "allow", "roles": ["dev"],
              "upstreams": ["docs"], "resources": ["file:///public/*"] },
            { "name": "no-deletes", "effect": "deny", "tools": ["delete_*"] },
        ]
    }))
}

fn dev() -> Identity {
    Identity::new("alice").with_role("dev")
}

fn admin() -> Identity {
    Identity::new("root").with_role("admin")
}

/// A `tools/call` as the gateway presents it: client-facing name, resolved upstream and own
/// name.
fn call(upstream: &str, tool: &str, arguments: Value, id: Option<Identity>) -> Message<'static> {
    let client = format!("{upstream}__{tool}");
    let mut m = TestMessage::request("tools/call")
        .with_target(client.clone())
        .with_upstream(upstream)
        .with_upstream_target(tool)
        .with_params(json!({ "name": client, "arguments": arguments }));
    if let Some(id) = id {
        m = m.with_identity(id);
    }
    m.build()
}

fn tool(upstream: &str, tool: &str, id: Identity) -> Verdict {
    Authz::evaluate(&example(), &call(upstream, tool, json!({}), Some(id)))
}

fn allowed_by(v: &Verdict) -> Option<&str> {
    v.changes().and_then(|c| c.attribute(RULE_ATTRIBUTE))
}

fn request(method: &str, id: Identity) -> TestMessage {
    TestMessage::request(method).with_identity(id)
}

fn list(method: &str, result: Value, id: Identity) -> Verdict {
    list_with(&example(), method, result, id)
}

fn list_with(cfg: &Config, method: &str, result: Value, id: Identity) -> Verdict {
    let msg = TestMessage::response(method)
        .with_identity(id)
        .with_result(result)
        .build();
    Authz::evaluate(cfg, &msg)
}

fn names(v: &Verdict, items: &str, key: &str) -> Vec<String> {
    let result = v
        .changes()
        .and_then(Changes::result)
        .expect("a filtered result");
    result[items]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap().to_string())
        .collect()
}

// Roles, deny wins, default deny.

#[test]
fn allows_and_denies_by_role() {
    let v = tool("github", "get_issue", dev());
    assert_eq!(allowed_by(&v), Some("devs-read"));
    assert!(tool("github", "create_issue", dev()).is_deny());
    assert_eq!(
        allowed_by(&tool("github", "create_issue", admin())),
        Some("admins")
    );
    let stranger = Identity::new("bob").with_role("guest");
    assert!(tool("github", "get_issue", stranger).is_deny());
}

#[test]
fn deny_wins_over_allow() {
    // admins may do anything, but no-deletes comes first whatever the file order.
    assert!(tool("github", "delete_repo", admin()).is_deny());
    let cfg = config(json!({ "rules": [
        { "name": "all", "effect": "allow", "tools": ["*"] },
        { "name": "not-this", "effect": "deny", "tools": ["secret"] },
    ]}));
    let v = Authz::evaluate(&cfg, &call("u", "secret", json!({}), Some(dev())));
    assert!(v.is_deny());
    let v = Authz::evaluate(&cfg, &call("u", "public", json!({}), Some(dev())));
    assert_eq!(allowed_by(&v), Some("all"));
}

#[test]
fn default_is_deny_and_can_be_allow() {
    let empty = config(json!({}));
    assert!(Authz::evaluate(&empty, &call("u", "t", json!({}), Some(admin()))).is_deny());
    let open = config(json!({ "default": "allow", "rules": [
        { "name": "no-admin-tools", "effect": "deny", "tools": ["admin_*"] },
    ]}));
    let v = Authz::evaluate(&open, &call("u", "t", json!({}), Some(dev())));
    assert_eq!(allowed_by(&v), Some("default allow"));
    assert!(Authz::evaluate(&open, &call("u", "admin_x", json!({}), Some(dev()))).is_deny());
}

#[test]
fn empty_roles_means_any_caller_with_an_identity() {
    let cfg = config(json!({ "rules": [
        { "name": "everyone", "effect": "allow", "roles": [], "tools": ["ping_*"] },
    ]}));
    let nobody = Identity::new("x");
    assert!(!Authz::evaluate(&cfg, &call("u", "ping_me", json!({}), Some(nobody))).is_deny());
}

// Patterns.

#[test]
fn glob_patterns_on_tools_upstreams_and_client_names() {
    assert!(!tool("github", "list_repos", dev()).is_deny());
    assert!(tool("github", "xget_issue", dev()).is_deny());
    // Same tool, other upstream: devs-read names github only.
    assert!(tool("gitlab", "get_issue", dev()).is_deny());
    let cfg = config(json!({ "rules": [
        { "name": "git-hosts", "effect": "allow", "upstreams": ["git*"], "tools": ["get_?ssue"] },
        { "name": "by-client-name", "effect": "allow", "targets": ["search__*"] },
    ]}));
    let ok = |u, t| !Authz::evaluate(&cfg, &call(u, t, json!({}), Some(dev()))).is_deny();
    assert!(ok("github", "get_issue"));
    assert!(ok("gitlab", "get_issue"));
    assert!(!ok("svn", "get_issue"));
    assert!(!ok("github", "get_issues"));
    assert!(
        ok("search", "anything"),
        "targets match the client-facing name"
    );
    assert!(!ok("searcher", "anything"));
}

#[test]
fn patterns_use_the_upstream_s_own_name_whatever_the_prefix() {
    // A gateway with another separator, or a routing hint: the own name comes from the
    // gateway, so `tools` still matches.
    let msg = TestMessage::request("tools/call")
        .with_target("github.get_issue")
        .with_upstream("github")
        .with_upstream_target("get_issue")
        .with_identity(dev())
        .build();
    assert!(!Authz::evaluate(&example(), &msg).is_deny());
}

#[test]
fn upstream_is_read_from_the_prefix_when_the_gateway_does_not_know_it() {
    // An unknown tool: the gateway could not resolve it, so only the name is there.
    let msg = TestMessage::request("tools/call")
        .with_target("github__get_whatever")
        .with_identity(dev())
        .build();
    assert_eq!(
        allowed_by(&Authz::evaluate(&example(), &msg)),
        Some("devs-read")
    );
    let cfg = config(json!({ "separator": "--", "rules": [
        { "name": "r", "effect": "allow", "upstreams": ["github"], "tools": ["get_*"] },
    ]}));
    let msg = TestMessage::request("tools/call")
        .with_target("github--get_issue")
        .with_identity(dev())
        .build();
    assert!(!Authz::evaluate(&cfg, &msg).is_deny());
}

// Conditions on the caller.

#[test]
fn tenant_subject_scope_and_attribute_conditions() {
    let cfg = config(json!({ "rules": [
        { "name": "acme-eng", "effect": "allow", "tenants": ["acme"],
          "attributes": { "dept": ["eng", "sre"] }, "tools": ["deploy"] },
        { "name": "bots", "effect": "allow", "subjects": ["bot-*"], "scopes": ["tools:read"],
          "tools": ["read"] },
    ]}));
    let run = |id: Identity, t: &str| Authz::evaluate(&cfg, &call("u", t, json!({}), Some(id)));
    let eng = Identity::new("a")
        .with_tenant("acme")
        .with_attribute("dept", "eng");
    assert!(!run(eng.clone(), "deploy").is_deny());
    assert!(run(eng.clone().with_tenant("other"), "deploy").is_deny());
    assert!(
        run(Identity::new("a").with_attribute("dept", "eng"), "deploy").is_deny(),
        "no tenant"
    );
    assert!(run(eng.with_attribute("dept", "sales"), "deploy").is_deny());
    let bot = Identity::new("bot-7").with_scope("tools:read");
    assert!(!run(bot.clone(), "read").is_deny());
    assert!(run(Identity::new("bot-7"), "read").is_deny(), "no scope");
    assert!(
        run(Identity::new("human").with_scope("tools:read"), "read").is_deny(),
        "subject"
    );
}

// Conditions on arguments.

#[test]
fn argument_conditions() {
    let files = |path: Value| {
        Authz::evaluate(
            &example(),
            &call("fs", "read_file", json!({ "path": path }), Some(dev())),
        )
    };
    assert_eq!(
        allowed_by(&files(json!("/srv/shared/a.txt"))),
        Some("devs-files")
    );
    assert!(files(json!("/srv/shared/../secret/a.txt")).is_deny());
    assert!(files(json!("/srv/shared-not/a.txt")).is_deny());
    assert!(files(json!("relative/a.txt")).is_deny());
    assert!(files(json!(7)).is_deny());
    assert!(
        Authz::evaluate(&example(), &call("fs", "read_file", json!({}), Some(dev()))).is_deny(),
        "a missing argument fails the condition"
    );

    let cfg = config(json!({ "rules": [
        { "name": "prefix", "effect": "allow", "tools": ["write"],
          "arguments": { "path": { "starts-with": "/tmp/" }, "mode": { "one-of": ["a", "w"] } } },
        { "name": "eq", "effect": "allow", "tools": ["limit"], "arguments": { "n": { "equals": 5 } } },
        { "name": "glob", "effect": "allow", "tools": ["open"],
          "arguments": { "file": { "matches": "*.md" } } },
        { "name": "no-etc", "effect": "deny", "arguments": { "path": { "starts-with": "/etc" } } },
        { "name": "rest", "effect": "allow", "tools": ["any"] },
    ]}));
    let run = |t: &str, args: Value| Authz::evaluate(&cfg, &call("u", t, args, Some(dev())));
    assert!(!run("write", json!({ "path": "/tmp/x", "mode": "w" })).is_deny());
    assert!(run("write", json!({ "path": "/tmp/x", "mode": "r" })).is_deny());
    assert!(run("write", json!({ "path": "/var/x", "mode": "w" })).is_deny());
    assert!(!run("limit", json!({ "n": 5.0 })).is_deny());
    assert!(run("limit", json!({ "n": "5" })).is_deny());
    assert!(!run("open", json!({ "file": "docs/a.md" })).is_deny());
    assert!(run("open", json!({ "file": "a.txt" })).is_deny());
    assert!(run("any", json!({ "path": "/etc/passwd" })).is_deny());
    assert!(!run("any", json!({ "path": "/home" })).is_deny());
    assert!(
        !run("any", json!({})).is_deny(),
        "deny conditions need the argument"
    );
}

// Methods other than tools/call.

#[test]
fn prompts_resources_and_completion() {
    let get = TestMessage::request("prompts/get")
        .with_target("github__review_pr")
        .with_identity(dev())
        .build();
    assert_eq!(
        allowed_by(&Authz::evaluate(&example(), &get)),
        Some("devs-prompts")
    );
    let read = |uri: &str| {
        let msg = TestMessage::request("resources/read")
            .with_target(format!("docs+{uri}"))
            .with_identity(dev())
            .build();
        Authz::evaluate(&example(), &msg)
    };
    assert!(!read("file:///public/a/b.md").is_deny());
    assert!(read("file:///private/a.md").is_deny());

    let complete = |reference: Value| {
        let msg = request("completion/complete", dev())
            .with_params(json!({ "ref": reference, "argument": { "name": "x", "value": "" } }))
            .build();
        Authz::evaluate(&example(), &msg)
    };
    assert!(!complete(json!({ "type": "ref/prompt", "name": "github__review_pr" })).is_deny());
    assert!(complete(json!({ "type": "ref/prompt", "name": "github__other" })).is_deny());
    assert!(
        !complete(json!({ "type": "ref/resource", "uri": "docs+file:///public/{name}" })).is_deny()
    );
    assert!(complete(json!({ "type": "ref/resource", "uri": "docs+file:///etc/{x}" })).is_deny());
    assert!(complete(json!({ "type": "ref/bogus" })).is_deny());
}

#[test]
fn methods_restrict_rules_and_govern_other_methods() {
    let cfg = config(json!({ "rules": [
        { "name": "read-only", "effect": "allow", "methods": ["resources/read"], "resources": ["*"] },
        { "name": "no-complete", "effect": "deny", "methods": ["completion/complete"] },
        { "name": "tasks", "effect": "allow", "methods": ["tasks/*"] },
    ]}));
    let uri = |method: &str| {
        let msg = request(method, dev()).with_target("d+file:///a").build();
        Authz::evaluate(&cfg, &msg)
    };
    assert!(!uri("resources/read").is_deny());
    assert!(uri("resources/subscribe").is_deny());
    let complete = request("completion/complete", dev())
        .with_params(json!({ "ref": { "type": "ref/resource", "uri": "d+file:///{a}" } }))
        .build();
    assert!(Authz::evaluate(&cfg, &complete).is_deny());
    assert!(!Authz::evaluate(&cfg, &request("tasks/get", dev()).build()).is_deny());
    let other = Authz::evaluate(&cfg, &request("sampling/whatever", dev()).build());
    assert_eq!(other.denial().map(|d| d.code), Some(-32601));
}

#[test]
fn lifecycle_and_list_requests_are_allowed_with_an_identity() {
    let cfg = config(json!({}));
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "server/discover",
        "subscriptions/listen",
        "notifications/initialized",
        "notifications/cancelled",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
    ] {
        let v = Authz::evaluate(&cfg, &request(method, Identity::new("x")).build());
        assert!(v.is_allow(), "{method}");
        let anonymous = Authz::evaluate(&cfg, &TestMessage::request(method).build());
        assert!(anonymous.is_deny(), "{method} without identity");
    }
}

#[test]
fn no_identity_is_denied() {
    let v = Authz::evaluate(&example(), &call("github", "get_issue", json!({}), None));
    assert!(v.is_deny());
    let list = TestMessage::response("tools/list")
        .with_result(json!({ "tools": [{ "name": "github__get_issue" }] }))
        .build();
    assert!(Authz::evaluate(&example(), &list).is_deny());
}

// Denials do not reveal what exists.

#[test]
fn forbidden_and_unknown_targets_get_the_same_error() {
    // Forbidden: exists (the gateway resolved it). Unknown: the gateway could not resolve it.
    let forbidden = tool("github", "create_issue", dev());
    let unknown = Authz::evaluate(
        &example(),
        &TestMessage::request("tools/call")
            .with_target("github__create_issue")
            .with_identity(dev())
            .build(),
    );
    let f = forbidden.denial().unwrap();
    assert_eq!(Some(f), unknown.denial());
    assert_eq!(
        (f.code, f.message.as_str(), &f.data),
        (-32602, "Unknown tool: github__create_issue", &None),
        "the gateway's own unknown-tool error"
    );
    let no_identity = Authz::evaluate(&example(), &call("github", "create_issue", json!({}), None));
    assert_eq!(no_identity.denial(), Some(f));

    let prompt = Authz::evaluate(
        &example(),
        &request("prompts/get", dev()).with_target("x__y").build(),
    );
    let p = prompt.denial().unwrap();
    assert_eq!(
        (p.code, p.message.as_str()),
        (-32602, "Unknown prompt: x__y")
    );
    let resource = Authz::evaluate(
        &example(),
        &request("resources/read", dev())
            .with_target("docs+file:///etc/x")
            .build(),
    );
    let r = resource.denial().unwrap();
    assert_eq!(
        (r.code, r.message.as_str(), &r.data),
        (
            -32002,
            "Resource not found: docs+file:///etc/x",
            &Some(json!({ "uri": "docs+file:///etc/x" }))
        )
    );
}

// List filtering.

#[test]
fn filters_tools_list() {
    let result = json!({
        "tools": [
            { "name": "github__get_issue", "inputSchema": { "type": "object" } },
            { "name": "github__create_issue" },
            { "name": "github__delete_repo" },
            { "name": "gitlab__get_issue" },
            { "name": "fs__read_file" },
            { "description": "no name" },
        ],
        "nextCursor": "abc",
    });
    let v = list("tools/list", result.clone(), dev());
    assert_eq!(
        names(&v, "tools", "name"),
        ["github__get_issue", "fs__read_file"],
        "read_file stays: some paths are allowed"
    );
    let kept = v.changes().and_then(Changes::result).unwrap();
    assert_eq!(kept["nextCursor"], "abc");
    assert_eq!(kept["tools"][0]["inputSchema"]["type"], "object");
    let v = list("tools/list", result, admin());
    assert_eq!(
        names(&v, "tools", "name"),
        [
            "github__get_issue",
            "github__create_issue",
            "gitlab__get_issue",
            "fs__read_file"
        ],
        "deny wins in lists too; nameless items are dropped"
    );
}

#[test]
fn filters_prompts_resources_and_templates() {
    let v = list(
        "prompts/list",
        json!({ "prompts": [{ "name": "github__review_pr" }, { "name": "github__triage" }] }),
        dev(),
    );
    assert_eq!(names(&v, "prompts", "name"), ["github__review_pr"]);
    let v = list(
        "resources/list",
        json!({ "resources": [
            { "uri": "docs+file:///public/a.md", "name": "a" },
            { "uri": "docs+file:///private/b.md", "name": "b" },
            { "uri": "wiki+file:///public/c.md", "name": "c" },
        ]}),
        dev(),
    );
    assert_eq!(names(&v, "resources", "uri"), ["docs+file:///public/a.md"]);
    let v = list(
        "resources/templates/list",
        json!({ "resourceTemplates": [
            { "uriTemplate": "docs+file:///public/{path}", "name": "pub" },
            { "uriTemplate": "docs+file:///{path}", "name": "all" },
        ]}),
        dev(),
    );
    assert_eq!(
        names(&v, "resourceTemplates", "uriTemplate"),
        ["docs+file:///public/{path}"]
    );
}

#[test]
fn lists_the_caller_may_see_whole_pass_unchanged() {
    let v = list(
        "tools/list",
        json!({ "tools": [{ "name": "a__b" }] }),
        admin(),
    );
    assert!(v.is_allow());
    let error = TestMessage::response("tools/list")
        .with_identity(dev())
        .with_error(json!({ "code": -32603, "message": "down" }))
        .build();
    assert!(Authz::evaluate(&example(), &error).is_allow());
    let call = TestMessage::response("tools/call")
        .with_identity(dev())
        .with_result(json!({ "content": [] }))
        .build();
    assert!(Authz::evaluate(&example(), &call).is_allow());
}

#[test]
fn unprefixed_lists_fail_closed_for_upstream_rules() {
    let result = json!({ "tools": [{ "name": "get_issue" }, { "name": "github__get_pr" }] });
    // `never`: the upstream of a list item is unknown, so upstream-bound allows do not
    // show it (the call itself, resolved by the gateway, is still allowed).
    let never = config(json!({ "prefix": "never", "rules": [
        { "name": "r", "effect": "allow", "upstreams": ["github"], "tools": ["get_*"] },
        { "name": "any", "effect": "allow", "tools": ["github__get_pr"] },
    ]}));
    let v = list_with(&never, "tools/list", result.clone(), dev());
    assert_eq!(names(&v, "tools", "name"), ["github__get_pr"]);
    // `when-needed`: `github__get_pr` may be github's `get_pr` or an unprefixed name; both
    // readings must allow.
    let when = config(json!({ "prefix": "when-needed", "rules": [
        { "name": "r", "effect": "allow", "upstreams": ["github"], "tools": ["get_*"] },
        { "name": "also-plain", "effect": "allow", "tools": ["github__get_pr"] },
    ]}));
    let v = list_with(&when, "tools/list", result.clone(), dev());
    assert_eq!(names(&v, "tools", "name"), ["github__get_pr"]);
    // An upstream-bound deny hides items whose upstream is unknown.
    let deny = config(json!({ "prefix": "never", "rules": [
        { "name": "all", "effect": "allow", "tools": ["*"] },
        { "name": "not-prod", "effect": "deny", "upstreams": ["prod"], "tools": ["get_issue"] },
    ]}));
    let v = list_with(&deny, "tools/list", result, dev());
    assert_eq!(names(&v, "tools", "name"), ["github__get_pr"]);
}

#[test]
fn a_list_with_a_known_upstream_strips_its_prefix() {
    let msg = TestMessage::response("tools/list")
        .with_identity(dev())
        .with_upstream("github")
        .with_result(json!({ "tools": [{ "name": "github__get_issue" }, { "name": "get_pr" }, { "name": "push" }] }))
        .build();
    let v = Authz::evaluate(&example(), &msg);
    assert_eq!(names(&v, "tools", "name"), ["github__get_issue", "get_pr"]);
}

// Configuration.

#[test]
fn config_errors_are_precise() {
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "alow" }] }));
    assert!(
        e.contains("rules[0] (\"r\"): unknown variant `alow`, expected `allow` or `deny`"),
        "{e}"
    );
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow", "tool": ["x"] }] }));
    assert!(e.contains("rules[0] (\"r\"): unknown field `tool`"), "{e}");
    let e = config_error(json!({ "rule": [] }));
    assert!(e.contains("unknown field `rule`"), "{e}");
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow", "tools": [] }] }));
    assert!(e.contains("rules[0] (\"r\"): tools: empty list"), "{e}");
    let e =
        config_error(json!({ "rules": [{ "name": "r", "effect": "allow", "upstreams": [""] }] }));
    assert!(e.contains("upstreams: empty pattern"), "{e}");
    let e = config_error(json!({ "rules": [
        { "name": "r", "effect": "allow" }, { "name": "r", "effect": "deny" },
    ]}));
    assert!(
        e.contains("rules[1] (\"r\"): another rule is already named"),
        "{e}"
    );
    let e = config_error(json!({ "rules": [{ "effect": "allow" }] }));
    assert!(e.contains("rules[0]: missing field `name`"), "{e}");
    let e = config_error(
        json!({ "rules": [{ "name": "r", "effect": "allow", "methods": ["tools/list"] }] }),
    );
    assert!(e.contains("is a list"), "{e}");
    let e =
        config_error(json!({ "rules": [{ "name": "r", "effect": "allow", "methods": ["ping"] }] }));
    assert!(e.contains("always allowed"), "{e}");
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow",
        "arguments": { "path": { "path-under": "srv" } } }] }));
    assert!(e.contains("arguments.path: path-under"), "{e}");
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow",
        "arguments": { "path": { "start-with": "/srv" } } }] }));
    assert!(e.contains("unknown field `start-with`"), "{e}");
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow",
        "arguments": { "path": {} } }] }));
    assert!(e.contains("arguments.path: no operator"), "{e}");
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow",
        "attributes": { "dept": 3 } }] }));
    assert!(
        e.contains("attributes.dept: invalid type: integer `3`, expected a string or a list"),
        "{e}"
    );
    let e = config_error(json!({ "default": "maybe" }));
    assert!(e.contains("unknown variant `maybe`"), "{e}");
    let e = config_error(json!({ "separator": "" }));
    assert!(e.contains("separator"), "{e}");
    let e = config_error(json!({ "prefix": "sometimes" }));
    assert!(e.contains("unknown variant `sometimes`"), "{e}");
}

#[test]
fn the_example_sidecar_loads_and_behaves_as_documented() {
    let sidecar: toml::Table = toml::from_str(include_str!("../authz.toml")).unwrap();
    let table = sidecar.get("config").expect("a [config] table");
    let json = serde_json::to_string(table).unwrap();
    let cfg = portcullis_sdk::parse_config::<Authz>(&json).unwrap();
    let run = |id: Identity, upstream: &str, tool: &str| {
        Authz::evaluate(&cfg, &call(upstream, tool, json!({}), Some(id)))
    };
    assert!(!run(dev(), "github", "get_issue").is_deny());
    assert!(run(dev(), "github", "create_issue").is_deny());
    assert!(!run(admin(), "github", "create_issue").is_deny());
    assert!(run(admin(), "github", "delete_repo").is_deny());
    // The list a dev sees, as docs/authz.md says.
    let tools = json!({ "tools": [
        { "name": "github__get_issue" }, { "name": "github__list_repos" },
        { "name": "github__create_issue" }, { "name": "github__delete_repo" },
        { "name": "fs__read_file" }, { "name": "deploy__deploy" },
    ]});
    let seen = |id| {
        names(
            &list_with(&cfg, "tools/list", tools.clone(), id),
            "tools",
            "name",
        )
    };
    assert_eq!(
        seen(dev()),
        ["github__get_issue", "github__list_repos", "fs__read_file"]
    );
    let platform = dev().with_tenant("acme").with_attribute("team", "platform");
    assert_eq!(
        seen(platform.clone()),
        [
            "github__get_issue",
            "github__list_repos",
            "fs__read_file",
            "deploy__deploy"
        ]
    );
    let deploy = |env: &str| {
        let args = json!({ "environment": env });
        Authz::evaluate(
            &cfg,
            &call("deploy", "deploy", args, Some(platform.clone())),
        )
    };
    assert!(!deploy("staging").is_deny());
    assert!(deploy("production").is_deny());
}

#[test]
fn a_hundred_rules_decide_quickly() {
    let rules: Vec<Value> = (0..100)
        .map(|i| {
            json!({
                "name": format!("r{i}"),
                "effect": if i % 10 == 0 { "deny" } else { "allow" },
                "roles": [format!("role-{}", i % 7)],
                "upstreams": [format!("up{}", i % 5)],
                "tools": [format!("tool_{i}_*"), format!("*_{i}")],
            })
        })
        .collect();
    let cfg = config(json!({ "rules": rules }));
    let id = Identity::new("a").with_role("role-3");
    let msg = call("up3", "tool_3_x", json!({}), Some(id.clone()));
    assert!(!Authz::evaluate(&cfg, &msg).is_deny());
    let start = std::time::Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(Authz::evaluate(&cfg, &msg));
    }
    // Generous: this is a smoke test, not the benchmark (debug build, shared machine).
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    let tools: Vec<Value> = (0..200)
        .map(|i| json!({ "name": format!("up{}__tool_{}_x", i % 5, i % 100) }))
        .collect();
    let v = list_with(&cfg, "tools/list", json!({ "tools": tools }), id);
    assert!(!names(&v, "tools", "name").is_empty());
}

#[test]
fn a_single_pattern_may_be_written_without_brackets() {
    let cfg = config(json!({ "rules": [
        { "name": "r", "effect": "allow", "roles": "dev", "tools": "get_*" },
    ]}));
    assert!(!Authz::evaluate(&cfg, &call("u", "get_x", json!({}), Some(dev()))).is_deny());
    let e = config_error(json!({ "rules": [{ "name": "r", "effect": "allow", "tools": 3 }] }));
    assert!(
        e.contains(
            "rules[0] (\"r\"): invalid type: integer `3`, expected a string or a list of strings"
        ),
        "{e}"
    );
}

#[test]
fn the_operators_guide_shows_the_shipped_sidecar() {
    let guide = include_str!("../../../docs/authz.md");
    let sidecar = include_str!("../authz.toml");
    assert!(
        guide.contains(sidecar.trim_end()),
        "docs/authz.md must quote plugins/authz/authz.toml verbatim"
    );
}
