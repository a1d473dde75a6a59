//! The session-era Streamable HTTP endpoint (MCP 2025-03-26 … 2025-11-25): POST, GET and
//! DELETE. Its wire rules only: `Accept`, `Mcp-Session-Id`, the `initialize` answer's
//! header, and how an answer is rendered; every message runs through the shared
//! [`pipeline`](super::pipeline).
//!
//! A request's answer is JSON when the upstream answers without anything in between, and an
//! SSE stream (priming event first, resumable) as soon as anything related arrives first:
//! progress, a log message, a sampling or elicitation request. So plain calls pay nothing
//! for streaming, and streaming calls get it.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::mpsc;

use super::Front;
use super::era;
use super::pipeline::{self, Handled, accepts};
use super::response::{self, Body};
use crate::mcp::headers::{LAST_EVENT_ID, PROTOCOL_VERSION, SESSION_ID};
use crate::mcp::{Kind, Message, codes, methods};
use crate::session::{STANDALONE_STREAM, Session, stream::parse_event_id};

impl Front {
    /// A session-era POST: one client message.
    pub(super) async fn post(self: &Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let headers = req.headers();
        if let Err(r) = pipeline::check_post_headers(headers) {
            return r;
        }
        let session_id = headers
            .get(&SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let peer = req.extensions().get::<super::Peer>().map(|p| p.0.ip());
        let version_header = headers.contains_key(PROTOCOL_VERSION);
        let unsupported = era::unsupported(headers);
        let chain = self.policies.chain();
        let headers = pipeline::headers_for(&chain, headers, false);
        let msg = match self.read_message(req).await {
            Ok(m) => m,
            Err(r) => return r,
        };
        crate::observe::on_message(&msg, session_id.as_deref(), None);
        if let Some(v) = &unsupported {
            // Now with the request's id, as the 2026-07-28 error shape has it.
            return era::unsupported_version(v, msg.id());
        }
        if !version_header && session_id.is_none() && era::has_stateless_meta(&msg) {
            return era::mismatch(msg.id(), "the MCP-Protocol-Version header is required");
        }

        let initialize = msg.kind() == Kind::Request && msg.method() == methods::INITIALIZE;
        let session = if initialize {
            None
        } else {
            match self.session(session_id.as_deref()) {
                Ok(s) => Some(s),
                Err(r) => return r,
            }
        };
        let handled = self
            .handle_session_message(chain, msg, headers, session, session_id, peer, started)
            .await;
        match handled {
            Err(refusal) => refusal.into_response(),
            Ok(Handled::Opened(session, answer)) => {
                let mut r = response::json(StatusCode::OK, &answer);
                if let Ok(v) = HeaderValue::from_str(&session.id) {
                    r.headers_mut().insert(SESSION_ID, v);
                }
                r
            }
            Ok(Handled::Answered(answer)) => response::json(StatusCode::OK, &answer),
            Ok(Handled::Accepted) => response::empty(StatusCode::ACCEPTED),
            Ok(Handled::Request(session, rx)) => self.render(session, rx).await,
        }
    }

    fn session(&self, id: Option<&str>) -> Result<Arc<Session>, Response<Body>> {
        let Some(id) = id else {
            return Err(response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            ));
        };
        self.sessions
            .get(id)
            .ok_or_else(response::session_not_found)
    }

    /// A request's answer: JSON or, once anything related comes first, a resumable SSE
    /// stream. The policy chain's response phase ran on the final answer (in the task).
    async fn render(
        self: &Arc<Self>,
        session: Arc<Session>,
        mut rx: mpsc::UnboundedReceiver<Message>,
    ) -> Response<Body> {
        let Some(first) = rx.recv().await else {
            return response::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_ERROR,
                "request handler failed",
            );
        };
        if first.kind() == Kind::Response {
            return response::json(StatusCode::OK, &first);
        }
        let stream = session.open_stream();
        stream.prime();
        stream.push(&first);
        let frames = stream.attach(None);
        self.tasks.spawn(async move {
            while let Some(m) = rx.recv().await {
                stream.push(&m);
                if m.kind() == Kind::Response {
                    break;
                }
            }
            stream.finish();
        });
        response::sse(frames)
    }

    /// GET: the standalone stream for messages not tied to a request, or the resumption of
    /// any stream of the session with `Last-Event-ID`.
    pub(super) async fn get(&self, req: Request<Incoming>) -> Response<Body> {
        let headers = req.headers();
        if !accepts(headers, "text/event-stream") {
            return response::status_error(
                StatusCode::NOT_ACCEPTABLE,
                "Not Acceptable: Accept must list text/event-stream",
            );
        }
        let id = headers.get(&SESSION_ID).and_then(|v| v.to_str().ok());
        let session = match self.session(id) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(r) = self.check_owner(&session, headers, "session/listen").await {
            return r.into_response();
        }
        session.touch();
        let resume = headers
            .get(&LAST_EVENT_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_event_id);
        let frames = match resume {
            Some((stream, seq)) if stream != STANDALONE_STREAM => match session.stream(stream) {
                Some(s) => s.attach(Some(seq)),
                None => session.standalone.attach(None),
            },
            Some((_, seq)) => session.standalone.attach(Some(seq)),
            None => {
                session.standalone.prime();
                session.standalone.attach(None)
            }
        };
        // Other replicas' messages of this session reach this stream while it is open.
        if let Some(bus) = self.bus.as_ref() {
            bus.follow(&session, frames.gone()).await;
        }
        response::sse(frames)
    }

    pub(super) async fn delete(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(id) = req.headers().get(&SESSION_ID).and_then(|v| v.to_str().ok()) else {
            return response::status_error(
                StatusCode::BAD_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            );
        };
        let session = match self.session(Some(id)) {
            Ok(s) => s,
            Err(r) => return r,
        };
        if let Err(r) = self
            .check_owner(&session, req.headers(), "session/delete")
            .await
        {
            return r.into_response();
        }
        self.sessions.remove(id);
        tracing::info!(session = %session.tag, "session ended by the client");
        response::empty(StatusCode::OK)
    }
}
