//! What the front tells the audit trail and the metrics about each client request.
//!
//! Two hooks per protocol era, where the outcome is already known: the return of a
//! request-phase denial ([`Recorder::denied`]) and the end of the task that ran a request
//! ([`Recorder::begin`] before the upstream is asked, [`Recorder::finish`] once the response
//! phase is done). Both are cheap: a few clones of short strings (only when the audit trail
//! is on), one counter and three histogram observations, and a non-blocking hand-over to the
//! audit writer.
//!
//! Latency runs from the moment the POST arrived (before its body was read) to the moment
//! the answer was ready. Upstream time is the time inside the session's request handling
//! (routing plus the upstream's answer); gateway overhead is the rest. For a 2026-07-28 call
//! that asked the client for input, the client's own time until its retry is upstream time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::audit::{Audit, Decision, Event, Outcome, Record};
use crate::mcp::Message;
use crate::metrics::{Metrics, method_label};
use crate::policy::{Call, Denial};
use crate::session::Session;

/// The audit trail (when on) and the metrics, as the front reaches them.
pub struct Recorder {
    metrics: Arc<Metrics>,
    audit: Option<Arc<Audit>>,
}

/// What is known of a request before it is forwarded.
pub(super) struct Pending {
    started: Instant,
    method: &'static str,
    upstream: Option<String>,
    /// The rest only when the audit trail is on.
    audit: Option<Box<Record>>,
}

impl Recorder {
    pub fn new(metrics: Arc<Metrics>, audit: Option<Arc<Audit>>) -> Self {
        Recorder { metrics, audit }
    }

    /// A request-phase denial: the message never reached an upstream.
    pub(super) fn denied(
        &self,
        started: Instant,
        protocol: Option<&'static str>,
        session: Option<&str>,
        call: &Call,
        denial: &Denial,
    ) {
        let view = call.view();
        let latency = started.elapsed();
        self.metrics.request(
            method_label(&view.method),
            view.upstream.as_deref(),
            Outcome::Denied,
            latency,
            None,
        );
        let Some(audit) = &self.audit else { return };
        let mut r = Record::new(Event::Request);
        r.decision = Some(Decision::Deny);
        r.protocol = protocol;
        r.session = session.map(crate::observe::session_tag);
        r.method = Some(view.method.clone());
        r.target = view.target.clone();
        r.upstream = view.upstream.clone();
        r.latency_us = Some(micros(latency));
        identify(&mut r, call);
        deny(&mut r, denial);
        audit.record(r);
    }

    /// Before the request goes to the session: what the record and the metrics need of
    /// `msg` (as forwarded, after the request phase). Without a policy chain the upstream
    /// is the one the pipeline resolved (`resolved_upstream`).
    pub(super) fn begin(
        &self,
        started: Instant,
        msg: &Message,
        call: Option<&Call>,
        resolved_upstream: Option<String>,
    ) -> Pending {
        let upstream = match call {
            Some(c) => c.view().upstream.clone(),
            None => resolved_upstream,
        };
        let audit = self.audit.as_ref().map(|audit| {
            let mut r = Box::new(Record::new(Event::Request));
            r.method = Some(msg.method().to_string());
            r.target = match call {
                Some(c) => c.view().target.clone(),
                None => msg.target().map(str::to_string),
            };
            if audit.record_arguments {
                r.arguments = msg.params().and_then(|p| p.get("arguments")).cloned();
            }
            r
        });
        Pending {
            started,
            method: method_label(msg.method()),
            upstream,
            audit,
        }
    }

    /// The request was answered (`response` as the client gets it, after the response
    /// phase; `denial` when that phase refused it).
    pub(super) fn finish(
        &self,
        pending: Pending,
        session: &Session,
        call: Option<&Call>,
        response: &Message,
        denial: Option<&Denial>,
        upstream_time: Duration,
    ) {
        let latency = pending.started.elapsed();
        let outcome = match denial {
            Some(_) => Outcome::Denied,
            None => outcome(response),
        };
        self.metrics.request(
            pending.method,
            pending.upstream.as_deref(),
            outcome,
            latency,
            Some(upstream_time),
        );
        let (Some(audit), Some(mut r)) = (&self.audit, pending.audit) else {
            return;
        };
        r.protocol = Some(session.version);
        r.session = Some(session.tag.to_string());
        r.upstream = pending.upstream;
        r.outcome = Some(outcome);
        r.latency_us = Some(micros(latency));
        r.upstream_us = Some(micros(upstream_time));
        if let Some(call) = call {
            identify(&mut r, call);
        }
        match denial {
            Some(d) => deny(&mut r, d),
            None => {
                r.decision = Some(Decision::Allow);
                r.allowed_by_rule();
                r.code = error_code(response);
                if audit.record_results {
                    r.result = response.result_value().cloned();
                }
            }
        }
        audit.record(*r);
    }
}

/// Who called and what the policies said, from the call.
fn identify(r: &mut Record, call: &Call) {
    let view = call.view();
    if let Some(id) = &view.identity {
        r.subject = Some(id.subject.clone());
        r.tenant = id.tenant.clone();
    }
    r.set_attributes(view.attributes.clone());
    r.plugins = call.ran.iter().map(|h| h.to_string()).collect();
}

fn deny(r: &mut Record, denial: &Denial) {
    r.decision = Some(Decision::Deny);
    r.outcome = Some(Outcome::Denied);
    r.plugin = Some(denial.plugin.to_string());
    r.code = Some(denial.code);
    // Policies' messages are for clients and logs, never secrets (the WIT contract says so).
    r.message = Some(denial.message.clone());
    if let Some(rule) = denial
        .data
        .as_ref()
        .and_then(|d| d.get("rule"))
        .and_then(Value::as_str)
    {
        r.rule = Some(rule.to_string());
    }
}

fn error_code(response: &Message) -> Option<i64> {
    response.error_value()?.get("code")?.as_i64()
}

/// How an answered request ended. An upstream timeout is the gateway's own error naming the
/// upstream (`UpstreamError::Timeout`).
fn outcome(response: &Message) -> Outcome {
    let Some(error) = response.error_value() else {
        return Outcome::Ok;
    };
    let names_upstream = error
        .get("data")
        .and_then(|d| d.get("upstream"))
        .is_some_and(Value::is_string);
    let timed_out = error
        .get("message")
        .and_then(Value::as_str)
        .is_some_and(|m| m.contains("did not answer within"));
    if names_upstream && timed_out {
        Outcome::Timeout
    } else {
        Outcome::Error
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamError;
    use serde_json::json;

    #[test]
    fn outcomes_follow_the_answer() {
        assert_eq!(outcome(&Message::result(json!(1), json!({}))), Outcome::Ok);
        let timeout = UpstreamError::Timeout {
            upstream: "slow".into(),
            after: Duration::from_secs(1),
        }
        .to_response(json!(1));
        assert_eq!(outcome(&timeout), Outcome::Timeout);
        let exited = UpstreamError::Exited {
            upstream: "gone".into(),
        }
        .to_response(json!(1));
        assert_eq!(outcome(&exited), Outcome::Error);
        assert_eq!(error_code(&exited), Some(crate::mcp::codes::INTERNAL_ERROR));
        // An upstream's own error that happens to say the words is not a gateway timeout.
        let own = Message::error(json!(1), -32000, "did not answer within budget", None);
        assert_eq!(outcome(&own), Outcome::Error);
    }
}
