//! The policy as the gateway runs it: messages in, verdicts out.

use super::*;

const EMAIL: &str = "alice@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const PEM: &str =
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq9\n-----END RSA PRIVATE KEY-----";
const SALT: &str = "a-test-salt-of-32-characters!!!!";

fn config(json: Value) -> Config {
    portcullis_sdk::parse_config::<Redact>(&json.to_string()).expect("valid config")
}

fn config_error(json: Value) -> String {
    match portcullis_sdk::parse_config::<Redact>(&json.to_string()) {
        Ok(_) => panic!("config accepted: {json}"),
        Err(e) => e,
    }
}

fn defaults() -> Config {
    config(json!({}))
}

fn tool_result(result: Value) -> Message<'static> {
    TestMessage::response("tools/call")
        .with_target("alpha__echo")
        .with_result(result)
        .build()
}

fn text_result(text: &str) -> Message<'static> {
    tool_result(json!({ "content": [{ "type": "text", "text": text }] }))
}

/// The changed result of a verdict that must change it.
fn changed(v: &Verdict) -> Value {
    v.changes()
        .and_then(Changes::result)
        .unwrap_or_else(|| panic!("expected a changed result, got {v:?}"))
}

fn attribute<'v>(v: &'v Verdict, key: &str) -> Option<&'v str> {
    v.changes().and_then(|c| c.attribute(key))
}

#[test]
fn a_tool_result_comes_back_masked_with_counts_for_the_audit_trail() {
    let text = format!("mail {EMAIL} or {EMAIL}, card {CARD}, key {AWS_KEY}.");
    let v = Redact::evaluate(&defaults(), &text_result(&text));
    let result = changed(&v);
    assert_eq!(
        result["content"][0]["text"],
        "mail [EMAIL] or [EMAIL], card **** **** **** 1111, key [AWS_ACCESS_KEY]."
    );
    assert_eq!(attribute(&v, "redact.email"), Some("2"));
    assert_eq!(attribute(&v, "redact.card"), Some("1"));
    assert_eq!(attribute(&v, "redact.aws-access-key"), Some("1"));
    let attributes = v.changes().map(Changes::attributes).unwrap_or_default();
    assert_eq!(
        attributes.len(),
        3,
        "only detectors that found something: {attributes:?}"
    );
    assert!(
        attributes
            .iter()
            .all(|(_, value)| !value.contains(EMAIL) && !value.contains(AWS_KEY)),
        "attributes carry counts, never values"
    );
}

#[test]
fn a_clean_result_passes_unchanged() {
    let clean = text_result("The build passed: 42 tests in 1.5 s (v2.14.3, 2024-03-15).");
    assert!(Redact::evaluate(&defaults(), &clean).is_allow());
}

#[test]
fn every_action() {
    let cfg = config(json!({
        "salt": SALT,
        "detectors": {
            "email": { "action": "hash" },
            "card": { "action": "mask", "keep": 6 },
            "phone": { "action": "remove" },
            "ssn": { "action": "label", "label": "TAXPAYER_ID" },
            "private-key": { "action": "block" },
        },
    }));
    let v = Redact::evaluate(
        &cfg,
        &text_result(&format!(
            "{EMAIL} | {CARD} | call +1 415 555 2671 now | 078-05-1120"
        )),
    );
    let text = changed(&v)["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let (hash, rest) = text.split_once(" | ").unwrap();
    assert!(
        hash.starts_with("[EMAIL:") && hash.ends_with(']') && hash.len() == "[EMAIL:]".len() + 8,
        "{hash}"
    );
    assert!(hash[7..15].bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
    assert_eq!(rest, "**** **** **11 1111 | call  now | [TAXPAYER_ID]");

    // Block: the whole response is refused, and the error does not echo the value.
    let v = Redact::evaluate(&cfg, &text_result(&format!("here is the key:\n{PEM}")));
    let denial = v.denial().expect("blocked");
    assert_eq!(denial.code, codes::DENIED);
    assert!(denial.message.contains("private-key"), "{}", denial.message);
    let all = format!("{denial:?}");
    assert!(!all.contains("MIIE") && !all.contains("BEGIN"), "{all}");
}

#[test]
fn hashes_are_stable_per_salt_and_normalised() {
    let hashing = |salt: &str| {
        config(json!({
            "salt": salt,
            "detectors": { "email": { "action": "hash" }, "card": { "action": "hash" } },
        }))
    };
    let token = |cfg: &Config, text: &str| {
        changed(&Redact::evaluate(cfg, &text_result(text)))["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = hashing(SALT);
    let b = hashing("another-salt-of-enough-length");
    assert_eq!(token(&a, EMAIL), token(&a, EMAIL), "same input, same salt");
    assert_eq!(
        token(&a, EMAIL),
        token(&a, "Alice@Example.COM"),
        "e-mail case"
    );
    assert_eq!(
        token(&a, CARD),
        token(&a, "4111-1111-1111-1111"),
        "card separators"
    );
    assert_ne!(token(&a, EMAIL), token(&a, "bob@example.com"));
    assert_ne!(token(&a, EMAIL), token(&b, EMAIL), "another salt");
    let long = config(json!({
        "salt": SALT, "hash-length": 16, "detectors": { "email": { "action": "hash" } },
    }));
    assert_eq!(token(&long, EMAIL).len(), "[EMAIL:]".len() + 16);
}

#[test]
fn masks_never_show_more_than_half() {
    let cfg =
        config(json!({ "detectors": { "secret-assignment": { "action": "mask", "keep": 4 } } }));
    let v = Redact::evaluate(&cfg, &text_result("password=abc123 pwd=xy"));
    assert_eq!(changed(&v)["content"][0]["text"], "password=***123 pwd=*y");
    let stars = config(json!({ "mask-char": "•", "detectors": { "card": { "keep": 0 } } }));
    let v = Redact::evaluate(&stars, &text_result(CARD));
    assert_eq!(changed(&v)["content"][0]["text"], "•••• •••• •••• ••••");
}

#[test]
fn structured_content_keeps_its_shape_and_types() {
    let result = json!({
        "content": [{ "type": "text", "text": "2 customers" }],
        "structuredContent": {
            "customers": [
                { "id": 1, "email": EMAIL, "balance": 12.5, "vip": true, "card": CARD, "note": null },
                { "id": 2, "email": "bob@example.org", "tags": ["vip", "call +44 20 7946 0958"] },
            ],
            "alice@example.com": "keys are not redacted",
            "password": "hunter2",
            "apiKey": { "nested": "objects under a secret key are walked, not dropped" },
            "pin": 1234,
            "db": { "client_secret": "s3cr3t", "token": 42 },
        },
        "isError": false,
    });
    let v = Redact::evaluate(&defaults(), &tool_result(result.clone()));
    let got = changed(&v);
    let s = &got["structuredContent"];
    assert_eq!(s["customers"][0]["id"], 1);
    assert_eq!(s["customers"][0]["balance"], 12.5);
    assert_eq!(s["customers"][0]["vip"], true);
    assert_eq!(s["customers"][0]["note"], Value::Null);
    assert_eq!(s["customers"][0]["email"], "[EMAIL]");
    assert_eq!(s["customers"][0]["card"], "**** **** **** 1111");
    assert_eq!(
        s["customers"][1]["tags"],
        json!(["vip", "call +** ** **** **58"])
    );
    assert_eq!(s["alice@example.com"], "keys are not redacted");
    assert_eq!(s["password"], "[SECRET]");
    assert_eq!(
        s["apiKey"]["nested"],
        "objects under a secret key are walked, not dropped"
    );
    assert_eq!(s["pin"], 1234, "numbers stay numbers");
    assert_eq!(s["db"], json!({ "client_secret": "[SECRET]", "token": 42 }));
    assert_eq!(got["isError"], false);
    assert_eq!(got["content"], result["content"]);
    assert_eq!(attribute(&v, "redact.secret-assignment"), Some("2"));
    assert_eq!(attribute(&v, "redact.email"), Some("2"));

    // Without json-keys only the detectors decide.
    let plain = config(json!({ "json-keys": false }));
    let got = changed(&Redact::evaluate(&plain, &tool_result(result)));
    assert_eq!(got["structuredContent"]["password"], "hunter2");
}

#[test]
fn json_text_stays_json() {
    // A tool that returns a JSON document as text (like the fixture's `whoami`).
    let doc = json!({
        "meta": { "progressToken": 0, "contact": EMAIL, "db": { "password": "hunter2", "port": 5432 } },
        "token": 42,
        "secret": null,
        "card": CARD,
        "key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
        "cmd": "login --password=s3cr3t --user \"bob\"",
    });
    let v = Redact::evaluate(&defaults(), &text_result(&doc.to_string()));
    let text = changed(&v)["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let back: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(back["meta"]["progressToken"], 0);
    assert_eq!(back["meta"]["contact"], "[EMAIL]");
    assert_eq!(
        back["meta"]["db"],
        json!({ "password": "[SECRET]", "port": 5432 })
    );
    assert_eq!(back["token"], 42);
    assert_eq!(back["card"], "**** **** **** 1111");
    assert_eq!(back["key"], "[PRIVATE_KEY]");
    assert_eq!(back["cmd"], "login --password=[SECRET] --user \"bob\"");
}

#[test]
fn a_value_under_a_secret_key_counts_as_what_it_is() {
    let v = Redact::evaluate(
        &defaults(),
        &tool_result(
            json!({ "structuredContent": { "token": "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB" } }),
        ),
    );
    assert_eq!(changed(&v)["structuredContent"]["token"], "[GITHUB_TOKEN]");
    assert_eq!(attribute(&v, "redact.github-token"), Some("1"));
}

#[test]
fn embedded_resources_resource_reads_and_prompts() {
    let v = Redact::evaluate(
        &defaults(),
        &tool_result(json!({ "content": [
            { "type": "image", "data": "aGVsbG8gYWxpY2VAZXhhbXBsZS5jb20=", "mimeType": "image/png" },
            { "type": "resource", "resource": { "uri": "file:///alice@example.com.txt", "mimeType": "text/plain", "text": format!("owner {EMAIL}") } },
            { "type": "resource", "resource": { "uri": "file:///b.bin", "blob": "AAAA" } },
            { "type": "resource_link", "uri": "file:///c", "name": "c" },
        ] })),
    );
    let got = changed(&v);
    assert_eq!(got["content"][1]["resource"]["text"], "owner [EMAIL]");
    assert_eq!(
        got["content"][1]["resource"]["uri"], "file:///alice@example.com.txt",
        "URIs identify resources and stay"
    );
    assert_eq!(
        got["content"][0]["data"],
        "aGVsbG8gYWxpY2VAZXhhbXBsZS5jb20="
    );
    assert_eq!(
        got["content"][2],
        json!({ "type": "resource", "resource": { "uri": "file:///b.bin", "blob": "AAAA" } })
    );

    let read = TestMessage::response("resources/read")
        .with_target("file:///notes")
        .with_result(json!({ "contents": [
            { "uri": "file:///notes", "mimeType": "text/plain", "text": format!("key {AWS_KEY}") },
            { "uri": "file:///raw", "blob": "AAAA" },
        ] }))
        .build();
    let got = changed(&Redact::evaluate(&defaults(), &read));
    assert_eq!(got["contents"][0]["text"], "key [AWS_ACCESS_KEY]");
    assert_eq!(got["contents"][0]["uri"], "file:///notes");
    assert_eq!(got["contents"][1]["blob"], "AAAA");

    let prompt = TestMessage::response("prompts/get")
        .with_target("alpha__summarize")
        .with_result(json!({
            "description": format!("for {EMAIL}"),
            "messages": [
                { "role": "user", "content": { "type": "text", "text": format!("card {CARD}") } },
                { "role": "assistant", "content": [{ "type": "text", "text": "ok" }, { "type": "resource", "resource": { "uri": "x:y", "text": EMAIL } }] },
            ],
        }))
        .build();
    let got = changed(&Redact::evaluate(&defaults(), &prompt));
    assert_eq!(got["description"], "for [EMAIL]");
    assert_eq!(
        got["messages"][0]["content"]["text"],
        "card **** **** **** 1111"
    );
    assert_eq!(got["messages"][0]["role"], "user");
    assert_eq!(got["messages"][1]["content"][0]["text"], "ok");
    assert_eq!(
        got["messages"][1]["content"][1]["resource"]["text"],
        "[EMAIL]"
    );
}

#[test]
fn methods_without_content_are_left_alone() {
    let list = TestMessage::response("tools/list")
        .with_result(
            json!({ "tools": [{ "name": "mail", "description": format!("mails {EMAIL}") }] }),
        )
        .build();
    assert!(Redact::evaluate(&defaults(), &list).is_allow());
    let call = TestMessage::request("tools/call")
        .with_target("alpha__echo")
        .with_params(json!({ "name": "alpha__echo", "arguments": { "text": EMAIL } }))
        .build();
    assert!(
        Redact::evaluate(&defaults(), &call).is_allow(),
        "arguments only when configured"
    );
}

#[test]
fn tool_arguments_when_configured() {
    let cfg = config(
        json!({ "arguments": true, "detectors": { "aws-secret-key": { "action": "block" } } }),
    );
    let call = |args: Value| {
        TestMessage::request("tools/call")
            .with_target("alpha__echo")
            .with_params(json!({ "name": "alpha__echo", "arguments": args }))
            .build()
    };
    let v = Redact::evaluate(
        &cfg,
        &call(json!({ "text": format!("to {EMAIL}"), "n": 3 })),
    );
    let params = v
        .changes()
        .and_then(Changes::params)
        .expect("params changed");
    assert_eq!(
        params,
        json!({ "name": "alpha__echo", "arguments": { "text": "to [EMAIL]", "n": 3 } })
    );
    assert_eq!(attribute(&v, "redact.email"), Some("1"));
    let v = Redact::evaluate(
        &cfg,
        &call(
            json!({ "config": "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" }),
        ),
    );
    let denial = v.denial().expect("blocked");
    assert!(
        denial.message.starts_with("arguments withheld"),
        "{}",
        denial.message
    );
    assert!(!denial.message.contains("wJalr"));
}

#[test]
fn notifications_by_default() {
    let progress = |phase_response: bool| {
        let msg = if phase_response {
            TestMessage::response("notifications/progress")
        } else {
            TestMessage::request("notifications/progress")
        };
        msg.with_params(
            json!({ "progressToken": 7, "progress": 50, "message": format!("mailing {EMAIL}") }),
        )
        .build()
    };
    let off = config(json!({ "notifications": false }));
    assert!(Redact::evaluate(&off, &progress(true)).is_allow());
    let cfg = defaults();
    for phase_response in [false, true] {
        let v = Redact::evaluate(&cfg, &progress(phase_response));
        let params = v
            .changes()
            .and_then(Changes::params)
            .expect("params changed");
        assert_eq!(
            params,
            json!({ "progressToken": 7, "progress": 50, "message": "mailing [EMAIL]" })
        );
    }
    let log = TestMessage::request("notifications/message")
        .with_params(
            json!({ "level": "info", "logger": "db", "data": { "user": EMAIL, "rows": 3 } }),
        )
        .build();
    let params = Redact::evaluate(&cfg, &log)
        .changes()
        .and_then(Changes::params)
        .expect("params changed");
    assert_eq!(params["data"], json!({ "user": "[EMAIL]", "rows": 3 }));
    assert_eq!(params["level"], "info");
}

#[test]
fn upstream_errors_are_redacted_with_their_code() {
    let error = TestMessage::response("tools/call")
        .with_target("alpha__login")
        .with_error(json!({ "code": -32602, "message": format!("no account for {EMAIL}"), "data": { "card": CARD } }))
        .build();
    let v = Redact::evaluate(&defaults(), &error);
    let denial = v.denial().expect("the error is replaced");
    assert_eq!(denial.code, -32602);
    assert_eq!(denial.message, "no account for [EMAIL]");
    assert_eq!(denial.data, Some(json!({ "card": "**** **** **** 1111" })));
    assert!(Redact::evaluate(&config(json!({ "errors": false })), &error).is_allow());
    let clean = TestMessage::response("tools/call")
        .with_error(json!({ "code": -32602, "message": "Unknown tool: x" }))
        .build();
    assert!(Redact::evaluate(&defaults(), &clean).is_allow());
}

#[test]
fn custom_detectors_run_first_and_may_redact_a_group() {
    let cfg = config(json!({
        "salt": SALT,
        "custom": [
            { "name": "employee-id", "pattern": "(?-u:\\b)EMP-[0-9]{6}(?-u:\\b)", "action": "hash", "label": "EMPLOYEE" },
            { "name": "session", "pattern": "session=(?P<value>[a-f0-9]{16})", "action": "mask", "keep": 4 },
            { "name": "off", "pattern": "hello", "enabled": false },
        ],
        "detectors": { "ipv4": { "enabled": false } },
    }));
    let v = Redact::evaluate(
        &cfg,
        &text_result("EMP-123456 session=0123456789abcdef from 10.1.2.3 says hello"),
    );
    let text = changed(&v)["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.starts_with("[EMPLOYEE:"), "{text}");
    assert!(
        text.ends_with(" session=************cdef from 10.1.2.3 says hello"),
        "{text}"
    );
    assert_eq!(attribute(&v, "redact.employee-id"), Some("1"));
    assert_eq!(attribute(&v, "redact.session"), Some("1"));
}

#[test]
fn every_detector_can_be_switched_off() {
    let off: serde_json::Map<String, Value> = detectors::BUILTINS
        .iter()
        .map(|b| (b.name.to_string(), json!({ "enabled": false })))
        .collect();
    let cfg = config(json!({ "detectors": off }));
    let text = format!("{EMAIL} {CARD} {AWS_KEY} password=x {PEM}");
    assert!(Redact::evaluate(&cfg, &text_result(&text)).is_allow());
}

#[test]
fn bad_configurations_are_refused_at_load_with_the_setting_named() {
    let e = config_error(json!({ "detectors": { "e-mail": {} } }));
    assert!(
        e.contains("detectors.e-mail: no such detector") && e.contains("email"),
        "{e}"
    );
    let e = config_error(json!({ "detectors": { "email": { "action": "label", "keep": 2 } } }));
    assert!(e.contains("detectors.email: `keep` only applies"), "{e}");
    let e = config_error(json!({ "detectors": { "email": { "action": "hash" } } }));
    assert!(e.contains("salt") && e.contains("email"), "{e}");
    let e =
        config_error(json!({ "salt": "short", "detectors": { "email": { "action": "hash" } } }));
    assert!(e.contains("at least 16"), "{e}");
    let e = config_error(json!({ "detectors": { "email": { "action": "scramble" } } }));
    assert!(e.contains("unknown variant `scramble`"), "{e}");
    let e = config_error(json!({ "detectors": { "email": { "label": "[E]" } } }));
    assert!(e.contains("without brackets"), "{e}");
    let e = config_error(json!({ "custom": [{ "name": "x", "pattern": "(unclosed" }] }));
    assert!(e.contains("custom[0] (\"x\"): pattern"), "{e}");
    let e = config_error(json!({ "custom": [{ "name": "x", "pattern": "a*" }] }));
    assert!(e.contains("can match empty text"), "{e}");
    let e = config_error(json!({ "custom": [{ "name": "email", "pattern": "x" }] }));
    assert!(e.contains("already taken"), "{e}");
    let e = config_error(json!({ "custom": [{ "name": "Bad Name", "pattern": "x" }] }));
    assert!(e.contains("lower-case"), "{e}");
    let e = config_error(json!({ "decode-depth": 9 }));
    assert!(e.contains("decode-depth: 9 is over 4"), "{e}");
    let e = config_error(json!({ "encoded-min-length": 2 }));
    assert!(e.contains("encoded-min-length: 2 is outside"), "{e}");
    let e = config_error(json!({ "hash-length": 2 }));
    assert!(e.contains("hash-length"), "{e}");
    let e = config_error(json!({ "colour": "blue" }));
    assert!(e.contains("unknown field `colour`"), "{e}");
}

#[test]
fn the_shipped_sidecar_loads_and_redacts() {
    let sidecar: toml::Table = toml::from_str(include_str!("../redact.toml")).unwrap();
    let table = sidecar.get("config").expect("a [config] table");
    let cfg = config(serde_json::to_value(table).unwrap());
    assert_eq!(
        cfg.detectors.len(),
        detectors::BUILTINS.len(),
        "every detector on"
    );
    let v = Redact::evaluate(&cfg, &text_result(&format!("{EMAIL} {CARD} {AWS_KEY}")));
    assert_eq!(
        changed(&v)["content"][0]["text"],
        "[EMAIL] **** **** **** 1111 [AWS_ACCESS_KEY]"
    );
}

#[test]
fn the_operators_guide_shows_the_shipped_sidecar() {
    let guide = include_str!("../../../docs/redact.md");
    let sidecar = include_str!("../redact.toml");
    assert!(
        guide.contains(sidecar.trim_end()),
        "docs/redact.md must quote plugins/redact/redact.toml verbatim"
    );
}

/// About 1 MiB of log-like text with four findings per paragraph (an IPv4 address, an
/// e-mail address, a phone number, a card), or the same text without them.
pub fn corpus(bytes: usize, pii: bool) -> String {
    let mut s = String::with_capacity(bytes + 1024);
    let mut i = 0;
    while s.len() < bytes {
        let (ip, email, phone, card) = if pii {
            (
                "10.20.30.40",
                format!("jane.roe{i}@example.com"),
                "+44 20 7946 0958",
                CARD,
            )
        } else {
            (
                "the edge node",
                format!("jane.roe{i} at example"),
                "extension 4471",
                "on file",
            )
        };
        s.push_str(&format!(
            "2024-03-15T10:22:31Z INFO request 7f3c9a2e-1b4d-4c8e-9f2a-6d5e4c3b2a10 from {ip} took 123 ms (v2.14.3). \
             Customer Jane Roe <{email}> called {phone} about order 100234{i} for $1,234.56; card {card}, exp 12/27. \
             Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. \
             {{\"status\": \"ok\", \"count\": 42, \"ratio\": 0.75, \"path\": \"/api/v1/users/123\"}} \
             Duis aute irure dolor in reprehenderit. See https://docs.example.com/guide#section-3 and ticket ABC-1234.\n"
        ));
        i += 1;
    }
    s
}

#[test]
fn a_one_megabyte_result_is_redacted_whole() {
    let text = corpus(1 << 20, true);
    let paragraphs = text.lines().count();
    let started = std::time::Instant::now();
    let v = Redact::evaluate(&defaults(), &text_result(&text));
    let took = started.elapsed();
    let out = changed(&v)["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !out.contains("@example.com") && !out.contains("4111 1111") && !out.contains("10.20.30.40")
    );
    assert!(
        out.contains("v2.14.3") && out.contains("2024-03-15T10:22:31Z") && out.contains("ABC-1234")
    );
    let n = paragraphs.to_string();
    for detector in ["email", "card", "phone", "ipv4"] {
        assert_eq!(
            attribute(&v, &format!("redact.{detector}")),
            Some(n.as_str()),
            "{detector}"
        );
    }
    assert_eq!(
        v.changes().map(|c| c.attributes().len()),
        Some(4),
        "no false positives in the filler"
    );
    // A measurement, not an assertion (native, debug build): see docs/BENCHMARKS.md for
    // the component's numbers.
    eprintln!("1 MiB, {paragraphs} paragraphs: {took:?}");

    let clean = corpus(1 << 20, false);
    assert!(Redact::evaluate(&defaults(), &text_result(&clean)).is_allow());
}

#[test]
#[ignore = "a measurement: cargo test --release -p redact -- --ignored --nocapture"]
fn measure_structured_records() {
    let records: Vec<Value> = (0..2300)
        .map(|i| json!({ "id": i, "name": "Jane Roe", "email": format!("jane{i}@example.com"), "phone": "+44 20 7946 0958", "card": CARD, "ip": "10.20.30.40", "note": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore", "balance": 1234.5, "active": true, "password": "hunter2" }))
        .collect();
    let msg = tool_result(json!({ "structuredContent": { "records": records } }));
    let cfg = defaults();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(!Redact::evaluate(&cfg, &msg).is_allow());
        }
        eprintln!("structured: {:?} per call", started.elapsed() / 10);
    }
    let text = text_result(&corpus(1 << 20, true));
    for _ in 0..3 {
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert!(!Redact::evaluate(&cfg, &text).is_allow());
        }
        eprintln!("text: {:?} per call", started.elapsed() / 10);
    }
}

#[test]
#[ignore = "a measurement: cargo test --release -p redact -- --ignored --nocapture"]
fn measure_init() {
    let mut fastest = std::time::Duration::MAX;
    for _ in 0..30 {
        let started = std::time::Instant::now();
        let cfg = defaults();
        fastest = fastest.min(started.elapsed());
        assert!(!Redact::evaluate(&cfg, &text_result(&format!("{EMAIL} {CARD}"))).is_allow());
    }
    eprintln!("init: {fastest:?} (fastest of 30)");
}

/// The code blocks of `docs/redact.md` after `heading`, in order.
fn guide_blocks(heading: &str) -> Vec<String> {
    let guide = include_str!("../../../docs/redact.md");
    let section = &guide[guide.find(heading).expect("heading in docs/redact.md")..];
    section
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| b.split_once('\n').map_or("", |(_, body)| body).to_string())
        .collect()
}

#[test]
fn the_guides_complete_example_does_what_it_says() {
    let blocks = guide_blocks("### A complete example");
    let sidecar: toml::Table = toml::from_str(&blocks[0]).expect("the example sidecar");
    let cfg = config(serde_json::to_value(&sidecar["config"]).unwrap());
    let input: Value = serde_json::from_str(&blocks[1]).expect("the example result");
    let expected: Value = serde_json::from_str(&blocks[2]).expect("the redacted result");
    let v = Redact::evaluate(&cfg, &tool_result(input));
    assert_eq!(changed(&v), expected, "{}", changed(&v));
    for (detector, n) in [
        ("employee-id", "1"),
        ("email", "2"),
        ("card", "1"),
        ("phone", "1"),
        ("secret-assignment", "1"),
    ] {
        assert_eq!(
            attribute(&v, &format!("redact.{detector}")),
            Some(n),
            "{detector}"
        );
    }
}

/// About `bytes` of base64 whose decoding is text full of candidates (digit groups and
/// e-mail addresses), in 76-character lines.
fn base64_text(bytes: usize) -> String {
    use base64::Engine as _;
    let plain = "4111 1111 1111 1112 a@b.co ".repeat(bytes * 3 / 4 / 27);
    let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "a measurement: cargo test --release -p redact -- --ignored --nocapture"]
fn measure_hostile_inputs() {
    let cfg = defaults();
    let mib: usize = std::env::var("HOSTILE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let cases = [
        ("dotted numbers", "1.".repeat(mib / 2)),
        ("digits and spaces", "4111 ".repeat(mib / 5)),
        ("colons", "ab:".repeat(mib / 3)),
        ("at signs", "a@b.".repeat(mib / 4)),
        ("plus digits", "+1 ".repeat(mib / 3)),
        ("key names", "password_".repeat(mib / 9)),
        ("one long word", "a".repeat(mib)),
        ("non-ASCII", "é1.2:".repeat(mib / 6)),
        ("zero-width spaces", "\u{200B}".repeat(mib / 3)),
        ("zero-width between digits", "4\u{200B}".repeat(mib / 4)),
        ("URL escapes", "%41".repeat(mib / 3)),
        ("HTML entities", "&#52;&#49;&#49;&#49; ".repeat(mib / 21)),
        ("JSON escapes", "\\u0034".repeat(mib / 6)),
        ("base64 of text", base64_text(mib)),
        ("base64 in one run", base64_text(mib).replace(' ', "")),
        ("hex", "41".repeat(mib / 2)),
        ("fullwidth digits", "４１１１ ".repeat(mib / 13)),
    ];
    for (name, text) in cases {
        let started = std::time::Instant::now();
        let _ = Redact::evaluate(&cfg, &text_result(&text));
        eprintln!("{name}: {:?}", started.elapsed());
    }
}

#[test]
fn what_upstreams_ask_the_client_is_redacted_by_default() {
    let sampling = TestMessage::response("sampling/createMessage")
        .with_params(json!({
            "systemPrompt": format!("Reply to {EMAIL}"),
            "messages": [
                { "role": "user", "content": { "type": "text", "text": format!("Card {CARD} was declined") } },
                { "role": "user", "content": [{ "type": "image", "data": "aGk=", "mimeType": "image/png" }] },
            ],
            "maxTokens": 100,
        }))
        .build();
    let params = Redact::evaluate(&defaults(), &sampling)
        .changes()
        .and_then(Changes::params)
        .expect("params changed");
    assert_eq!(params["systemPrompt"], "Reply to [EMAIL]");
    assert_eq!(
        params["messages"][0]["content"]["text"],
        "Card **** **** **** 1111 was declined"
    );
    assert_eq!(
        params["messages"][1],
        sampling.params().unwrap()["messages"][1]
    );
    assert_eq!(params["maxTokens"], 100);

    let elicit = TestMessage::response("elicitation/create")
        .with_params(json!({ "message": format!("Confirm {EMAIL}?"), "requestedSchema": { "type": "object" } }))
        .build();
    let params = Redact::evaluate(&defaults(), &elicit)
        .changes()
        .and_then(Changes::params)
        .expect("params changed");
    assert_eq!(params["message"], "Confirm [EMAIL]?");

    let off = config(json!({ "server-requests": false }));
    assert!(Redact::evaluate(&off, &elicit).is_allow());
}

#[test]
fn disguised_values_are_replaced_whole_and_masked_as_read() {
    // Fullwidth digits with zero-width spaces: the mask is drawn from the digits as read,
    // and no invisible character survives.
    let text = "card ４１１１\u{200B} １１１１ １１１１ １１１１.";
    let v = Redact::evaluate(&defaults(), &text_result(text));
    assert_eq!(
        changed(&v)["content"][0]["text"],
        "card **** **** **** 1111."
    );
    assert_eq!(attribute(&v, "redact.card"), Some("1"));

    // The same key plain and disguised hashes alike: one value, one token.
    let cfg = config(json!({ "salt": SALT, "detectors": { "email": { "action": "hash" } } }));
    let token = |text: &str| {
        changed(&Redact::evaluate(&cfg, &text_result(text)))["content"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(token(EMAIL), token("alice&#64;example.com"));
    assert_eq!(token(EMAIL), token("ａｌｉｃｅ@example.com"));

    // A disguised key under `block` is refused like a plain one.
    let blocking = config(json!({ "detectors": { "stripe-key": { "action": "block" } } }));
    let v = Redact::evaluate(
        &blocking,
        &text_result("key ѕk_lіve_4eC39HqLyjWDarjtT1zdp7dc"),
    );
    assert!(v.denial().is_some_and(|d| d.message.contains("stripe-key")));

    // A JSON member named like a secret in look-alike letters is a secret too.
    let v = Redact::evaluate(
        &defaults(),
        &tool_result(json!({ "structuredContent": { "pаsswоrd": "hunter2" } })),
    );
    assert_eq!(changed(&v)["structuredContent"]["pаsswоrd"], "[SECRET]");

    // `normalize = false` scans the text as written only.
    let plain = config(json!({ "normalize": false }));
    assert!(Redact::evaluate(&plain, &text_result("mailto:alice%40example.com")).is_allow());
    let shallow = config(json!({ "decode-depth": 0 }));
    assert!(Redact::evaluate(&shallow, &text_result("alice%40example.com")).is_allow());
    assert!(!Redact::evaluate(&shallow, &text_result("alice\u{200B}@example.com")).is_allow());
}

fn items(texts: &[&str]) -> Message<'static> {
    let content: Vec<Value> = texts
        .iter()
        .map(|t| json!({ "type": "text", "text": t }))
        .collect();
    tool_result(json!({ "content": content }))
}

fn texts(v: &Verdict) -> Vec<String> {
    changed(v)["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_secret_split_across_content_items_is_found_in_both() {
    // A PEM key whose BEGIN line ends one item and whose body and END line start the next.
    let v = Redact::evaluate(
        &defaults(),
        &items(&[
            "Here is the key:\n-----BEGIN RSA PRIVATE KEY-----\n",
            "MIIEpAIBAAKCAQEA7bq9\nQm9vbXNoYWthbGFrYQ==\n-----END RSA PRIVATE KEY-----\nDone.",
        ]),
    );
    assert_eq!(
        texts(&v),
        ["Here is the key:\n[PRIVATE_KEY]", "[PRIVATE_KEY]\nDone."]
    );
    assert_eq!(attribute(&v, "redact.private-key"), Some("1"), "one key");

    // A token cut in two, and a card split over three items.
    let v = Redact::evaluate(
        &defaults(),
        &items(&["token ghp_0123456789abcdefghij", "klmnopqrstuvwxyzAB ok"]),
    );
    assert_eq!(texts(&v), ["token [GITHUB_TOKEN]", "[GITHUB_TOKEN] ok"]);
    let v = Redact::evaluate(
        &defaults(),
        &items(&["card 4111 1111", " 1111 ", "1111 paid"]),
    );
    assert_eq!(texts(&v), ["card **** ****", " **** ", "1111 paid"]);

    // Items that merely touch keep their own findings and nothing more.
    let v = Redact::evaluate(
        &defaults(),
        &items(&["Write to", "alice@example.com", "Thanks"]),
    );
    assert_eq!(texts(&v), ["Write to", "[EMAIL]", "Thanks"]);

    // An image between two items separates them.
    let v = Redact::evaluate(
        &defaults(),
        &tool_result(json!({ "content": [
            { "type": "text", "text": "ghp_0123456789abcdefghij" },
            { "type": "image", "data": "aGk=", "mimeType": "image/png" },
            { "type": "text", "text": "klmnopqrstuvwxyzAB" },
        ] })),
    );
    assert!(v.is_allow());

    // `join-items = false`: each item alone.
    let apart = config(json!({ "join-items": false }));
    let v = Redact::evaluate(
        &apart,
        &items(&["token ghp_0123456789abcdefghij", "klmnopqrstuvwxyzAB"]),
    );
    assert!(v.is_allow());
}
