//! Response phase: `*/list` results cut down to what the caller may use.
//!
//! Each item is judged as a use of it (`tools/call`, `prompts/get`, `resources/read`) by
//! its client-facing name, with the upstream read from the prefix (merged lists have no
//! single upstream). Argument conditions are unknown for a list: the item stays when some call
//! to it could be allowed. An item without a name is dropped. The result is re-serialized
//! straight from the parsed one, without copying the items that stay.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use crate::config::{Config, Rule};
use crate::decide::{Args, decide_all, readings};
use crate::methods::ListKind;

/// What filtering a list left.
pub struct Filtered {
    /// The new result as JSON, or `None` when every item stays.
    pub result: Option<String>,
    /// Items hidden.
    pub hidden: usize,
    /// Items in the list.
    pub total: usize,
}

/// Filters one list result for a caller whose rules are `rules`.
pub fn filter(
    config: &Config,
    rules: &[&Rule],
    list: ListKind,
    upstream: Option<&str>,
    result: &Value,
) -> Filtered {
    let none = Filtered {
        result: None,
        hidden: 0,
        total: 0,
    };
    let Some(object) = result.as_object() else {
        return none;
    };
    let Some(items) = object.get(list.items_key).and_then(Value::as_array) else {
        return none;
    };
    let method = list.kind.primary_method();
    let keep: Vec<bool> = items
        .iter()
        .map(|item| {
            let Some(client) = item.get(list.name_key).and_then(Value::as_str) else {
                return false;
            };
            let (readings, n) = readings(config, list.kind, method, client, upstream, None);
            decide_all(config.default, rules, &readings[..n], &Args::Unknown).is_allow()
        })
        .collect();
    let hidden = keep.iter().filter(|k| !**k).count();
    let total = items.len();
    if hidden == 0 {
        return Filtered {
            result: None,
            hidden,
            total,
        };
    }
    let view = View {
        object,
        key: list.items_key,
        items,
        keep: &keep,
    };
    Filtered {
        // Serializing a map of strings and JSON values cannot fail; were it to, nothing is
        // shown rather than everything.
        result: Some(
            serde_json::to_string(&view)
                .unwrap_or_else(|_| serde_json::json!({ list.items_key: [] }).to_string()),
        ),
        hidden,
        total,
    }
}

/// The result with its items array filtered, serialized in place.
struct View<'a> {
    object: &'a Map<String, Value>,
    key: &'a str,
    items: &'a [Value],
    keep: &'a [bool],
}

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.object.len()))?;
        for (k, v) in self.object {
            if k == self.key {
                map.serialize_entry(k, &Kept(self))?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

struct Kept<'v, 'a>(&'v View<'a>);

impl Serialize for Kept<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let view = self.0;
        let mut seq = s.serialize_seq(None)?;
        for (item, keep) in view.items.iter().zip(view.keep) {
            if *keep {
                seq.serialize_element(item)?;
            }
        }
        seq.end()
    }
}
