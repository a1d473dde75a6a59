//! The sidecar's `[config]` table, read and checked into [`Config`].
//!
//! `init` runs in every fresh instance, so this is on the per-call path: patterns are
//! compiled once per instance and everything else is checked here, so `evaluate` never meets
//! a configuration it cannot act on.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::glob::Glob;

/// How the gateway namespaces names (mirror of its `[namespacing] prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrefixMode {
    /// Every name is `<upstream><separator><name>`.
    #[default]
    Always,
    /// Only names two upstreams share are prefixed.
    WhenNeeded,
    /// Nothing is prefixed.
    Never,
}

/// What a weighted split hashes to keep a caller on one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sticky {
    /// The caller's subject.
    Subject,
    /// The caller's tenant (callers without one are split at random).
    Tenant,
    /// The client session (requests without one are split at random).
    Session,
}

/// The configuration, compiled.
#[derive(Debug)]
pub struct Config {
    /// The gateway's `[namespacing] separator`.
    pub separator: Box<str>,
    /// The gateway's `[namespacing] prefix`.
    pub prefix: PrefixMode,
    /// Routing rules, in file order: the first that matches a call decides.
    pub routes: Vec<Route>,
    /// Catalog rewrites, in file order.
    pub catalog: Vec<Entry>,
}

/// A named value (identity attribute, tool argument) and the patterns it must match (any of).
pub type Patterns = (Box<str>, Vec<Glob>);

/// Conditions on the caller; every one present must hold. `None`: not restricted.
#[derive(Debug, Default)]
pub struct Who {
    pub subjects: Option<Vec<Glob>>,
    pub roles: Option<Vec<Glob>>,
    pub tenants: Option<Vec<Glob>>,
    pub attributes: Vec<Patterns>,
}

/// Where a matching call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub upstream: Box<str>,
    /// The tool's name at that upstream; `None`: the name it has at the upstream the gateway
    /// would have chosen.
    pub target: Option<Box<str>>,
    pub weight: u32,
}

/// A routing rule.
#[derive(Debug)]
pub struct Route {
    pub name: Box<str>,
    pub who: Who,
    /// Client-facing names (as sent, after catalog aliases).
    pub targets: Option<Vec<Glob>>,
    /// The tool's own name at its upstream.
    pub tools: Option<Vec<Glob>>,
    /// The upstream the gateway would choose.
    pub upstreams: Option<Vec<Glob>>,
    /// `params.arguments.<name>` as text, against patterns (any of).
    pub arguments: Vec<Patterns>,
    /// One destination (weight ignored), several (a weighted split), or none (only a shadow).
    pub split: Vec<Destination>,
    pub sticky: Option<Sticky>,
    pub shadow: Option<Shadow>,
}

/// A copy of the call for a second upstream, whose answer is discarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub upstream: Box<str>,
    pub target: Option<Box<str>>,
    /// Share of matching calls copied, 0 < percent <= 100.
    pub percent: f64,
}

/// A catalog rewrite.
#[derive(Debug)]
pub struct Entry {
    pub who: Who,
    /// The tool as `tools/list` shows it (client-facing name). A pattern only for entries
    /// that hide or re-describe.
    pub tool: Glob,
    pub action: Action,
}

/// What a catalog entry does to its tools.
#[derive(Debug)]
pub enum Action {
    /// Leave it out of the list and refuse calls to it.
    Hide,
    /// Show it under other names (and, for `rename`, not under its own).
    Show {
        rename: Option<Box<str>>,
        aliases: Vec<Box<str>>,
        description: Option<Box<str>>,
        title: Option<Box<str>>,
    },
}

impl Entry {
    /// True when this entry gives the name `name` to its tool (by `rename` or `aliases`).
    pub fn maps(&self, name: &str) -> bool {
        match &self.action {
            Action::Show {
                rename, aliases, ..
            } => rename.as_deref() == Some(name) || aliases.iter().any(|a| &**a == name),
            Action::Hide => false,
        }
    }

    /// True when calls to `name` (an original) are refused because of this entry.
    pub fn hides(&self, name: &str) -> bool {
        match &self.action {
            Action::Hide => self.tool.is_match(name),
            Action::Show { rename, .. } => rename.is_some() && self.tool.is_match(name),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    #[serde(default)]
    separator: Option<String>,
    #[serde(default)]
    prefix: PrefixMode,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    catalog: Vec<RawEntry>,
}

/// The caller conditions of a route or entry (written inline in both: serde's `flatten`
/// would disable `deny_unknown_fields`).
struct RawWho {
    subjects: Option<Vec<String>>,
    roles: Option<Vec<String>>,
    tenants: Option<Vec<String>>,
    attributes: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDestination {
    upstream: String,
    #[serde(default)]
    target: Option<String>,
    weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawRoute {
    name: String,
    #[serde(default)]
    description: Option<IgnoredAny>,
    #[serde(default)]
    subjects: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    targets: Option<Vec<String>>,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default)]
    upstreams: Option<Vec<String>>,
    #[serde(default)]
    arguments: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    split: Vec<RawDestination>,
    #[serde(default)]
    sticky: Option<Sticky>,
    #[serde(default)]
    shadow: Option<String>,
    #[serde(default)]
    shadow_target: Option<String>,
    #[serde(default)]
    shadow_percent: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawEntry {
    tool: String,
    #[serde(default)]
    subjects: Option<Vec<String>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    tenants: Option<Vec<String>>,
    #[serde(default)]
    attributes: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    hide: bool,
    #[serde(default)]
    rename: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawConfig::deserialize(d)?;
        Config::compile(raw).map_err(serde::de::Error::custom)
    }
}

fn globs(what: &str, field: &str, list: Vec<String>) -> Result<Vec<Glob>, String> {
    if list.is_empty() {
        return Err(format!(
            "{what}: `{field}` is empty, so it would match nothing (leave it out to not restrict)"
        ));
    }
    let out: Vec<Glob> = list.iter().map(|p| Glob::new(p)).collect();
    if out.iter().any(Glob::is_empty) {
        return Err(format!("{what}: `{field}` has an empty pattern"));
    }
    Ok(out)
}

fn maybe_globs(
    what: &str,
    field: &str,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<Glob>>, String> {
    list.map(|l| globs(what, field, l)).transpose()
}

fn table(
    what: &str,
    field: &str,
    map: BTreeMap<String, OneOrMany>,
) -> Result<Vec<Patterns>, String> {
    map.into_iter()
        .map(|(k, v)| {
            let g = globs(what, &format!("{field}.{k}"), v.into_vec())?;
            Ok((k.into_boxed_str(), g))
        })
        .collect()
}

impl Who {
    fn compile(what: &str, raw: RawWho) -> Result<Who, String> {
        Ok(Who {
            subjects: maybe_globs(what, "subjects", raw.subjects)?,
            roles: maybe_globs(what, "roles", raw.roles)?,
            tenants: maybe_globs(what, "tenants", raw.tenants)?,
            attributes: table(what, "attributes", raw.attributes)?,
        })
    }
}

/// A name a client will call: not empty, no wildcard, no surrounding space.
fn plain_name(what: &str, field: &str, name: &str) -> Result<Box<str>, String> {
    if name.is_empty() || name.trim() != name || name.contains(['*', '?']) {
        return Err(format!(
            "{what}: `{field}` = {name:?} must be a plain tool name (no wildcards, no surrounding spaces)"
        ));
    }
    Ok(name.into())
}

fn upstream_name(what: &str, field: &str, name: &str) -> Result<Box<str>, String> {
    if name.is_empty() || name.trim() != name {
        return Err(format!(
            "{what}: `{field}` = {name:?} is not an upstream name"
        ));
    }
    Ok(name.into())
}

impl Route {
    fn compile(raw: RawRoute) -> Result<Route, String> {
        let name = raw.name.trim();
        if name.is_empty() {
            return Err("a route has an empty `name`".into());
        }
        let what = format!("route {name:?}");
        let what = what.as_str();
        let _ = raw.description;
        let target = raw
            .target
            .map(|t| plain_name(what, "target", &t))
            .transpose()?;
        let split = match (raw.upstream, raw.split.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "{what}: give either `upstream` or `split`, not both"
                ));
            }
            (Some(u), true) => vec![Destination {
                upstream: upstream_name(what, "upstream", &u)?,
                target,
                weight: 1,
            }],
            (None, false) => {
                if target.is_some() {
                    return Err(format!(
                        "{what}: with `split`, give each destination its own `target`"
                    ));
                }
                let mut out = Vec::with_capacity(raw.split.len());
                for d in raw.split {
                    out.push(Destination {
                        upstream: upstream_name(what, "split.upstream", &d.upstream)?,
                        target: d
                            .target
                            .map(|t| plain_name(what, "split.target", &t))
                            .transpose()?,
                        weight: d.weight,
                    });
                }
                if out.iter().all(|d| d.weight == 0) {
                    return Err(format!("{what}: every `split` weight is 0"));
                }
                out
            }
            (None, true) => match target {
                // A new name at the upstream the gateway would choose.
                Some(_) => {
                    return Err(format!(
                        "{what}: `target` needs an `upstream` (the gateway cannot route a name without one)"
                    ));
                }
                None => Vec::new(),
            },
        };
        if raw.sticky.is_some() && split.len() < 2 {
            return Err(format!(
                "{what}: `sticky` only means something with a `split`"
            ));
        }
        let shadow = match raw.shadow {
            Some(u) => {
                let percent = raw.shadow_percent.unwrap_or(100.0);
                if !(percent > 0.0 && percent <= 100.0) {
                    return Err(format!(
                        "{what}: `shadow-percent` = {percent} must be more than 0 and at most 100"
                    ));
                }
                Some(Shadow {
                    upstream: upstream_name(what, "shadow", &u)?,
                    target: raw
                        .shadow_target
                        .map(|t| plain_name(what, "shadow-target", &t))
                        .transpose()?,
                    percent,
                })
            }
            None if raw.shadow_target.is_some() || raw.shadow_percent.is_some() => {
                return Err(format!(
                    "{what}: `shadow-target` and `shadow-percent` need `shadow` (the upstream to copy to)"
                ));
            }
            None => None,
        };
        if split.is_empty() && shadow.is_none() {
            return Err(format!(
                "{what}: decides nothing; give `upstream`, `split` or `shadow`"
            ));
        }
        Ok(Route {
            name: name.into(),
            who: Who::compile(
                what,
                RawWho {
                    subjects: raw.subjects,
                    roles: raw.roles,
                    tenants: raw.tenants,
                    attributes: raw.attributes,
                },
            )?,
            targets: maybe_globs(what, "targets", raw.targets)?,
            tools: maybe_globs(what, "tools", raw.tools)?,
            upstreams: maybe_globs(what, "upstreams", raw.upstreams)?,
            arguments: table(what, "arguments", raw.arguments)?,
            split,
            sticky: raw.sticky,
            shadow,
        })
    }
}

impl Entry {
    fn compile(index: usize, raw: RawEntry) -> Result<Entry, String> {
        let what = format!("catalog entry {} (tool {:?})", index + 1, raw.tool);
        let what = what.as_str();
        if raw.tool.is_empty() {
            return Err(format!("{what}: `tool` is empty"));
        }
        let tool = Glob::new(&raw.tool);
        let wild = raw.tool.contains(['*', '?']);
        let action = if raw.hide {
            if raw.rename.is_some()
                || !raw.aliases.is_empty()
                || raw.description.is_some()
                || raw.title.is_some()
            {
                return Err(format!(
                    "{what}: `hide` cannot be combined with `rename`, `aliases`, `description` or `title`"
                ));
            }
            Action::Hide
        } else {
            let rename = raw
                .rename
                .map(|n| plain_name(what, "rename", &n))
                .transpose()?;
            let aliases = raw
                .aliases
                .iter()
                .map(|n| plain_name(what, "aliases", n))
                .collect::<Result<Vec<_>, _>>()?;
            if wild && (rename.is_some() || !aliases.is_empty()) {
                return Err(format!(
                    "{what}: `rename` and `aliases` need one tool, not a pattern"
                ));
            }
            if rename.is_none()
                && aliases.is_empty()
                && raw.description.is_none()
                && raw.title.is_none()
            {
                return Err(format!(
                    "{what}: does nothing; give `hide`, `rename`, `aliases`, `description` or `title`"
                ));
            }
            if let Some(r) = &rename
                && (aliases.contains(r) || **r == *raw.tool)
            {
                return Err(format!("{what}: `rename` repeats a name it already has"));
            }
            Action::Show {
                rename,
                aliases,
                description: raw.description.map(String::into_boxed_str),
                title: raw.title.map(String::into_boxed_str),
            }
        };
        Ok(Entry {
            who: Who::compile(
                what,
                RawWho {
                    subjects: raw.subjects,
                    roles: raw.roles,
                    tenants: raw.tenants,
                    attributes: raw.attributes,
                },
            )?,
            tool,
            action,
        })
    }
}

impl Config {
    fn compile(raw: RawConfig) -> Result<Config, String> {
        let separator = raw.separator.unwrap_or_else(|| "__".into());
        if separator.is_empty() {
            return Err("`separator` is empty (the gateway's default is \"__\")".into());
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for r in raw.routes {
            let route = Route::compile(r)?;
            if routes.iter().any(|o: &Route| o.name == route.name) {
                return Err(format!("route {:?} is defined twice", route.name));
            }
            routes.push(route);
        }
        let catalog = raw
            .catalog
            .into_iter()
            .enumerate()
            .map(|(i, e)| Entry::compile(i, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            separator: separator.into(),
            prefix: raw.prefix,
            routes,
            catalog,
        })
    }

    /// The upstream and the upstream's own name of a client-facing tool name, when the
    /// namespacing makes it certain (`prefix = "always"`).
    pub fn split_name<'n>(&self, client: &'n str) -> Option<(&'n str, &'n str)> {
        match self.prefix {
            PrefixMode::Always => client.split_once(&*self.separator),
            PrefixMode::WhenNeeded | PrefixMode::Never => None,
        }
    }
}
