//! Opening a session whose id carries its upstream sessions (`[cluster] session-key`).
//!
//! At `initialize`, before the id is minted, the session opens its links to the upstreams
//! whose sessions other replicas can resume ([`Upstream::seals_sessions`]: Streamable HTTP
//! in the session era), all at once, each for at most its `list-timeout` (and its
//! `connect-timeout`). Each upstream session opened in time goes into the sealed id
//! (`seal.rs`); a replica that resumes the id attaches to it instead of initializing
//! (`Slot::resuming`). An upstream that fails or is late is left out and opened lazily, per
//! replica, as without a key.
//!
//! The links exist before the session does, so they are given a [`Handover`] as their
//! handler: it keeps what the upstreams say meanwhile (a log line, a list change during
//! their handshake) and hands it, then everything after, to the session.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures_util::future::join_all;

use super::Session;
use crate::mcp::Message;
use crate::upstream::{Hello, InboundHandler, Link, Related, Subject, Upstream};

/// Most messages kept for a session that does not exist yet.
const MAX_EARLY: usize = 64;

/// The handler of links opened before their session: passes their messages on once it
/// exists.
#[derive(Default)]
pub(super) struct Handover {
    session: OnceLock<Weak<Session>>,
    early: Mutex<Vec<(Arc<Upstream>, Message)>>,
}

impl Handover {
    /// From now on, messages go to `session`; those kept meanwhile first, in order.
    pub(super) fn attach(&self, session: &Arc<Session>) {
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        for (upstream, msg) in early.drain(..) {
            InboundHandler::on_message(&**session, &upstream, msg, None);
        }
        // Set once the kept ones are delivered (still under the lock): a message that finds
        // the session set cannot overtake them.
        let _ = self.session.set(Arc::downgrade(session));
    }
}

impl InboundHandler for Handover {
    fn on_message(&self, upstream: &Arc<Upstream>, msg: Message, related: Option<&Related>) {
        let deliver = |session: &Weak<Session>, msg| {
            if let Some(session) = session.upgrade() {
                InboundHandler::on_message(&*session, upstream, msg, related);
            }
        };
        // Once attached, no lock: everything kept before was delivered first.
        if let Some(session) = self.session.get() {
            return deliver(session, msg);
        }
        let mut early = self.early.lock().unwrap_or_else(|p| p.into_inner());
        match self.session.get() {
            Some(session) => deliver(session, msg),
            None if early.len() < MAX_EARLY => early.push((upstream.clone(), msg)),
            None => {
                tracing::debug!(upstream = %upstream.name, "message before the session existed; dropped")
            }
        }
    }

    fn subject(&self) -> Option<Arc<Subject>> {
        self.session.get()?.upgrade()?.subject.get()
    }
}

/// Opens the links to `upstreams` that can be sealed, in parallel, each bounded by its
/// `list-timeout`. Gives those that opened in time, by index into `upstreams`.
pub(super) async fn open_links(
    upstreams: &[Arc<Upstream>],
    hello: &Hello,
    handover: &Arc<Handover>,
) -> Vec<(usize, Arc<Link>)> {
    let handler = Arc::downgrade(handover) as Weak<dyn InboundHandler>;
    let opens = upstreams
        .iter()
        .enumerate()
        .filter(|(_, u)| u.seals_sessions())
        .map(|(idx, upstream)| {
            let handler = handler.clone();
            async move {
                let limit = upstream.config.list_timeout;
                let connect = Link::connect(upstream, hello, handler, true);
                match tokio::time::timeout(limit, connect).await {
                    Ok(Ok(link)) => Some((idx, link)),
                    Ok(Err(e)) => {
                        tracing::warn!(upstream = %upstream.name, error = %e, "upstream session not opened at initialize; each replica opens its own on first use");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(upstream = %upstream.name, after = ?limit, "upstream session not opened at initialize in time (list-timeout); each replica opens its own on first use");
                        None
                    }
                }
            }
        });
    join_all(opens).await.into_iter().flatten().collect()
}
