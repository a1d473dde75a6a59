//! The policy as the gateway drives it: configuration, which limits apply, keys, refusals.

use portcullis_sdk::prelude::*;

use crate::{Config, RATE_LIMITED, RateLimit, check};

fn config(toml_text: &str) -> Config {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    let json = serde_json::to_string(&value).unwrap();
    portcullis_sdk::parse_config::<RateLimit>(&json).unwrap_or_else(|e| panic!("{e}"))
}

fn config_error(toml_text: &str) -> String {
    let value: toml::Value = toml::from_str(toml_text).unwrap();
    let json = serde_json::to_string(&value).unwrap();
    portcullis_sdk::parse_config::<RateLimit>(&json).unwrap_err()
}

fn call(subject: &str, tool: &str) -> TestMessage {
    TestMessage::request("tools/call")
        .with_target(format!("alpha__{tool}"))
        .with_upstream("alpha")
        .with_upstream_target(tool)
        .with_session(format!("session-of-{subject}"))
        .with_identity(Identity::new(subject).with_tenant("acme"))
}

/// Passes `n` requests at time `t`, asserting each passes.
fn pass(config: &Config, msg: &TestMessage, t: u64, n: usize) {
    for i in 0..n {
        let v = check(config, &msg.clone().build(), t);
        assert!(v.is_allow(), "request {i} at {t}: {v:?}");
    }
}

fn refused(config: &Config, msg: &TestMessage, t: u64) -> Denial {
    match check(config, &msg.clone().build(), t) {
        Verdict::Deny(d) => d,
        v => panic!("not refused at {t}: {v:?}"),
    }
}

const T0: u64 = 1_700_000_000_000; // a whole second (so the start of a slot of any limit under a second)

#[test]
fn the_example_sidecar_is_valid() {
    let text = include_str!("../rate-limit.toml");
    let sidecar: toml::Value = toml::from_str(text).unwrap();
    let json = serde_json::to_string(&sidecar["config"]).unwrap();
    let c = portcullis_sdk::parse_config::<RateLimit>(&json).unwrap();
    assert_eq!(c.limits.len(), 4);
    assert_eq!(c.http_status, 429);
    // 20 at 10/s: a window of 2 s holding 20.
    assert_eq!(
        (c.limits[0].window.ms, c.limits[0].window.burst),
        (2_000, 20)
    );
    assert_eq!(
        (c.limits[1].window.ms, c.limits[1].window.burst),
        (60_000, 100)
    );
}

#[test]
fn a_refusal_says_when_to_retry_in_the_error_and_the_http_answer() {
    let c = config("[[limits]]\nname = \"caller\"\nper = [\"subject\"]\nrate = \"3/s\"\n");
    let alice = call("alice", "echo");
    pass(&c, &alice, T0, 3);
    let d = refused(&c, &alice, T0 + 100);
    assert_eq!(d.code, RATE_LIMITED);
    assert_eq!(d.code, -32029);
    assert_eq!(
        d.message,
        "rate limit exceeded (caller: 3/s); retry in 0.900 s"
    );
    // The burst at T0 leaves the one-second window at T0 + 1000.
    let data = d.data.unwrap();
    assert_eq!(data["retryAfterMs"], 900);
    assert_eq!(data["limit"], "caller");
    assert_eq!(data["rate"], "3/s");
    assert_eq!(d.http_status, Some(429));
    assert_eq!(
        d.http_headers,
        [("Retry-After".to_string(), "1".to_string())]
    );
    // It is honest: at that time the request passes.
    pass(&c, &alice, T0 + 100 + 900, 1);
}

#[test]
fn http_status_200_answers_in_band_only() {
    let c = config("http-status = 200\n[[limits]]\nname = \"l\"\nrate = \"1/min\"\n");
    let msg = call("alice", "echo");
    pass(&c, &msg, T0, 1);
    let d = refused(&c, &msg, T0);
    assert_eq!((d.http_status, d.http_headers.len()), (None, 0));
    assert!(
        d.data
            .is_some_and(|d| d["retryAfterMs"].as_u64() > Some(50_000))
    );
}

#[test]
fn each_key_combination_has_its_own_bucket() {
    let c = config("[[limits]]\nname = \"pair\"\nper = [\"subject\", \"tool\"]\nrate = \"2/s\"\n");
    pass(&c, &call("alice", "echo"), T0, 2);
    refused(&c, &call("alice", "echo"), T0);
    pass(&c, &call("alice", "whoami"), T0, 2);
    pass(&c, &call("bob", "echo"), T0, 2);
    refused(&c, &call("bob", "echo"), T0);
    refused(&c, &call("alice", "whoami"), T0);
}

#[test]
fn a_limit_without_per_is_one_bucket_for_everyone() {
    let c = config("[[limits]]\nname = \"global\"\nrate = \"3/s\"\n");
    pass(&c, &call("alice", "echo"), T0, 1);
    pass(&c, &call("bob", "whoami"), T0, 2);
    refused(&c, &call("carol", "x"), T0);
}

#[test]
fn tenant_upstream_method_and_session_keys() {
    let c = config(
        "[[limits]]\nname = \"t\"\nper = [\"tenant\", \"upstream\", \"method\"]\nmethods = [\"*\"]\nrate = \"2/s\"\n",
    );
    let acme = call("alice", "echo");
    pass(&c, &acme, T0, 2);
    refused(&c, &call("bob", "whoami"), T0);
    let globex = TestMessage::request("tools/call")
        .with_target("alpha__echo")
        .with_upstream("alpha")
        .with_identity(Identity::new("carol").with_tenant("globex"));
    pass(&c, &globex, T0, 2);
    let other_upstream = call("alice", "echo").with_upstream("beta");
    pass(&c, &other_upstream, T0, 2);
    let list = TestMessage::request("tools/list")
        .with_identity(Identity::new("alice").with_tenant("acme"));
    pass(&c, &list, T0, 2);
    refused(&c, &list, T0);

    let s = config(
        "[[limits]]\nname = \"s\"\nper = [\"session\"]\nmethods = [\"*\"]\nrate = \"1/s\"\n",
    );
    pass(&s, &call("alice", "echo"), T0, 1);
    refused(&s, &call("alice", "whoami"), T0);
    pass(&s, &call("bob", "echo"), T0, 1);
    let init = TestMessage::request("initialize");
    pass(&s, &init, T0, 5); // no session: not counted by a per-session limit
}

#[test]
fn limits_match_by_method_tool_upstream_and_caller() {
    let c = config(
        "[[limits]]\nname = \"search\"\ntools = [\"search_*\"]\nrate = \"1/s\"\n\
         [[limits]]\nname = \"beta\"\nupstreams = [\"beta\"]\nrate = \"1/s\"\n\
         [[limits]]\nname = \"interns\"\nroles = [\"intern\"]\nper = [\"subject\"]\nrate = \"1/s\"\n\
         [[limits]]\nname = \"lists\"\nmethods = [\"*/list\"]\nsubjects = [\"bot-*\"]\nper = [\"subject\"]\nrate = \"1/s\"\n",
    );
    // `tools` matches the tool's own name or the client-facing name.
    pass(&c, &call("a", "search_code"), T0, 1);
    refused(&c, &call("b", "search_issues"), T0);
    let by_client_name = TestMessage::request("tools/call").with_target("search_web");
    refused(&c, &by_client_name, T0);
    // Other tools are not limited (no other limit applies to them).
    pass(&c, &call("a", "echo"), T0, 10);
    // By upstream.
    pass(&c, &call("a", "echo").with_upstream("beta"), T0, 1);
    refused(&c, &call("b", "echo").with_upstream("beta"), T0);
    // By role.
    let intern = call("ian", "echo").with_identity(Identity::new("ian").with_role("intern"));
    pass(&c, &intern, T0, 1);
    refused(&c, &intern, T0);
    // By method (default is tools/call only) and subject.
    let list = TestMessage::request("tools/list").with_identity(Identity::new("bot-1"));
    pass(&c, &list, T0, 1);
    refused(&c, &list, T0);
    let human_list = TestMessage::request("tools/list").with_identity(Identity::new("alice"));
    pass(&c, &human_list, T0, 5);
    // `tools` limits only tool calls, whatever `methods` says.
    let prompt = TestMessage::request("prompts/get").with_target("search_x");
    pass(&c, &prompt, T0, 5);
}

#[test]
fn a_refused_request_gives_back_what_other_limits_took() {
    let c = config(
        "[[limits]]\nname = \"caller\"\nper = [\"subject\"]\nrate = \"5/s\"\n\
         [[limits]]\nname = \"echo\"\ntools = [\"echo\"]\nrate = \"1/s\"\n",
    );
    pass(&c, &call("alice", "echo"), T0, 1);
    for _ in 0..10 {
        assert_eq!(
            refused(&c, &call("alice", "echo"), T0).data.unwrap()["limit"],
            "echo"
        );
    }
    // The ten refusals took nothing from alice's own bucket: 4 of 5 are left.
    pass(&c, &call("alice", "whoami"), T0, 4);
    assert_eq!(
        refused(&c, &call("alice", "whoami"), T0).data.unwrap()["limit"],
        "caller"
    );
}

#[test]
fn buckets_refill_over_time() {
    let c = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"10/s\"\nburst = 2\n");
    // burst 2 at 10/s: windows of 200 ms holding 2.
    let m = call("alice", "echo");
    pass(&c, &m, T0, 2);
    refused(&c, &m, T0 + 50);
    // Steady calls at the rate all pass, faster ones do not.
    for i in 1..=20 {
        pass(&c, &m, T0 + 200 + i * 100, 1);
        if i > 1 {
            // The previous call and this one fill the 200 ms window.
            refused(&c, &m, T0 + 200 + i * 100 + 30);
        }
    }
}

#[test]
fn notifications_responses_and_unlimited_requests_pass() {
    let c = config("[[limits]]\nname = \"all\"\nmethods = [\"*\"]\nrate = \"1/h\"\n");
    let n = TestMessage::request("notifications/initialized");
    pass(&c, &n, T0, 3);
    let r = TestMessage::response("tools/call");
    pass(&c, &r, T0, 3);
    let none = config("");
    pass(&none, &call("a", "echo"), T0, 3);
}

#[test]
fn reloaded_configuration_keeps_counters_unless_the_limit_changed() {
    let text = "[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"2/min\"\n";
    let before = config(text);
    pass(&before, &call("alice", "echo"), T0, 2);
    // The same limit in a new instance (a reload): the counter is the store's.
    let after = config(&format!("http-status = 200\n{text}"));
    refused(&after, &call("alice", "echo"), T0 + 1000);
    // A higher limit over the same window counts what was already taken.
    let raised = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"5/min\"\n");
    pass(&raised, &call("alice", "echo"), T0 + 1000, 3);
    refused(&raised, &call("alice", "echo"), T0 + 1000);
    // A different window is a different limit: it starts afresh.
    let changed = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"5/30s\"\n");
    pass(&changed, &call("alice", "echo"), T0 + 1000, 5);
}

#[test]
fn unusual_values_do_not_confuse_buckets() {
    let c = config("[[limits]]\nname = \"l\"\nper = [\"subject\", \"tool\"]\nrate = \"1/s\"\n");
    // ("a\x1f1:b", "c") and ("a", "b\x1f1:c")-style collisions are impossible: length-prefixed.
    let one = TestMessage::request("tools/call")
        .with_target("c")
        .with_identity(Identity::new("a\u{1f}1:b"));
    let two = TestMessage::request("tools/call")
        .with_target("b\u{1f}1:c")
        .with_identity(Identity::new("a"));
    pass(&c, &one, T0, 1);
    pass(&c, &two, T0, 1);
    // No identity: every anonymous caller shares one bucket.
    let anon = TestMessage::request("tools/call").with_target("c");
    pass(&c, &anon, T0, 1);
    refused(&c, &anon, T0);
}

#[test]
fn configuration_mistakes_are_refused_at_load() {
    for (text, expect) in [
        (
            "[[limits]]\nname = \"a\"\nrate = \"10\"\n",
            "limit \"a\": rate \"10\": no '/'",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\n[[limits]]\nname = \"a\"\nrate = \"2/s\"\n",
            "defined twice",
        ),
        ("[[limits]]\nname = \" \"\nrate = \"1/s\"\n", "empty `name`"),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\nburst = 0\n",
            "at least 1",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"5000/ms\"\nburst = 1\n",
            "raise `burst`",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\nper = [\"ip\"]\n",
            "unknown variant `ip`",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/400day\"\n",
            "more than a year",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\nper = [\"tool\", \"tool\"]\n",
            "names a key twice",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\ntools = []\n",
            "`tools` is empty",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\nroles = [\"\"]\n",
            "empty pattern",
        ),
        (
            "[[limits]]\nname = \"a\"\nrate = \"1/s\"\nrates = 1\n",
            "unknown field `rates`",
        ),
        ("http-status = 302\n", "http-status = 302"),
        ("[[limits]]\nname = \"a\"\n", "missing field `rate`"),
    ] {
        let err = config_error(text);
        assert!(err.contains(expect), "{text}\n→ {err}");
    }
}
