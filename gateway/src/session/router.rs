//! Routing a client request to the upstream that owns it: name and URI resolution against
//! the session's merged catalog, the fan-out and merge of `*/list`, and a routing policy's
//! override. (Moved verbatim from `handle.rs`.)

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Resolved, Route, Session};
use crate::catalog::{ListKind, Target, page};
use crate::mcp::{Message, codes, methods};
use crate::upstream::{Related, UpstreamError};

/// Most pages fetched from one upstream for one list (guards against a cursor loop).
const MAX_UPSTREAM_PAGES: usize = 100;

impl Session {
    /// A request whose destination a routing policy chose. The name or URI is resolved as
    /// usual, then replaced by what the policy said.
    pub(super) async fn routed(
        &self,
        mut msg: Message,
        out: Related,
        route: &Route,
        resolved: Option<&Resolved>,
    ) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let natural = match resolved.and_then(|r| r.of(&msg)) {
            Some(known) => known.cloned(),
            None => self.resolve(&msg).await.and_then(|r| r.target),
        };
        let upstream = match &route.upstream {
            Some(name) => match self.slots.iter().position(|s| &*s.upstream.name == name) {
                Some(idx) => Some(idx),
                None => {
                    return Message::error(
                        id,
                        codes::INTERNAL_ERROR,
                        &format!("policy routed to unknown upstream '{name}'"),
                        None,
                    );
                }
            },
            None => natural.as_ref().map(|t| t.upstream),
        };
        let Some(upstream) = upstream else {
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                "no upstream for this request",
                None,
            );
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
                    return Message::error(
                        id,
                        codes::INVALID_PARAMS,
                        &format!("unknown {key}"),
                        None,
                    );
                }
            }
        }
        self.forward(upstream, msg, out).await
    }

    /// Where the catalog would send a request: (upstream index, its own name for the
    /// target), with the name or URI it was asked for. `None` for a request that names
    /// nothing (lists, `ping`) or leaves its name or URI out.
    pub async fn resolve(&self, msg: &Message) -> Option<Resolved> {
        let (asked, target) = match msg.method() {
            methods::TOOLS_CALL => {
                let name = msg.param_str("name")?;
                (name, self.route_name(ListKind::Tools, name).await)
            }
            methods::PROMPTS_GET => {
                let name = msg.param_str("name")?;
                (name, self.route_name(ListKind::Prompts, name).await)
            }
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => {
                let uri = msg.param_str("uri")?;
                (uri, self.route_uri(uri).await)
            }
            // A task call goes where its id says (policies see that upstream and its id).
            m if super::tasks::addresses_task(m) => {
                let id = msg.param_str("taskId")?;
                let target = self
                    .open_task(id)
                    .map(|(upstream, name)| Target { upstream, name });
                (id, target)
            }
            _ => return None,
        };
        Some(Resolved {
            asked: asked.to_string(),
            target,
        })
    }

    /// A resolution as (upstream name, target name at that upstream), what policies see.
    pub fn named(&self, resolved: Option<&Resolved>) -> Option<(String, String)> {
        let t = resolved?.target.as_ref()?;
        let upstream = self.slots.get(t.upstream)?.upstream.name.to_string();
        Some((upstream, t.name.clone()))
    }

    pub(super) async fn by_name(
        &self,
        kind: ListKind,
        mut msg: Message,
        out: Related,
        resolved: Option<&Resolved>,
    ) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let Some(name) = msg.param_str("name").map(str::to_string) else {
            return Message::error(id, codes::INVALID_PARAMS, "missing \"name\"", None);
        };
        let target = match resolved.and_then(|r| r.of_name(&name)) {
            Some(known) => known.cloned(),
            None => self.route_name(kind, &name).await,
        };
        let Some(target) = target else {
            let what = if kind == ListKind::Tools {
                "tool"
            } else {
                "prompt"
            };
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                &format!("Unknown {what}: {name}"),
                None,
            );
        };
        msg.params_mut()
            .insert("name".into(), Value::String(target.name));
        self.forward(target.upstream, msg, out).await
    }

    pub(super) async fn by_uri(
        &self,
        mut msg: Message,
        out: Related,
        resolved: Option<&Resolved>,
    ) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let Some(uri) = msg.param_str("uri").map(str::to_string) else {
            return Message::error(id, codes::INVALID_PARAMS, "missing \"uri\"", None);
        };
        let target = match resolved.and_then(|r| r.of_name(&uri)) {
            Some(known) => known.cloned(),
            None => self.route_uri(&uri).await,
        };
        let Some(target) = target else {
            return Message::error(
                id,
                codes::RESOURCE_NOT_FOUND,
                &format!("Resource not found: {uri}"),
                Some(json!({ "uri": uri })),
            );
        };
        let real = target.name.clone();
        msg.params_mut()
            .insert("uri".into(), Value::String(target.name));
        let read = msg.method() == methods::RESOURCES_READ;
        let mut response = self.forward(target.upstream, msg, out).await;
        if read
            && let Some(contents) = response
                .result_mut()
                .and_then(|r| r.get_mut("contents"))
                .and_then(Value::as_array_mut)
        {
            for c in contents {
                if let Some(u) = c.get("uri").and_then(Value::as_str) {
                    let exposed = if u == real {
                        uri.clone()
                    } else {
                        self.catalog.expose_uri(target.upstream, u)
                    };
                    c["uri"] = Value::String(exposed);
                }
            }
        }
        response
    }

    pub(super) async fn complete(&self, mut msg: Message, out: Related) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let reference = msg
            .params()
            .and_then(|p| p.get("ref"))
            .cloned()
            .unwrap_or_default();
        let (key, target) = match reference["type"].as_str() {
            Some("ref/prompt") => {
                let name = reference["name"].as_str().unwrap_or_default();
                ("name", self.route_name(ListKind::Prompts, name).await)
            }
            Some("ref/resource") => {
                let uri = reference["uri"].as_str().unwrap_or_default();
                ("uri", self.route_template(uri).await)
            }
            _ => {
                return Message::error(
                    id,
                    codes::INVALID_PARAMS,
                    "unknown completion reference",
                    None,
                );
            }
        };
        let Some(target) = target else {
            return Message::error(
                id,
                codes::INVALID_PARAMS,
                "unknown completion reference",
                None,
            );
        };
        if let Some(r) = msg.params_mut().get_mut("ref") {
            r[key] = Value::String(target.name);
        }
        self.forward(target.upstream, msg, out).await
    }

    /// A merged list page; upstreams that fail are left out and logged.
    pub(super) async fn list(&self, kind: ListKind, msg: &Message) -> Message {
        let id = msg.id().cloned().unwrap_or(Value::Null);
        let merged = self.merged(kind).await;
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
    pub async fn tool(&self, name: &str) -> Option<Value> {
        self.merged(ListKind::Tools)
            .await
            .items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .cloned()
    }

    /// The merged list of `kind`; upstreams that fail or are late are left out and logged
    /// (`lists.rs`).
    pub(super) async fn merged(&self, kind: ListKind) -> Arc<crate::catalog::Merged> {
        self.gather(kind).await
    }

    /// Every page of one upstream's list.
    pub(super) async fn fetch_list(
        &self,
        idx: usize,
        kind: ListKind,
    ) -> Result<Vec<Value>, UpstreamError> {
        let link = self.link(idx).await?;
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

    pub(super) async fn route_name(&self, kind: ListKind, exposed: &str) -> Option<Target> {
        let names = &self.catalog.names;
        let split = || {
            names.split(exposed).map(|(upstream, name)| Target {
                upstream,
                name: name.into(),
            })
        };
        if names.mode == crate::config::PrefixMode::Always {
            return split();
        }
        self.merged(kind).await.route(exposed).or_else(split)
    }

    pub(super) async fn route_uri(&self, uri: &str) -> Option<Target> {
        if let Some((upstream, name)) = self.catalog.names.split_uri(uri) {
            return Some(Target {
                upstream,
                name: name.into(),
            });
        }
        let resources = self.merged(ListKind::Resources).await;
        if let Some(t) = resources.route(uri) {
            return Some(t);
        }
        if let Some(upstream) = resources.sole_owner(uri) {
            return Some(Target {
                upstream,
                name: uri.into(),
            });
        }
        if let Some(t) = self.merged(ListKind::Templates).await.template_owner(uri) {
            return Some(t);
        }
        (self.slots.len() == 1).then(|| Target {
            upstream: 0,
            name: uri.into(),
        })
    }

    pub(super) async fn route_template(&self, uri: &str) -> Option<Target> {
        if let Some((upstream, name)) = self.catalog.names.split_uri(uri) {
            return Some(Target {
                upstream,
                name: name.into(),
            });
        }
        let templates = self.merged(ListKind::Templates).await;
        templates.route(uri).or_else(|| {
            templates.sole_owner(uri).map(|upstream| Target {
                upstream,
                name: uri.into(),
            })
        })
    }

    /// Names (tools or prompts) that more than one upstream exposes, with their upstreams.
    pub async fn collisions(&self, kind: ListKind) -> Vec<(String, Vec<usize>)> {
        self.merged(kind).await.collisions()
    }
}
