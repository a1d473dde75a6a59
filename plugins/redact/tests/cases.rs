//! The detector table (`tests/cases.toml`): true and false positives for every built-in
//! detector, each run through the same scanner the policy uses, with every detector on.

use std::collections::BTreeSet;

use redact::{Config, Scanner, detectors::BUILTINS};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    detector: String,
    text: String,
    expect: String,
    /// Other detectors the case may count.
    #[serde(default)]
    also: Vec<String>,
}

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases.toml"))
        .expect("tests/cases.toml");
    toml::from_str::<Cases>(&text)
        .expect("cases.toml parses")
        .case
}

/// Every built-in detector on, each labelling its findings.
fn labelling() -> Config {
    let detectors: serde_json::Map<String, serde_json::Value> = BUILTINS
        .iter()
        .map(|b| (b.name.to_string(), json!({ "action": "label" })))
        .collect();
    serde_json::from_value(json!({ "detectors": detectors })).expect("config")
}

#[test]
fn every_case_in_the_table() {
    let config = labelling();
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let mut scan = Scanner::new(&config);
        let got = scan.string(&case.text).unwrap_or_else(|| case.text.clone());
        if got != case.expect {
            failures.push(format!(
                "case {i} ({}):\n  text   {:?}\n  expect {:?}\n  got    {:?}",
                case.detector, case.text, case.expect, got
            ));
            continue;
        }
        let counted: BTreeSet<&str> = scan.summary().iter().map(|(n, _)| *n).collect();
        let allowed: BTreeSet<&str> = std::iter::once(case.detector.as_str())
            .chain(case.also.iter().map(String::as_str))
            .collect();
        if !counted.is_subset(&allowed) {
            failures.push(format!(
                "case {i} ({}): counted {counted:?}, expected only {allowed:?}",
                case.detector
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_detector_has_true_and_false_positive_cases() {
    let cases = cases();
    for b in BUILTINS {
        let of: Vec<&Case> = cases.iter().filter(|c| c.detector == b.name).collect();
        assert!(
            of.iter().any(|c| c.expect != c.text),
            "{}: no case where it finds something",
            b.name
        );
        assert!(
            of.iter().any(|c| c.expect == c.text),
            "{}: no case guarding against a false positive",
            b.name
        );
    }
    for c in &cases {
        assert!(
            BUILTINS.iter().any(|b| b.name == c.detector),
            "unknown detector {}",
            c.detector
        );
    }
}
