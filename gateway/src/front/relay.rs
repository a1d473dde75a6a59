//! Server→client notifications through the policy chain.
//!
//! Whatever an upstream sends the client — progress and log lines while a request runs, late
//! log lines, list changes and resource updates — passes the response-phase plugins before
//! any client sees it, so a redaction policy covers notifications as well as results:
//! - about a request: [`screen_related`], in the request's task, in order, before the final
//!   answer (the view is the request's: same caller, target, upstream, attributes);
//! - outside any request: [`PolicyScreen`], the sessions' [`Screen`], with the session's
//!   latest caller as the identity.
//!
//! A plugin that denies a notification (or fails closed) drops it: there is no one to send an
//! error to. The drop is logged with the plugin's name, never the content.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::mcp::{Kind, Message};
use crate::policy::{CallView, Chain, Denial, Phase, Policies};
use crate::session::{Screen, Session};

/// Screens one message an upstream sent about a request: a notification passes the
/// response-phase plugins; server→client requests pass as they are. `None`: drop it.
pub(super) async fn screen_related(
    chain: &Chain,
    call: &CallView,
    msg: Message,
) -> Option<Message> {
    if msg.kind() != Kind::Notification {
        return Some(msg);
    }
    let method = msg.method().to_string();
    match chain.on_notification(call.relayed(msg)).await {
        Ok(m) => Some(m),
        Err(denial) => {
            dropped(&denial, &method, call.session.as_deref());
            None
        }
    }
}

fn dropped(denial: &Denial, method: &str, session: Option<&str>) {
    tracing::info!(
        plugin = %denial.plugin,
        code = denial.code,
        method,
        session,
        "notification dropped by policy"
    );
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

    fn notification<'a>(
        &'a self,
        session: &'a Session,
        upstream: &'a str,
        msg: Message,
    ) -> BoxFuture<'a, Option<Message>> {
        Box::pin(async move {
            let chain = self.policies.chain();
            let method = msg.method().to_string();
            let view = CallView::unrelated(
                msg,
                Some(session.id.to_string()),
                session.caller().map(|i| (*i).clone()),
                Some(upstream.to_string()),
            );
            match chain.on_notification(view).await {
                Ok(m) => Some(m),
                Err(denial) => {
                    dropped(&denial, &method, Some(&session.id));
                    None
                }
            }
        })
    }
}
