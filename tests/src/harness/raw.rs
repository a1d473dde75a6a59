//! Raw HTTP access to an MCP endpoint, for transport-level tests (status codes, headers,
//! session ids, SSE framing) where an MCP SDK would hide what happened.

use std::time::Duration;

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};

/// Timeout for a whole request including its body in [`RawHttp`]'s buffered methods.
pub const RAW_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `Accept` value the Streamable HTTP spec requires on POSTs.
pub const ACCEPT_BOTH: &str = "application/json, text/event-stream";

/// A JSON-RPC request object.
pub fn jsonrpc_request(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id.into(), "method": method, "params": params })
}

/// A JSON-RPC notification object (`params` omitted when `Null`).
pub fn jsonrpc_notification(method: &str, params: Value) -> Value {
    if params.is_null() {
        json!({ "jsonrpc": "2.0", "method": method })
    } else {
        json!({ "jsonrpc": "2.0", "method": method, "params": params })
    }
}

/// An `initialize` request for `protocol_version` with empty client capabilities.
pub fn initialize_request(id: impl Into<Value>, protocol_version: &str) -> Value {
    jsonrpc_request(
        id,
        "initialize",
        json!({
            "protocolVersion": protocol_version,
            "capabilities": {},
            "clientInfo": { "name": "portcullis-tests-raw", "version": "0" }
        }),
    )
}

/// A buffered HTTP response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl RawResponse {
    /// A header's value as text (first one if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Mcp-Session-Id` header.
    pub fn session_id(&self) -> Option<&str> {
        self.header("mcp-session-id")
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// Whether the body is `text/event-stream`.
    pub fn is_sse(&self) -> bool {
        self.content_type()
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"))
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    ///
    /// If it is not JSON (the message includes status and body).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body:\n{}",
                self.status, self.body
            )
        })
    }

    /// The body's SSE events (see [`parse_sse`]).
    pub fn sse_events(&self) -> Vec<SseEvent> {
        parse_sse(&self.body)
    }

    /// The JSON-RPC messages in the body, whether it is JSON (one message or a batch) or an
    /// SSE stream (the JSON `data` of each event; events with empty data are skipped).
    ///
    /// # Panics
    ///
    /// If a JSON body or an SSE data field is not valid JSON.
    pub fn messages(&self) -> Vec<Value> {
        if self.is_sse() {
            self.sse_events()
                .iter()
                .filter(|e| !e.data.is_empty())
                .map(SseEvent::json)
                .collect()
        } else if self.body.trim().is_empty() {
            Vec::new()
        } else {
            match self.json() {
                Value::Array(batch) => batch,
                one => vec![one],
            }
        }
    }

    /// The JSON-RPC response (result or error) with the given id among [`Self::messages`].
    pub fn response(&self, id: &Value) -> Option<Value> {
        self.messages().into_iter().find(|m| {
            m.get("id") == Some(id) && (m.get("result").is_some() || m.get("error").is_some())
        })
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` field, if present.
    pub id: Option<String>,
    /// `event:` field, if present (absent means the default type `message`).
    pub event: Option<String>,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `retry:` field in milliseconds, if present and numeric.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// `data` parsed as JSON.
    ///
    /// # Panics
    ///
    /// If it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

/// Parses a complete `text/event-stream` body.
///
/// Follows the WHATWG field rules (`\r\n`, `\r` or `\n` line ends; `:` comments; one space
/// after the colon stripped; repeated `data` joined with `\n`), with two deliberate
/// differences that suit tests: an event is returned whenever its block had any field,
/// even with empty data (so priming events carrying only `id`/`retry` are visible), and
/// a final block without a terminating blank line is dropped, as a browser would.
pub fn parse_sse(body: &str) -> Vec<SseEvent> {
    let text = normalize_newlines(body);
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    // The last piece is unterminated (or empty when the body ends with a blank line).
    blocks.pop();
    blocks.into_iter().filter_map(parse_block).collect()
}

fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    let mut any = false;
    for line in block.split('\n') {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push(value);
                any = true;
            }
            "id" if !value.contains('\0') => {
                event.id = Some(value.to_owned());
                any = true;
            }
            "event" => {
                event.event = Some(value.to_owned());
                any = true;
            }
            "retry" => {
                if let Ok(ms) = value.parse() {
                    event.retry = Some(ms);
                }
                any = true;
            }
            _ => {}
        }
    }
    event.data = data.join("\n");
    any.then_some(event)
}

/// A `reqwest` client aimed at one MCP endpoint.
#[derive(Debug, Clone)]
pub struct RawHttp {
    pub http: reqwest::Client,
    pub url: String,
}

impl RawHttp {
    pub fn new(url: &str) -> Self {
        super::init_tls();
        RawHttp {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("cannot build reqwest client"),
            url: url.to_owned(),
        }
    }

    /// POSTs a JSON body. Adds `Content-Type: application/json` and
    /// `Accept: application/json, text/event-stream` unless `headers` sets them
    /// (case-insensitively); `headers` are sent as given.
    pub async fn post(&self, body: &Value, headers: &[(&str, &str)]) -> RawResponse {
        let mut all: Vec<(&str, &str)> = Vec::new();
        if !has_header(headers, "content-type") {
            all.push(("content-type", "application/json"));
        }
        if !has_header(headers, "accept") {
            all.push(("accept", ACCEPT_BOTH));
        }
        all.extend_from_slice(headers);
        self.request(Method::POST, &all, Some(body.to_string()))
            .await
    }

    /// Sends exactly the given method, headers and body (nothing added) and buffers the
    /// whole response (bounded by [`RAW_REQUEST_TIMEOUT`]).
    ///
    /// # Panics
    ///
    /// On connection errors or timeout.
    pub async fn request(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> RawResponse {
        let response = self
            .send(method.clone(), headers, body)
            .timeout(RAW_REQUEST_TIMEOUT)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {} failed: {e}", self.url));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("reading the {method} {} body failed: {e}", self.url));
        RawResponse {
            status,
            headers,
            body,
        }
    }

    /// Sends a request and returns the response unbuffered, for long-lived SSE streams
    /// (the standalone GET stream, or a POST whose events a test reads one by one).
    pub async fn open_stream(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> SseReader {
        let response = self
            .send(method.clone(), headers, body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {} failed: {e}", self.url));
        SseReader {
            status: response.status(),
            headers: response.headers().clone(),
            response,
            buf: String::new(),
            pending: Vec::new(),
            eof: false,
        }
    }

    fn send(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, &self.url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        req
    }

    /// Runs the 2025-11-25 handshake (`initialize`, then `notifications/initialized`)
    /// with `headers` on both requests, and returns the initialize response and a
    /// [`RawSession`] carrying the session id and protocol version headers.
    ///
    /// # Panics
    ///
    /// If initialize does not succeed with a result.
    pub async fn initialize(&self, headers: &[(&str, &str)]) -> (RawResponse, RawSession) {
        let init = self
            .post(&initialize_request(0, "2025-11-25"), headers)
            .await;
        assert!(
            init.status.is_success()
                && init
                    .response(&json!(0))
                    .is_some_and(|r| r.get("result").is_some()),
            "initialize failed: status {}, body:\n{}",
            init.status,
            init.body
        );
        let version = init
            .response(&json!(0))
            .and_then(|r| r["result"]["protocolVersion"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "2025-11-25".to_owned());
        let session = RawSession {
            http: self.clone(),
            session_id: init.session_id().map(str::to_owned),
            protocol_version: version,
            extra_headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let ack = session
            .post(&jsonrpc_notification(
                "notifications/initialized",
                Value::Null,
            ))
            .await;
        assert_eq!(
            ack.status,
            StatusCode::ACCEPTED,
            "notifications/initialized was not accepted: {}",
            ack.body
        );
        (init, session)
    }
}

fn has_header(headers: &[(&str, &str)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// An initialized 2025-11-25 session over raw HTTP: every request carries
/// `Mcp-Session-Id` (if the server assigned one), `MCP-Protocol-Version` and the extra
/// headers given to [`RawHttp::initialize`].
#[derive(Debug, Clone)]
pub struct RawSession {
    pub http: RawHttp,
    pub session_id: Option<String>,
    pub protocol_version: String,
    pub extra_headers: Vec<(String, String)>,
}

impl RawSession {
    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h: Vec<(&str, &str)> = vec![("mcp-protocol-version", &self.protocol_version)];
        if let Some(id) = &self.session_id {
            h.push(("mcp-session-id", id));
        }
        h.extend(
            self.extra_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        h
    }

    /// POSTs `body` within the session.
    pub async fn post(&self, body: &Value) -> RawResponse {
        self.http.post(body, &self.headers()).await
    }

    /// Sends a request and returns its result (panicking on a JSON-RPC error or no response).
    pub async fn call(&self, id: i64, method: &str, params: Value) -> Value {
        let response = self.post(&jsonrpc_request(id, method, params)).await;
        let message = response.response(&json!(id)).unwrap_or_else(|| {
            panic!(
                "no response to {method} (id {id}); status {}, body:\n{}",
                response.status, response.body
            )
        });
        match message.get("result") {
            Some(result) => result.clone(),
            None => panic!("{method} failed: {message}"),
        }
    }

    /// Opens the standalone GET SSE stream of the session.
    pub async fn get_stream(&self) -> SseReader {
        let mut h = self.headers();
        h.push(("accept", "text/event-stream"));
        self.http.open_stream(Method::GET, &h, None).await
    }

    /// DELETEs the session.
    pub async fn delete(&self) -> RawResponse {
        self.http
            .request(Method::DELETE, &self.headers(), None)
            .await
    }
}

/// An SSE response read incrementally.
#[derive(Debug)]
pub struct SseReader {
    pub status: StatusCode,
    pub headers: HeaderMap,
    response: reqwest::Response,
    buf: String,
    pending: Vec<SseEvent>,
    eof: bool,
}

impl SseReader {
    /// The next event, `None` at end of stream.
    ///
    /// # Panics
    ///
    /// If no event (and no end of stream) arrives within `timeout`, or on read errors.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        match tokio::time::timeout(timeout, self.next_inner()).await {
            Ok(event) => event,
            Err(_) => panic!("no SSE event within {timeout:?}; unparsed: {:?}", self.buf),
        }
    }

    /// Like [`Self::next_event`] but returns `Err(())` on timeout instead of panicking
    /// (for asserting that nothing arrives). The reader stays usable.
    pub async fn try_next_event(&mut self, timeout: Duration) -> Result<Option<SseEvent>, ()> {
        tokio::time::timeout(timeout, self.next_inner())
            .await
            .map_err(|_| ())
    }

    /// Waits for the next event whose data is a JSON-RPC message and returns the message.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if !event.data.is_empty() {
                return Some(event.json());
            }
        }
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            if !self.pending.is_empty() {
                return Some(self.pending.remove(0));
            }
            if self.eof {
                return None;
            }
            // Cancel-safe: `chunk()` loses nothing if dropped before it yields.
            match self.response.chunk().await {
                Ok(Some(bytes)) => {
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                    self.drain_complete_events();
                }
                Ok(None) => self.eof = true,
                Err(e) => panic!("reading SSE stream failed: {e}"),
            }
        }
    }

    fn drain_complete_events(&mut self) {
        // Keep a trailing '\r' back: it may be the first half of a "\r\n" split across chunks.
        let hold_cr = self.buf.ends_with('\r');
        let mut text = normalize_newlines(if hold_cr {
            &self.buf[..self.buf.len() - 1]
        } else {
            &self.buf
        });
        while let Some(end) = text.find("\n\n") {
            if let Some(event) = parse_block(&text[..end]) {
                self.pending.push(event);
            }
            text.drain(..end + 2);
        }
        if hold_cr {
            text.push('\r');
        }
        self.buf = text;
    }

    /// Drops the connection.
    pub fn close(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sse_events() {
        let body = ": comment\r\nid: 1\r\nretry: 500\r\n\r\nevent: message\ndata: {\"a\":1}\n\ndata:x\ndata: y\n\ndata: unterminated";
        let events = parse_sse(body);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("1".into()),
                    retry: Some(500),
                    ..Default::default()
                },
                SseEvent {
                    event: Some("message".into()),
                    data: "{\"a\":1}".into(),
                    ..Default::default()
                },
                SseEvent {
                    data: "x\ny".into(),
                    ..Default::default()
                },
            ]
        );
    }
}
