//! What a session sends outside any request (list changes, resource updates, late log
//! lines, requests to the client): to the standalone stream, changes also to
//! `subscriptions/listen` streams, and with the cluster bus to the session's streams on other
//! replicas. When a [`Screen`] is active they pass it first, in order, through the session's
//! outbox task.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::Session;
use crate::mcp::{Kind, Message};

/// Checks server→client messages (notifications, requests) that no request caused before
/// any client sees them (the policy chain's response phase; see `front/relay.rs`).
pub trait Screen: Send + Sync {
    /// Whether messages need screening now. When not, they go out at once.
    fn active(&self) -> bool;
    /// The message as it may go out, or `None` when it must not (the screen answered a
    /// refused request itself).
    fn message<'a>(
        &'a self,
        session: &'a Session,
        upstream: &'a str,
        msg: Message,
    ) -> BoxFuture<'a, Option<Message>>;
}

/// A message waiting in the session's outbox.
pub(super) struct Outgoing {
    upstream: Arc<str>,
    msg: Message,
    /// A change (list changed, resource updated): for the GET stream and listen streams.
    /// Otherwise for the GET stream only.
    change: bool,
}

impl Session {
    /// Sends a message no request caused to the client: a `change` to the GET stream and
    /// listen streams, anything else to the GET stream. Through the screen when it is
    /// active (and, once the outbox exists, always, to keep the order).
    pub(crate) fn send_unrelated(&self, upstream: &Arc<str>, msg: Message, change: bool) {
        let outbox = match (self.outbox.get(), &self.screen) {
            (Some(tx), _) => Some(tx),
            (None, Some(screen)) if screen.active() => {
                Some(self.outbox.get_or_init(|| self.open_outbox(screen.clone())))
            }
            _ => None,
        };
        let outgoing = Outgoing {
            upstream: upstream.clone(),
            msg,
            change,
        };
        let outgoing = match outbox {
            Some(tx) => match tx.send(outgoing) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => outgoing,
        };
        self.deliver(&outgoing);
    }

    fn deliver(&self, outgoing: &Outgoing) {
        let Some(bus) = &self.bus else {
            self.deliver_here(&outgoing.msg, outgoing.change);
            return;
        };
        // A stream of this session here takes it; otherwise another replica may hold one.
        // Changes go out always: 2026-07-28 callers may listen on several replicas.
        let (upstream, msg, change) = (&outgoing.upstream, &outgoing.msg, outgoing.change);
        let here = self.standalone.has_listener() || (change && self.changes.receiver_count() > 0);
        if here {
            self.deliver_here(msg, change);
            if change {
                bus.publish_session(self, upstream, msg, change, None);
            }
            return;
        }
        // Nobody heard it (or Redis is down): kept here, for a stream opened here later.
        let me = self.me.clone();
        let kept = msg.clone();
        let unheard = Box::new(move || {
            if let Some(session) = me.upgrade() {
                session.deliver_here(&kept, change);
            }
        });
        bus.publish_session(self, upstream, msg, change, Some(unheard));
    }

    /// Delivers a message this session's copy on another replica sent. A list change also
    /// drops this replica's cached part of that upstream's list: the upstream changed it.
    pub(crate) fn deliver_remote(&self, upstream: &str, msg: &Message, change: bool) {
        if let Some(idx) = self
            .slots
            .iter()
            .position(|s| &*s.upstream.name == upstream)
        {
            self.router.upstream_changed(idx, msg.method());
        }
        self.deliver_here(msg, change);
    }

    /// Delivers to this replica's streams of the session (and its replay buffer).
    pub(crate) fn deliver_here(&self, msg: &Message, change: bool) {
        if change {
            self.announce(msg);
        } else {
            self.standalone.push(msg);
        }
    }

    /// The task that screens this session's unrelated messages one at a time, in order. It
    /// ends with the session (the sender lives in it).
    fn open_outbox(&self, screen: Arc<dyn Screen>) -> tokio::sync::mpsc::UnboundedSender<Outgoing> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let me = self.me.clone();
        tokio::spawn(async move {
            while let Some(mut outgoing) = rx.recv().await {
                let Some(session) = me.upgrade() else { return };
                if outgoing.msg.kind() != Kind::Response && screen.active() {
                    let msg = std::mem::replace(&mut outgoing.msg, Message::notification("", None));
                    match screen.message(&session, &outgoing.upstream, msg).await {
                        Some(m) => outgoing.msg = m,
                        None => continue,
                    }
                }
                session.deliver(&outgoing);
            }
        });
        tx
    }

    /// Sends a change notification to whoever listens: the GET stream and any
    /// `subscriptions/listen` stream.
    pub(crate) fn announce(&self, msg: &Message) {
        self.standalone.push(msg);
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(msg.clone());
        }
    }
}
