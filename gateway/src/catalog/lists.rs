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
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::router::{Links, Router};
use super::{ListKind, Merged};
use crate::mcp::{Message, codes};
use crate::upstream::{LeftOut, UpstreamError};

/// Most pages fetched from one upstream for one list (guards against a cursor loop).
const MAX_UPSTREAM_PAGES: usize = 100;

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
pub(super) struct Lists {
    running: Mutex<HashMap<(ListKind, usize), Fetch>>,
}

impl Lists {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ListKind, usize), Fetch>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Router {
    /// The merged list of `kind`: from the cache, or with every missing part fetched (each
    /// waited for at most its upstream's `list-timeout`).
    pub(super) async fn gather<L: Links>(
        self: &Arc<Self>,
        links: &L,
        kind: ListKind,
    ) -> Arc<Merged> {
        if let Some(m) = self.catalog().cached(kind) {
            return m;
        }
        let waits = self.catalog().missing(kind).into_iter().map(|(idx, _)| {
            let (part, left_out) = self.part(links, kind, idx);
            let upstream = links.upstream(idx).clone();
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
        self.catalog().merge_with(kind, &parts)
    }

    /// The running fetch of upstream `idx`'s part of `kind`, started if there is none. It runs
    /// on its own task, so an answer that stops waiting for it does not stop it.
    fn part<L: Links>(
        self: &Arc<Self>,
        links: &L,
        kind: ListKind,
        idx: usize,
    ) -> (Shared<BoxFuture<'static, Part>>, Arc<AtomicBool>) {
        let mut running = self.lists.lock();
        if let Some(f) = running.get(&(kind, idx)) {
            return (f.part.clone(), f.left_out.clone());
        }
        let left_out = Arc::new(AtomicBool::new(false));
        let Some(links) = links.owned() else {
            let closing: Part = Err("the session is closing".into());
            return (
                futures_util::future::ready(closing).boxed().shared(),
                left_out,
            );
        };
        let flag = left_out.clone();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let part = me.fetch_part(&*links, kind, idx).await;
            me.lists.lock().remove(&(kind, idx));
            if part.is_ok() && flag.load(Ordering::Relaxed) {
                let upstream = links.upstream(idx);
                tracing::info!(upstream = %upstream.name, "late {} arrived; telling the client its list changed", kind.method());
                upstream.list_arrived();
                links.list_changed(idx, kind);
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
    async fn fetch_part<L: Links>(&self, links: &L, kind: ListKind, idx: usize) -> Part {
        let why = |e: UpstreamError| Arc::<str>::from(e.to_string());
        let mut stale = None;
        for _ in 0..=REFETCHES {
            // Connected first, so what the upstream said during its handshake is counted
            // before the generation is read.
            links.connect(idx).await.map_err(why)?;
            let generation = self.catalog().generation(kind, idx);
            let items = Arc::new(fetch_list(links, idx, kind).await.map_err(why)?);
            if self
                .catalog()
                .store_shared(kind, idx, generation, items.clone())
            {
                return Ok(items);
            }
            tracing::debug!(upstream = %links.upstream(idx).name, "{} changed while it was fetched; fetching again", kind.method());
            stale = Some(items);
        }
        Ok(stale.unwrap_or_default())
    }
}

/// Every page of one upstream's list.
async fn fetch_list<L: Links>(
    links: &L,
    idx: usize,
    kind: ListKind,
) -> Result<Vec<Value>, UpstreamError> {
    let link = links.connect(idx).await?;
    if link.capabilities().get(kind.capability()).is_none() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_UPSTREAM_PAGES {
        let params = cursor.take().map(|c| json!({ "cursor": c }));
        let request = Message::request(json!(0), kind.method(), params);
        let mut response = link
            .request(request, None, &CancellationToken::new())
            .await?;
        if let Some(err) = response.error_value() {
            if err["code"] == codes::METHOD_NOT_FOUND {
                return Ok(items); // e.g. resources without templates
            }
            return Err(UpstreamError::Protocol {
                upstream: link.upstream.name.clone(),
                detail: format!("{} failed: {err}", kind.method()),
            });
        }
        let mut result = response.take_result().unwrap_or_default();
        if let Some(Value::Array(page)) = result.get_mut(kind.items_key()).map(Value::take) {
            items.extend(page);
        }
        match result.get("nextCursor") {
            Some(c @ Value::String(_)) => cursor = Some(c.clone()),
            _ => return Ok(items),
        }
    }
    Ok(items)
}
