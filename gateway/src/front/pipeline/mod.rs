//! The era-neutral request pipeline: the steps every transport adapter runs a client message
//! through, in this order, so a request reads top to bottom in one direction:
//!
//! 1. **read and parse** the body once ([`body`]);
//! 2. **find or open the session** — `initialize` opens one ([`open`]), anything else names
//!    one, a stateless caller gets its internal one ([`Front::caller_session`]);
//! 3. **resolve the target once** ([`Session::resolve`]): the upstream and name the catalog
//!    gives the tool, prompt or resource. The policy chain sees it as the call's destination;
//!    a routing policy may override it; the session forwards to it without asking again;
//! 4. **screen** ([`screen`]): the policy chain's request phase (authn first, then the rest),
//!    and the record of a denial;
//! 5. **owner check**: a session is used by the caller who opened it only;
//! 6. **forward, response phase, related messages, record** in the request's own task
//!    ([`task`]).
//!
//! A step that stops the message gives a typed [`Refusal`]; each adapter (`streamable.rs`,
//! `legacy_sse.rs`, `stateless/`) renders it its own way and keeps only its wire rules.

mod body;
mod open;
mod task;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::Front;
use super::response::{self, Body};
use crate::mcp::{Kind, Message, version};
use crate::policy::{Call, Chain, Denial, Identity, Phase};
use crate::session::{Resolved, Session};
pub(super) use body::{accepts, check_post_headers, headers_for, require_json};
pub(super) use open::{capabilities, oversized_hello, server_info};

/// Why the pipeline stopped a message. Adapters turn it into their own answer; the
/// defaults are [`Refusal::into_response`].
pub(super) enum Refusal {
    /// An answer every transport gives the same way (bad input, a limit).
    Http(Response<Body>),
    /// A policy refused the message (recorded already); `id` is the request's, `None` for a
    /// notification or an answer.
    Denied(Box<Denial>, Option<Value>),
    /// The session does not exist or belongs to another caller (who must not learn which).
    SessionNotFound,
    /// `server.max-sessions` is reached.
    TooManySessions,
}

impl Refusal {
    /// The answer a transport without rules of its own gives.
    pub(super) fn into_response(self) -> Response<Body> {
        match self {
            Refusal::Http(r) => r,
            Refusal::Denied(denial, id) => response::denied(&denial, id),
            Refusal::SessionNotFound => response::session_not_found(),
            Refusal::TooManySessions => response::too_many_sessions(),
        }
    }
}

impl From<Response<Body>> for Refusal {
    fn from(r: Response<Body>) -> Self {
        Refusal::Http(r)
    }
}

/// A message the pipeline let through, on its way to the session.
pub(super) struct Admitted {
    /// The message as the request phase left it.
    pub msg: Message,
    /// The call to run the response phase on (`None`: no policy chain).
    pub call: Option<Call>,
    /// Where the catalog sends it, resolved once ([`Session::resolve`]).
    pub resolved: Option<Resolved>,
}

/// What the pipeline made of one session-era message ([`Front::handle_session_message`]).
pub(super) enum Handled {
    /// An `initialize`: the session it opened and the answer.
    Opened(Arc<Session>, Message),
    /// Answered at once, no session opened (an `initialize` refused for its size).
    Answered(Message),
    /// A notification or an answer: handled, nothing to send back.
    Accepted,
    /// A request: its related messages, then its answer, arrive here.
    Request(Arc<Session>, mpsc::UnboundedReceiver<Message>),
}

/// What became of an admitted message.
pub(super) enum Delivered {
    /// A notification or an answer: handled, nothing to send back.
    Accepted,
    /// A request: its related messages, then its answer, arrive here.
    Request(mpsc::UnboundedReceiver<Message>),
}

/// The request phase of the policy chain for one client message. Gives the message as the
/// chain left it and the call to run the response phase on; on a denial, the call as far as
/// it got (for the audit trail).
///
/// An answer to a server→client request passes the `authn` stage only, as the pseudo-message
/// `session/answer`: who sends it decides whether it may reach the session (its owner's).
///
/// `assumed`: the identity every message starts with, as if an authn stage had set it
/// (`plugin test --identity`; `serve` never has one).
async fn screen(
    chain: &Chain,
    msg: Message,
    headers: HeaderMap,
    session: Option<&Session>,
    session_id: Option<String>,
    resolved: Option<&Resolved>,
    assumed: Option<&Identity>,
) -> Result<(Message, Option<Call>), (Box<Denial>, Call)> {
    if chain.is_empty() {
        return Ok((msg, None));
    }
    if msg.kind() == Kind::Response {
        let answer = Message::notification("session/answer", None);
        let mut call = Call::new(answer, headers, session_id, None);
        if let Some(identity) = assumed {
            call.set_identity(identity.clone());
        }
        if let Err(denial) = chain.authenticate(&mut call).await {
            return Err((denial, call));
        }
        return Ok((msg, Some(call)));
    }
    let hint = session.and_then(|s| s.named(resolved));
    let mut call = Call::new(msg, headers, session_id, hint);
    if let Some(identity) = assumed {
        call.set_identity(identity.clone());
    }
    if let Err(denial) = chain.on_request(&mut call).await {
        return Err((denial, call));
    }
    let keep_request = chain.wants(Phase::Response);
    Ok((call.take_request(keep_request), Some(call)))
}

/// For requests without an MCP message (GET streams, DELETE): the authn stage runs on a
/// pseudo-message named `method`. Gives the caller's subject, if authn established one.
pub(super) async fn identify(
    chain: &Chain,
    headers: &HeaderMap,
    method: &str,
    session_id: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let mut call = Call::new(
        Message::notification(method, None),
        headers.clone(),
        session_id.map(str::to_string),
        None,
    );
    if let Err(denial) = chain.authenticate(&mut call).await {
        return Err(Refusal::Denied(denial, None));
    }
    Ok(call.identity().map(|i| i.subject.clone()))
}

impl Front {
    /// A policy's denial: recorded (audit trail, metrics), then handed to the adapter.
    pub(super) fn refused(
        &self,
        started: Instant,
        protocol: Option<&'static str>,
        session: Option<&str>,
        call: &Call,
        denial: Box<Denial>,
        id: Option<Value>,
    ) -> Refusal {
        self.recorder
            .denied(started, protocol, session, call, &denial);
        Refusal::Denied(denial, id)
    }

    /// Steps 3 to 5 for a session-era message (Streamable HTTP or legacy HTTP+SSE): resolve
    /// the target once, screen, then check that the caller owns `session` (`None`: an
    /// `initialize`, which opens one). `session_id` is what policies see as the session.
    pub(super) async fn admit(
        &self,
        chain: &Chain,
        msg: Message,
        headers: HeaderMap,
        session: Option<&Arc<Session>>,
        session_id: Option<String>,
        started: Instant,
    ) -> Result<Admitted, Refusal> {
        let id = msg.id().cloned();
        let resolved = match session {
            Some(s) if msg.kind() == Kind::Request => s.resolve(&msg).await,
            _ => None,
        };
        let screened = screen(
            chain,
            msg,
            headers,
            session.map(|s| &**s),
            session_id,
            resolved.as_ref(),
            self.assumed.as_ref(),
        )
        .await;
        let (msg, call) = match screened {
            Ok(screened) => screened,
            Err((denial, call)) => {
                let protocol = session.map(|s| s.version);
                let sid = call.view().session.as_deref();
                return Err(self.refused(started, protocol, sid, &call, denial, id));
            }
        };
        if let Some(session) = session {
            let subject = call.as_ref().and_then(|c| c.identity()).map(|i| &i.subject);
            if !session.admits(subject.map(String::as_str)) {
                tracing::warn!(session = %session.tag, "session used by a caller other than its owner; refused");
                return Err(Refusal::SessionNotFound);
            }
            // Its owner's token, now that authn accepted it, for token-exchange upstreams.
            session.subject.remember(call.as_ref().map(|c| c.view()));
        }
        Ok(Admitted {
            msg,
            call,
            resolved,
        })
    }

    /// Steps 3 to 6 for a session-era message, once the adapter found its session by its wire
    /// rules (`None`: an `initialize`, which opens one): admit, then open the session or
    /// deliver the message. What `serve`'s Streamable HTTP adapter runs for every POST, and
    /// `plugin test` for its recorded message ([`super::offline`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn handle_session_message(
        &self,
        chain: Arc<Chain>,
        msg: Message,
        headers: HeaderMap,
        session: Option<Arc<Session>>,
        session_id: Option<String>,
        peer: Option<std::net::IpAddr>,
        started: Instant,
    ) -> Result<Handled, Refusal> {
        let admitted = self
            .admit(&chain, msg, headers, session.as_ref(), session_id, started)
            .await?;
        let Some(session) = session else {
            if let Err(refused) = self.check_hello(&admitted.msg) {
                return Ok(Handled::Answered(refused));
            }
            let Admitted { msg, call, .. } = admitted;
            let caller = call.as_ref().and_then(|c| c.identity());
            let (session, answer) = self
                .open_session(msg, caller, peer, version::negotiate, true)
                .await?;
            return Ok(Handled::Opened(session, answer));
        };
        Ok(
            match self
                .deliver(session.clone(), admitted, chain, started)
                .await
            {
                Delivered::Accepted => Handled::Accepted,
                Delivered::Request(rx) => Handled::Request(session, rx),
            },
        )
    }

    /// Step 6: hands an admitted message to its session.
    pub(super) async fn deliver(
        &self,
        session: Arc<Session>,
        admitted: Admitted,
        chain: Arc<Chain>,
        started: Instant,
    ) -> Delivered {
        match admitted.msg.kind() {
            Kind::Notification => {
                session.handle_notification(admitted.msg).await;
                Delivered::Accepted
            }
            Kind::Response => {
                session.handle_response(admitted.msg).await;
                Delivered::Accepted
            }
            Kind::Request => {
                Delivered::Request(self.spawn_request(session, admitted, chain, started))
            }
        }
    }

    /// For requests without an MCP message (the GET stream, DELETE): the authn stage runs on
    /// a pseudo-message named `method`, and the caller must be the session's owner.
    pub(super) async fn check_owner(
        &self,
        session: &Session,
        headers: &HeaderMap,
        method: &str,
    ) -> Result<(), Refusal> {
        let chain = self.policies.chain();
        if chain.is_empty() {
            return Ok(());
        }
        let subject = identify(&chain, headers, method, Some(&session.id)).await?;
        if !session.admits(subject.as_deref()) {
            tracing::warn!(session = %session.tag, "session used by a caller other than its owner; refused");
            return Err(Refusal::SessionNotFound);
        }
        Ok(())
    }
}
