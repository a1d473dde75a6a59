//! A pattern reads from configuration as a string (what `serde` needs of [`Glob`]).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::glob::Glob;

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Glob;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a pattern (a string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Glob, E> {
                Ok(Glob::new(v))
            }
        }
        d.deserialize_str(V)
    }
}
