//! The session's links to its upstreams, as its router sees them ([`Links`]), and the
//! questions the front asks the router through the session.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::catalog::{Links, ListKind, Resolved, Target};
use crate::mcp::{Message, methods};
use crate::upstream::{Fresh, InboundHandler, Link, Upstream, UpstreamError};

impl Session {
    pub(super) fn handler(&self) -> std::sync::Weak<dyn InboundHandler> {
        self.me.clone() as std::sync::Weak<dyn InboundHandler>
    }

    /// The link to upstream `idx`, connecting on first use. A new link after a restart drops
    /// the cached catalog of that upstream and gets the client's log level again.
    pub(super) async fn link(&self, idx: usize) -> Result<Arc<Link>, UpstreamError> {
        let (link, fresh) = self.slots[idx].get(&self.hello, self.handler()).await?;
        if fresh == Fresh::Restarted {
            self.router.catalog().invalidate_upstream(idx);
        }
        if fresh != Fresh::No {
            let level = self
                .log_level
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(level) = level
                && link.capabilities().get("logging").is_some()
            {
                let set = Message::request(
                    json!(0),
                    methods::LOGGING_SET_LEVEL,
                    Some(json!({ "level": level })),
                );
                let link = link.clone();
                tokio::spawn(async move {
                    let _ = link.request(set, None, &CancellationToken::new()).await;
                });
            }
        }
        Ok(link)
    }

    /// Where the catalog would send a request: its upstream and its name there, with the
    /// name or URI it was asked for. `None` for a request that names nothing (lists, `ping`)
    /// or leaves its name or URI out.
    pub async fn resolve(&self, msg: &Message) -> Option<Resolved> {
        // A task call goes where its id says (policies see that upstream and its id).
        if super::tasks::addresses_task(msg.method()) {
            let id = msg.param_str("taskId")?;
            let target = self
                .open_task(id)
                .map(|(upstream, name)| Target { upstream, name });
            return Some(Resolved::new(id, target));
        }
        self.router.resolve(self, msg).await
    }

    /// A resolution as (upstream name, target name at that upstream), what policies see.
    pub fn named(&self, resolved: Option<&Resolved>) -> Option<(String, String)> {
        self.router.named(self, resolved)
    }

    /// The definition of the tool clients know as `name`, from the merged catalog.
    pub async fn tool(&self, name: &str) -> Option<Value> {
        self.router.tool(self, name).await
    }

    /// Names (tools or prompts) that more than one upstream exposes, with their upstreams.
    pub async fn collisions(&self, kind: ListKind) -> Vec<(String, Vec<usize>)> {
        self.router.collisions(self, kind).await
    }
}

impl Links for Session {
    fn upstream(&self, idx: usize) -> &Arc<Upstream> {
        &self.slots[idx].upstream
    }

    fn connect(&self, idx: usize) -> impl Future<Output = Result<Arc<Link>, UpstreamError>> + Send {
        self.link(idx)
    }

    fn list_changed(&self, idx: usize, kind: ListKind) {
        let upstream = &self.slots[idx].upstream.name;
        self.send_unrelated(
            upstream,
            Message::notification(kind.list_changed(), None),
            true,
        );
    }

    fn owned(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }
}
