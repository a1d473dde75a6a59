//! The chain: plugins in order, run over one message, their verdicts applied.
//!
//! Order: stage (authn → authz → custom → routing → redaction), then priority (lower first),
//! then name. In the request phase each plugin sees the message as the previous ones left
//! it; the first denial stops the chain. The response phase runs the plugins that asked for
//! it, in the same order. A plugin that fails (trap, timeout, memory or output limit) denies
//! the message with an error naming it — unless its sidecar says `fail-open`, in which case
//! the failure is logged and the chain goes on.
//!
//! What an upstream sends the client besides answers — notifications (progress, log lines,
//! resource updates, list changes) and requests (sampling, elicitation, roots) — passes the
//! response-phase plugins too, one by one: a plugin sees the message's method and params, and
//! a `params` change rewrites it. A denial (or a failure, closed) stops it: a notification is
//! dropped, a request is answered to the upstream with the denial's error.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Value, json};

use super::bindings::types;
use super::engine::Runtime;
use super::host::MessageRes;
use super::plugin::{Failure, Plugin};
use super::trace::Trace;
use super::{Identity, Phase};
use crate::mcp::{Message, codes};

/// What plugins see of a message in flight. Shared (not copied) between the plugins of one
/// chain run; a plugin's changes produce a new version.
#[derive(Clone)]
pub struct CallView {
    pub method: String,
    /// The name or URI as the client gave it.
    pub target: Option<String>,
    pub upstream: Option<String>,
    pub upstream_target: Option<String>,
    pub session: Option<String>,
    pub identity: Option<Identity>,
    pub attributes: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub request: Arc<Message>,
    pub response: Option<Arc<Message>>,
}

impl CallView {
    /// The view a server→client message (notification or request) is screened with: the
    /// method and params are the message's, everything else (caller, session, upstream,
    /// attributes) is the request's that caused it. A resource update names its resource as
    /// the target.
    pub fn relayed(&self, notification: Message) -> CallView {
        CallView {
            method: notification.method().to_string(),
            target: notification_target(&notification).or_else(|| self.target.clone()),
            upstream: self.upstream.clone(),
            upstream_target: self.upstream_target.clone(),
            session: self.session.clone(),
            identity: self.identity.clone(),
            attributes: self.attributes.clone(),
            headers: self.headers.clone(),
            request: Arc::new(notification),
            response: None,
        }
    }

    /// The view for a server→client message no request caused (it goes to the session's
    /// standalone stream or to `subscriptions/listen`): `identity` is the session's caller.
    pub fn unrelated(
        notification: Message,
        session: Option<String>,
        identity: Option<Identity>,
        upstream: Option<String>,
    ) -> CallView {
        CallView {
            method: notification.method().to_string(),
            target: notification_target(&notification),
            upstream,
            upstream_target: None,
            session,
            identity,
            attributes: BTreeMap::new(),
            headers: HeaderMap::new(),
            request: Arc::new(notification),
            response: None,
        }
    }
}

fn notification_target(notification: &Message) -> Option<String> {
    notification.param_str("uri").map(str::to_string)
}

/// A message on its way through the chain, and what the chain decided about it.
pub struct Call {
    view: Arc<CallView>,
    /// A routing stage chose the upstream (and maybe the target name) itself.
    pub routed: bool,
    /// Hashes of the plugins that ran, for the audit trail.
    pub ran: Vec<Arc<str>>,
}

impl Call {
    /// `upstream`/`upstream_target` are where the gateway would route the message, if known.
    pub fn new(
        request: impl Into<Arc<Message>>,
        headers: HeaderMap,
        session: Option<String>,
        upstream: Option<(String, String)>,
    ) -> Self {
        let request: Arc<Message> = request.into();
        let target = match request.method() {
            "tools/call" | "prompts/get" => request.param_str("name").map(str::to_string),
            m if m.starts_with("resources/") => request.param_str("uri").map(str::to_string),
            _ => None,
        };
        let (upstream, upstream_target) = match upstream {
            Some((u, t)) => (Some(u), Some(t)),
            None => (None, None),
        };
        Call {
            view: Arc::new(CallView {
                method: request.method().to_string(),
                target,
                upstream,
                upstream_target,
                session,
                identity: None,
                attributes: BTreeMap::new(),
                headers,
                request,
                response: None,
            }),
            routed: false,
            ran: Vec::new(),
        }
    }

    pub fn view(&self) -> &CallView {
        &self.view
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.view.identity.as_ref()
    }

    /// Sets the identity as if an authn stage had (for `plugin test --identity`).
    pub fn set_identity(&mut self, identity: Identity) {
        self.edit().identity = Some(identity);
    }

    /// Where the gateway would route the message, learnt after the call was made (stateless
    /// requests find their session, hence their catalog, only once `authn` has run).
    pub fn set_destination(&mut self, upstream: Option<(String, String)>) {
        let view = self.edit();
        (view.upstream, view.upstream_target) = match upstream {
            Some((u, t)) => (Some(u), Some(t)),
            None => (None, None),
        };
    }

    /// The request as the chain left it, for forwarding. With `keep`, the call keeps it too
    /// (the response phase may read it), which costs a copy; without, it is moved out.
    pub fn take_request(&mut self, keep: bool) -> Message {
        if keep {
            return (*self.view.request).clone();
        }
        let placeholder = Arc::new(Message::notification("", None));
        let request = std::mem::replace(&mut self.edit().request, placeholder);
        Arc::unwrap_or_clone(request)
    }

    /// Takes in the attributes policies set on the server→client messages of this request
    /// (progress, log lines, questions), by [`add_attributes`].
    pub fn merge_relayed(&mut self, relayed: BTreeMap<String, String>) {
        if !relayed.is_empty() {
            add_attributes(&mut self.edit().attributes, relayed);
        }
    }

    fn edit(&mut self) -> &mut CallView {
        Arc::make_mut(&mut self.view)
    }
}

/// Adds attributes set on several messages of one request: numbers add up (`redact.email`
/// counts every redaction), anything else is kept where `into` has no value of its own.
pub fn add_attributes(into: &mut BTreeMap<String, String>, from: BTreeMap<String, String>) {
    for (k, v) in from {
        match into.get_mut(&k) {
            Some(own) => {
                if let (Ok(a), Ok(b)) = (own.parse::<i64>(), v.parse::<i64>()) {
                    *own = a.saturating_add(b).to_string();
                }
            }
            None => {
                into.insert(k, v);
            }
        }
    }
}

/// A refusal, from a plugin's verdict or from a plugin failing closed.
#[derive(Debug, Clone)]
pub struct Denial {
    pub plugin: Arc<str>,
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    /// For HTTP-level refusals (401 from authn): the status and headers of the response.
    pub http_status: Option<u16>,
    pub http_headers: Vec<(String, String)>,
}

impl Denial {
    pub fn to_response(&self, id: Value) -> Message {
        Message::error(id, self.code, &self.message, self.data.clone())
    }

    fn failed(plugin: &Plugin, failure: &Failure) -> Self {
        Denial {
            plugin: plugin.name.clone(),
            code: codes::INTERNAL_ERROR,
            message: format!("policy '{}' failed: {failure}", plugin.name),
            data: Some(json!({ "plugin": &*plugin.name })),
            http_status: None,
            http_headers: Vec::new(),
        }
    }
}

/// An ordered set of plugins, immutable once built; reloads build a new one.
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    runtime: Option<Arc<Runtime>>,
    /// What each plugin made of each message, when asked for (`plugin test`).
    trace: std::sync::OnceLock<Arc<Trace>>,
}

impl Chain {
    pub fn empty() -> Self {
        Chain {
            plugins: Vec::new(),
            runtime: None,
            trace: Default::default(),
        }
    }

    pub fn new(runtime: Arc<Runtime>, mut plugins: Vec<Arc<Plugin>>) -> Self {
        plugins.sort_by(|a, b| (a.stage, a.priority, &a.name).cmp(&(b.stage, b.priority, &b.name)));
        Chain {
            plugins,
            runtime: Some(runtime),
            trace: Default::default(),
        }
    }

    /// From now on, records what each plugin makes of each message into `trace`
    /// (`portcullis plugin test`; see `trace.rs`). Once per chain.
    pub fn keep_trace(&self, trace: Arc<Trace>) {
        let _ = self.trace.set(trace);
    }

    /// The start of a message's pass, when a trace is kept.
    fn begin(&self, phase: Phase, call: &Call) -> Option<usize> {
        Some(self.trace.get()?.begin(phase, call.view.clone()))
    }

    /// A plugin that declares `phase` but whose sidecar's `[phases]` leaves this message out:
    /// not called (no instance), and, when a trace is kept, recorded as skipped.
    fn skipped(&self, pass: Option<usize>, plugin: &Plugin, phase: Phase) {
        if let (Some(trace), Some(pass)) = (self.trace.get(), pass)
            && plugin.declares(phase)
        {
            trace.skipped(pass, &plugin.name);
        }
    }

    fn end(&self, pass: Option<usize>, call: &Call, passed: bool) {
        if let (Some(trace), Some(pass)) = (self.trace.get(), pass) {
            trace.end(pass, passed.then(|| call.view.clone()), call.routed);
        }
    }

    /// One plugin over `call`: evaluated, its verdict applied as `run` says (and, when a
    /// trace is kept, recorded).
    async fn evaluate(
        &self,
        rt: &Arc<Runtime>,
        plugin: &Arc<Plugin>,
        call: &mut Call,
        run: Run,
        pass: Option<usize>,
    ) -> Result<(), Box<Denial>> {
        let msg = MessageRes {
            phase: match run {
                Run::Request => types::Phase::Request,
                Run::Response | Run::ServerMessage => types::Phase::Response,
            },
            call: call.view.clone(),
        };
        let before = pass.map(|_| call.view.clone());
        let (outcome, failed) = match plugin.evaluate(rt, msg).await {
            Ok(verdict) => (apply(plugin, call, verdict, run), None),
            Err(failure) => (fail(plugin, &failure), Some(failure.to_string())),
        };
        if let (Some(trace), Some(pass), Some(before)) = (self.trace.get(), pass, before) {
            trace.step(pass, &plugin.name, &before, &call.view, &outcome, failed);
        }
        if outcome.is_err() {
            self.end(pass, call, false);
        }
        outcome
    }

    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    pub fn wants(&self, phase: Phase) -> bool {
        self.plugins.iter().any(|p| p.handles(phase))
    }

    /// Runs the request phase. On success the call carries the (possibly changed) request,
    /// identity, route and attributes.
    pub async fn on_request(&self, call: &mut Call) -> Result<(), Box<Denial>> {
        self.request_phase(call, |_| true).await
    }

    /// Runs only the `authn` stage: for requests that carry no MCP message (the GET stream,
    /// DELETE) but must still come from the session's owner, and for stateless requests
    /// whose session depends on who is calling.
    pub async fn authenticate(&self, call: &mut Call) -> Result<(), Box<Denial>> {
        self.request_phase(call, |stage| stage == super::Stage::Authn)
            .await
    }

    /// Runs the request phase's stages after `authn` (the rest of [`Chain::on_request`]).
    pub async fn after_authn(&self, call: &mut Call) -> Result<(), Box<Denial>> {
        self.request_phase(call, |stage| stage != super::Stage::Authn)
            .await
    }

    async fn request_phase(
        &self,
        call: &mut Call,
        stages: impl Fn(super::Stage) -> bool,
    ) -> Result<(), Box<Denial>> {
        let Some(rt) = &self.runtime else {
            return Ok(());
        };
        let pass = self.begin(Phase::Request, call);
        for plugin in self.plugins.iter().filter(|p| stages(p.stage)) {
            if !plugin.calls(Phase::Request, &call.view.method) {
                self.skipped(pass, plugin, Phase::Request);
                continue;
            }
            call.ran.push(plugin.sha256.as_str().into());
            self.evaluate(rt, plugin, call, Run::Request, pass).await?;
        }
        self.end(pass, call, true);
        Ok(())
    }

    /// Runs the response phase over the upstream's answer and returns it as changed.
    pub async fn on_response(
        &self,
        call: &mut Call,
        response: Message,
    ) -> Result<Message, Box<Denial>> {
        let Some(rt) = &self.runtime else {
            return Ok(response);
        };
        if !self.wants(Phase::Response) {
            return Ok(response);
        }
        call.edit().response = Some(Arc::new(response));
        let pass = self.begin(Phase::Response, call);
        for plugin in &self.plugins {
            if !plugin.calls(Phase::Response, &call.view.method) {
                self.skipped(pass, plugin, Phase::Response);
                continue;
            }
            call.ran.push(plugin.sha256.as_str().into());
            self.evaluate(rt, plugin, call, Run::Response, pass).await?;
        }
        self.end(pass, call, true);
        let response = call.edit().response.take().map(Arc::unwrap_or_clone);
        Ok(response.unwrap_or_else(|| {
            Message::error(Value::Null, codes::INTERNAL_ERROR, "response lost", None)
        }))
    }
}

impl Chain {
    /// Runs the response-phase plugins over a server→client notification or request (see
    /// [`CallView::relayed`] and [`CallView::unrelated`]) and gives it back as they left it,
    /// with the attributes they set on it. `Err`: a plugin denied it, or failed closed.
    pub async fn on_server_message(
        &self,
        view: CallView,
    ) -> Result<(Message, BTreeMap<String, String>), Box<Denial>> {
        let before = view.attributes.clone();
        let mut call = Call {
            view: Arc::new(view),
            routed: false,
            ran: Vec::new(),
        };
        if let Some(rt) = &self.runtime {
            let pass = self.begin(Phase::Response, &call);
            for plugin in &self.plugins {
                if !plugin.calls(Phase::Response, &call.view.method) {
                    self.skipped(pass, plugin, Phase::Response);
                    continue;
                }
                self.evaluate(rt, plugin, &mut call, Run::ServerMessage, pass)
                    .await?;
            }
            self.end(pass, &call, true);
        }
        let mut set = call.edit().attributes.clone();
        set.retain(|k, v| before.get(k) != Some(v));
        Ok((call.take_request(false), set))
    }
}

/// What a verdict is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Request,
    Response,
    /// A server→client notification or request: `params` changes rewrite it.
    ServerMessage,
}

fn fail(plugin: &Plugin, failure: &Failure) -> Result<(), Box<Denial>> {
    if plugin.fail_open {
        tracing::warn!(plugin = %plugin.name, error = %failure, "policy failed; passing (fail-open)");
        return Ok(());
    }
    tracing::warn!(plugin = %plugin.name, error = %failure, "policy failed; denying (fail-closed)");
    Err(Box::new(Denial::failed(plugin, failure)))
}

fn parse_json(plugin: &Plugin, what: &str, text: &str) -> Result<Value, Box<Denial>> {
    serde_json::from_str(text).map_err(|e| {
        Box::new(Denial::failed(
            plugin,
            &Failure::BadVerdict(format!("{what} is not JSON: {e}")),
        ))
    })
}

fn apply(
    plugin: &Plugin,
    call: &mut Call,
    verdict: types::Verdict,
    run: Run,
) -> Result<(), Box<Denial>> {
    match verdict {
        types::Verdict::Allow => Ok(()),
        types::Verdict::Deny(d) => {
            let data = match d.error.data {
                Some(text) => Some(parse_json(plugin, "deny data", &text)?),
                None => None,
            };
            tracing::info!(plugin = %plugin.name, method = %crate::observe::clip(&call.view.method), target = ?call.view.target.as_deref().map(crate::observe::clip), code = d.error.code, "denied by policy");
            Err(Box::new(Denial {
                plugin: plugin.name.clone(),
                code: i64::from(d.error.code),
                message: d.error.message,
                data,
                http_status: d.http_status,
                http_headers: d.http_headers,
            }))
        }
        types::Verdict::Modify(c) => {
            if let Some(params) = c.params {
                match (run, parse_json(plugin, "params", &params)?) {
                    (Run::Request | Run::ServerMessage, p @ Value::Object(_)) => {
                        let view = call.edit();
                        let mut request = (*view.request).clone();
                        request.set_params(p);
                        view.request = Arc::new(request);
                    }
                    (Run::Request | Run::ServerMessage, _) => {
                        return Err(Box::new(Denial::failed(
                            plugin,
                            &Failure::BadVerdict("params must be a JSON object".into()),
                        )));
                    }
                    (Run::Response, _) => {
                        tracing::debug!(plugin = %plugin.name, "params changes ignored in the response phase")
                    }
                }
            }
            if let Some(result) = c.result {
                let result = parse_json(plugin, "result", &result)?;
                match (run, call.edit().response.as_mut()) {
                    (Run::Response, Some(resp)) => Arc::make_mut(resp).set_result(result),
                    _ => {
                        tracing::debug!(plugin = %plugin.name, "result changes ignored outside the response phase")
                    }
                }
            }
            // Who is calling and where the request went are settled by the time an upstream
            // sends anything of its own.
            if run != Run::ServerMessage {
                let view = call.edit();
                if let Some(identity) = c.identity {
                    view.identity = Some(Identity::from_wit(identity));
                }
                if c.upstream.is_some() || c.target.is_some() {
                    if let Some(u) = c.upstream {
                        view.upstream = Some(u);
                    }
                    if let Some(t) = c.target {
                        view.upstream_target = Some(t);
                    }
                    call.routed = true;
                }
            }
            let view = call.edit();
            for (k, v) in c.attributes {
                view.attributes.insert(k, v);
            }
            Ok(())
        }
    }
}
