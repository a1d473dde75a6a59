//! A token's JSON (its header and its claims), read strictly: an object that names a member
//! twice, at any depth, is refused.
//!
//! RFC 7515 §4 and RFC 7519 §4 let a verifier either refuse duplicate member names or keep the
//! last one; serde_json keeps the last one. A token signed with `"sub": "alice", "sub":
//! "admin"` would then mean `admin` here and possibly `alice` to any other reader of the same
//! bytes (an audit pipeline, the identity provider's own logs), so no reading of it is
//! trusted. The parsing is serde_json's; only the building of objects is ours, so that a
//! repeated name is an error instead of an overwrite.

use std::fmt;

use portcullis_sdk::serde_json::{self, Map, Number, Value, map::Entry};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::jwt::clip;

/// Parses `bytes` as one JSON object in which no object repeats a member name.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(Value::Object(map))) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not a JSON object ({e})")),
    }
}

/// A JSON value deserialized with [`StrictVisitor`].
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

/// Builds a [`Value`] like serde_json's own visitor, except that a repeated member name in an
/// object is an error.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number from JSON text.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            match map.entry(name) {
                Entry::Vacant(slot) => {
                    let Strict(value) = access.next_value()?;
                    slot.insert(value);
                }
                Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format_args!(
                        "member {:?} appears more than once",
                        clip(taken.key())
                    )));
                }
            }
        }
        Ok(Value::Object(map))
    }
}
