//! Aggregate lists (`tools/list`, `prompts/list`, `resources/list`,
//! `resources/templates/list`): each upstream's part fetched once at a time per session, and
//! waited for at most that upstream's `list-timeout`.
//!
//! - A part is fetched after the link is up, and stored against the catalog generation read
//!   then: what an upstream says during its handshake (a `list_changed` or a log line before
//!   its `initialize` answer, as `@modelcontextprotocol/server-everything` does) is already
//!   reflected and cannot make the first list lose that upstream. A change announced while
//!   the list request is in flight makes the part stale: it is fetched again (twice at most,
//!   then used for this answer without being cached).
//! - An upstream whose part does not come within its `list-timeout` (shorter while it is seen
//!   failing) is left out of the answer; the fetch goes on in the background, later lists of
//!   the session join it instead of asking again, and when it arrives the client hears
//!   `notifications/*/list_changed`, so it lists again and gets it.
//! - Every answer that leaves an upstream out says so in the log, with the upstream and why,
//!   and `portcullis_upstream_lists_left_out_total{upstream, reason}` counts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, join_all};
use serde_json::Value;

use super::Session;
use crate::catalog::{ListKind, Merged};
use crate::mcp::{Message, methods};
use crate::upstream::LeftOut;

/// How often a part is fetched again when the upstream announced a change while it was being
/// fetched.
const REFETCHES: usize = 2;

/// One upstream's part of a list, or why there is none.
type Part = Result<Arc<Vec<Value>>, Arc<str>>;

struct Fetch {
    part: Shared<BoxFuture<'static, Part>>,
    /// An answer was given without this part: the client is told when it arrives.
    left_out: Arc<AtomicBool>,
}

/// The list fetches of one session that are running, by list kind and upstream.
#[derive(Default)]
pub(super) struct ListFetches {
    running: Mutex<HashMap<(ListKind, usize), Fetch>>,
}

impl ListFetches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ListKind, usize), Fetch>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The notification that tells a client a list of this kind changed.
fn list_changed(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Tools => methods::TOOLS_LIST_CHANGED,
        ListKind::Prompts => methods::PROMPTS_LIST_CHANGED,
        ListKind::Resources | ListKind::Templates => methods::RESOURCES_LIST_CHANGED,
    }
}

impl Session {
    /// The merged list of `kind`: from the cache, or with every missing part fetched (each
    /// waited for at most its upstream's `list-timeout`).
    pub(super) async fn gather(&self, kind: ListKind) -> Arc<Merged> {
        if let Some(m) = self.catalog.cached(kind) {
            return m;
        }
        let waits = self.catalog.missing(kind).into_iter().map(|(idx, _)| {
            let (part, left_out) = self.part(kind, idx);
            let upstream = self.slots[idx].upstream.clone();
            async move {
                let limit = upstream.list_timeout();
                match tokio::time::timeout(limit, part).await {
                    Ok(Ok(items)) => {
                        upstream.list_arrived();
                        Some((idx, items))
                    }
                    Ok(Err(why)) => {
                        upstream.list_left_out(LeftOut::Failed);
                        tracing::warn!(
                            upstream = %upstream.name,
                            reason = %why,
                            "left out of {}",
                            kind.method()
                        );
                        None
                    }
                    Err(_) => {
                        left_out.store(true, Ordering::Relaxed);
                        upstream.list_left_out(LeftOut::Late);
                        tracing::warn!(
                            upstream = %upstream.name,
                            reason = %format!("no answer within its list-timeout of {} ms; still asking, the client hears list_changed when it comes", limit.as_millis()),
                            "left out of {}",
                            kind.method()
                        );
                        None
                    }
                }
            }
        });
        let parts: Vec<_> = join_all(waits).await.into_iter().flatten().collect();
        self.catalog.merge_with(kind, &parts)
    }

    /// The running fetch of upstream `idx`'s part of `kind`, started if there is none. It runs
    /// on its own task, so an answer that stops waiting for it does not stop it.
    fn part(
        &self,
        kind: ListKind,
        idx: usize,
    ) -> (Shared<BoxFuture<'static, Part>>, Arc<AtomicBool>) {
        let mut running = self.lists.lock();
        if let Some(f) = running.get(&(kind, idx)) {
            return (f.part.clone(), f.left_out.clone());
        }
        let left_out = Arc::new(AtomicBool::new(false));
        let Some(me) = self.me.upgrade() else {
            let closing: Part = Err("the session is closing".into());
            return (
                futures_util::future::ready(closing).boxed().shared(),
                left_out,
            );
        };
        let flag = left_out.clone();
        let task = tokio::spawn(async move {
            let part = me.fetch_part(kind, idx).await;
            me.lists.lock().remove(&(kind, idx));
            if part.is_ok() && flag.load(Ordering::Relaxed) {
                let upstream = me.slots[idx].upstream.clone();
                tracing::info!(upstream = %upstream.name, "late {} arrived; telling the client its list changed", kind.method());
                upstream.list_arrived();
                me.send_unrelated(
                    &upstream.name,
                    Message::notification(list_changed(kind), None),
                    true,
                );
            }
            part
        });
        let part = async move {
            task.await
                .unwrap_or_else(|_| Err("the list fetch ended abnormally".into()))
        }
        .boxed()
        .shared();
        running.insert(
            (kind, idx),
            Fetch {
                part: part.clone(),
                left_out: left_out.clone(),
            },
        );
        (part, left_out)
    }

    /// Fetches and caches upstream `idx`'s part of `kind`.
    async fn fetch_part(&self, kind: ListKind, idx: usize) -> Part {
        let why = |e: crate::upstream::UpstreamError| Arc::<str>::from(e.to_string());
        let mut stale = None;
        for _ in 0..=REFETCHES {
            // Connected first, so what the upstream said during its handshake is counted
            // before the generation is read.
            self.link(idx).await.map_err(why)?;
            let generation = self.catalog.generation(kind, idx);
            let items = Arc::new(self.fetch_list(idx, kind).await.map_err(why)?);
            if self
                .catalog
                .store_shared(kind, idx, generation, items.clone())
            {
                return Ok(items);
            }
            tracing::debug!(upstream = %self.slots[idx].upstream.name, "{} changed while it was fetched; fetching again", kind.method());
            stale = Some(items);
        }
        Ok(stale.unwrap_or_default())
    }
}
