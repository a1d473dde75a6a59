//! One audit record: what happened to one message, as a JSON object on one line.
//!
//! Fields that do not apply are left out (not `null`). The writer fills in `seq` and seals
//! the line with `prev` and `hash` (see `chain.rs`); everything else is known on the request
//! path. Nothing here is a secret: identities are the subject and tenant an authn policy
//! established (never a token or key), and arguments and results appear only when the
//! operator asked for them, as forwarded / as answered (after redaction).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use serde_json::Value;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// A client request (or a notification a policy refused).
    Request,
    /// The gateway started writing this trail.
    Start,
    /// The queue to the writer was full: this many records were lost before this one.
    Dropped,
    /// The first record of a new segment (`portcullis audit new-segment`): `previous` names
    /// the segment before it.
    Segment,
}

/// For `segment`: the segment before, moved aside.
#[derive(Debug, Clone, Serialize)]
pub struct Previous {
    /// Where its files were moved.
    pub moved_to: String,
    /// Its last record as found (not vouched for: it may be what was forged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Whether that record's keyed hash checked out.
    pub intact: bool,
    /// Its last valid signed checkpoint: the head the gateway vouched for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_hash: Option<String>,
}

/// The policy chain's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Allow,
    Deny,
}

/// How a request ended, as the client saw it; also the `outcome` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A result.
    Ok,
    /// A JSON-RPC error that was not a policy's denial nor an upstream timeout.
    Error,
    /// A policy refused it (or failed closed).
    Denied,
    /// The upstream did not answer in time.
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
            Outcome::Timeout => "timeout",
        }
    }
}

/// A wall-clock time, written as RFC 3339 UTC with microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// One audit record. Field order is the order on the line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Position in the chain, from 1; set by the writer.
    pub seq: u64,
    pub time: Timestamp,
    pub event: Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// The plugin that denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The rule that decided: the `authz.rule` attribute of an allowed request, or the
    /// `rule` a denying plugin put in its error data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The protocol revision the client speaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The tool or prompt name or resource URI, as the client gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The JSON-RPC error code the client got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The error message the client got (denials and failures; clients see it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// From the request's arrival to its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// Of that, waiting for the upstream (routing and the upstream's own time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_us: Option<u64>,
    /// Redaction counts by detector, from the `redact.<detector>` attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub redactions: BTreeMap<String, u64>,
    /// Every attribute the policies set.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// SHA-256 of every plugin that ran on this message, in the order they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// `[audit] record-arguments`: the `tools/call` arguments as forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// `[audit] record-results`: the result as the client received it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// For `dropped`: how many records were lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For `start`: the gateway's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    /// For `segment`: the segment before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

impl Record {
    /// An empty record of this kind, stamped now.
    pub fn new(event: Event) -> Self {
        Record {
            seq: 0,
            time: Timestamp(SystemTime::now()),
            event,
            decision: None,
            plugin: None,
            rule: None,
            subject: None,
            tenant: None,
            session: None,
            protocol: None,
            upstream: None,
            method: None,
            target: None,
            outcome: None,
            code: None,
            message: None,
            latency_us: None,
            upstream_us: None,
            redactions: BTreeMap::new(),
            attributes: BTreeMap::new(),
            plugins: Vec::new(),
            arguments: None,
            result: None,
            count: None,
            version: None,
            previous: None,
        }
    }

    /// Takes the policies' attributes, and from them the redaction counts
    /// (`redact.<detector>` = count).
    pub fn set_attributes(&mut self, attributes: BTreeMap<String, String>) {
        for (k, v) in &attributes {
            if let Some(detector) = k.strip_prefix("redact.")
                && let Ok(n) = v.parse::<u64>()
            {
                self.redactions.insert(detector.to_string(), n);
            }
        }
        self.attributes = attributes;
    }

    /// An allowed request's rule: the `authz.rule` attribute the authz policy sets.
    pub fn allowed_by_rule(&mut self) {
        self.rule = self.attributes.get("authz.rule").cloned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_left_out_and_attributes_are_read() {
        let mut r = Record::new(Event::Request);
        r.seq = 7;
        r.time = Timestamp(SystemTime::UNIX_EPOCH);
        r.decision = Some(Decision::Allow);
        r.set_attributes(BTreeMap::from([
            ("redact.email".to_string(), "3".to_string()),
            ("redact.note".to_string(), "x".to_string()),
            ("authz.rule".to_string(), "analysts".to_string()),
        ]));
        r.allowed_by_rule();
        let line = serde_json::to_string(&r).unwrap();
        assert!(
            line.starts_with(
                r#"{"seq":7,"time":"1970-01-01T00:00:00.000000Z","event":"request","decision":"allow","rule":"analysts","redactions":{"email":3},"attributes":{"#
            ),
            "{line}"
        );
        assert!(!line.contains("null"), "{line}");
    }
}
