//! What each plugin made of each message: a record a [`Chain`](super::Chain) keeps only when
//! asked to ([`Chain::keep_trace`](super::Chain::keep_trace)), for `portcullis plugin test`.
//! The server never asks; then each plugin's evaluation costs one check of an empty cell.
//!
//! A verdict is recorded as what it did, not as what the plugin said: a `modify` that
//! changed nothing is an allow, and a modify names the parts it changed.

use std::sync::{Arc, Mutex, MutexGuard};

use super::Phase;
use super::chain::{CallView, Denial};

/// What one plugin did to one message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Let it through unchanged.
    Allow,
    /// Changed these parts of it: `params`, `result`, `identity`, `route`, `attributes`.
    Modify(Vec<&'static str>),
    /// Stopped it (its own verdict, or a failure, closed).
    Deny(Box<Denial>),
    /// Failed, and its sidecar says `fail-open`: the chain went on.
    FailedOpen(String),
    /// Not called: it declares the phase, but its sidecar's `[phases]` leaves this method
    /// out (no instance was made).
    Skipped,
}

/// One plugin's step over one message.
#[derive(Debug, Clone)]
pub struct Step {
    pub plugin: Arc<str>,
    pub verdict: Verdict,
}

/// One message through the chain.
#[derive(Clone)]
pub struct Pass {
    pub phase: Phase,
    /// The message as it came to the first plugin: for the response phase, the request's
    /// view with `response` set (an answer) or a server message as `request`.
    pub start: Arc<CallView>,
    pub steps: Vec<Step>,
    /// As the chain left it; `None` while running, or when a plugin stopped it.
    pub end: Option<Arc<CallView>>,
    /// A routing stage chose the destination (request phase).
    pub routed: bool,
    /// The chain is done with it.
    pub done: bool,
}

impl Pass {
    /// Whether this is an upstream's answer (as opposed to a client's message or a message
    /// an upstream sends the client).
    pub fn is_answer(&self) -> bool {
        self.start.response.is_some()
    }

    /// Whether any plugin was called for this message (a skipped one was not).
    pub fn seen(&self) -> bool {
        self.steps
            .iter()
            .any(|s| !matches!(s.verdict, Verdict::Skipped))
    }
}

/// The passes of every message through one chain, in the order they started.
#[derive(Default)]
pub struct Trace {
    passes: Mutex<Vec<Pass>>,
}

impl Trace {
    fn lock(&self) -> MutexGuard<'_, Vec<Pass>> {
        self.passes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pass so far.
    pub fn passes(&self) -> Vec<Pass> {
        self.lock().clone()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub(super) fn begin(&self, phase: Phase, start: Arc<CallView>) -> usize {
        let mut passes = self.lock();
        passes.push(Pass {
            phase,
            start,
            steps: Vec::new(),
            end: None,
            routed: false,
            done: false,
        });
        passes.len() - 1
    }

    /// Records what `plugin` did: `before` and `after` are the message's view around its
    /// evaluation; `failed` says it failed (and how).
    pub(super) fn step(
        &self,
        pass: usize,
        plugin: &Arc<str>,
        before: &Arc<CallView>,
        after: &Arc<CallView>,
        outcome: &Result<(), Box<Denial>>,
        failed: Option<String>,
    ) {
        let verdict = match (outcome, failed) {
            (Err(denial), _) => Verdict::Deny(denial.clone()),
            (Ok(()), Some(failure)) => Verdict::FailedOpen(failure),
            (Ok(()), None) => match changes(before, after) {
                changed if changed.is_empty() => Verdict::Allow,
                changed => Verdict::Modify(changed),
            },
        };
        if let Some(p) = self.lock().get_mut(pass) {
            p.steps.push(Step {
                plugin: plugin.clone(),
                verdict,
            });
        }
    }

    /// Records that `plugin` was not called for this message (see [`Verdict::Skipped`]).
    pub(super) fn skipped(&self, pass: usize, plugin: &Arc<str>) {
        if let Some(p) = self.lock().get_mut(pass) {
            p.steps.push(Step {
                plugin: plugin.clone(),
                verdict: Verdict::Skipped,
            });
        }
    }

    pub(super) fn end(&self, pass: usize, end: Option<Arc<CallView>>, routed: bool) {
        if let Some(p) = self.lock().get_mut(pass) {
            p.end = end;
            p.routed = routed;
            p.done = true;
        }
    }
}

/// The parts of a message's view that differ.
fn changes(before: &Arc<CallView>, after: &Arc<CallView>) -> Vec<&'static str> {
    if Arc::ptr_eq(before, after) {
        return Vec::new();
    }
    let mut changed = Vec::new();
    if before.request != after.request {
        changed.push("params");
    }
    if before.response != after.response {
        changed.push("result");
    }
    if before.identity != after.identity {
        changed.push("identity");
    }
    if (&before.upstream, &before.upstream_target) != (&after.upstream, &after.upstream_target) {
        changed.push("route");
    }
    if before.attributes != after.attributes {
        changed.push("attributes");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::Message;
    use serde_json::json;

    fn view() -> CallView {
        let call = Message::request(json!(1), "tools/call", Some(json!({ "name": "a" })));
        super::super::Call::new(call, Default::default(), None, None)
            .view()
            .clone()
    }

    #[test]
    fn a_modify_that_changed_nothing_is_an_allow_and_a_change_is_named() {
        let trace = Trace::default();
        let before = Arc::new(view());
        let pass = trace.begin(Phase::Request, before.clone());
        let plugin: Arc<str> = "p".into();
        // A copy with nothing changed (what a `modify` with the same params leaves).
        let same = Arc::new((*before).clone());
        trace.step(pass, &plugin, &before, &same, &Ok(()), None);
        let mut changed = (*before).clone();
        changed.attributes.insert("k".into(), "v".into());
        let mut request = (*changed.request).clone();
        request.set_params(json!({ "name": "b" }));
        changed.request = Arc::new(request);
        trace.step(pass, &plugin, &before, &Arc::new(changed), &Ok(()), None);
        trace.step(
            pass,
            &plugin,
            &before,
            &before,
            &Ok(()),
            Some("trap".into()),
        );
        trace.end(pass, None, false);
        let steps = &trace.passes()[0].steps;
        assert!(matches!(steps[0].verdict, Verdict::Allow));
        assert!(matches!(&steps[1].verdict, Verdict::Modify(w) if *w == ["params", "attributes"]));
        assert!(matches!(steps[2].verdict, Verdict::FailedOpen(_)));
        assert!(trace.passes()[0].done);
    }
}
