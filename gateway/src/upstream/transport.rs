//! The [`Transport`] every kind of upstream link implements (stdio, a shared stdio child,
//! Streamable HTTP, legacy HTTP+SSE): one request shape, so the [`Link`](super::Link) around it treats them alike
//! and a new kind is one more implementation.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::pending::RequestIds;
use super::stateless::Stateless;
use super::{Related, UpstreamError};
use crate::mcp::Message;

/// A request on its way upstream: resolves with the upstream's response.
pub(super) type Call<'a> = BoxFuture<'a, Result<Message, UpstreamError>>;

/// What each kind of upstream link does. A transport carries messages; the
/// [`Link`](super::Link) around it numbers requests, times them out, cancels them and
/// restores the client's ids.
pub(super) trait Transport: Send + Sync {
    /// How the link shows in the log: `stdio`, `stdio-shared`, `streamable-http`, `sse`.
    fn kind(&self) -> &'static str;

    /// Whether it can still carry messages (a child running, a stream open).
    fn is_alive(&self) -> bool {
        true
    }

    /// How it speaks MCP 2026-07-28, when it does.
    fn stateless(&self) -> Option<&Stateless> {
        None
    }

    /// The trace context goes into every request's `_meta` (there are no headers to carry
    /// it), rather than only where the client put one there.
    fn traces_in_meta(&self) -> bool {
        false
    }

    /// A request the transport handles itself instead of forwarding it as it is (a shared
    /// child's subscriptions and log level): its call, answering with the client's id.
    /// Any other request is given back.
    fn intercept(&self, msg: Message, _timeout: Duration) -> Result<Call<'_>, Message> {
        Err(msg)
    }

    /// The upstream's session id, when another replica could go on using this link's
    /// upstream session (Streamable HTTP in the session era).
    fn session_id(&self) -> Option<String> {
        None
    }

    /// Whether dropping the link leaves its current upstream session open (it is sealed
    /// into the client's session id, so other replicas may be using it) rather than ending
    /// it.
    fn keep_open(&self, _keep: bool) {}

    /// Where this link's upstream-side request ids come from.
    fn ids(&self) -> &RequestIds;

    /// Sends request `msg`, already numbered `id` from [`Transport::ids`]; the call resolves
    /// with the upstream's response. `related` gets what the upstream sends about it.
    fn request(&self, id: u64, msg: Message, related: Option<Related>) -> Call<'_>;

    /// Stops waiting for request `id` (it timed out or was cancelled).
    fn forget(&self, _id: u64) {}

    /// Sends a notification, or a response to a request the upstream made.
    fn send(&self, msg: Message) -> BoxFuture<'_, Result<(), UpstreamError>>;
}
