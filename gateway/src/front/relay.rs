//! Server→client messages through the policy chain.
//!
//! Whatever an upstream sends the client besides answers passes the response-phase plugins
//! before any client sees it, so a redaction policy covers more than results:
//! - notifications: progress and log lines while a request runs, late log lines, list changes
//!   and resource updates;
//! - requests: sampling (the messages an upstream wants the client's model to read),
//!   elicitation, roots.
//!
//! About a request, they are screened in the request's task ([`handle_screened`]), in order,
//! before its answer, with the request's view (same caller, target, upstream, attributes).
//! Outside any request, by [`PolicyScreen`], the sessions' [`Screen`], with the session's
//! latest caller as the identity.
//!
//! A plugin that denies one (or fails closed) stops it: a notification is dropped (there is
//! no one to send an error to), a request is answered to the upstream with the denial's
//! error. The stop is logged with the plugin's name, never the content. Attributes plugins set
//! on a request's messages go to that request's audit record (counts add up).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::mcp::{Kind, Message};
use crate::policy::{CallView, Chain, Denial, Phase, Policies, add_attributes};
use crate::session::{Resolved, Route, Screen, Session};

/// Attributes policies set, by name.
type Attributes = std::collections::BTreeMap<String, String>;

/// Handles a request whose related messages (progress, log lines, requests to the client)
/// must pass the response phase: each goes to `tx` as the chain leaves it, in order, and all
/// before the answer. Gives the answer and the attributes the plugins set on those messages
/// (for the request's audit record: [`crate::policy::Call::merge_relayed`]).
pub(super) async fn handle_screened(
    session: &Session,
    msg: Message,
    route: Option<&Route>,
    resolved: Option<&Resolved>,
    chain: &Chain,
    call: &CallView,
    tx: &mpsc::UnboundedSender<Message>,
) -> (Message, Attributes) {
    let mut relayed = Attributes::new();
    let (related, mut from_upstream) = mpsc::unbounded_channel();
    let handling = session.handle_request(msg, related, route, resolved);
    tokio::pin!(handling);
    let response = loop {
        tokio::select! {
            biased;
            Some(m) = from_upstream.recv() => {
                if let Some(m) = screen_related(chain, session, call, m, &mut relayed).await {
                    let _ = tx.send(m);
                }
            }
            response = &mut handling => break response,
        }
    };
    // What arrived with the answer still goes first; anything later finds the channel
    // closed and takes the session's standalone stream (screened there).
    from_upstream.close();
    while let Ok(m) = from_upstream.try_recv() {
        if let Some(m) = screen_related(chain, session, call, m, &mut relayed).await {
            let _ = tx.send(m);
        }
    }
    (response, relayed)
}

/// Screens one message an upstream sent about a request, adding what the plugins set on it
/// to `relayed` (see [`add_attributes`]). `None`: it does not go out.
async fn screen_related(
    chain: &Chain,
    session: &Session,
    call: &CallView,
    msg: Message,
    relayed: &mut Attributes,
) -> Option<Message> {
    if msg.kind() == Kind::Response {
        return Some(msg);
    }
    let (method, id) = (msg.method().to_string(), msg.id().cloned());
    match chain.on_server_message(call.relayed(msg)).await {
        Ok((m, set)) => {
            add_attributes(relayed, set);
            Some(m)
        }
        Err(denial) => {
            stopped(session, &denial, &method, id).await;
            None
        }
    }
}

/// A server→client message a policy stopped: logged; a request is answered to the upstream
/// that asked with the denial's error.
async fn stopped(session: &Session, denial: &Denial, method: &str, id: Option<Value>) {
    tracing::info!(
        plugin = %denial.plugin,
        code = denial.code,
        method,
        session = %session.tag,
        "server-to-client message stopped by policy"
    );
    if let Some(id) = id {
        session.handle_response(denial.to_response(id)).await;
    }
}

/// The sessions' screen for what they send outside any request: the current chain's
/// response phase.
pub(super) struct PolicyScreen {
    pub policies: Arc<Policies>,
}

impl Screen for PolicyScreen {
    fn active(&self) -> bool {
        self.policies.chain().wants(Phase::Response)
    }

    fn message<'a>(
        &'a self,
        session: &'a Session,
        upstream: &'a str,
        msg: Message,
    ) -> BoxFuture<'a, Option<Message>> {
        Box::pin(async move {
            let chain = self.policies.chain();
            let (method, id) = (msg.method().to_string(), msg.id().cloned());
            let view = CallView::unrelated(
                msg,
                Some(session.id.to_string()),
                session.caller().map(|i| (*i).clone()),
                Some(upstream.to_string()),
            );
            // No request to account them to: attributes set here are not kept.
            match chain.on_server_message(view).await {
                Ok((m, _)) => Some(m),
                Err(denial) => {
                    stopped(session, &denial, &method, id).await;
                    None
                }
            }
        })
    }
}
