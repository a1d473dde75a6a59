//! Target `front`: raw bytes of one client connection → the gateway's real hyper service.
//!
//! The gateway runs with its default configuration, no policy plugin and one cheap upstream
//! (the demo MCP server, in this process, on loopback), so each input is fast and calls
//! really reach an upstream; its connections are served by [`Gateway::serve_connection`], the code
//! `serve` runs for every accepted socket, over an in-memory [`tokio::io::duplex`] stream.
//! Each input is written as it is (several pipelined requests, a chunked body, garbage),
//! then the client half-closes and everything the gateway answers is read until it closes
//! the connection.
//!
//! Two placeholders reach the stateful paths: `@SESSION@` becomes the id of a session-era
//! session the harness opened, `@LEGACY@` the id of an open legacy HTTP+SSE connection.
//!
//! Properties beyond "no panic, no hang": the answer is a sequence of whole HTTP/1.1
//! responses (only an event stream may end early, cut by the client's leaving); no 500;
//! every JSON body and every SSE event is a JSON-RPC message.

use std::cell::RefCell;

use portcullis::Gateway;
use portcullis::mcp::{Kind, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::engine::{Features, Target};

/// Inputs served by one gateway before it is replaced by a fresh one, so sessions that
/// inputs opened do not pile up (and behaviour does not drift with the session count).
const REBUILD_EVERY: u32 = 2_000;

/// The configuration: defaults, except an ephemeral port (never used: connections come in
/// over memory), no watcher, a one-instance plugin pool (there are no plugins), and one
/// upstream, the demo server in this process, with timeouts well under the hang limit so a
/// slow tool (`slow_count`) ends in the gateway's timeout error, not in a reported hang.
fn config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[policy]
watch = false
max-instances = 1

[upstreams.demo]
url = "http://{upstream}/mcp"
timeout = "500ms"
connect-timeout = "500ms"
"#
    )
}

const SESSION: &[u8] = b"@SESSION@";
const LEGACY: &[u8] = b"@LEGACY@";

pub struct Front {
    rt: tokio::runtime::Runtime,
    state: RefCell<Option<State>>,
}

struct State {
    gateway: Gateway,
    /// The demo upstream's server task; stopped with the state.
    upstream: tokio::task::JoinHandle<()>,
    /// A session-era session, initialized.
    session: String,
    /// A legacy HTTP+SSE connection id, its session initialized.
    legacy: String,
    served: u32,
}

impl Front {
    pub fn new() -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let state = rt.block_on(State::open())?;
        Ok(Front {
            rt,
            state: RefCell::new(Some(state)),
        })
    }
}

impl State {
    async fn open() -> anyhow::Result<State> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = tokio::spawn(async move {
            let _ = portcullis_demo_server::serve_http(listener, "/mcp").await;
        });
        let config = portcullis::config::parse(&config(addr), "fuzz.toml", &|_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let gateway = Gateway::bind(config).await?;
        let opened = exchange(&gateway, &post("/mcp", "", INITIALIZE)).await.out;
        let session = header(&opened, "mcp-session-id").ok_or_else(|| {
            anyhow::anyhow!(
                "no session from initialize: {}",
                crate::engine::show(&opened)
            )
        })?;
        let legacy = open_legacy(&gateway).await?;
        let path = format!("/message?sessionId={legacy}");
        let attached = exchange(&gateway, &post(&path, "", INITIALIZE)).await.out;
        anyhow::ensure!(
            attached.starts_with(b"HTTP/1.1 202"),
            "legacy initialize refused: {}",
            crate::engine::show(&attached)
        );
        Ok(State {
            gateway,
            upstream,
            session,
            legacy,
            served: 0,
        })
    }
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"fuzz","version":"0"}}}"#;

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A header of the first response in `out`.
fn header(out: &[u8], name: &str) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(out).ok()?;
    resp.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::to_string)
}

/// Opens a legacy SSE stream on a connection that stays open (drained in the background)
/// and returns its connection id from the `endpoint` event.
async fn open_legacy(gateway: &Gateway) -> anyhow::Result<String> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    tokio::spawn(gateway.serve_connection(server));
    client
        .write_all(b"GET /sse HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let id = loop {
        let n = client.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "legacy stream closed: {}",
            crate::engine::show(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find("sessionId=") {
            let id: String = text[at + 10..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            if id.len() == 32 {
                break id;
            }
        }
    };
    tokio::spawn(drain(client));
    Ok(id)
}

impl Drop for State {
    fn drop(&mut self) {
        self.upstream.abort();
    }
}

async fn drain(mut client: DuplexStream) {
    let mut buf = [0u8; 4096];
    while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// A request of the input, framed as hyper frames it.
#[derive(Debug, Default)]
pub struct Sent {
    /// `HEAD`: its answer has no body.
    pub head: bool,
    /// Its answer may be a stream that never ends (GET, `subscriptions/listen`): a client
    /// has what it asked for once the head arrived.
    pub long_lived: bool,
}

/// The requests a client would wait for answers to. Conservative: where the framing is in
/// doubt, counting stops (the client then leaves earlier, it never waits for an answer that
/// is not owed); a request hyper must refuse counts once (it answers 400/431 and closes).
pub fn framed(input: &[u8]) -> Vec<Sent> {
    let max_body = portcullis::config::ServerConfig::default().max_body_bytes;
    let mut sent = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        // A head that has not ended gets no answer, even a malformed one: after a partial
        // read hyper parses again only once it sees the end of the head.
        let ended = rest
            .windows(3)
            .any(|w| w == b"\n\r\n" || w.starts_with(b"\n\n"));
        if !ended {
            break;
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        let head = match req.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => break,
            Err(_) => {
                sent.push(Sent::default());
                break;
            }
        };
        let method = req.method.unwrap_or("");
        let values = |name: &str| -> Vec<&[u8]> {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        let lengths = values("content-length");
        let encodings = values("transfer-encoding");
        rest = &rest[head..];
        let body: Vec<u8> = match (lengths.as_slice(), encodings.as_slice()) {
            ([], []) => Vec::new(),
            ([n], []) => {
                let Some(n) = std::str::from_utf8(n)
                    .ok()
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    break;
                };
                if n > max_body {
                    // Answered without reading the body: a POST refused at once from the
                    // declared length (413), a GET stream, an error.
                    sent.push(Sent {
                        head: method == "HEAD",
                        long_lived: method == "GET",
                    });
                    break;
                }
                if rest.len() < n {
                    break;
                }
                let body = rest[..n].to_vec();
                rest = &rest[n..];
                body
            }
            ([], [te]) if te.eq_ignore_ascii_case(b"chunked") => match request_chunks(rest) {
                Some((used, body)) => {
                    rest = &rest[used..];
                    body
                }
                None => break,
            },
            _ => break,
        };
        let listen = Message::parse(&body)
            .is_ok_and(|m| m.method() == portcullis::mcp::methods::SUBSCRIPTIONS_LISTEN);
        let long_lived = method == "GET" || listen;
        sent.push(Sent {
            head: method == "HEAD",
            long_lived,
        });
        if long_lived {
            // What follows a stream that may never end waits for it: owed no answer yet.
            break;
        }
    }
    sent
}

/// The length of a chunked request body (last chunk and trailers included) and its data;
/// `None` unless it is whole and strictly well-formed.
fn request_chunks(body: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let eol = body[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = &body[at..at + eol];
        let size = line.split(|&b| b == b';').next()?;
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        at += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let eol = body[at..].windows(2).position(|w| w == b"\r\n")?;
                at += eol + 2;
                if eol == 0 {
                    return Some((at, data));
                }
            }
        }
        if body.len() < at + size + 2 || &body[at + size..at + size + 2] != b"\r\n" {
            return None;
        }
        data.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
}

/// Decodes a chunked response body: (data, bytes used, ended with the last chunk).
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, usize, bool) {
    let total = rest.len();
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, total, false);
        };
        let line = String::from_utf8_lossy(&rest[..eol]);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return (body, total, false);
        };
        rest = &rest[eol + 2..];
        if size == 0 {
            // No trailers from the gateway: the last chunk is followed by an empty line.
            return match rest.strip_prefix(b"\r\n") {
                Some(after) => (body, total - after.len(), true),
                None => (body, total, false),
            };
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (body, total, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// What one connection showed.
struct Exchange {
    out: Vec<u8>,
    sent: Vec<Sent>,
    /// The gateway closed the connection (rather than the client leaving once answered).
    closed_by_server: bool,
}

/// Writes `input` on a fresh connection and reads like a client: until every request it
/// sent is answered (a stream: its head), then leaves; or until the gateway closes.
/// A request that is never answered keeps this waiting: the watchdog reports the hang.
async fn exchange(gateway: &Gateway, input: &[u8]) -> Exchange {
    let sent = framed(input);
    let (client, server) = tokio::io::duplex(1 << 16);
    let conn = tokio::spawn(gateway.serve_connection(server));
    let (mut rd, mut wr) = tokio::io::split(client);
    let reading = async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if answered(&out, &sent) >= sent.len() {
                return (out, false);
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return (out, true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let writing = async {
        // The gateway may stop reading (a bad request): a broken pipe is part of the game.
        // The write side stays open: a client that half-closes is one that left.
        let _ = wr.write_all(input).await;
        std::future::pending::<()>().await
    };
    let (out, closed_by_server) = tokio::select! {
        r = reading => r,
        () = writing => unreachable!("writing never ends"),
    };
    drop((rd, wr));
    // The client left: what the gateway still does for this connection is cancelled, as
    // hyper does when a client goes away.
    conn.abort();
    let _ = conn.await;
    Exchange {
        out,
        sent,
        closed_by_server,
    }
}

/// How many requests are answered so far: whole responses, and heads of streams for
/// requests whose answer may never end.
fn answered(out: &[u8], sent: &[Sent]) -> usize {
    answers(out, sent)
        .map(|all| {
            all.iter()
                .enumerate()
                .filter(|(i, a)| {
                    a.whole
                        || a.content_type.starts_with("text/event-stream")
                            && sent.get(*i).is_some_and(|s| s.long_lived)
                })
                .count()
        })
        .unwrap_or(usize::MAX)
}

fn replace_all(input: &[u8], token: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(token) {
            out.extend_from_slice(with);
            i += token.len();
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

/// One response read back from the connection.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    /// All of it arrived.
    pub whole: bool,
    /// The answer to a HEAD request: no body to check.
    pub head: bool,
}

/// Splits what the gateway wrote into responses (interim 1xx ones left out); the last may
/// still be arriving. `Err` when it is not HTTP/1.1.
pub fn answers(out: &[u8], sent: &[Sent]) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                answers.push(Answer {
                    status: 0,
                    content_type: String::new(),
                    body: Vec::new(),
                    whole: false,
                    head: false,
                });
                break;
            }
            Err(e) => return Err(format!("not an HTTP response ({e})")),
        };
        let status = resp.code.unwrap_or(0);
        let find = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let content_type = find("content-type").unwrap_or_default();
        let length = find("content-length");
        let chunked = find("transfer-encoding").is_some_and(|t| t.contains("chunked"));
        rest = &rest[head..];
        if (100..200).contains(&status) {
            continue;
        }
        let head_only = sent.get(answers.len()).is_some_and(|s| s.head);
        let (body, whole) = if head_only || status == 204 || status == 304 {
            (Vec::new(), true)
        } else if chunked {
            let (body, used, whole) = dechunk(rest);
            rest = &rest[used..];
            (body, whole)
        } else if let Some(length) = length {
            let n: usize = length
                .trim()
                .parse()
                .map_err(|_| format!("a bad Content-Length {length:?}"))?;
            let body = rest[..n.min(rest.len())].to_vec();
            rest = &rest[body.len()..];
            let whole = body.len() == n;
            (body, whole)
        } else {
            // Delimited by the close.
            let body = rest.to_vec();
            rest = &[];
            (body, false)
        };
        answers.push(Answer {
            status,
            content_type,
            body,
            whole,
            head: head_only,
        });
    }
    Ok(answers)
}

/// The properties of one connection's answers; returns what they showed.
fn judge(ex: &Exchange) -> Features {
    let all = answers(&ex.out, &ex.sent)
        .unwrap_or_else(|why| panic!("{why}; the gateway wrote: {}", crate::engine::show(&ex.out)));
    let mut f = Features::default();
    f.add(("answers", all.len().min(4), ex.closed_by_server));
    for (i, answer) in all.iter().enumerate() {
        let stream = answer.content_type.starts_with("text/event-stream");
        // Only the client's leaving may cut an answer: one it did not wait for, or a
        // stream that may never end.
        let may_be_cut = !ex.closed_by_server
            && (i >= ex.sent.len() || stream && ex.sent.get(i).is_some_and(|s| s.long_lived));
        assert!(
            answer.whole || may_be_cut,
            "a half-written response (status {}, answer {} of {} requests); the gateway wrote: {}",
            answer.status,
            i + 1,
            ex.sent.len(),
            crate::engine::show(&ex.out)
        );
        check(answer, &mut f);
    }
    f
}

/// The properties of one answer; adds what it showed to `f`.
fn check(answer: &Answer, f: &mut Features) {
    assert_ne!(
        answer.status,
        500,
        "the gateway answered 500: {}",
        crate::engine::show(&answer.body)
    );
    let media = answer.content_type.split(';').next().unwrap_or("").trim();
    f.add(("answer", answer.status, media, answer.whole));
    if answer.head {
        return;
    }
    if answer.content_type.starts_with("application/json") && answer.whole {
        let msg = Message::parse(&answer.body).unwrap_or_else(|e| {
            panic!(
                "a JSON answer that is not JSON-RPC ({e}): {}",
                crate::engine::show(&answer.body)
            )
        });
        assert_eq!(msg.kind(), Kind::Response, "a JSON answer is a response");
        fingerprint_message(&msg, answer.status, f);
    } else if answer.content_type.starts_with("text/event-stream") {
        // Whole events only: the last one may still have been arriving.
        let text = String::from_utf8_lossy(&answer.body);
        let mut events: Vec<&str> = text.split("\n\n").collect();
        events.pop();
        for event in events {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() || event.lines().any(|l| l == "event: endpoint") {
                continue;
            }
            let data = data.join("\n");
            if data.is_empty() {
                // A priming event (an id to resume from, no message).
                continue;
            }
            let msg = Message::parse(data.as_bytes())
                .unwrap_or_else(|e| panic!("an SSE event that is not JSON-RPC ({e}): {data}"));
            fingerprint_message(&msg, answer.status, f);
        }
    }
}

fn fingerprint_message(msg: &Message, status: u16, f: &mut Features) {
    let code = msg
        .error_value()
        .and_then(|e| e.get("code"))
        .and_then(|c| c.as_i64());
    f.add(("message", status, msg.kind() as u8, code));
    // The reason class of a refusal: the start of its text, before any echoed input.
    if let Some(text) = msg
        .error_value()
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
    {
        let reason: String = text
            .chars()
            .take_while(|c| c.is_ascii_alphabetic() || *c == ' ')
            .take(24)
            .collect();
        f.add(("reason", status, reason));
    }
}

impl Target for Front {
    fn dictionary(&self) -> &[&[u8]] {
        DICTIONARY
    }

    fn fixup(&self, input: &mut Vec<u8>) {
        fix_content_length(input);
    }

    fn prepare(&self) {
        let mut slot = self.state.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.served >= REBUILD_EVERY) {
            // Drop the old gateway first: its sessions go with it.
            *slot = None;
            match self.rt.block_on(State::open()) {
                Ok(s) => *slot = Some(s),
                Err(e) => panic!("cannot start a fresh gateway: {e:#}"),
            }
        }
    }

    fn run(&self, input: &[u8]) -> Features {
        judge(&self.serve(input))
    }

    fn expect(&self, name: &str, input: &[u8]) -> Result<(), String> {
        let Some(wanted) = expected_statuses(name) else {
            return Ok(());
        };
        let ex = self.serve(input);
        let got: Vec<u16> = answers(&ex.out, &ex.sent)?
            .iter()
            .map(|a| a.status)
            .collect();
        if got == wanted {
            Ok(())
        } else {
            Err(format!(
                "statuses {got:?}, the name promises {wanted:?}; the gateway wrote: {}",
                crate::engine::show(&ex.out)
            ))
        }
    }
}

impl Front {
    /// One input on a fresh connection to the current gateway, placeholders filled in.
    fn serve(&self, input: &[u8]) -> Exchange {
        self.prepare();
        let mut slot = self.state.borrow_mut();
        let Some(state) = slot.as_mut() else {
            unreachable!("prepare sets the state")
        };
        state.served += 1;
        let input = replace_all(input, SESSION, state.session.as_bytes());
        let input = replace_all(&input, LEGACY, state.legacy.as_bytes());
        self.rt.block_on(exchange(&state.gateway, &input))
    }
}

/// `name.200-202.http` promises two responses, 200 then 202.
fn expected_statuses(path: &str) -> Option<Vec<u16>> {
    let file = std::path::Path::new(path).file_stem()?.to_str()?;
    let (_, list) = file.rsplit_once('.')?;
    list.split('-').map(|s| s.parse().ok()).collect()
}

/// Sets the first request's `Content-Length` to its body's length, when the input is one
/// request with a length-delimited body: most mutations of a body would otherwise only
/// test that a short body is refused.
fn fix_content_length(input: &mut Vec<u8>) {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let body_len = input.len() - end - 4;
    let body = &input[end + 4..];
    if body.windows(7).any(|w| w == b" HTTP/1") {
        return;
    }
    let head = String::from_utf8_lossy(&input[..end]).into_owned();
    let mut lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
    let Some(line) = lines
        .iter_mut()
        .find(|l| l.to_ascii_lowercase().starts_with("content-length:"))
    else {
        return;
    };
    *line = format!("Content-Length: {body_len}");
    let mut fixed = lines.join("\r\n").into_bytes();
    fixed.extend_from_slice(&input[end..]);
    *input = fixed;
}

const DICTIONARY: &[&[u8]] = &[
    b"POST ",
    b"GET ",
    b"DELETE ",
    b"OPTIONS ",
    b"HEAD ",
    b"PUT ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"\r\n",
    b"\r\n\r\n",
    b"/mcp",
    b"/sse",
    b"/message?sessionId=@LEGACY@",
    b"/healthz",
    b"/readyz",
    b"/.well-known/oauth-protected-resource/mcp",
    b"Host: localhost\r\n",
    b"Host: 127.0.0.1:8080\r\n",
    b"Host: [::1]\r\n",
    b"Host: evil.example\r\n",
    b"Origin: http://localhost:3000\r\n",
    b"Origin: https://evil.example\r\n",
    b"Origin: null\r\n",
    b"Accept: application/json, text/event-stream\r\n",
    b"Accept: text/event-stream\r\n",
    b"Accept: */*\r\n",
    b"Content-Type: application/json\r\n",
    b"Content-Type: application/json; charset=utf-8\r\n",
    b"Content-Type: text/plain\r\n",
    b"Content-Length: ",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"0\r\n\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Expect: 100-continue\r\n",
    b"Mcp-Session-Id: @SESSION@\r\n",
    b"Mcp-Session-Id: ",
    b"@SESSION@",
    b"@LEGACY@",
    b"MCP-Protocol-Version: 2026-07-28\r\n",
    b"MCP-Protocol-Version: 2025-11-25\r\n",
    b"MCP-Protocol-Version: 2025-06-18\r\n",
    b"MCP-Protocol-Version: 2024-11-05\r\n",
    b"Mcp-Method: tools/call\r\n",
    b"Mcp-Method: ",
    b"Mcp-Name: ",
    b"Mcp-Param-Region: ",
    b"=?base64?",
    b"?=",
    b"Last-Event-ID: ",
    b"Authorization: Bearer ",
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n",
    b"\"jsonrpc\":\"2.0\"",
    b"\"id\":",
    b"\"method\":",
    b"\"params\":",
    b"\"result\":",
    b"\"error\":",
    b"\"_meta\":",
    b"\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\"",
    b"\"io.modelcontextprotocol/clientCapabilities\":{}",
    b"\"io.modelcontextprotocol/clientInfo\":",
    b"\"progressToken\":",
    b"\"requestState\":",
    b"\"inputResponses\":",
    b"\"name\":",
    b"\"arguments\":",
    b"\"uri\":",
    b"\"cursor\":",
    b"initialize",
    b"notifications/initialized",
    b"notifications/cancelled",
    b"ping",
    b"tools/list",
    b"tools/call",
    b"prompts/get",
    b"resources/read",
    b"resources/subscribe",
    b"logging/setLevel",
    b"completion/complete",
    b"server/discover",
    b"subscriptions/listen",
];
