//! API keys: the format we recommend, the hash the configuration stores, and the lookup.
//!
//! A key is any string a client sends; the configuration keeps only its SHA-256 (lowercase
//! hex of the digest of the key's UTF-8 bytes, exactly as sent, prefix included), so a leaked
//! sidecar file gives nobody a working key. [`hash_key`] defines that hash for the plugin; the
//! gateway's `portcullis authn new-key` / `hash-key` print the same (an end-to-end test checks
//! that a key they make is accepted).

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The prefix of the keys `portcullis authn new-key` makes: it tells a key from a JWT at a
/// glance and makes leaked keys easy to find with secret scanners.
pub const KEY_PREFIX: &str = "pk_";

/// The SHA-256 of `key` as 64 lowercase hex digits: what goes in the configuration as
/// `sha256 = "…"`.
///
/// ```
/// assert_eq!(
///     authn::hash_key("abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Parses a configured hash: exactly 64 hex digits (either case).
pub(crate) fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        let hint = if text.starts_with(KEY_PREFIX) {
            " (this looks like the key itself: store only its hash, `portcullis authn hash-key` prints it)"
        } else {
            ""
        };
        return Err(format!(
            "sha256 must be 64 hex digits, the SHA-256 of the key{hint}"
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        out[i] = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Ok(out)
}

/// The index of the entry whose hash is the digest of `key`, comparing every entry in
/// constant time (no early exit, no data-dependent branch), so response timing tells an
/// attacker nothing about how close a guess was or which entry matched.
pub(crate) fn find(hashes: &[[u8; 32]], key: &str) -> (Option<usize>, [u8; 32]) {
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = u32::MAX;
    for (i, hash) in hashes.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        found.conditional_assign(&index, hash.ct_eq(&digest));
    }
    let found = (found != u32::MAX).then_some(found as usize);
    (found, digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_key(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn finds_the_matching_hash_and_nothing_else() {
        let hashes = [
            parse_hash(&hash_key("one")).unwrap(),
            parse_hash(&hash_key("two").to_uppercase()).unwrap(),
        ];
        assert_eq!(find(&hashes, "two").0, Some(1));
        assert_eq!(find(&hashes, "one").0, Some(0));
        assert_eq!(find(&hashes, "three").0, None);
        assert_eq!(find(&[], "one").0, None);
    }

    #[test]
    fn rejects_hashes_that_are_not_64_hex_digits() {
        assert!(parse_hash("abc").is_err());
        assert!(parse_hash(&"g".repeat(64)).is_err());
        let err = parse_hash("pk_abcdefghijklmnopqrstuvwxyz").unwrap_err();
        assert!(err.contains("looks like the key itself"), "{err}");
    }
}
