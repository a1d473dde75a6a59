//! What the policy plugins match with, in one place: name patterns ([`glob`]) and the
//! conditions a rule, a limit or a route puts on the caller ([`caller`]). Built for
//! `wasm32-wasip2` like the plugins that use it (`authz`, `rate-limit`, `route`), and small:
//! no dependency beyond the SDK.

#![deny(missing_docs)]

pub mod caller;
mod de;
pub mod glob;
