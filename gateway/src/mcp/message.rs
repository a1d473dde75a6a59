use serde_json::{Map, Value, json};

use super::codes;

/// A JSON-RPC request id: a string or a number, kept as the client sent it.
pub type Id = Value;

/// An id in a form usable as a map key (its compact JSON text, so `1` and `"1"` differ).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdKey(String);

impl IdKey {
    pub fn of(id: &Id) -> Self {
        IdKey(id.to_string())
    }
}

/// What kind of JSON-RPC message a [`Message`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message. The full object is kept so unknown fields survive forwarding.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    kind: Kind,
    body: Map<String, Value>,
}

/// Why a body is not a JSON-RPC message; maps onto the codes in the bad-input table.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("parse error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

impl ParseError {
    pub fn code(&self) -> i64 {
        match self {
            ParseError::Json(_) => codes::PARSE_ERROR,
            ParseError::Invalid(_) => codes::INVALID_REQUEST,
        }
    }

    /// The JSON-RPC error response (without id) a client gets for this body.
    pub fn to_response(&self) -> Message {
        Message::error(Value::Null, self.code(), &self.to_string(), None)
    }
}

impl Message {
    /// Parses and classifies one message from bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let value: Value = serde_json::from_slice(bytes)?;
        Self::from_value(value)
    }

    /// Classifies an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, ParseError> {
        let Value::Object(body) = value else {
            return Err(ParseError::Invalid(if value.is_array() {
                "batches are not supported; send one message per request"
            } else {
                "a JSON-RPC message must be an object"
            }));
        };
        if body.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(ParseError::Invalid("\"jsonrpc\" must be \"2.0\""));
        }
        let id_ok = |id: &Value| id.is_string() || id.is_i64() || id.is_u64();
        let kind = match (body.get("method"), body.get("id")) {
            (Some(Value::String(_)), None) => Kind::Notification,
            (Some(Value::String(_)), Some(id)) if id_ok(id) => Kind::Request,
            (Some(Value::String(_)), Some(_)) => {
                return Err(ParseError::Invalid(
                    "request id must be a string or an integer",
                ));
            }
            (Some(_), _) => return Err(ParseError::Invalid("\"method\" must be a string")),
            (None, Some(_)) => match (body.contains_key("result"), body.contains_key("error")) {
                (true, false) | (false, true) => Kind::Response,
                _ => {
                    return Err(ParseError::Invalid(
                        "a response needs exactly one of \"result\" and \"error\"",
                    ));
                }
            },
            (None, None) => return Err(ParseError::Invalid("missing \"method\" or \"id\"")),
        };
        // MCP params are always objects (JSON-RPC's positional arrays are not used).
        if let Some(params) = body.get("params")
            && !params.is_object()
        {
            return Err(ParseError::Invalid("\"params\" must be an object"));
        }
        Ok(Message { kind, body })
    }

    pub fn request(id: Id, method: &str, params: Option<Value>) -> Self {
        let mut body = Map::new();
        body.insert("jsonrpc".into(), "2.0".into());
        body.insert("id".into(), id);
        body.insert("method".into(), method.into());
        if let Some(p) = params {
            body.insert("params".into(), p);
        }
        Message {
            kind: Kind::Request,
            body,
        }
    }

    pub fn notification(method: &str, params: Option<Value>) -> Self {
        let mut body = Map::new();
        body.insert("jsonrpc".into(), "2.0".into());
        body.insert("method".into(), method.into());
        if let Some(p) = params {
            body.insert("params".into(), p);
        }
        Message {
            kind: Kind::Notification,
            body,
        }
    }

    pub fn result(id: Id, result: Value) -> Self {
        let mut body = Map::new();
        body.insert("jsonrpc".into(), "2.0".into());
        body.insert("id".into(), id);
        body.insert("result".into(), result);
        Message {
            kind: Kind::Response,
            body,
        }
    }

    pub fn error(id: Id, code: i64, message: &str, data: Option<Value>) -> Self {
        let mut error = json!({ "code": code, "message": message });
        if let Some(d) = data {
            error["data"] = d;
        }
        let mut body = Map::new();
        body.insert("jsonrpc".into(), "2.0".into());
        body.insert("id".into(), id);
        body.insert("error".into(), error);
        Message {
            kind: Kind::Response,
            body,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn id(&self) -> Option<&Id> {
        self.body.get("id")
    }

    pub fn set_id(&mut self, id: Id) {
        self.body.insert("id".into(), id);
    }

    pub fn method(&self) -> &str {
        self.body
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn params(&self) -> Option<&Value> {
        self.body.get("params")
    }

    /// The params object, created empty if the message had none.
    pub fn params_mut(&mut self) -> &mut Map<String, Value> {
        let params = self
            .body
            .entry("params")
            .or_insert_with(|| Value::Object(Map::new()));
        if !params.is_object() {
            *params = Value::Object(Map::new());
        }
        match params {
            Value::Object(map) => map,
            _ => unreachable!("params was just made an object"),
        }
    }

    pub fn set_params(&mut self, params: Value) {
        self.body.insert("params".into(), params);
    }

    /// Replaces the result of a response (an error response becomes a result).
    pub fn set_result(&mut self, result: Value) {
        self.body.remove("error");
        self.body.insert("result".into(), result);
    }

    /// A string field of the params, e.g. `name` or `uri`.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.params()?.get(key)?.as_str()
    }

    /// What a request is about, as the audit trail names it: the tool or prompt name of a
    /// `tools/call` or `prompts/get`, the URI of a `resources/*` request.
    pub fn target(&self) -> Option<&str> {
        match self.method() {
            super::methods::TOOLS_CALL | super::methods::PROMPTS_GET => self.param_str("name"),
            m if m.starts_with(super::methods::RESOURCES_PREFIX) => self.param_str("uri"),
            _ => None,
        }
    }

    pub fn result_value(&self) -> Option<&Value> {
        self.body.get("result")
    }

    pub fn result_mut(&mut self) -> Option<&mut Value> {
        self.body.get_mut("result")
    }

    pub fn error_value(&self) -> Option<&Value> {
        self.body.get("error")
    }

    pub fn error_mut(&mut self) -> Option<&mut Value> {
        self.body.get_mut("error")
    }

    pub fn is_error(&self) -> bool {
        self.body.contains_key("error")
    }

    /// `params._meta.progressToken`, if the sender asked for progress.
    pub fn progress_token(&self) -> Option<&Value> {
        self.params()?.get("_meta")?.get("progressToken")
    }

    /// Takes the result out of a response (leaving `null`).
    pub fn take_result(&mut self) -> Option<Value> {
        self.body.get_mut("result").map(Value::take)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising a map of JSON values cannot fail.
        serde_json::to_vec(&self.body).unwrap_or_default()
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_keeps_unknown_fields() {
        let m = Message::parse(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","_meta":{"k":1}},"ext":true}"#,
        )
        .unwrap();
        assert_eq!(m.kind(), Kind::Request);
        assert_eq!(m.method(), "tools/call");
        let back: Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back["ext"], true);
        assert_eq!(back["params"]["_meta"]["k"], 1);
    }

    #[test]
    fn rejects_what_is_not_json_rpc() {
        assert_eq!(Message::parse(b"{").unwrap_err().code(), codes::PARSE_ERROR);
        for bad in [
            &br#"[]"#[..],
            br#"{"id":1,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","method":"x","params":3}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[]}"#,
        ] {
            assert_eq!(
                Message::parse(bad).unwrap_err().code(),
                codes::INVALID_REQUEST
            );
        }
    }

    #[test]
    fn id_keys_distinguish_numbers_from_strings() {
        assert_ne!(IdKey::of(&json!(1)), IdKey::of(&json!("1")));
    }
}
