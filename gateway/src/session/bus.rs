//! What a session asks of the cluster bus (`cluster/` implements it over Redis pub/sub): a
//! trait here, so the session does not depend on the cluster module, which depends on it.

use super::Session;
use crate::mcp::Message;

pub trait SessionBus: Send + Sync {
    /// This replica's id on the bus (part of the ids of server→client requests).
    fn replica(&self) -> &str;

    /// The replica that sent the client the request with this gateway id, when it is
    /// another one.
    fn asker(&self, gateway_id: &str) -> Option<String>;

    /// Sends a client's answer to the replica that asked.
    fn publish_answer(&self, replica: String, session: &str, msg: Message);

    /// Hands a message of `session` to the replicas that hold streams of it. When none
    /// received it, `unheard` runs (the caller keeps it for a stream opened here later).
    fn publish_session(
        &self,
        session: &Session,
        upstream: &str,
        msg: &Message,
        change: bool,
        unheard: Option<Box<dyn FnOnce() + Send>>,
    );
}
