//! The session tag: what logs, traces and audit records name a session by.
//!
//! A client's `Mcp-Session-Id` is a bearer value: whoever holds it may use the session (unless
//! an authn policy binds it to its owner), and a sealed id also carries the upstream sessions
//! opened for it, so it is not written to any log, span or audit record. They carry the first
//! 16 hex digits of its SHA-256 instead: the same session always gets the same tag, and an
//! operator holding an id finds its records with
//! `printf %s "$ID" | sha256sum | cut -c1-16`.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// Hex digits in a tag (64 bits of the digest).
pub const SESSION_TAG_LEN: usize = 16;

/// The tag of session id `id` (see the module docs).
pub fn session_tag(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let mut tag = String::with_capacity(SESSION_TAG_LEN);
    for b in &digest[..SESSION_TAG_LEN / 2] {
        let _ = write!(tag, "{b:02x}");
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_the_start_of_the_ids_sha256() {
        // printf %s 'abc' | sha256sum
        assert_eq!(session_tag("abc"), "ba7816bf8f01cfea");
        assert_ne!(session_tag("abd"), session_tag("abc"));
    }
}
