//! Digests the tests compare against: API-key hashes, plugin hashes, session tags.

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    Sha256::digest(data.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tag the gateway names session `id` by in logs, spans and audit records: the first 16
/// hex digits of its SHA-256 (docs/observability.md).
pub fn session_tag(id: &str) -> String {
    sha256_hex(id)[..16].to_string()
}
