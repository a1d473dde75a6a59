//! The MCP message a policy is asked about, with lazy, cached access to its parts.

use std::cell::OnceCell;

use serde_json::{Map, Value};

use crate::bindings::portcullis::policy::types as wit;
use crate::types::{Identity, Phase};

/// One MCP message in flight.
///
/// Every getter asks the gateway for only what it returns, so a policy that never reads the
/// params or the result never pays for copying them into its memory. Parts a policy tends to
/// read more than once (method, target, identity, params, result, error) are fetched once and
/// cached for the rest of the evaluation; JSON parts are parsed on first use.
///
/// In a native unit test, build one with [`TestMessage`].
pub struct Message<'a> {
    source: Source<'a>,
    phase: OnceCell<Phase>,
    method: OnceCell<String>,
    target: OnceCell<Option<String>>,
    identity: OnceCell<Option<Identity>>,
    params: OnceCell<Option<Value>>,
    result: OnceCell<Option<Value>>,
    error: OnceCell<Option<Value>>,
}

enum Source<'a> {
    /// The gateway's message resource (inside a component).
    Host(&'a wit::Message),
    /// A message made up in a test.
    Test(Box<TestParts>),
}

impl<'a> Message<'a> {
    pub(crate) fn from_host(msg: &'a wit::Message) -> Self {
        Message::with_source(Source::Host(msg))
    }

    fn with_source(source: Source<'a>) -> Self {
        Message {
            source,
            phase: OnceCell::new(),
            method: OnceCell::new(),
            target: OnceCell::new(),
            identity: OnceCell::new(),
            params: OnceCell::new(),
            result: OnceCell::new(),
            error: OnceCell::new(),
        }
    }

    /// Which way the message is travelling.
    pub fn phase(&self) -> Phase {
        *self.phase.get_or_init(|| match &self.source {
            Source::Host(m) => m.phase().into(),
            Source::Test(t) => t.phase,
        })
    }

    /// True on the way in (client to upstream).
    pub fn is_request(&self) -> bool {
        self.phase() == Phase::Request
    }

    /// True on the way back (upstream to client).
    pub fn is_response(&self) -> bool {
        self.phase() == Phase::Response
    }

    /// The JSON-RPC method, e.g. `tools/call`, `tools/list`, `resources/read`.
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| match &self.source {
            Source::Host(m) => m.method(),
            Source::Test(t) => t.method.clone(),
        })
    }

    /// The tool or prompt name, or the resource URI, as the client named it (prefixed with the
    /// upstream, e.g. `github__create_issue`), when the method has one.
    pub fn target(&self) -> Option<&str> {
        self.target
            .get_or_init(|| match &self.source {
                Source::Host(m) => m.target(),
                Source::Test(t) => t.target.clone(),
            })
            .as_deref()
    }

    /// The upstream the gateway will send the request to (or that answered), when known.
    pub fn upstream(&self) -> Option<String> {
        match &self.source {
            Source::Host(m) => m.upstream(),
            Source::Test(t) => t.upstream.clone(),
        }
    }

    /// The target name at that upstream (without the prefix), when known.
    pub fn upstream_target(&self) -> Option<String> {
        match &self.source {
            Source::Host(m) => m.upstream_target(),
            Source::Test(t) => t.upstream_target.clone(),
        }
    }

    /// The client session id, when the client has a session.
    pub fn session(&self) -> Option<String> {
        match &self.source {
            Source::Host(m) => m.session(),
            Source::Test(t) => t.session.clone(),
        }
    }

    /// The caller's identity, once an `authn` policy (or the anonymous default) set one.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity
            .get_or_init(|| match &self.source {
                Source::Host(m) => m.identity().map(Into::into),
                Source::Test(t) => t.identity.clone(),
            })
            .as_ref()
    }

    /// An attribute set by an earlier policy (see [`Changes::with_attribute`](crate::Changes::with_attribute)).
    pub fn attribute(&self, key: &str) -> Option<String> {
        match &self.source {
            Source::Host(m) => m.attribute(key),
            Source::Test(t) => lookup(&t.attributes, key).map(str::to_string),
        }
    }

    /// A request header, if the operator exposed it to this policy (the sidecar's
    /// `expose-headers`; `authn` policies see `authorization` by default). Case-insensitive.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        match &self.source {
            Source::Host(m) => m.header(&name),
            Source::Test(t) => lookup(&t.headers, &name).map(str::to_string),
        }
    }

    /// The request's params, parsed on first use. `None` when the request had none.
    pub fn params(&self) -> Option<&Value> {
        self.params
            .get_or_init(|| match &self.source {
                Source::Host(m) => parse(m.params()),
                Source::Test(t) => t.params.clone(),
            })
            .as_ref()
    }

    /// The request's params as JSON text, copied but not parsed: for policies that only
    /// measure, hash or forward them.
    pub fn params_json(&self) -> Option<String> {
        match (&self.source, self.params.get()) {
            (_, Some(parsed)) => parsed.as_ref().map(Value::to_string),
            (Source::Host(m), None) => m.params(),
            (Source::Test(t), None) => t.params.as_ref().map(Value::to_string),
        }
    }

    /// The `arguments` object of a `tools/call` (`params.arguments`), parsed with the params.
    pub fn arguments(&self) -> Option<&Map<String, Value>> {
        self.params()?.get("arguments")?.as_object()
    }

    /// One argument of a `tools/call` (`params.arguments.<name>`). Cheaper than
    /// [`params`](Message::params) for one field of a large call, unless the params were
    /// already parsed, in which case it reads from them.
    pub fn argument(&self, name: &str) -> Option<Value> {
        match (&self.source, self.params.get()) {
            (_, Some(_)) => self.arguments()?.get(name).cloned(),
            (Source::Host(m), None) => parse(m.argument(name)),
            (Source::Test(t), None) => t.params.as_ref()?.get("arguments")?.get(name).cloned(),
        }
    }

    /// The response's result (response phase), parsed on first use; `None` for an error
    /// response.
    pub fn result(&self) -> Option<&Value> {
        self.result
            .get_or_init(|| match &self.source {
                Source::Host(m) => parse(m.result()),
                Source::Test(t) => t.result.clone(),
            })
            .as_ref()
    }

    /// The response's result as JSON text, copied but not parsed.
    pub fn result_json(&self) -> Option<String> {
        match (&self.source, self.result.get()) {
            (_, Some(parsed)) => parsed.as_ref().map(Value::to_string),
            (Source::Host(m), None) => m.result(),
            (Source::Test(t), None) => t.result.as_ref().map(Value::to_string),
        }
    }

    /// The response's JSON-RPC error (response phase), parsed; `None` for a result.
    pub fn error(&self) -> Option<&Value> {
        self.error
            .get_or_init(|| match &self.source {
                Source::Host(m) => parse(m.error()),
                Source::Test(t) => t.error.clone(),
            })
            .as_ref()
    }
}

/// The gateway always sends valid JSON; text that is not is treated as absent rather than
/// trusted half-way.
fn parse(json: Option<String>) -> Option<Value> {
    serde_json::from_str(&json?).ok()
}

fn lookup<'p>(pairs: &'p [(String, String)], key: &str) -> Option<&'p str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A made-up [`Message`] for native unit tests of a policy's `evaluate`.
///
/// ```
/// use portcullis_sdk::prelude::*;
///
/// let msg = TestMessage::request("tools/call")
///     .with_target("fs__read_file")
///     .with_params(json!({ "name": "read_file", "arguments": { "path": "/etc/passwd" } }))
///     .with_identity(Identity::new("alice"))
///     .build();
/// assert_eq!(msg.method(), "tools/call");
/// assert_eq!(msg.argument("path"), Some(json!("/etc/passwd")));
/// assert_eq!(msg.identity().map(|i| i.subject.as_str()), Some("alice"));
/// ```
#[derive(Debug, Clone)]
pub struct TestMessage {
    parts: TestParts,
}

#[derive(Debug, Clone)]
struct TestParts {
    phase: Phase,
    method: String,
    target: Option<String>,
    upstream: Option<String>,
    upstream_target: Option<String>,
    session: Option<String>,
    identity: Option<Identity>,
    attributes: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    params: Option<Value>,
    result: Option<Value>,
    error: Option<Value>,
}

impl TestMessage {
    /// A request (client to upstream) for `method`.
    pub fn request(method: impl Into<String>) -> Self {
        TestMessage::new(Phase::Request, method.into())
    }

    /// A response (upstream to client) to a `method` request.
    pub fn response(method: impl Into<String>) -> Self {
        TestMessage::new(Phase::Response, method.into())
    }

    fn new(phase: Phase, method: String) -> Self {
        TestMessage {
            parts: TestParts {
                phase,
                method,
                target: None,
                upstream: None,
                upstream_target: None,
                session: None,
                identity: None,
                attributes: Vec::new(),
                headers: Vec::new(),
                params: None,
                result: None,
                error: None,
            },
        }
    }

    /// Sets the target (tool or prompt name, or resource URI, as the client named it).
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.parts.target = Some(target.into());
        self
    }

    /// Sets the upstream.
    pub fn with_upstream(mut self, upstream: impl Into<String>) -> Self {
        self.parts.upstream = Some(upstream.into());
        self
    }

    /// Sets the target name at the upstream.
    pub fn with_upstream_target(mut self, target: impl Into<String>) -> Self {
        self.parts.upstream_target = Some(target.into());
        self
    }

    /// Sets the session id.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.parts.session = Some(session.into());
        self
    }

    /// Sets the caller's identity.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.parts.identity = Some(identity);
        self
    }

    /// Sets an attribute, as an earlier policy would have.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        crate::types::set_pair(&mut self.parts.attributes, key.into(), value.into());
        self
    }

    /// Sets a request header the policy may read (names are case-insensitive).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        crate::types::set_pair(&mut self.parts.headers, name, value.into());
        self
    }

    /// Sets the request's params.
    pub fn with_params(mut self, params: Value) -> Self {
        self.parts.params = Some(params);
        self
    }

    /// Sets the response's result.
    pub fn with_result(mut self, result: Value) -> Self {
        self.parts.result = Some(result);
        self
    }

    /// Sets the response's JSON-RPC error.
    pub fn with_error(mut self, error: Value) -> Self {
        self.parts.error = Some(error);
        self
    }

    /// The [`Message`] to hand to a policy's `evaluate`.
    pub fn build(self) -> Message<'static> {
        Message::with_source(Source::Test(Box::new(self.parts)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn arguments_and_headers_read_the_way_the_gateway_serves_them() {
        let msg = TestMessage::response("tools/call")
            .with_header("X-Api-Key", "k")
            .with_params(json!({ "name": "echo", "arguments": { "text": "hi" } }))
            .with_result(json!({ "content": [] }))
            .build();
        assert!(msg.is_response());
        assert_eq!(
            msg.header("x-api-key").as_deref(),
            Some("k"),
            "header names are case-insensitive"
        );
        assert_eq!(msg.argument("text"), Some(json!("hi")));
        assert_eq!(msg.argument("missing"), None);
        assert_eq!(
            msg.params_json().as_deref(),
            Some(r#"{"arguments":{"text":"hi"},"name":"echo"}"#)
        );
        assert_eq!(msg.arguments().map(|a| a.len()), Some(1));
        assert_eq!(msg.result(), Some(&json!({ "content": [] })));
        assert_eq!(msg.error(), None);
        assert_eq!(msg.identity(), None);
    }
}
