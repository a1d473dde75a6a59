//! `input_required`: parking a call whose upstream asked the client something, and resuming
//! it when the client retries with `inputResponses`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::Shape;
use super::answer::cancel;
use crate::front::Front;
use crate::front::response::{self, Body};
use crate::mcp::{Message, codes};
use crate::session::Session;

/// How long a parked call waits for the client's retry before it is abandoned (the
/// upstream's pending requests then get an error).
const PARK_TTL: Duration = Duration::from_secs(300);

/// Calls waiting for a client's `inputResponses`, by `requestState`.
#[derive(Default)]
pub(crate) struct Parked {
    pub(super) calls: DashMap<String, ParkedCall>,
    pub(super) next_id: AtomicU64,
}

/// An upstream call that asked the client something.
pub(super) struct ParkedCall {
    caller: String,
    method: String,
    target: Option<String>,
    session: Arc<Session>,
    internal_id: Value,
    /// The rest of the call: related messages, then the final response.
    rx: mpsc::UnboundedReceiver<Message>,
    /// The upstream's requests still unanswered: `(input key, gateway id, request)`.
    pending: Vec<(String, Value, Value)>,
    wants_logs: bool,
    expires: Instant,
}

impl Front {
    /// Parks the rest of a call and returns the `input_required` result for the client.
    pub(super) fn park(
        &self,
        session: Arc<Session>,
        rx: mpsc::UnboundedReceiver<Message>,
        internal_id: Value,
        requests: Vec<(String, Value, Value)>,
        shape: &Shape,
    ) -> Message {
        self.parked
            .calls
            .retain(|_, p| p.expires > Instant::now() || abandon(p));
        // In a cluster the state names (sealed) this replica, so a retry elsewhere finds it.
        let state = match self.bus.as_ref() {
            Some(bus) => bus.seal_state(),
            None => format!("{:032x}", rand::random::<u128>()),
        };
        let input_requests: Map<String, Value> = requests
            .iter()
            .map(|(key, _, request)| (key.clone(), request.clone()))
            .collect();
        let pending = requests;
        self.parked.calls.insert(
            state.clone(),
            ParkedCall {
                caller: shape.caller.clone(),
                method: shape.method.clone(),
                target: shape.target.clone(),
                session,
                internal_id,
                rx,
                pending,
                wants_logs: shape.wants_logs,
                expires: Instant::now() + PARK_TTL,
            },
        );
        Message::result(
            shape.client_id.clone(),
            json!({
                "resultType": "input_required",
                "inputRequests": input_requests,
                "requestState": state,
            }),
        )
    }

    /// A retry carrying `requestState`: answers the parked call's input requests with the
    /// client's `inputResponses` and carries on with it.
    pub(super) async fn resume(
        self: &Arc<Self>,
        state: &str,
        msg: &Message,
        mut shape: Shape,
    ) -> Response<Body> {
        let stale = || {
            response::json(
                StatusCode::OK,
                &Message::error(
                    shape.client_id.clone(),
                    codes::INVALID_PARAMS,
                    "Unknown or expired requestState; send the request again without it",
                    None,
                ),
            )
        };
        let Some((_, mut parked)) = self.parked.calls.remove(state) else {
            return stale();
        };
        // The state is bound to who asked, for what, and for how long.
        if parked.caller != shape.caller
            || parked.method != shape.method
            || parked.target != shape.target
            || parked.expires < Instant::now()
        {
            tracing::warn!(method = %crate::observe::clip(&shape.method), "requestState presented for another caller or request; refused");
            abandon(&parked);
            return stale();
        }
        // Checked in `stateless` already: absent, or an object of result objects.
        let responses = msg
            .params()
            .and_then(|p| p.get("inputResponses"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut still = Vec::new();
        for (key, gateway_id, request) in std::mem::take(&mut parked.pending) {
            match responses.get(&key) {
                Some(result) => {
                    parked
                        .session
                        .handle_response(Message::result(gateway_id, result.clone()))
                        .await
                }
                None => still.push((key, gateway_id, request)),
            }
        }
        shape.wants_logs = parked.wants_logs;
        if !still.is_empty() {
            // Ask again for what is missing, under a fresh state.
            let requests = still;
            let ParkedCall {
                session,
                rx,
                internal_id,
                ..
            } = parked;
            let m = self.park(session, rx, internal_id, requests, &shape);
            return response::json(StatusCode::OK, &m);
        }
        let ParkedCall {
            session,
            rx,
            internal_id,
            ..
        } = parked;
        self.answer(session, rx, internal_id, shape).await
    }
}

/// Gives up on a parked call: its upstream requests get an error (so the upstream does not
/// wait forever) and the call itself is cancelled. Returns false (for `retain`).
fn abandon(p: &ParkedCall) -> bool {
    let session = p.session.clone();
    let pending: Vec<Value> = p.pending.iter().map(|(_, id, _)| id.clone()).collect();
    let id = p.internal_id.clone();
    tokio::spawn(async move {
        for gateway_id in pending {
            session
                .handle_response(Message::error(
                    gateway_id,
                    codes::REQUEST_CANCELLED,
                    "the client did not answer",
                    None,
                ))
                .await;
        }
        cancel(&session, id).await;
    });
    false
}
