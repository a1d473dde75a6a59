//! Protocol revisions the gateway speaks and how it negotiates them.

/// The newest session-era revision; what the gateway asks its upstreams for.
pub const LATEST: &str = "2025-11-25";

/// Revisions a client may negotiate on the Streamable HTTP endpoint, newest first.
pub const SUPPORTED: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// The stateless revision: no `initialize`, no session; every request carries its version
/// in `MCP-Protocol-Version` and `_meta` (front/stateless/).
pub const STATELESS: &str = "2026-07-28";

/// Every revision the gateway serves, newest first (`server/discover`, and the
/// `supported` list of an unsupported-version error).
pub const ALL: &[&str] = &["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// The revision a client gets for the one it asked for: the same if supported, else the latest
/// (the client then decides whether it can continue, as the lifecycle spec says).
pub fn negotiate(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED.iter().find(|v| **v == r).copied())
        .unwrap_or(LATEST)
}

/// Whether an `MCP-Protocol-Version` header value names a revision we speak (either era).
pub fn is_supported(v: &str) -> bool {
    ALL.contains(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_down_and_falls_back_to_latest() {
        assert_eq!(negotiate(Some("2025-06-18")), "2025-06-18");
        assert_eq!(negotiate(Some("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate(Some("1999-01-01")), LATEST);
        assert_eq!(negotiate(None), LATEST);
    }
}
