//! The wire format: JSON-RPC 2.0 messages as MCP uses them.
//!
//! The gateway is a proxy, so its message model is deliberately *untyped underneath*: a
//! [`Message`] keeps the whole JSON object it was parsed from, and the gateway only reads or
//! rewrites the few fields it owns (ids, names, URIs, cursors). Fields, `_meta`, extensions
//! and methods it does not know pass through byte-for-byte equivalent.

pub mod codes;
pub mod headers;
mod list_kind;
mod message;
pub mod methods;
pub mod version;

pub use list_kind::ListKind;
pub use message::{Id, IdKey, Kind, Message, ParseError};
