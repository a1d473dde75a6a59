//! The pipeline in-process, for `portcullis plugin test`: a [`Front`] whose only upstream
//! answers from a recording ([`Upstream::recorded`]), one session opened on it as an
//! `initialize` opens one, and client messages handed to the very step a session-era POST
//! takes once its body is read ([`Front::handle_session_message`]): authn and the rest of
//! the request phase, the target resolved once, the forward, the response phase of the
//! answer and of everything the upstream sends about the request, the record. What a client
//! would receive comes back as messages rather than JSON or SSE frames.
//!
//! Names are resolved as a gateway with one upstream and `namespacing.prefix =
//! "when-needed"` resolves them: lists pass with the upstream's own names, and a name
//! prefixed with the upstream's (`files__read_file`) goes to the upstream's own name
//! (`read_file`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use serde_json::{Value, json};

use super::pipeline::{Handled, Refusal};
use super::{Front, Recorder};
use crate::catalog::Names;
use crate::config::{Namespacing, PrefixMode, ServerConfig};
use crate::mcp::{Kind, Message, methods, version};
use crate::policy::{Denial, Identity, Policies};
use crate::session::stream::Frames;
use crate::session::{Session, SessionBounds, Sessions};
use crate::upstream::{InboundHandler, Upstream};

/// A gateway in-process with one session, for running recorded messages through.
pub struct Rehearsal {
    front: Arc<Front>,
    upstream: Arc<Upstream>,
    session: Arc<Session>,
    /// The session's own stream (the GET stream): what it sends outside any request.
    standalone: tokio::sync::Mutex<Frames>,
}

/// What became of one client message.
pub enum Outcome {
    /// A policy refused it: the client gets its JSON-RPC error (from authn, with the HTTP
    /// status and headers the denial names).
    Denied(Box<Denial>),
    /// The pipeline's own rules refused it, with this HTTP status.
    Refused(u16),
    /// What the client receives for it on the request's stream, in order: for a request,
    /// what the upstream sent about it and then the answer, each after the response phase;
    /// for a notification, nothing.
    Delivered(Vec<Message>),
}

impl Rehearsal {
    /// A gateway with `policies` and the one `upstream`, and a session open on it.
    /// `assumed`: the identity every message starts with, as if an authn stage had set it.
    pub async fn open(
        policies: Arc<Policies>,
        upstream: Arc<Upstream>,
        assumed: Option<Identity>,
    ) -> anyhow::Result<Self> {
        let config = ServerConfig::default();
        let names = Names::new(
            &Namespacing {
                separator: "__".into(),
                prefix: PrefixMode::WhenNeeded,
            },
            vec![upstream.name.clone()],
        );
        let sessions = Arc::new(Sessions::new(
            vec![upstream.clone()],
            Arc::new(names),
            config.list_page_size,
            SessionBounds::from_config(&config),
        ));
        let metrics = crate::metrics::Metrics::new(sessions.clone(), policies.clone(), None, None);
        let front = Front::build(
            config,
            sessions,
            policies,
            None,
            Recorder::new(metrics, None),
            assumed.clone(),
            None,
        );
        let hello = Message::request(
            json!(0),
            methods::INITIALIZE,
            Some(json!({
                "protocolVersion": version::LATEST,
                "capabilities": { "sampling": {}, "elicitation": {}, "roots": {} },
                "clientInfo": { "name": "portcullis plugin test", "version": env!("CARGO_PKG_VERSION") },
            })),
        );
        // Owned by nobody: the identity authn establishes for the message may be anyone's.
        let (session, _) = front
            .open_session(hello, None, None, version::negotiate, true)
            .await
            .map_err(|_| anyhow::anyhow!("could not open a session"))?;
        session.remember_caller(assumed.as_ref());
        let standalone = tokio::sync::Mutex::new(session.standalone.attach(None));
        Ok(Rehearsal {
            front,
            upstream,
            session,
            standalone,
        })
    }

    /// Runs one client message through the pipeline, as a POST on the open session (an
    /// `initialize` opens another, as it would).
    pub async fn send(&self, msg: Message, headers: HeaderMap) -> Outcome {
        let chain = self.front.policies.chain();
        let initialize = msg.kind() == Kind::Request && msg.method() == methods::INITIALIZE;
        let session = (!initialize).then(|| self.session.clone());
        let session_id = session.as_ref().map(|s| s.id.to_string());
        let handled = self
            .front
            .handle_session_message(
                chain,
                msg,
                headers,
                session,
                session_id,
                None,
                Instant::now(),
            )
            .await;
        match handled {
            Err(Refusal::Denied(denial, _)) => Outcome::Denied(denial),
            Err(refusal) => Outcome::Refused(refusal.into_response().status().as_u16()),
            Ok(Handled::Opened(_, answer) | Handled::Answered(answer)) => {
                Outcome::Delivered(vec![answer])
            }
            Ok(Handled::Accepted) => Outcome::Delivered(Vec::new()),
            Ok(Handled::Request(_, mut rx)) => {
                let mut got = Vec::new();
                while let Some(m) = rx.recv().await {
                    let answer = m.kind() == Kind::Response;
                    got.push(m);
                    if answer {
                        break;
                    }
                }
                Outcome::Delivered(got)
            }
        }
    }

    /// A message the upstream sends outside any request, handed to the session as the
    /// upstream's link hands one over; the session screens it and puts it on its own stream
    /// ([`Rehearsal::session_stream`]).
    pub fn from_upstream(&self, msg: Message) {
        self.session.on_message(&self.upstream, msg, None);
    }

    /// The next `n` messages on the session's own stream (the GET stream), waiting at most
    /// `patience` for each.
    pub async fn session_stream(&self, n: usize, patience: Duration) -> Vec<Message> {
        let mut frames = self.standalone.lock().await;
        let mut got = Vec::new();
        while got.len() < n {
            let frame = match tokio::time::timeout(patience, frames.recv()).await {
                Ok(Some(Ok(frame))) => frame,
                _ => break,
            };
            got.extend(event_data(&frame));
        }
        got
    }
}

/// The message in one SSE event (`id: …\ndata: {…}\n\n`); `None` for the priming event.
fn event_data(frame: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(frame).ok()?;
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))?
        .trim_start();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| Message::from_value(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_gives_its_message_and_the_priming_event_none() {
        let m = event_data(
            b"id: 0-1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n",
        );
        assert_eq!(
            m.map(|m| m.method().to_string()).as_deref(),
            Some("notifications/message")
        );
        assert!(event_data(b"id: 0-0\ndata: \n\n").is_none());
    }
}
