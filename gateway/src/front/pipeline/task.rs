//! The request task: forward, the response phase, related messages, the record. It runs on
//! its own, so a client that disconnects does not cancel it (the spec says disconnection is
//! not cancellation; `notifications/cancelled` is).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc;

use super::Admitted;
use crate::front::{Front, relay};
use crate::mcp::{Message, methods};
use crate::policy::{Call, Chain, Phase};
use crate::session::{Route, Session};

/// A route policy asked for a copy of this `tools/call` to go to another upstream too
/// (attributes `shadow` and optionally `shadow-target`).
fn shadow(session: &Arc<Session>, msg: &Message, call: &Call) {
    let attributes = &call.view().attributes;
    if msg.method() == methods::TOOLS_CALL
        && let Some(upstream) = attributes.get("shadow")
    {
        session.shadow(
            msg,
            upstream,
            attributes.get("shadow-target").map(String::as_str),
        );
    }
}

impl Front {
    /// Runs a request in its own task (a client disconnecting does not cancel it). Related
    /// messages, then the answer (after the chain's response phase), arrive on the channel.
    /// The task ends by telling the audit trail and the metrics how it went.
    pub(in crate::front) fn spawn_request(
        &self,
        session: Arc<Session>,
        admitted: Admitted,
        chain: Arc<Chain>,
        started: Instant,
    ) -> mpsc::UnboundedReceiver<Message> {
        let Admitted {
            msg,
            mut call,
            resolved,
        } = admitted;
        let (tx, rx) = mpsc::unbounded_channel::<Message>();
        let recorder = self.recorder.clone();
        let span = tracing::Span::current();
        let task = async move {
            let id = msg.id().cloned().unwrap_or(Value::Null);
            // A routing policy's choice overrides the destination resolved before the chain.
            let route = call.as_ref().filter(|c| c.routed).map(|c| Route {
                upstream: c.view().upstream.clone(),
                target: c.view().upstream_target.clone(),
            });
            if let Some(call) = &call {
                shadow(&session, &msg, call);
            }
            let destination = session.named(resolved.as_ref()).map(|(u, _)| u);
            let pending = recorder.begin(started, &msg, call.as_ref(), destination);
            let asked = Instant::now();
            let (mut response, relayed) = match call.as_ref() {
                Some(call) if chain.wants(Phase::Response) => {
                    session.remember_caller(call.identity());
                    relay::handle_screened(
                        &session,
                        msg,
                        route.as_ref(),
                        resolved.as_ref(),
                        &chain,
                        call.view(),
                        &tx,
                    )
                    .await
                }
                _ => {
                    let response = session
                        .handle_request(msg, tx.clone(), route.as_ref(), resolved.as_ref())
                        .await;
                    (response, Default::default())
                }
            };
            let upstream_time = asked.elapsed();
            let mut refused = None;
            if let Some(call) = call.as_mut()
                && chain.wants(Phase::Response)
            {
                response = match chain.on_response(call, response).await {
                    Ok(r) => r,
                    Err(denial) => {
                        let answer = denial.to_response(id);
                        refused = Some(denial);
                        answer
                    }
                };
                call.merge_relayed(relayed);
            }
            crate::observe::record_response(&tracing::Span::current(), &response);
            recorder.finish(
                pending,
                &session,
                call.as_ref(),
                &response,
                refused.as_deref(),
                upstream_time,
            );
            let _ = tx.send(response);
        };
        // The request's span (export on) goes with it into its task. Boxed: the future holds
        // the whole forward path's state, and tokio would otherwise copy all of it on spawn
        // and again on completion (docs/BENCHMARKS.md, "The bare proxy").
        self.tasks
            .spawn(Box::pin(tracing::Instrument::instrument(task, span)));
        rx
    }
}
