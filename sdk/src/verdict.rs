//! What a policy decides: [`Verdict`], built from [`Changes`] or a [`Denial`].

use serde_json::Value;

use crate::bindings::portcullis::policy::types as wit;
use crate::types::{Identity, set_pair};

/// JSON-RPC error codes for denials.
///
/// The JSON-RPC reserved codes say what they mean; the two in the server range (-32000 to
/// -32099) are this SDK's convention for a policy's refusal, so clients and dashboards can tell
/// a policy's "no" from a broken request.
pub mod codes {
    /// The request is not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i32 = -32600;
    /// The params are wrong (e.g. an argument fails validation).
    pub const INVALID_PARAMS: i32 = -32602;
    /// Something went wrong inside the policy.
    pub const INTERNAL_ERROR: i32 = -32603;
    /// A policy refused the request: the caller may not do this.
    pub const DENIED: i32 = -32003;
    /// The caller is not authenticated (used by [`Verdict::deny_http`](crate::Verdict::deny_http)).
    pub const UNAUTHENTICATED: i32 = -32004;
}

/// A policy's decision about one message.
///
/// ```
/// use portcullis_sdk::prelude::*;
///
/// let pass = Verdict::allow();
/// let stop = Verdict::deny(codes::DENIED, "tool disabled by policy");
/// let tag: Verdict = Changes::new().with_attribute("checked", "true").into();
/// assert!(pass.is_allow() && stop.is_deny());
/// assert_eq!(tag.changes().and_then(|c| c.attribute("checked")), Some("true"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Let the message pass unchanged.
    Allow,
    /// Let it pass with changes.
    Modify(Changes),
    /// Stop it: the client gets the error and the message goes no further.
    Deny(Denial),
}

impl Verdict {
    /// Let the message pass unchanged.
    pub fn allow() -> Self {
        Verdict::Allow
    }

    /// Refuse with a JSON-RPC error (HTTP 200 carrying the error). See [`codes`] for codes;
    /// never put a secret in `message`: clients and logs see it.
    pub fn deny(code: i32, message: impl Into<String>) -> Self {
        Verdict::Deny(Denial::new(code, message))
    }

    /// Refuse at the HTTP level, e.g. an `authn` policy's
    /// `deny_http(401, [("WWW-Authenticate", "Bearer resource_metadata=\"…\"")])`.
    /// The JSON-RPC error is [`codes::UNAUTHENTICATED`] for 401 and [`codes::DENIED`]
    /// otherwise; use [`Denial`] to choose it.
    pub fn deny_http<K, V>(status: u16, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let (code, message) = match status {
            401 => (codes::UNAUTHENTICATED, "unauthorized"),
            403 => (codes::DENIED, "forbidden"),
            _ => (codes::DENIED, "refused"),
        };
        let denial = headers.into_iter().fold(
            Denial::new(code, message).with_http_status(status),
            |d, (k, v)| d.with_header(k, v),
        );
        Verdict::Deny(denial)
    }

    /// Let the message pass with `changes`.
    pub fn modify(changes: Changes) -> Self {
        Verdict::Modify(changes)
    }

    /// True for [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// True for [`Verdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self, Verdict::Deny(_))
    }

    /// The changes, for [`Verdict::Modify`].
    pub fn changes(&self) -> Option<&Changes> {
        match self {
            Verdict::Modify(changes) => Some(changes),
            _ => None,
        }
    }

    /// The refusal, for [`Verdict::Deny`].
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Verdict::Deny(denial) => Some(denial),
            _ => None,
        }
    }
}

impl From<Changes> for Verdict {
    fn from(changes: Changes) -> Self {
        Verdict::Modify(changes)
    }
}

impl From<Denial> for Verdict {
    fn from(denial: Denial) -> Self {
        Verdict::Deny(denial)
    }
}

/// A refusal: the JSON-RPC error the client gets and, for HTTP-level refusals, the status and
/// headers of the whole HTTP response.
///
/// ```
/// use portcullis_sdk::prelude::*;
///
/// let verdict: Verdict = Denial::new(codes::INVALID_PARAMS, "path outside the allowed folders")
///     .with_data(json!({ "argument": "path" }))
///     .into();
/// assert_eq!(verdict.denial().map(|d| d.code), Some(-32602));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// The JSON-RPC error code (see [`codes`]).
    pub code: i32,
    /// A short message. Never put secrets here: clients and logs see it.
    pub message: String,
    /// Optional structured detail.
    pub data: Option<Value>,
    /// The status of the whole HTTP response (e.g. 401); `None` means HTTP 200 carrying the
    /// JSON-RPC error.
    pub http_status: Option<u16>,
    /// Headers for that HTTP response, e.g. `WWW-Authenticate`.
    pub http_headers: Vec<(String, String)>,
}

impl Denial {
    /// A JSON-RPC error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Denial {
            code,
            message: message.into(),
            data: None,
            http_status: None,
            http_headers: Vec::new(),
        }
    }

    /// Adds structured detail to the error.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Makes it an HTTP-level refusal with this status.
    pub fn with_http_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    /// Adds a header to the HTTP response.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.http_headers.push((name.into(), value.into()));
        self
    }
}

/// What a policy changes about a message. Everything left unset stays as it was.
///
/// Params and results are kept as JSON text: [`with_params`](Changes::with_params) serializes
/// a [`Value`] once, and [`with_params_json`](Changes::with_params_json) takes text that is
/// already JSON (the host rejects text that is not).
///
/// ```
/// use portcullis_sdk::prelude::*;
///
/// let changes = Changes::new()
///     .with_params(json!({ "name": "search", "arguments": { "limit": 10 } }))
///     .with_upstream("search-eu")
///     .with_attribute("routed-by", "geo");
/// assert_eq!(changes.params().and_then(|p| p["arguments"]["limit"].as_u64()), Some(10));
/// assert_eq!(changes.upstream(), Some("search-eu"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    params: Option<String>,
    result: Option<String>,
    identity: Option<Identity>,
    upstream: Option<String>,
    target: Option<String>,
    attributes: Vec<(String, String)>,
}

impl Changes {
    /// No changes yet.
    pub fn new() -> Self {
        Changes::default()
    }

    /// New params for the request (request phase), as a JSON object.
    pub fn with_params(mut self, params: Value) -> Self {
        self.params = Some(params.to_string());
        self
    }

    /// New params as JSON text, passed through without parsing.
    pub fn with_params_json(mut self, params: impl Into<String>) -> Self {
        self.params = Some(params.into());
        self
    }

    /// A new result for the response (response phase): how `*/list` results are filtered and
    /// how redaction rewrites content.
    pub fn with_result(mut self, result: Value) -> Self {
        self.result = Some(result.to_string());
        self
    }

    /// A new result as JSON text, passed through without parsing.
    pub fn with_result_json(mut self, result: impl Into<String>) -> Self {
        self.result = Some(result.into());
        self
    }

    /// The caller's identity from now on (set by `authn`, refined by later stages).
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The upstream to send the request to (routing; request phase).
    pub fn with_upstream(mut self, upstream: impl Into<String>) -> Self {
        self.upstream = Some(upstream.into());
        self
    }

    /// The target name at that upstream: tool or prompt name, or resource URI (routing).
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// A fact for later stages and the audit trail; replaces an earlier value for `key`.
    pub fn with_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set_pair(&mut self.attributes, key.into(), value.into());
        self
    }

    /// The new params, parsed (`None` if unset or not JSON).
    pub fn params(&self) -> Option<Value> {
        self.params
            .as_deref()
            .and_then(|p| serde_json::from_str(p).ok())
    }

    /// The new params as JSON text.
    pub fn params_json(&self) -> Option<&str> {
        self.params.as_deref()
    }

    /// The new result, parsed (`None` if unset or not JSON).
    pub fn result(&self) -> Option<Value> {
        self.result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
    }

    /// The new result as JSON text.
    pub fn result_json(&self) -> Option<&str> {
        self.result.as_deref()
    }

    /// The new identity.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The new upstream.
    pub fn upstream(&self) -> Option<&str> {
        self.upstream.as_deref()
    }

    /// The new target name.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// All attributes set, in order.
    pub fn attributes(&self) -> &[(String, String)] {
        &self.attributes
    }

    /// The value set for one attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when nothing is changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

impl From<Verdict> for wit::Verdict {
    fn from(verdict: Verdict) -> Self {
        match verdict {
            Verdict::Allow => wit::Verdict::Allow,
            Verdict::Modify(c) => wit::Verdict::Modify(wit::Changes {
                params: c.params,
                result: c.result,
                identity: c.identity.map(Into::into),
                upstream: c.upstream,
                target: c.target,
                attributes: c.attributes,
            }),
            Verdict::Deny(d) => wit::Verdict::Deny(wit::Denial {
                error: wit::RpcError {
                    code: d.code,
                    message: d.message,
                    data: d.data.map(|v| v.to_string()),
                },
                http_status: d.http_status,
                http_headers: d.http_headers,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn verdicts_become_the_contract_types_field_for_field() {
        let changes = Changes::new()
            .with_params(json!({ "a": 1 }))
            .with_result_json("[]")
            .with_identity(Identity::new("alice").with_role("admin"))
            .with_upstream("u")
            .with_target("t")
            .with_attribute("k", "v1")
            .with_attribute("k", "v2");
        match wit::Verdict::from(Verdict::from(changes)) {
            wit::Verdict::Modify(c) => {
                assert_eq!(c.params.as_deref(), Some(r#"{"a":1}"#));
                assert_eq!(c.result.as_deref(), Some("[]"));
                assert_eq!(
                    c.identity.map(|i| (i.subject, i.roles)),
                    Some(("alice".into(), vec!["admin".into()]))
                );
                assert_eq!(
                    (c.upstream.as_deref(), c.target.as_deref()),
                    (Some("u"), Some("t"))
                );
                assert_eq!(
                    c.attributes,
                    [("k".to_string(), "v2".to_string())],
                    "a later value replaces"
                );
            }
            _ => panic!("not a modify"),
        }
    }

    #[test]
    fn http_denials_carry_status_headers_and_a_code() {
        let verdict = Verdict::deny_http(401, [("WWW-Authenticate", "Bearer")]);
        match wit::Verdict::from(verdict) {
            wit::Verdict::Deny(d) => {
                assert_eq!(d.http_status, Some(401));
                assert_eq!(
                    d.http_headers,
                    [("WWW-Authenticate".to_string(), "Bearer".to_string())]
                );
                assert_eq!(d.error.code, codes::UNAUTHENTICATED);
            }
            _ => panic!("not a deny"),
        }
        let data = Denial::new(codes::DENIED, "no").with_data(json!({ "why": "x" }));
        match wit::Verdict::from(Verdict::from(data)) {
            wit::Verdict::Deny(d) => assert_eq!(d.error.data.as_deref(), Some(r#"{"why":"x"}"#)),
            _ => panic!("not a deny"),
        }
    }
}
