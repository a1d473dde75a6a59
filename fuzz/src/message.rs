//! Target `message`: bytes → the message model the front parses every body with
//! (`portcullis::mcp`), and its round trips.
//!
//! Properties:
//! - `Message::parse` answers `-32700` exactly when the bytes are not JSON, `-32600`
//!   otherwise, and the error answer it builds is itself a JSON-RPC response;
//! - a parsed message satisfies its kind (a request has a string or integer id and a string
//!   method, a response exactly one of `result` and `error`, params are an object);
//! - what the gateway writes (`to_bytes`) it reads back as the same message (numbers that are
//!   not integers within a few ULP: serde_json's default float parser is not exact), and
//!   `from_value(into_value)` is the identity;
//! - messages rebuilt with the constructors (request, notification, result, error) parse back
//!   to their kind, id and method;
//! - header values: `decode(encode(s)) == s` for any string (method, name, URI, or the raw
//!   input), and `decode` of any header bytes does not panic;
//! - protocol negotiation answers a revision the gateway supports.

use http::HeaderValue;
use portcullis::mcp::{IdKey, Kind, Message, ParseError, codes, headers, methods, version};
use serde_json::Value;

use crate::engine::{Features, Target};

pub struct MessageModel;

impl Target for MessageModel {
    fn dictionary(&self) -> &[&[u8]] {
        DICTIONARY
    }

    fn run(&self, input: &[u8]) -> Features {
        let mut f = Features::default();
        match Message::parse(input) {
            Err(e) => check_error(input, &e, &mut f),
            Ok(m) => check_message(&m, &mut f),
        }
        check_headers(input);
        f
    }
}

fn check_error(input: &[u8], e: &ParseError, f: &mut Features) {
    let is_json = serde_json::from_slice::<Value>(input).is_ok();
    match e {
        ParseError::Json(j) => {
            assert!(!is_json, "JSON refused as not JSON: {e}");
            assert_eq!(e.code(), codes::PARSE_ERROR);
            f.add(("not json", j.classify() as u8));
        }
        ParseError::Invalid(why) => {
            assert!(is_json, "not JSON but called an invalid request: {e}");
            assert_eq!(e.code(), codes::INVALID_REQUEST);
            f.add(("invalid", *why));
        }
    }
    let answer = Message::parse(&e.to_response().to_bytes())
        .unwrap_or_else(|e| panic!("the parse-error answer does not parse: {e}"));
    assert_eq!(answer.kind(), Kind::Response);
    assert_eq!(
        answer
            .error_value()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_i64),
        Some(e.code())
    );
}

fn check_message(m: &Message, f: &mut Features) {
    let body = m.clone().into_value();
    let fields = body.as_object().map(|o| o.len()).unwrap_or(0);
    let kind = m.kind() as u8;
    let method = KNOWN.iter().find(|k| **k == m.method()).copied();
    f.add(("message", kind, method));
    f.add(("fields", kind, fields.min(8)));
    match m.kind() {
        Kind::Request => {
            let id = m.id().expect("a request has an id");
            assert!(id.is_string() || id.is_i64() || id.is_u64(), "id {id}");
            assert!(body["method"].is_string());
        }
        Kind::Notification => {
            assert!(m.id().is_none(), "a notification has no id");
            assert!(body["method"].is_string());
        }
        Kind::Response => {
            assert!(m.id().is_some(), "a response has an id");
            assert_ne!(m.result_value().is_some(), m.error_value().is_some());
            assert_eq!(m.is_error(), m.error_value().is_some());
            f.add(("response", m.is_error()));
        }
    }
    if let Some(params) = m.params() {
        assert!(params.is_object(), "params must be an object");
        f.add(("params", kind, method, params.get("_meta").is_some()));
    }

    // What the gateway writes, it reads back as the same message.
    let again = Message::parse(&m.to_bytes())
        .unwrap_or_else(|e| panic!("a parsed message does not parse again once written: {e}"));
    assert_eq!(again.kind(), m.kind());
    assert!(same_id(again.id(), m.id()), "the id changed");
    assert_eq!(again.method(), m.method());
    assert!(
        equivalent(&again.clone().into_value(), &body),
        "written and read back, the message changed"
    );
    assert_eq!(
        Message::from_value(body.clone()).ok().as_ref(),
        Some(m),
        "from_value(into_value) is not the identity"
    );
    if m.kind() == Kind::Request
        && let (Some(a), Some(b)) = (m.id(), again.id())
    {
        // Request ids are strings or integers: their map keys survive the round trip.
        assert_eq!(IdKey::of(a), IdKey::of(b));
    }

    // The constructors build what parse accepts, of the same kind.
    let params = m.params().cloned();
    let rebuilt = match m.kind() {
        Kind::Request => Message::request(m.id().cloned().unwrap_or_default(), m.method(), params),
        Kind::Notification => Message::notification(m.method(), params),
        Kind::Response => match m.error_value() {
            Some(err) => Message::error(
                m.id().cloned().unwrap_or_default(),
                err.get("code").and_then(Value::as_i64).unwrap_or(0),
                err.get("message").and_then(Value::as_str).unwrap_or(""),
                err.get("data").cloned(),
            ),
            None => Message::result(
                m.id().cloned().unwrap_or_default(),
                m.result_value().cloned().unwrap_or_default(),
            ),
        },
    };
    let back = Message::parse(&rebuilt.to_bytes())
        .unwrap_or_else(|e| panic!("a rebuilt message does not parse: {e}"));
    assert_eq!(back.kind(), m.kind());
    assert_eq!(back.method(), m.method());
    assert!(same_id(back.id(), m.id()), "the rebuilt id changed");

    // Accessors the gateway uses never panic, and params_mut leaves an object.
    let _ = (m.param_str("name"), m.param_str("uri"), m.progress_token());
    let mut c = m.clone();
    let _ = c.params_mut();
    assert!(c.params().is_some_and(Value::is_object));
    if let Some(args) = m.params().and_then(|p| p.get("arguments")) {
        // The schema walker on arbitrary JSON, then the arguments it names.
        for (_, path) in headers::annotated_params(args) {
            let _ = headers::argument_text(Some(args), &path);
        }
    }
    let requested = m.param_str("protocolVersion");
    assert!(version::SUPPORTED.contains(&version::negotiate(requested)));

    // Header mirrors of the names the front checks round-trip.
    round_trip_header(m.method());
    for key in ["name", "uri"] {
        if let Some(s) = m.param_str(key) {
            round_trip_header(s);
        }
    }
}

/// `decode(encode(s)) == s`, and the encoded form is a valid header value.
fn round_trip_header(s: &str) {
    let encoded = headers::encode(s);
    let value = HeaderValue::from_str(&encoded)
        .unwrap_or_else(|e| panic!("encode({s:?}) = {encoded:?} is not a header value: {e}"));
    assert_eq!(
        headers::decode(&value).as_deref(),
        Some(s),
        "decode(encode({s:?})) differs (encoded {encoded:?})"
    );
}

fn check_headers(input: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(input) {
        let _ = headers::decode(&value);
    }
    let cut = &input[..input.len().min(512)];
    round_trip_header(&String::from_utf8_lossy(cut));
    if let Ok(s) = std::str::from_utf8(cut) {
        let _ = version::is_supported(s);
        assert!(version::SUPPORTED.contains(&version::negotiate(Some(s))));
    }
}

fn same_id(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => equivalent(a, b),
        (a, b) => a == b,
    }
}

/// Equal JSON, with non-integer numbers equal within a few ULP.
fn equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x == y {
                return true;
            }
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equivalent(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| equivalent(v, w)))
        }
        _ => a == b,
    }
}

/// Methods worth telling apart in the behaviour fingerprint.
const KNOWN: &[&str] = &[
    methods::INITIALIZE,
    methods::INITIALIZED,
    methods::PING,
    methods::SERVER_DISCOVER,
    methods::SUBSCRIPTIONS_LISTEN,
    methods::TOOLS_LIST,
    methods::TOOLS_CALL,
    methods::PROMPTS_LIST,
    methods::PROMPTS_GET,
    methods::RESOURCES_LIST,
    methods::RESOURCES_READ,
];

const DICTIONARY: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"null",
    b"true",
    b"false",
    b"\"jsonrpc\":\"2.0\"",
    b"\"jsonrpc\":",
    b"\"2.0\"",
    b"\"id\":",
    b"\"id\":1,",
    b"\"method\":",
    b"\"params\":",
    b"\"params\":{}",
    b"\"result\":",
    b"\"error\":",
    b"\"code\":",
    b"\"message\":",
    b"\"data\":",
    b"\"_meta\":",
    b"\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\"",
    b"\"io.modelcontextprotocol/clientCapabilities\":{}",
    b"\"io.modelcontextprotocol/clientInfo\":{\"name\":\"x\",\"version\":\"1\"}",
    b"\"progressToken\":",
    b"\"protocolVersion\":",
    b"\"name\":",
    b"\"arguments\":",
    b"\"properties\":",
    b"\"x-mcp-header\":",
    b"\"uri\":",
    b"\"requestState\":",
    b"\"inputResponses\":",
    b"\"initialize\"",
    b"\"tools/call\"",
    b"\"tools/list\"",
    b"\"resources/read\"",
    b"\"notifications/cancelled\"",
    b"\"server/discover\"",
    b"\"2025-11-25\"",
    b"\"2026-07-28\"",
    b"\\u0000",
    b"\\ud800",
    b"\\ud83d\\ude00",
    b"\\\"",
    b"=?base64?",
    b"?=",
    b"1e308",
    b"-0.0",
    b"1.7976931348623157e308",
    b"5e-324",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775808",
    b"0.1",
];
