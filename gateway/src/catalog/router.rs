//! The router: where a client request goes. One per client session, owned by it.
//!
//! - **Resolution.** A tool or prompt name, or a resource URI, maps to `(upstream, its own
//!   name)` through the session's merged catalog ([`Router::resolve`]); a prefixed name
//!   (`namespacing`) is split without listing. A resource URI no list names goes to the one
//!   upstream that lists it unprefixed, then to the one whose template matches it, then (with
//!   a single upstream) to that upstream.
//! - **Dispatch.** [`Router::dispatch`] turns a request into a [`Dispatch`]: answered here (a
//!   merged list page, an unknown name or URI) or forwarded to one upstream with the name or
//!   URI rewritten to the upstream's own. The session does the forwarding; the answer of a
//!   `resources/read` gets its contents' URIs back as the client knows them
//!   ([`Router::restore`]).
//! - **Lists** fan out and merge (`lists.rs`); pages use the gateway's own cursors.
//! - **A routing policy** ([`Route`]) may override the upstream, the target name, or both;
//!   the name or URI is resolved as usual first.
//!
//! The router knows the upstreams only through [`Links`], which the session implements: it
//! keeps no link, no id map and no client state.

use std::future::Future;
use std::sync::Arc;

use serde_json::{Value, json};

use super::lists::Lists;
use super::{ListKind, Merged, Names, SessionCatalog, Target, page};
use crate::mcp::{Message, codes, methods};
use crate::upstream::{Link, Upstream, UpstreamError};

/// What the router needs from the session it routes for: its upstreams and their links.
pub trait Links: Send + Sync + Sized + 'static {
    /// Upstream `idx` (its name, list timeout and health), in configuration order.
    fn upstream(&self, idx: usize) -> &Arc<Upstream>;
    /// The session's link to upstream `idx`, connected on first use.
    fn connect(&self, idx: usize) -> impl Future<Output = Result<Arc<Link>, UpstreamError>> + Send;
    /// Tells the client that its list of `kind` changed: a part it was answered without
    /// arrived from upstream `idx`.
    fn list_changed(&self, idx: usize, kind: ListKind);
    /// The session itself, for a list fetch that outlives the answer waiting for it; `None`
    /// while it closes.
    fn owned(&self) -> Option<Arc<Self>>;
}

/// A routing policy's choice for one request.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub upstream: Option<String>,
    pub target: Option<String>,
}

/// Where the catalog sends one request, found once per call (before the policy chain, which
/// sees it as the call's destination) and carried to the session that forwards it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The name or URI the client asked for.
    asked: String,
    /// Its owner and the name it has there; `None`: no upstream has it.
    target: Option<Target>,
}

impl Resolved {
    /// A resolution found elsewhere (a task id names its upstream itself).
    pub fn new(asked: &str, target: Option<Target>) -> Self {
        Resolved {
            asked: asked.to_string(),
            target,
        }
    }

    /// The resolution of `name`, when this is it (a policy may have rewritten the name
    /// since; then it is resolved again).
    fn of_name(&self, name: &str) -> Option<Option<&Target>> {
        (self.asked == name).then_some(self.target.as_ref())
    }

    /// The resolution of `msg`'s name or URI, when this is it.
    fn of(&self, msg: &Message) -> Option<Option<&Target>> {
        let asked = msg.param_str("name").or_else(|| msg.param_str("uri"))?;
        self.of_name(asked)
    }
}

/// What to do with a request.
pub enum Dispatch {
    /// Answered here: a merged list page, or an error (unknown name, URI or method).
    Answer(Message),
    /// Sent to one upstream, its name or URI already rewritten to the upstream's own.
    Forward(Forward),
}

/// A request for one upstream, and how its answer is shown to the client.
pub struct Forward {
    pub upstream: usize,
    pub msg: Message,
    pub back: Back,
}

impl Forward {
    fn to(upstream: usize, msg: Message) -> Dispatch {
        Dispatch::Forward(Forward {
            upstream,
            msg,
            back: Back::default(),
        })
    }
}

/// What the router must change in an upstream's answer before the client sees it
/// ([`Router::restore`]).
#[derive(Default)]
pub struct Back {
    /// The URI the client read, and the upstream's own, for a `resources/read` answer.
    read: Option<(String, String)>,
}

/// One client session's router: its view of the catalog, its list fetches, its page size.
pub struct Router {
    catalog: SessionCatalog,
    pub(super) lists: Lists,
    page_size: usize,
}

impl Router {
    pub fn new(names: Arc<Names>, page_size: usize) -> Self {
        Router {
            catalog: SessionCatalog::new(names),
            lists: Lists::default(),
            page_size,
        }
    }

    /// The session's catalog cache (the upstreams' parts of each list).
    pub fn catalog(&self) -> &SessionCatalog {
        &self.catalog
    }

    fn names(&self) -> &Names {
        &self.catalog.names
    }

    /// A `notifications/*/list_changed` from upstream `idx` drops its part of those lists
    /// (the next list fetches it again). Says whether `method` was one.
    pub fn upstream_changed(&self, idx: usize, method: &str) -> bool {
        let kinds = ListKind::from_list_changed(method);
        for kind in kinds {
            self.catalog.invalidate(*kind, idx);
        }
        !kinds.is_empty()
    }

    /// Where the catalog would send a request: its upstream and its name there, with the
    /// name or URI it was asked for. `None` for a request that names nothing (lists, `ping`)
    /// or leaves its name or URI out.
    pub async fn resolve<L: Links>(self: &Arc<Self>, links: &L, msg: &Message) -> Option<Resolved> {
        let (asked, target) = match msg.method() {
            methods::TOOLS_CALL => {
                let name = msg.param_str("name")?;
                (name, self.route_name(links, ListKind::Tools, name).await)
            }
            methods::PROMPTS_GET => {
                let name = msg.param_str("name")?;
                (name, self.route_name(links, ListKind::Prompts, name).await)
            }
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => {
                let uri = msg.param_str("uri")?;
                (uri, self.route_uri(links, uri).await)
            }
            _ => return None,
        };
        Some(Resolved::new(asked, target))
    }

    /// A resolution as (upstream name, target name at that upstream), what policies see.
    pub fn named<L: Links>(
        &self,
        links: &L,
        resolved: Option<&Resolved>,
    ) -> Option<(String, String)> {
        let t = resolved?.target.as_ref()?;
        if t.upstream >= self.names().len() {
            return None;
        }
        let upstream = links.upstream(t.upstream).name.to_string();
        Some((upstream, t.name.clone()))
    }

    /// What to do with a request the session does not answer itself. `route` is a routing
    /// policy's choice; `resolved` where the pipeline found the target before the policy
    /// chain ran ([`Router::resolve`]), reused as long as the chain left the name or URI
    /// alone, so a call is resolved once.
    pub async fn dispatch<L: Links>(
        self: &Arc<Self>,
        links: &L,
        msg: Message,
        route: Option<&Route>,
        resolved: Option<&Resolved>,
    ) -> Dispatch {
        if let Some(r) = route {
            return self.routed(links, msg, r, resolved).await;
        }
        match msg.method() {
            methods::TOOLS_CALL => self.by_name(links, ListKind::Tools, msg, resolved).await,
            methods::PROMPTS_GET => self.by_name(links, ListKind::Prompts, msg, resolved).await,
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => self.by_uri(links, msg, resolved).await,
            methods::COMPLETION_COMPLETE => self.complete(links, msg).await,
            method => match ListKind::from_method(method) {
                Some(kind) => Dispatch::Answer(self.list(links, kind, &msg).await),
                None if self.names().len() == 1 => Forward::to(0, msg),
                None => Dispatch::Answer(Message::error(
                    id_of(&msg),
                    codes::METHOD_NOT_FOUND,
                    &format!("Method not found: {method}"),
                    None,
                )),
            },
        }
    }

    /// Shows an upstream's answer as the client knows its names: the URIs of a
    /// `resources/read` result's contents.
    pub fn restore(&self, back: Back, upstream: usize, answer: &mut Message) {
        let Some((asked, real)) = back.read else {
            return;
        };
        let Some(contents) = answer
            .result_mut()
            .and_then(|r| r.get_mut("contents"))
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for c in contents {
            if let Some(u) = c.get("uri").and_then(Value::as_str) {
                let exposed = if u == real {
                    asked.clone()
                } else {
                    self.catalog.expose_uri(upstream, u)
                };
                c["uri"] = Value::String(exposed);
            }
        }
    }

    /// A request whose destination a routing policy chose. The name or URI is resolved as
    /// usual, then replaced by what the policy said.
    async fn routed<L: Links>(
        self: &Arc<Self>,
        links: &L,
        mut msg: Message,
        route: &Route,
        resolved: Option<&Resolved>,
    ) -> Dispatch {
        let id = id_of(&msg);
        let natural = match resolved.and_then(|r| r.of(&msg)) {
            Some(known) => known.cloned(),
            None => self.resolve(links, &msg).await.and_then(|r| r.target),
        };
        let upstream = match &route.upstream {
            Some(name) => {
                match (0..self.names().len()).find(|&i| &*links.upstream(i).name == name) {
                    Some(idx) => Some(idx),
                    None => {
                        return Dispatch::Answer(Message::error(
                            id,
                            codes::INTERNAL_ERROR,
                            &format!("policy routed to unknown upstream '{name}'"),
                            None,
                        ));
                    }
                }
            }
            None => natural.as_ref().map(|t| t.upstream),
        };
        let Some(upstream) = upstream else {
            return Dispatch::Answer(Message::error(
                id,
                codes::INVALID_PARAMS,
                "no upstream for this request",
                None,
            ));
        };
        let key = match msg.method() {
            methods::TOOLS_CALL | methods::PROMPTS_GET => Some("name"),
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => Some("uri"),
            _ => None,
        };
        if let Some(key) = key {
            let name = route.target.clone().or(natural.map(|t| t.name));
            match name {
                Some(n) => {
                    msg.params_mut().insert(key.into(), Value::String(n));
                }
                None => {
                    return Dispatch::Answer(Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        &format!("unknown {key}"),
                        None,
                    ));
                }
            }
        }
        Forward::to(upstream, msg)
    }

    async fn by_name<L: Links>(
        self: &Arc<Self>,
        links: &L,
        kind: ListKind,
        mut msg: Message,
        resolved: Option<&Resolved>,
    ) -> Dispatch {
        let Some(name) = msg.param_str("name").map(str::to_string) else {
            return invalid(&msg, "missing \"name\"");
        };
        let target = match resolved.and_then(|r| r.of_name(&name)) {
            Some(known) => known.cloned(),
            None => self.route_name(links, kind, &name).await,
        };
        let Some(target) = target else {
            let what = if kind == ListKind::Tools {
                "tool"
            } else {
                "prompt"
            };
            return invalid(&msg, &format!("Unknown {what}: {name}"));
        };
        msg.params_mut()
            .insert("name".into(), Value::String(target.name));
        Forward::to(target.upstream, msg)
    }

    async fn by_uri<L: Links>(
        self: &Arc<Self>,
        links: &L,
        mut msg: Message,
        resolved: Option<&Resolved>,
    ) -> Dispatch {
        let Some(uri) = msg.param_str("uri").map(str::to_string) else {
            return invalid(&msg, "missing \"uri\"");
        };
        let target = match resolved.and_then(|r| r.of_name(&uri)) {
            Some(known) => known.cloned(),
            None => self.route_uri(links, &uri).await,
        };
        let Some(target) = target else {
            return Dispatch::Answer(Message::error(
                id_of(&msg),
                codes::RESOURCE_NOT_FOUND,
                &format!("Resource not found: {uri}"),
                Some(json!({ "uri": uri })),
            ));
        };
        let read = msg.method() == methods::RESOURCES_READ;
        let real = target.name.clone();
        msg.params_mut()
            .insert("uri".into(), Value::String(target.name));
        Dispatch::Forward(Forward {
            upstream: target.upstream,
            msg,
            back: Back {
                read: read.then_some((uri, real)),
            },
        })
    }

    async fn complete<L: Links>(self: &Arc<Self>, links: &L, mut msg: Message) -> Dispatch {
        let reference = msg
            .params()
            .and_then(|p| p.get("ref"))
            .cloned()
            .unwrap_or_default();
        let (key, target) = match reference["type"].as_str() {
            Some("ref/prompt") => {
                let name = reference["name"].as_str().unwrap_or_default();
                (
                    "name",
                    self.route_name(links, ListKind::Prompts, name).await,
                )
            }
            Some("ref/resource") => {
                let uri = reference["uri"].as_str().unwrap_or_default();
                ("uri", self.route_template(links, uri).await)
            }
            _ => return invalid(&msg, "unknown completion reference"),
        };
        let Some(target) = target else {
            return invalid(&msg, "unknown completion reference");
        };
        if let Some(r) = msg.params_mut().get_mut("ref") {
            r[key] = Value::String(target.name);
        }
        Forward::to(target.upstream, msg)
    }

    /// A merged list page; upstreams that fail are left out and logged.
    async fn list<L: Links>(self: &Arc<Self>, links: &L, kind: ListKind, msg: &Message) -> Message {
        let id = id_of(msg);
        let merged = self.merged(links, kind).await;
        match page(&merged.items, msg.param_str("cursor"), self.page_size) {
            Ok((items, next)) => {
                let mut result = json!({ kind.items_key(): items });
                if let Some(next) = next {
                    result["nextCursor"] = Value::String(next);
                }
                Message::result(id, result)
            }
            Err(_) => Message::error(id, codes::INVALID_PARAMS, "invalid cursor", None),
        }
    }

    /// The definition of the tool clients know as `name`, from the merged catalog.
    pub async fn tool<L: Links>(self: &Arc<Self>, links: &L, name: &str) -> Option<Value> {
        self.merged(links, ListKind::Tools)
            .await
            .items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    }

    /// Names (tools or prompts) that more than one upstream exposes, with their upstreams.
    pub async fn collisions<L: Links>(
        self: &Arc<Self>,
        links: &L,
        kind: ListKind,
    ) -> Vec<(String, Vec<usize>)> {
        self.merged(links, kind).await.collisions()
    }

    /// The merged list of `kind`; upstreams that fail or are late are left out and logged
    /// (`lists.rs`).
    async fn merged<L: Links>(self: &Arc<Self>, links: &L, kind: ListKind) -> Arc<Merged> {
        self.gather(links, kind).await
    }

    async fn route_name<L: Links>(
        self: &Arc<Self>,
        links: &L,
        kind: ListKind,
        exposed: &str,
    ) -> Option<Target> {
        let names = self.names();
        let split = || {
            names.split(exposed).map(|(upstream, name)| Target {
                upstream,
                name: name.into(),
            })
        };
        if names.mode == crate::config::PrefixMode::Always {
            return split();
        }
        self.merged(links, kind).await.route(exposed).or_else(split)
    }

    /// A URI with an upstream's prefix (`<upstream>+<uri>`), split without listing.
    fn prefixed_uri(&self, uri: &str) -> Option<Target> {
        let (upstream, name) = self.names().split_uri(uri)?;
        Some(Target {
            upstream,
            name: name.into(),
        })
    }

    async fn route_uri<L: Links>(self: &Arc<Self>, links: &L, uri: &str) -> Option<Target> {
        if let Some(t) = self.prefixed_uri(uri) {
            return Some(t);
        }
        let resources = self.merged(links, ListKind::Resources).await;
        if let Some(t) = resources.route(uri) {
            return Some(t);
        }
        if let Some(upstream) = resources.sole_owner(uri) {
            return Some(Target {
                upstream,
                name: uri.into(),
            });
        }
        if let Some(t) = self
            .merged(links, ListKind::Templates)
            .await
            .template_owner(uri)
        {
            return Some(t);
        }
        (self.names().len() == 1).then(|| Target {
            upstream: 0,
            name: uri.into(),
        })
    }

    async fn route_template<L: Links>(self: &Arc<Self>, links: &L, uri: &str) -> Option<Target> {
        if let Some(t) = self.prefixed_uri(uri) {
            return Some(t);
        }
        let templates = self.merged(links, ListKind::Templates).await;
        templates.route(uri).or_else(|| {
            templates.sole_owner(uri).map(|upstream| Target {
                upstream,
                name: uri.into(),
            })
        })
    }
}

fn id_of(msg: &Message) -> Value {
    msg.id().cloned().unwrap_or(Value::Null)
}

fn invalid(msg: &Message, why: &str) -> Dispatch {
    Dispatch::Answer(Message::error(id_of(msg), codes::INVALID_PARAMS, why, None))
}
