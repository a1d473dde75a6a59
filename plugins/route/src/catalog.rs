//! Per-caller catalog rewriting: what `tools/list` shows (response phase) and what a
//! `tools/call` name means (request phase), from the same entries so the two always agree.

use portcullis_sdk::Identity;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::config::{Action, Config, Entry};
use crate::who;

/// What a called name means for this caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Called<'c> {
    /// A name an entry gives: call the original (client-facing name) instead.
    Mapped(&'c str),
    /// An original this caller may not call by that name (hidden or renamed).
    Hidden,
    /// Not touched by the catalog.
    AsIs,
}

/// The entries that concern this caller.
pub fn entries_for<'c>(config: &'c Config, id: Option<&Identity>) -> Vec<&'c Entry> {
    config
        .catalog
        .iter()
        .filter(|e| who::concerns(&e.who, id))
        .collect()
}

/// What `name` means: entries that give it win over entries that hide it, so a tool can be
/// hidden under its own name and offered under another.
pub fn resolve<'c>(entries: &[&'c Entry], name: &str) -> Called<'c> {
    if let Some(e) = entries.iter().find(|e| e.maps(name)) {
        return match &e.tool {
            crate::glob::Glob::Exact(original) => Called::Mapped(original),
            // Configuration forbids renaming a pattern; never reached.
            _ => Called::Hidden,
        };
    }
    if entries.iter().any(|e| e.hides(name)) {
        return Called::Hidden;
    }
    Called::AsIs
}

/// The `tools/list` result as this caller sees it, as JSON text, or `None` when nothing
/// changes. Only the tools an entry concerns are copied; the rest of the result is
/// serialized straight from the parsed one.
pub fn rewrite_list(entries: &[&Entry], result: &Value) -> Option<String> {
    let object = result.as_object()?;
    let tools = object.get("tools")?.as_array()?;
    let mut out: Vec<Shown> = Vec::with_capacity(tools.len());
    let mut changed = false;
    for tool in tools {
        let Some(name) = tool.get("name").and_then(Value::as_str) else {
            out.push(Shown::As(tool));
            continue;
        };
        let concerned: Vec<&Entry> = entries
            .iter()
            .copied()
            .filter(|e| e.tool.is_match(name))
            .collect();
        // A name an entry gives to another tool is that tool's from now on.
        let shadowed = entries.iter().any(|e| e.maps(name));
        if concerned.is_empty() && !shadowed {
            out.push(Shown::As(tool));
            continue;
        }
        changed = true;
        // Entries that only re-describe apply to every name the tool is shown under.
        let mut base = tool.clone();
        for e in &concerned {
            if let Action::Show {
                rename: None,
                aliases,
                description,
                title,
            } = &e.action
                && aliases.is_empty()
            {
                describe(&mut base, description.as_deref(), title.as_deref());
            }
        }
        let hidden = shadowed || concerned.iter().any(|e| e.hides(name));
        let mut shown_as_self = !hidden;
        for e in &concerned {
            let Action::Show {
                rename,
                aliases,
                description,
                title,
            } = &e.action
            else {
                continue;
            };
            for new in rename.iter().chain(aliases) {
                if &**new == name {
                    shown_as_self = false;
                }
                let mut copy = base.clone();
                if let Some(obj) = copy.as_object_mut() {
                    obj.insert("name".into(), Value::String(new.to_string()));
                }
                describe(&mut copy, description.as_deref(), title.as_deref());
                out.push(Shown::New(copy));
            }
        }
        if shown_as_self {
            out.push(Shown::New(base));
        }
    }
    if !changed {
        return None;
    }
    // Serializing strings and JSON values cannot fail; were it to, no tool is shown rather
    // than the unrewritten list.
    Some(
        serde_json::to_string(&View {
            object,
            tools: &out,
        })
        .unwrap_or_else(|_| r#"{"tools":[]}"#.to_string()),
    )
}

/// A tool as listed: the upstream's item untouched, or a rewritten copy.
enum Shown<'a> {
    As(&'a Value),
    New(Value),
}

impl Serialize for Shown<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shown::As(v) => v.serialize(s),
            Shown::New(v) => v.serialize(s),
        }
    }
}

/// The result with its `tools` replaced, serialized in place.
struct View<'a> {
    object: &'a Map<String, Value>,
    tools: &'a [Shown<'a>],
}

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.object.len()))?;
        for (k, v) in self.object {
            if k == "tools" {
                map.serialize_entry(k, self.tools)?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

fn describe(tool: &mut Value, description: Option<&str>, title: Option<&str>) {
    let Some(obj) = tool.as_object_mut() else {
        return;
    };
    if let Some(d) = description {
        obj.insert("description".into(), Value::String(d.into()));
    }
    if let Some(t) = title {
        obj.insert("title".into(), Value::String(t.into()));
    }
}
