//! The policy as the gateway drives it: routes, splits, shadows and catalog rewrites.

use portcullis_sdk::prelude::*;

use crate::{Config, Route, request};

fn config(toml_text: &str) -> Config {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    let json = serde_json::to_string(&value).unwrap();
    portcullis_sdk::parse_config::<Route>(&json).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(toml_text: &str) -> String {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    let json = serde_json::to_string(&value).unwrap();
    portcullis_sdk::parse_config::<Route>(&json).unwrap_err()
}

/// A `tools/call` of `upstream__tool` as the gateway presents it (it resolved the name).
fn call(upstream: &str, tool: &str) -> TestMessage {
    TestMessage::request("tools/call")
        .with_target(format!("{upstream}__{tool}"))
        .with_upstream(upstream)
        .with_upstream_target(tool)
        .with_params(json!({ "name": format!("{upstream}__{tool}"), "arguments": {} }))
}

/// A `tools/call` of a name the gateway does not know (an alias).
fn call_unknown(name: &str) -> TestMessage {
    TestMessage::request("tools/call")
        .with_target(name)
        .with_params(json!({ "name": name, "arguments": { "text": "hi" }, "_meta": { "k": 1 } }))
}

fn decide(c: &Config, msg: TestMessage) -> Verdict {
    request(c, &msg.build(), &mut || 0)
}

fn decide_with(c: &Config, msg: TestMessage, draw: u64) -> Verdict {
    request(c, &msg.build(), &mut || draw)
}

/// (upstream, target) the verdict routes to.
fn routed(v: &Verdict) -> (Option<&str>, Option<&str>) {
    match v.changes() {
        Some(c) => (c.upstream(), c.target()),
        None => (None, None),
    }
}

fn attribute<'v>(v: &'v Verdict, key: &str) -> Option<&'v str> {
    v.changes().and_then(|c| c.attribute(key))
}

#[test]
fn the_example_sidecar_is_valid() {
    let text = include_str!("../route.toml");
    let sidecar: toml::Value = toml::from_str(text).unwrap();
    let json = serde_json::to_string(&sidecar["config"]).unwrap();
    let c = portcullis_sdk::parse_config::<Route>(&json).unwrap();
    assert_eq!((c.routes.len(), c.catalog.len()), (4, 3));
    // Its canary: `search` (renamed) maps back to search__search, then splits.
    let v = decide_with(&c, call_unknown("search"), u64::MAX);
    assert_eq!(routed(&v), (Some("search-next"), Some("search")));
    assert_eq!(
        v.changes().and_then(|c| c.params()).unwrap()["name"],
        "search__search"
    );
}

#[test]
fn routes_by_tool_name_client_name_and_upstream() {
    let c = config(
        "[[routes]]\nname = \"by-tool\"\ntools = [\"get_*\"]\nupstream = \"replica\"\n\
         [[routes]]\nname = \"by-target\"\ntargets = [\"alpha__whoami\"]\nupstream = \"beta\"\n\
         [[routes]]\nname = \"by-upstream\"\nupstreams = [\"legacy\"]\nupstream = \"modern\"\ntarget = \"run_v2\"\n",
    );
    let v = decide(&c, call("alpha", "get_issue"));
    assert_eq!(routed(&v), (Some("replica"), Some("get_issue")));
    assert_eq!(attribute(&v, "route.rule"), Some("by-tool"));
    assert_eq!(attribute(&v, "route.upstream"), Some("replica"));
    let v = decide(&c, call("alpha", "whoami"));
    assert_eq!(routed(&v), (Some("beta"), Some("whoami")));
    let v = decide(&c, call("legacy", "run"));
    assert_eq!(routed(&v), (Some("modern"), Some("run_v2")));
    // Nothing matches: untouched.
    assert!(decide(&c, call("alpha", "echo")).is_allow());
}

#[test]
fn routes_by_caller() {
    let c = config(
        "[[routes]]\nname = \"eu\"\ntenants = [\"acme-eu\"]\nupstream = \"eu\"\n\
         [[routes]]\nname = \"ops\"\nroles = [\"ops\"]\nattributes = { site = [\"ams\", \"fra\"] }\nupstream = \"ops\"\n\
         [[routes]]\nname = \"bots\"\nsubjects = [\"bot-*\"]\nupstream = \"bots\"\n",
    );
    let as_ = |id: Identity| decide(&c, call("alpha", "echo").with_identity(id));
    assert_eq!(
        routed(&as_(Identity::new("a").with_tenant("acme-eu"))).0,
        Some("eu")
    );
    assert!(as_(Identity::new("a").with_tenant("acme-us")).is_allow());
    let ops = Identity::new("o")
        .with_role("ops")
        .with_attribute("site", "fra");
    assert_eq!(routed(&as_(ops)).0, Some("ops"));
    let ops_elsewhere = Identity::new("o")
        .with_role("ops")
        .with_attribute("site", "nyc");
    assert!(as_(ops_elsewhere).is_allow());
    assert_eq!(routed(&as_(Identity::new("bot-7"))).0, Some("bots"));
    // Conditions on the caller never hold without an identity.
    assert!(decide(&c, call("alpha", "echo")).is_allow());
}

#[test]
fn routes_by_argument_value() {
    let c = config(
        "[[routes]]\nname = \"eu\"\ntools = [\"query\"]\narguments = { region = [\"eu-*\"], tier = \"2\" }\nupstream = \"eu\"\n",
    );
    let q = |args: Value| {
        call("dw", "query").with_params(json!({ "name": "dw__query", "arguments": args }))
    };
    assert_eq!(
        routed(&decide(&c, q(json!({ "region": "eu-west", "tier": 2 })))).0,
        Some("eu")
    );
    assert_eq!(
        routed(&decide(&c, q(json!({ "region": "eu-north", "tier": "2" })))).0,
        Some("eu")
    );
    assert!(decide(&c, q(json!({ "region": "us-east", "tier": 2 }))).is_allow());
    assert!(decide(&c, q(json!({ "region": "eu-west" }))).is_allow());
    assert!(decide(&c, q(json!({ "region": ["eu-west"], "tier": 2 }))).is_allow());
}

#[test]
fn the_first_matching_route_decides() {
    let c = config(
        "[[routes]]\nname = \"specific\"\ntools = [\"echo\"]\nupstream = \"one\"\n\
         [[routes]]\nname = \"general\"\ntools = [\"*\"]\nupstream = \"two\"\n",
    );
    assert_eq!(
        attribute(&decide(&c, call("a", "echo")), "route.rule"),
        Some("specific")
    );
    assert_eq!(
        attribute(&decide(&c, call("a", "other")), "route.rule"),
        Some("general")
    );
}

#[test]
fn weighted_splits_follow_the_draw() {
    let c = config(
        "[[routes]]\nname = \"canary\"\ntools = [\"search\"]\n\
         split = [{ upstream = \"stable\", weight = 80 }, { upstream = \"next\", weight = 20, target = \"search_v2\" }]\n",
    );
    let at = |draw: u64| {
        routed(&decide_with(&c, call("stable", "search"), draw))
            .0
            .map(String::from)
    };
    assert_eq!(at(0).as_deref(), Some("stable"));
    assert_eq!(at(u64::MAX).as_deref(), Some("next"));
    // The boundary is at 80 % of the range.
    let edge = (u64::MAX / 10) * 8;
    assert_eq!(at(edge - (1 << 20)).as_deref(), Some("stable"));
    assert_eq!(at(edge + (1 << 20)).as_deref(), Some("next"));
    let v = decide_with(&c, call("stable", "search"), u64::MAX);
    assert_eq!(routed(&v), (Some("next"), Some("search_v2")));
    // With the host's randomness: about one in five.
    let msg = call("stable", "search");
    let next = (0..10_000)
        .filter(|_| {
            routed(&request(&c, &msg.clone().build(), &mut crate::pick::random)).0 == Some("next")
        })
        .count() as f64;
    assert!((next - 2_000.0).abs() < 300.0, "{next}"); // sd = 40
}

#[test]
fn sticky_splits_keep_a_caller_on_one_side() {
    let c = config(
        "[[routes]]\nname = \"canary\"\ntools = [\"search\"]\nsticky = \"subject\"\n\
         split = [{ upstream = \"stable\", weight = 50 }, { upstream = \"next\", weight = 50 }]\n",
    );
    let side = |subject: &str, draw: u64| {
        let msg = call("stable", "search").with_identity(Identity::new(subject));
        routed(&decide_with(&c, msg, draw)).0.map(String::from)
    };
    let mut sides = std::collections::BTreeMap::new();
    for i in 0..200 {
        let subject = format!("user-{i}");
        let first = side(&subject, 0);
        assert_eq!(first, side(&subject, u64::MAX), "{subject} moved");
        *sides.entry(first.unwrap()).or_insert(0) += 1;
    }
    assert!(sides.values().all(|&n| n > 60), "{sides:?}");
    // No subject to stick to: the draw decides.
    let anon = |draw| {
        routed(&decide_with(&c, call("stable", "search"), draw))
            .0
            .map(String::from)
    };
    assert_ne!(anon(0), anon(u64::MAX));

    let by_session = config(
        "[[routes]]\nname = \"s\"\nsticky = \"session\"\n\
         split = [{ upstream = \"a\", weight = 1 }, { upstream = \"b\", weight = 1 }]\n",
    );
    let in_session = |s: &str, draw| {
        let msg = call("x", "y").with_session(s);
        routed(&decide_with(&by_session, msg, draw))
            .0
            .map(String::from)
    };
    for s in ["s1", "s2", "s3", "s4"] {
        assert_eq!(in_session(s, 0), in_session(s, u64::MAX));
    }
}

#[test]
fn shadows_are_attributes_for_the_gateway() {
    let c = config(
        "[[routes]]\nname = \"mirror\"\ntools = [\"deploy\"]\nshadow = \"deployer-next\"\n\
         [[routes]]\nname = \"sampled\"\ntools = [\"plan\"]\nupstream = \"planner\"\nshadow = \"planner-next\"\nshadow-target = \"plan_v2\"\nshadow-percent = 25\n",
    );
    let v = decide(&c, call("deployer", "deploy"));
    assert_eq!(attribute(&v, "shadow"), Some("deployer-next"));
    assert_eq!(
        attribute(&v, "shadow-target"),
        Some("deploy"),
        "the call's own target"
    );
    assert_eq!(
        routed(&v),
        (None, None),
        "a shadow alone does not reroute the call"
    );
    assert_eq!(attribute(&v, "route.rule"), Some("mirror"));

    let sampled = |draw| decide_with(&c, call("planner", "plan"), draw);
    let hit = sampled(0);
    assert_eq!(attribute(&hit, "shadow"), Some("planner-next"));
    assert_eq!(attribute(&hit, "shadow-target"), Some("plan_v2"));
    assert_eq!(routed(&hit).0, Some("planner"));
    let miss = sampled(u64::MAX / 2);
    assert_eq!(attribute(&miss, "shadow"), None);
    assert_eq!(routed(&miss).0, Some("planner"));
    let msg = call("planner", "plan");
    let hits = (0..8_000)
        .filter(|_| {
            let v = request(&c, &msg.clone().build(), &mut crate::pick::random);
            attribute(&v, "shadow").is_some()
        })
        .count() as f64;
    assert!((hits - 2_000.0).abs() < 250.0, "{hits}"); // sd ≈ 39
}

const CATALOG: &str = "\
[[catalog]]\ntool = \"alpha__echo\"\nrename = \"say\"\ndescription = \"Says it back.\"\n\
[[catalog]]\ntool = \"alpha__whoami\"\naliases = [\"me\", \"self\"]\ntitle = \"Who am I\"\n\
[[catalog]]\ntool = \"alpha__*sleep*\"\nhide = true\n\
[[catalog]]\ntool = \"alpha__add\"\ndescription = \"Adds two numbers.\"\n\
[[catalog]]\ntenants = [\"acme\"]\ntool = \"alpha__crash\"\nhide = true\n";

fn tools_list() -> Value {
    json!({ "tools": [
        { "name": "alpha__echo", "description": "Returns text", "inputSchema": { "type": "object" } },
        { "name": "alpha__whoami", "description": "Who", "inputSchema": { "type": "object" } },
        { "name": "alpha__sleep", "inputSchema": { "type": "object" } },
        { "name": "alpha__deep_sleep_x", "inputSchema": { "type": "object" } },
        { "name": "alpha__add", "description": "Adds", "inputSchema": { "type": "object" } },
        { "name": "alpha__crash", "inputSchema": { "type": "object" } },
    ], "nextCursor": "abc" })
}

fn list_as(c: &Config, id: Option<Identity>) -> Value {
    let mut msg = TestMessage::response("tools/list").with_result(tools_list());
    if let Some(id) = id {
        msg = msg.with_identity(id);
    }
    let v = Route::evaluate(c, &msg.build());
    v.changes()
        .and_then(|c| c.result())
        .unwrap_or_else(tools_list)
}

fn names(list: &Value) -> Vec<&str> {
    list["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[test]
fn tools_list_is_renamed_aliased_described_and_hidden() {
    let c = config(CATALOG);
    let list = list_as(&c, None);
    assert_eq!(
        names(&list),
        [
            "say",
            "me",
            "self",
            "alpha__whoami",
            "alpha__add",
            "alpha__crash"
        ]
    );
    let tools = list["tools"].as_array().unwrap();
    assert_eq!(tools[0]["description"], "Says it back.");
    assert_eq!(tools[0]["inputSchema"], json!({ "type": "object" }));
    assert_eq!(tools[1]["title"], "Who am I");
    assert_eq!(
        tools[1]["description"], "Who",
        "an alias keeps what it does not change"
    );
    assert_eq!(
        tools[3]["title"],
        Value::Null,
        "the original is not re-titled"
    );
    assert_eq!(tools[4]["description"], "Adds two numbers.");
    assert_eq!(list["nextCursor"], "abc", "the rest of the result is kept");
    // Per tenant.
    let acme = list_as(&c, Some(Identity::new("x").with_tenant("acme")));
    assert!(!names(&acme).contains(&"alpha__crash"));
}

#[test]
fn calls_follow_the_catalog() {
    let c = config(CATALOG);
    // A new name is mapped back: params.name for the gateway, upstream and target for
    // the stages after this one.
    let v = decide(&c, call_unknown("say"));
    assert_eq!(routed(&v), (Some("alpha"), Some("echo")));
    let params = v.changes().and_then(|c| c.params()).unwrap();
    assert_eq!(
        params,
        json!({ "name": "alpha__echo", "arguments": { "text": "hi" }, "_meta": { "k": 1 } })
    );
    assert_eq!(
        routed(&decide(&c, call_unknown("self"))),
        (Some("alpha"), Some("whoami"))
    );
    // An original keeps its name when only aliased or re-described.
    assert!(decide(&c, call("alpha", "whoami")).is_allow());
    assert!(decide(&c, call("alpha", "add")).is_allow());
    // Renamed and hidden originals are unknown tools, in the gateway's own words.
    for name in ["echo", "sleep", "deep_sleep_x"] {
        let v = decide(&c, call("alpha", name));
        let d = v
            .denial()
            .unwrap_or_else(|| panic!("{name} callable: {v:?}"));
        assert_eq!(d.code, codes::INVALID_PARAMS);
        assert_eq!(d.message, format!("Unknown tool: alpha__{name}"));
    }
    // Per tenant: hidden only from acme.
    assert!(decide(&c, call("alpha", "crash")).is_allow());
    let acme = call("alpha", "crash").with_identity(Identity::new("x").with_tenant("acme"));
    assert!(decide(&c, acme).is_deny());
}

#[test]
fn a_hidden_original_can_be_offered_under_a_new_name() {
    let c = config(
        "[[catalog]]\ntool = \"v1__*\"\nhide = true\n\
         [[catalog]]\ntool = \"v1__search\"\naliases = [\"search\"]\n\
         [[routes]]\nname = \"canary\"\ntargets = [\"search\"]\n\
         split = [{ upstream = \"v1\", weight = 1 }, { upstream = \"v2\", weight = 1 }]\n",
    );
    let list = TestMessage::response("tools/list")
        .with_result(json!({ "tools": [ { "name": "v1__search" }, { "name": "v1__other" }, { "name": "v2__search" } ] }))
        .build();
    let shown = Route::evaluate(&c, &list)
        .changes()
        .and_then(|c| c.result())
        .unwrap();
    assert_eq!(names(&shown), ["search", "v2__search"]);
    assert!(decide(&c, call("v1", "search")).is_deny());
    assert_eq!(
        routed(&decide_with(&c, call_unknown("search"), 0)),
        (Some("v1"), Some("search"))
    );
    assert_eq!(
        routed(&decide_with(&c, call_unknown("search"), u64::MAX)),
        (Some("v2"), Some("search"))
    );
}

#[test]
fn a_new_name_takes_over_a_tool_of_that_name() {
    let c = config("[[catalog]]\ntool = \"a__x\"\nrename = \"b__y\"\n");
    let list = TestMessage::response("tools/list")
        .with_result(
            json!({ "tools": [ { "name": "a__x" }, { "name": "b__y", "description": "old" } ] }),
        )
        .build();
    let shown = Route::evaluate(&c, &list)
        .changes()
        .and_then(|c| c.result())
        .unwrap();
    assert_eq!(names(&shown), ["b__y"]);
    assert_eq!(shown["tools"][0]["description"], Value::Null);
    assert_eq!(routed(&decide(&c, call("b", "y"))), (Some("a"), Some("x")));
}

#[test]
fn without_certain_prefixes_only_the_name_is_mapped() {
    let c = config("prefix = \"when-needed\"\n[[catalog]]\ntool = \"echo\"\naliases = [\"say\"]\n");
    let v = decide(&c, call_unknown("say"));
    assert_eq!(routed(&v), (None, None));
    assert_eq!(
        v.changes().and_then(|c| c.params()).unwrap()["name"],
        "echo"
    );
    let dash = config("separator = \"-\"\n[[catalog]]\ntool = \"a-echo\"\naliases = [\"say\"]\n");
    assert_eq!(
        routed(&decide(&dash, call_unknown("say"))),
        (Some("a"), Some("echo"))
    );
}

#[test]
fn other_messages_pass_untouched() {
    let c = config(&format!(
        "{CATALOG}[[routes]]\nname = \"all\"\nupstream = \"x\"\n"
    ));
    for method in ["tools/list", "prompts/get", "resources/read", "initialize"] {
        let msg = TestMessage::request(method).with_target("alpha__echo");
        assert!(decide(&c, msg).is_allow(), "{method}");
    }
    let call_response = TestMessage::response("tools/call").with_result(json!({ "content": [] }));
    assert!(Route::evaluate(&c, &call_response.build()).is_allow());
    let empty = config("");
    assert!(
        Route::evaluate(
            &empty,
            &TestMessage::response("tools/list")
                .with_result(tools_list())
                .build()
        )
        .is_allow()
    );
    assert!(decide(&empty, call("alpha", "echo")).is_allow());
}

#[test]
fn configuration_mistakes_are_refused_at_load() {
    for (text, expect) in [
        ("[[routes]]\nname = \"r\"\n", "decides nothing"),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nsplit = [{ upstream = \"b\", weight = 1 }]\n",
            "not both",
        ),
        (
            "[[routes]]\nname = \"r\"\ntarget = \"x\"\n",
            "needs an `upstream`",
        ),
        (
            "[[routes]]\nname = \"r\"\nsplit = [{ upstream = \"b\", weight = 0 }]\n",
            "every `split` weight is 0",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nsticky = \"subject\"\n",
            "only means something with a `split`",
        ),
        (
            "[[routes]]\nname = \"r\"\nshadow = \"a\"\nshadow-percent = 0\n",
            "more than 0",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nshadow-percent = 5\n",
            "need `shadow`",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\n[[routes]]\nname = \"r\"\nupstream = \"b\"\n",
            "defined twice",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\ntools = []\n",
            "`tools` is empty",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nsticky = \"ip\"\n",
            "unknown variant `ip`",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nupstreams = \"b\"\n",
            "invalid type",
        ),
        (
            "[[routes]]\nname = \"r\"\nupstream = \"a\"\nrole = [\"x\"]\n",
            "unknown field `role`",
        ),
        (
            "[[catalog]]\ntool = \"a__*\"\nrename = \"x\"\n",
            "need one tool, not a pattern",
        ),
        (
            "[[catalog]]\ntool = \"a__x\"\nhide = true\nrename = \"y\"\n",
            "cannot be combined",
        ),
        ("[[catalog]]\ntool = \"a__x\"\n", "does nothing"),
        (
            "[[catalog]]\ntool = \"a__x\"\naliases = [\"y*\"]\n",
            "plain tool name",
        ),
        (
            "[[catalog]]\ntool = \"a__x\"\nrename = \"a__x\"\n",
            "repeats a name",
        ),
        (
            "[[catalog]]\ntool = \"a__x\"\nhide = true\ntenant = \"t\"\n",
            "unknown field `tenant`",
        ),
        ("separator = \"\"\n", "`separator` is empty"),
    ] {
        let err = config_error(text);
        assert!(err.contains(expect), "{text}\n→ {err}");
    }
}
