//! 2026-07-28 retries whose call is parked on another replica (`[cluster]` with Redis).
//!
//! A parked call's `requestState` names, sealed, the replica that parked it. A retry that
//! lands on another replica — after that replica ran the policy chain on it (authn decides
//! the caller) — is forwarded over the cluster bus to the owner, which resumes the call
//! exactly as if the retry had come to it (the caller, method and target must match the
//! parked call) and relays its HTTP answer back: JSON, or an SSE stream as it is produced.
//! When the owner cannot be reached (it is gone, Redis is down, it does not answer) the
//! client gets `-32602` saying so, and sends the request again without `requestState`.

use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::future::BoxFuture;
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Shape;
use crate::cluster::{Bus, Serve, relay};
use crate::front::Front;
use crate::front::response::{self, Body};
use crate::mcp::{Message, codes};

/// A retry as it travels to the owning replica.
#[derive(Serialize, Deserialize)]
struct Retry {
    state: String,
    msg: Value,
    client_id: Value,
    method: String,
    target: Option<String>,
    caller: String,
    wants_logs: bool,
    capabilities: Value,
    private: bool,
}

/// Serves retries other replicas forward here.
struct Owner(Weak<Front>);

impl Serve for Owner {
    fn serve(&self, payload: Value) -> BoxFuture<'static, relay::Answer> {
        let front = self.0.upgrade();
        Box::pin(async move {
            let Some(front) = front else {
                return response::status_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway is shutting down",
                );
            };
            let retry = serde_json::from_value::<Retry>(payload).ok().and_then(|r| {
                let msg = Message::from_value(r.msg.clone()).ok()?;
                Some((r, msg))
            });
            let Some((retry, msg)) = retry else {
                return response::status_error(
                    StatusCode::BAD_REQUEST,
                    "a forwarded retry this replica cannot read",
                );
            };
            let shape = Shape {
                client_id: retry.client_id,
                method: retry.method,
                target: retry.target,
                caller: retry.caller,
                wants_logs: retry.wants_logs,
                capabilities: retry.capabilities,
                private: retry.private,
                started: Instant::now(),
            };
            tracing::debug!("resuming a parked call for a retry another replica received");
            front.resume(&retry.state, &msg, shape).await
        })
    }
}

/// Lets other replicas resume the calls parked here.
pub(in crate::front) fn serve_forwarded(front: &Arc<Front>, bus: &Arc<Bus>) {
    bus.set_server(Arc::new(Owner(Arc::downgrade(front))));
}

impl Front {
    /// Forwards a retry to `owner`, the replica that parked its call, and answers with what
    /// that replica answers.
    pub(super) async fn forward_retry(
        &self,
        bus: &Arc<Bus>,
        owner: &str,
        state: &str,
        msg: &Message,
        shape: Shape,
    ) -> Response<Body> {
        let retry = Retry {
            state: state.to_string(),
            msg: msg.clone().into_value(),
            client_id: shape.client_id.clone(),
            method: shape.method,
            target: shape.target,
            caller: shape.caller,
            wants_logs: shape.wants_logs,
            capabilities: shape.capabilities,
            private: shape.private,
        };
        let payload = serde_json::to_value(&retry).unwrap_or_default();
        match relay::forward(bus, owner, payload).await {
            Ok(answer) => {
                tracing::debug!(owner, "retry answered by the replica holding its call");
                answer
            }
            Err(why) => {
                tracing::warn!(owner, %why, "a 2026-07-28 retry could not reach the replica holding its call");
                response::json(
                    StatusCode::OK,
                    &Message::error(
                        shape.client_id,
                        codes::INVALID_PARAMS,
                        &format!(
                            "The call this requestState continues is held by another replica of this gateway, and {why}; send the request again without requestState"
                        ),
                        Some(json!({ "retry": "without requestState" })),
                    ),
                )
            }
        }
    }
}
