//! Aggregation: the one catalog a client sees, made of every upstream's tools, prompts,
//! resources and resource templates.
//!
//! Semantics:
//! - `*/list` fans out to every upstream that declares the capability, follows each
//!   upstream's own cursors to the end, and merges. An upstream that fails or times out is
//!   left out of the answer (and logged); the others still answer.
//! - Items are namespaced per [`Names`]; everything else in an item passes unchanged.
//! - Lists are cached per client session and upstream, and dropped when that upstream sends
//!   `notifications/*/list_changed` (the client is then told in turn) or its link restarts.
//! - The gateway pages merged lists with its own opaque cursors (`server.list-page-size`).
//! - Routing maps an exposed name or URI back to `(upstream, its own name)` (`router.rs`,
//!   one [`Router`] per client session); `lists.rs` gathers each upstream's part of a list
//!   under its `list-timeout`.

mod lists;
mod names;
mod router;
#[cfg(test)]
mod router_tests;
mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::Value;

use crate::config::PrefixMode;
pub use crate::mcp::ListKind;
pub use names::Names;
pub use router::{Back, Dispatch, Forward, Links, Resolved, Route, Router};

/// A merged list and the way back from exposed names to upstreams.
#[derive(Debug, Default)]
pub struct Merged {
    pub items: Vec<Value>,
    /// Exposed name (or URI) → (upstream index, upstream's own name).
    route: HashMap<String, (usize, String)>,
    /// Upstream's own name → upstreams that have it (for unprefixed lookups).
    by_real: HashMap<String, Vec<usize>>,
}

#[derive(Default)]
struct KindCache {
    per_upstream: Vec<Option<Arc<Vec<Value>>>>,
    generation: Vec<u64>,
    merged: Option<Arc<Merged>>,
}

/// One client session's view of the aggregated catalog.
pub struct SessionCatalog {
    pub names: Arc<Names>,
    kinds: Mutex<[KindCache; 4]>,
}

impl SessionCatalog {
    pub fn new(names: Arc<Names>) -> Self {
        let n = names.len();
        let cache = || KindCache {
            per_upstream: vec![None; n],
            generation: vec![0; n],
            merged: None,
        };
        SessionCatalog {
            names,
            kinds: Mutex::new([cache(), cache(), cache(), cache()]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [KindCache; 4]> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The merged list if every upstream's part is cached.
    pub fn cached(&self, kind: ListKind) -> Option<Arc<Merged>> {
        self.lock()[kind.index()].merged.clone()
    }

    /// Upstreams whose part of `kind` must be fetched, with the generation to store against.
    pub fn missing(&self, kind: ListKind) -> Vec<(usize, u64)> {
        let kinds = self.lock();
        let k = &kinds[kind.index()];
        (0..self.names.len())
            .filter(|&i| k.per_upstream[i].is_none())
            .map(|i| (i, k.generation[i]))
            .collect()
    }

    /// How many times upstream `idx`'s part of `kind` was invalidated: a fetch notes it
    /// before asking and stores against it.
    pub fn generation(&self, kind: ListKind, idx: usize) -> u64 {
        self.lock()[kind.index()].generation[idx]
    }

    /// Stores a fetched part unless it was invalidated while being fetched; says whether it
    /// was stored.
    pub fn store(&self, kind: ListKind, idx: usize, generation: u64, items: Vec<Value>) -> bool {
        self.store_shared(kind, idx, generation, Arc::new(items))
    }

    /// [`SessionCatalog::store`] for a part already shared.
    pub fn store_shared(
        &self,
        kind: ListKind,
        idx: usize,
        generation: u64,
        items: Arc<Vec<Value>>,
    ) -> bool {
        let mut kinds = self.lock();
        let k = &mut kinds[kind.index()];
        if k.generation[idx] != generation {
            return false;
        }
        k.per_upstream[idx] = Some(items);
        true
    }

    /// Drops upstream `idx`'s part of `kind` (it announced a change, or its link restarted).
    pub fn invalidate(&self, kind: ListKind, idx: usize) {
        let mut kinds = self.lock();
        let k = &mut kinds[kind.index()];
        k.per_upstream[idx] = None;
        k.generation[idx] += 1;
        k.merged = None;
    }

    pub fn invalidate_upstream(&self, idx: usize) {
        for kind in ListKind::ALL {
            self.invalidate(kind, idx);
        }
    }

    /// Merges what is cached (upstreams that failed are left out) and caches the result
    /// when no part is missing.
    pub fn merge(&self, kind: ListKind) -> Arc<Merged> {
        let mut kinds = self.lock();
        let k = &mut kinds[kind.index()];
        if let Some(m) = &k.merged {
            return m.clone();
        }
        let merged = Arc::new(merge(&self.names, kind, &k.per_upstream));
        if k.per_upstream.iter().all(Option::is_some) {
            k.merged = Some(merged.clone());
        }
        merged
    }

    /// Merges what is cached, with `extra` parts in place of missing ones (parts fetched for
    /// this answer that could not be cached: the upstream announced a change while they were
    /// being fetched, again and again). Caches nothing.
    pub fn merge_with(&self, kind: ListKind, extra: &[(usize, Arc<Vec<Value>>)]) -> Arc<Merged> {
        let mut parts = {
            let kinds = self.lock();
            let cached = &kinds[kind.index()].per_upstream;
            if !extra
                .iter()
                .any(|(idx, _)| cached.get(*idx).is_some_and(Option::is_none))
            {
                drop(kinds);
                return self.merge(kind);
            }
            cached.clone()
        };
        for (idx, items) in extra {
            if let Some(p) = parts.get_mut(*idx)
                && p.is_none()
            {
                *p = Some(items.clone());
            }
        }
        Arc::new(merge(&self.names, kind, &parts))
    }

    /// Upstream's own list of `kind`, if cached (used for template matching).
    pub fn part(&self, kind: ListKind, idx: usize) -> Option<Arc<Vec<Value>>> {
        self.lock()[kind.index()].per_upstream[idx].clone()
    }

    /// The name a client sees for an upstream resource URI (e.g. in `resources/updated`).
    pub fn expose_uri(&self, idx: usize, uri: &str) -> String {
        let collides = self
            .cached(ListKind::Resources)
            .and_then(|m| m.by_real.get(uri).map(|v| v.len() > 1))
            .unwrap_or(false);
        self.names.expose_uri(idx, uri, collides)
    }
}

fn merge(names: &Names, kind: ListKind, parts: &[Option<Arc<Vec<Value>>>]) -> Merged {
    let key = kind.name_key();
    let mut by_real: HashMap<String, Vec<usize>> = HashMap::new();
    for (idx, part) in parts.iter().enumerate() {
        for item in part.iter().flat_map(|p| p.iter()) {
            if let Some(name) = item.get(key).and_then(Value::as_str) {
                let owners = by_real.entry(name.to_string()).or_default();
                if !owners.contains(&idx) {
                    owners.push(idx);
                }
            }
        }
    }
    let mut merged = Merged {
        items: Vec::new(),
        route: HashMap::new(),
        by_real: HashMap::new(),
    };
    for (idx, part) in parts.iter().enumerate() {
        for item in part.iter().flat_map(|p| p.iter()) {
            let Some(name) = item.get(key).and_then(Value::as_str) else {
                continue;
            };
            let collides = by_real.get(name).is_some_and(|o| o.len() > 1);
            let exposed = if kind.is_uri() {
                names.expose_uri(idx, name, collides)
            } else {
                names.expose(idx, name, collides)
            };
            if merged.route.contains_key(&exposed) {
                if names.mode == PrefixMode::Never {
                    tracing::error!(
                        upstream = names.upstream(idx),
                        name = %exposed,
                        "two upstreams expose the same name and namespacing.prefix = never; hiding the second"
                    );
                }
                continue;
            }
            let mut item = item.clone();
            item[key] = Value::String(exposed.clone());
            merged.route.insert(exposed, (idx, name.to_string()));
            merged.items.push(item);
        }
    }
    merged.by_real = by_real;
    merged
}

/// Where a client-facing name or URI goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub upstream: usize,
    pub name: String,
}

impl Merged {
    /// Finds the upstream for an exposed tool/prompt name or resource URI.
    pub fn route(&self, exposed: &str) -> Option<Target> {
        self.route.get(exposed).map(|(i, n)| Target {
            upstream: *i,
            name: n.clone(),
        })
    }

    /// An upstream that alone has an item with this (unprefixed) name.
    pub fn sole_owner(&self, real: &str) -> Option<usize> {
        match self.by_real.get(real).map(Vec::as_slice) {
            Some([one]) => Some(*one),
            _ => None,
        }
    }

    /// Upstreams with a template that could have produced `uri`.
    pub fn template_owner(&self, uri: &str) -> Option<Target> {
        self.by_real.iter().find_map(|(tmpl, owners)| {
            (owners.len() == 1 && template::matches(tmpl, uri)).then(|| Target {
                upstream: owners[0],
                name: uri.to_string(),
            })
        })
    }
}

/// A cursor the gateway did not issue (or for a list that has since shrunk).
#[derive(Debug)]
pub struct InvalidCursor;

/// One page of a merged list, with the gateway's own cursor. `page_size` 0 means one page.
pub fn page(
    items: &[Value],
    cursor: Option<&str>,
    page_size: usize,
) -> Result<(Vec<Value>, Option<String>), InvalidCursor> {
    let start = match cursor {
        None => 0,
        Some(c) => decode_cursor(c).ok_or(InvalidCursor)?,
    };
    if start > items.len() {
        return Err(InvalidCursor);
    }
    let end = if page_size == 0 {
        items.len()
    } else {
        (start + page_size).min(items.len())
    };
    let next = (end < items.len()).then(|| encode_cursor(end));
    Ok((items[start..end].to_vec(), next))
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("pc1:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("pc1:")?
        .parse()
        .ok()
}

impl Merged {
    /// Upstream names that more than one upstream has, with those upstreams.
    pub fn collisions(&self) -> Vec<(String, Vec<usize>)> {
        let mut c: Vec<_> = self
            .by_real
            .iter()
            .filter(|(_, o)| o.len() > 1)
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        c.sort();
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Namespacing;
    use serde_json::json;

    fn catalog(mode: PrefixMode) -> SessionCatalog {
        let ns = Namespacing {
            separator: "__".into(),
            prefix: mode,
        };
        SessionCatalog::new(Arc::new(Names::new(&ns, vec!["a".into(), "b".into()])))
    }

    fn fill(c: &SessionCatalog) {
        for (idx, gen_) in c.missing(ListKind::Tools) {
            let tools = vec![
                json!({"name": "shared", "x": idx}),
                json!({"name": format!("only{idx}")}),
            ];
            c.store(ListKind::Tools, idx, gen_, tools);
        }
    }

    #[test]
    fn when_needed_prefixes_collisions_and_routes_back() {
        let c = catalog(PrefixMode::WhenNeeded);
        fill(&c);
        let m = c.merge(ListKind::Tools);
        let names: Vec<_> = m
            .items
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a__shared", "only0", "b__shared", "only1"]);
        assert_eq!(
            m.route("b__shared"),
            Some(Target {
                upstream: 1,
                name: "shared".into()
            })
        );
        assert_eq!(
            m.route("only1"),
            Some(Target {
                upstream: 1,
                name: "only1".into()
            })
        );
        assert_eq!(m.items[2]["x"], 1, "other fields pass unchanged");
    }

    #[test]
    fn invalidation_during_fetch_discards_the_stale_part() {
        let c = catalog(PrefixMode::Always);
        let missing = c.missing(ListKind::Tools);
        c.invalidate(ListKind::Tools, 0);
        for (idx, gen_) in missing {
            c.store(ListKind::Tools, idx, gen_, vec![json!({"name": "t"})]);
        }
        assert_eq!(c.missing(ListKind::Tools).len(), 1);
        assert!(c.merge(ListKind::Tools).items.len() == 1 && c.cached(ListKind::Tools).is_none());
    }

    #[test]
    fn pages_with_opaque_cursors() {
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        let (p1, c1) = page(&items, None, 2).unwrap();
        assert_eq!(p1, [json!(0), json!(1)]);
        let (p3, c3) = page(&items, Some("cGMxOjQ"), 2).unwrap();
        assert_eq!((p3, c3), (vec![json!(4)], None));
        assert!(c1.is_some());
        assert!(page(&items, Some("garbage"), 2).is_err());
        assert_eq!(page(&items, None, 0).unwrap().0.len(), 5);
    }
}
