//! The policy as the gateway drives it: configuration, which limits apply, keys, refusals.

use std::time::Duration;

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

/// `ms` milliseconds after an arbitrary moment.
fn at(ms: u64) -> Duration {
    Duration::from_millis(1_700_000_000_000 + ms)
}

/// Passes `n` requests at time `t`, asserting each passes.
fn pass(config: &Config, msg: &TestMessage, t: Duration, n: usize) {
    for i in 0..n {
        let v = check(config, &msg.clone().build(), || t);
        assert!(v.is_allow(), "request {i} at {t:?}: {v:?}");
    }
}

fn refused(config: &Config, msg: &TestMessage, t: Duration) -> Denial {
    match check(config, &msg.clone().build(), || t) {
        Verdict::Deny(d) => d,
        v => panic!("not refused at {t:?}: {v:?}"),
    }
}

fn retry_ms(d: &Denial) -> u64 {
    d.data
        .as_ref()
        .and_then(|d| d["retryAfterMs"].as_u64())
        .unwrap()
}

#[test]
fn the_example_sidecar_is_valid() {
    let text = include_str!("../rate-limit.toml");
    let sidecar: toml::Value = toml::from_str(text).unwrap();
    let json = serde_json::to_string(&sidecar["config"]).unwrap();
    let c = portcullis_sdk::parse_config::<RateLimit>(&json).unwrap();
    assert_eq!(c.limits.len(), 4);
    assert_eq!(c.http_status, 429);
    // "10/s" in bursts of 20: 20 at once, then one every 100 ms.
    let alice = call("alice", "echo");
    pass(&c, &alice, at(0), 20);
    let d = refused(&c, &alice, at(0));
    assert_eq!(d.data.as_ref().unwrap()["limit"], "per-caller");
    assert_eq!(retry_ms(&d), 100);
    pass(&c, &alice, at(100), 1);
    refused(&c, &alice, at(100));
}

#[test]
fn a_refusal_says_when_to_retry_in_the_error_and_the_http_answer() {
    let c = config("[[limits]]\nname = \"caller\"\nper = [\"subject\"]\nrate = \"4/s\"\n");
    let alice = call("alice", "echo");
    pass(&c, &alice, at(0), 4);
    let d = refused(&c, &alice, at(100));
    assert_eq!(d.code, RATE_LIMITED);
    assert_eq!(d.code, -32029);
    assert_eq!(
        d.message,
        "rate limit exceeded (caller: 4/s); retry in 0.150 s"
    );
    // The bucket refills one request every 250 ms from the burst at 0.
    let data = d.data.unwrap();
    assert_eq!(data["retryAfterMs"], 150);
    assert_eq!(data["limit"], "caller");
    assert_eq!(data["rate"], "4/s");
    assert_eq!(d.http_status, Some(429));
    assert_eq!(
        d.http_headers,
        [("Retry-After".to_string(), "1".to_string())]
    );
    // It is exact: a millisecond early is still refused, and at that time the request passes.
    assert_eq!(retry_ms(&refused(&c, &alice, at(249))), 1);
    pass(&c, &alice, at(100 + 150), 1);
}

#[test]
fn http_status_200_answers_in_band_only() {
    let c = config("http-status = 200\n[[limits]]\nname = \"l\"\nrate = \"1/min\"\n");
    let msg = call("alice", "echo");
    pass(&c, &msg, at(0), 1);
    let d = refused(&c, &msg, at(0));
    assert_eq!((d.http_status, d.http_headers.len()), (None, 0));
    assert_eq!(retry_ms(&d), 60_000);
}

#[test]
fn each_key_combination_has_its_own_bucket() {
    let c = config("[[limits]]\nname = \"pair\"\nper = [\"subject\", \"tool\"]\nrate = \"2/s\"\n");
    pass(&c, &call("alice", "echo"), at(0), 2);
    refused(&c, &call("alice", "echo"), at(0));
    pass(&c, &call("alice", "whoami"), at(0), 2);
    pass(&c, &call("bob", "echo"), at(0), 2);
    refused(&c, &call("bob", "echo"), at(0));
    refused(&c, &call("alice", "whoami"), at(0));
}

#[test]
fn a_limit_without_per_is_one_bucket_for_everyone() {
    let c = config("[[limits]]\nname = \"global\"\nrate = \"3/s\"\n");
    pass(&c, &call("alice", "echo"), at(0), 1);
    pass(&c, &call("bob", "whoami"), at(0), 2);
    refused(&c, &call("carol", "x"), at(0));
}

#[test]
fn tenant_upstream_method_and_session_keys() {
    let c = config(
        "[[limits]]\nname = \"t\"\nper = [\"tenant\", \"upstream\", \"method\"]\nmethods = [\"*\"]\nrate = \"2/s\"\n",
    );
    let acme = call("alice", "echo");
    pass(&c, &acme, at(0), 2);
    refused(&c, &call("bob", "whoami"), at(0));
    let globex = TestMessage::request("tools/call")
        .with_target("alpha__echo")
        .with_upstream("alpha")
        .with_identity(Identity::new("carol").with_tenant("globex"));
    pass(&c, &globex, at(0), 2);
    let other_upstream = call("alice", "echo").with_upstream("beta");
    pass(&c, &other_upstream, at(0), 2);
    let list = TestMessage::request("tools/list")
        .with_identity(Identity::new("alice").with_tenant("acme"));
    pass(&c, &list, at(0), 2);
    refused(&c, &list, at(0));

    let s = config(
        "[[limits]]\nname = \"s\"\nper = [\"session\"]\nmethods = [\"*\"]\nrate = \"1/s\"\n",
    );
    pass(&s, &call("alice", "echo"), at(0), 1);
    refused(&s, &call("alice", "whoami"), at(0));
    pass(&s, &call("bob", "echo"), at(0), 1);
    let init = TestMessage::request("initialize");
    pass(&s, &init, at(0), 5); // no session: not counted by a per-session limit
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
    pass(&c, &call("a", "search_code"), at(0), 1);
    refused(&c, &call("b", "search_issues"), at(0));
    let by_client_name = TestMessage::request("tools/call").with_target("search_web");
    refused(&c, &by_client_name, at(0));
    // Other tools are not limited (no other limit applies to them).
    pass(&c, &call("a", "echo"), at(0), 10);
    // By upstream.
    pass(&c, &call("a", "echo").with_upstream("beta"), at(0), 1);
    refused(&c, &call("b", "echo").with_upstream("beta"), at(0));
    // By role.
    let intern = call("ian", "echo").with_identity(Identity::new("ian").with_role("intern"));
    pass(&c, &intern, at(0), 1);
    refused(&c, &intern, at(0));
    // By method (default is tools/call only) and subject.
    let list = TestMessage::request("tools/list").with_identity(Identity::new("bot-1"));
    pass(&c, &list, at(0), 1);
    refused(&c, &list, at(0));
    let human_list = TestMessage::request("tools/list").with_identity(Identity::new("alice"));
    pass(&c, &human_list, at(0), 5);
    // `tools` limits only tool calls, whatever `methods` says.
    let prompt = TestMessage::request("prompts/get").with_target("search_x");
    pass(&c, &prompt, at(0), 5);
}

#[test]
fn a_refused_request_gives_back_what_other_limits_took() {
    let c = config(
        "[[limits]]\nname = \"caller\"\nper = [\"subject\"]\nrate = \"5/s\"\n\
         [[limits]]\nname = \"echo\"\ntools = [\"echo\"]\nrate = \"1/s\"\n",
    );
    pass(&c, &call("alice", "echo"), at(0), 1);
    for _ in 0..10 {
        assert_eq!(
            refused(&c, &call("alice", "echo"), at(0)).data.unwrap()["limit"],
            "echo"
        );
    }
    // The ten refusals took nothing from alice's own bucket: 4 of 5 are left.
    pass(&c, &call("alice", "whoami"), at(0), 4);
    assert_eq!(
        refused(&c, &call("alice", "whoami"), at(0)).data.unwrap()["limit"],
        "caller"
    );
}

#[test]
fn buckets_refill_one_request_at_a_time() {
    let c = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"10/s\"\nburst = 3\n");
    let m = call("alice", "echo");
    pass(&c, &m, at(0), 3);
    assert_eq!(retry_ms(&refused(&c, &m, at(50))), 50);
    // One request every 100 ms comes back, not the whole burst.
    pass(&c, &m, at(100), 1);
    refused(&c, &m, at(100));
    pass(&c, &m, at(300), 2);
    refused(&c, &m, at(300));
    // Steady calls at the rate all pass, and nothing faster does.
    for i in 4..30 {
        pass(&c, &m, at(i * 100), 1);
        refused(&c, &m, at(i * 100 + 99));
    }
    // Idle, the bucket fills up to its burst and no further.
    pass(&c, &m, at(60_000), 3);
    refused(&c, &m, at(60_000));
}

#[test]
fn a_burst_of_one_spaces_requests_evenly() {
    let c = config("[[limits]]\nname = \"l\"\nrate = \"10/s\"\nburst = 1\n");
    let m = call("alice", "echo");
    pass(&c, &m, at(0), 1);
    assert_eq!(retry_ms(&refused(&c, &m, at(0))), 100);
    assert_eq!(retry_ms(&refused(&c, &m, at(99))), 1);
    pass(&c, &m, at(100), 1);
    // However long it was idle, it never lets two through together.
    pass(&c, &m, at(5_000), 1);
    assert_eq!(retry_ms(&refused(&c, &m, at(5_000))), 100);
    pass(&c, &m, at(5_100), 1);
    assert_eq!(retry_ms(&refused(&c, &m, at(5_150))), 50);
}

#[test]
fn notifications_responses_and_unlimited_requests_pass() {
    let c = config("[[limits]]\nname = \"all\"\nmethods = [\"*\"]\nrate = \"1/h\"\n");
    let n = TestMessage::request("notifications/initialized");
    pass(&c, &n, at(0), 3);
    let r = TestMessage::response("tools/call");
    pass(&c, &r, at(0), 3);
    let none = config("");
    pass(&none, &call("a", "echo"), at(0), 3);
}

#[test]
fn reloaded_configuration_keeps_buckets_unless_their_fill_time_changed() {
    let text = "[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"2/min\"\n";
    let before = config(text);
    pass(&before, &call("alice", "echo"), at(0), 2);
    // The same limit in a new instance (a reload): the bucket is the store's.
    let after = config(&format!("http-status = 200\n{text}"));
    assert_eq!(
        retry_ms(&refused(&after, &call("alice", "echo"), at(1_000))),
        29_000
    );
    // A higher rate filling in the same minute finds the bucket as empty as it was, and
    // refills it at its own rate: one every 15 s.
    let raised = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"4/min\"\n");
    assert_eq!(
        retry_ms(&refused(&raised, &call("alice", "echo"), at(1_000))),
        14_000
    );
    pass(&raised, &call("alice", "echo"), at(15_000), 1);
    refused(&raised, &call("alice", "echo"), at(15_000));
    // Another fill time is another limit: it starts afresh.
    let changed = config("[[limits]]\nname = \"l\"\nper = [\"subject\"]\nrate = \"5/30s\"\n");
    pass(&changed, &call("alice", "echo"), at(15_000), 5);
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
            "[[limits]]\nname = \"a\"\nrate = \"2000000/ms\"\n",
            "more than one request a nanosecond",
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
