//! The keyed chain: how a record becomes a sealed line, and how a line is checked.
//!
//! A sealed line is the record's JSON object with two members appended, `prev` (the hash of
//! the record before it, 64 zeros for the first record of a segment) and then `hash`:
//!
//! ```text
//! {"seq":1,…,"prev":"000…000","hash":"9f2c…"}
//! ```
//!
//! `hash` is the HMAC-SHA256 under the chain key (lower-case hex) of the line's bytes without
//! the `,"hash":"…"` member, i.e. of `{"seq":1,…,"prev":"000…000"}` exactly as written.
//! Hashing the bytes as written (no re-serialization) makes the check independent of JSON
//! formatting: any change to a byte of a record changes its hash, and since the next record
//! carries that hash as its `prev`, a record cannot be changed, removed or moved without
//! breaking the chain at that point. Because the hash is keyed, nobody without the key can
//! compute a valid one: not for an appended record, not for a file re-sealed from some point
//! on (a plain SHA-256 chain could be recomputed by anyone who can write the file). Cutting
//! records off the end leaves a valid chain: the signed checkpoints (`checkpoint.rs`) catch it.

use serde::Deserialize;

use super::keys::ChainKey;

/// `prev` of the first record of a segment.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What closes every sealed line: `,"hash":"` + 64 hex digits + `"}`.
const HASH_MEMBER: &str = ",\"hash\":\"";
const SEAL_LEN: usize = HASH_MEMBER.len() + 64 + 2;

/// Seals one record: `json` is its JSON object (`{…}`), `prev` the hash of the record before
/// it. Returns the line (with its newline) and the record's hash.
pub fn seal(json: &[u8], prev: &str, key: &ChainKey) -> (Vec<u8>, String) {
    debug_assert!(json.len() >= 2 && json.last() == Some(&b'}'));
    let open = &json[..json.len() - 1];
    let mut line = Vec::with_capacity(json.len() + 16 + 64 + SEAL_LEN + 1);
    line.extend_from_slice(open);
    if open.len() > 1 {
        line.push(b',');
    }
    line.extend_from_slice(b"\"prev\":\"");
    line.extend_from_slice(prev.as_bytes());
    line.extend_from_slice(b"\"}");
    let hash = key.mac(&[&line]);
    line.pop();
    line.extend_from_slice(HASH_MEMBER.as_bytes());
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    (line, hash)
}

/// What a sealed line says about its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev: String,
    /// The hash the line states.
    pub hash: String,
    /// Whether the stated hash is the keyed hash of the line's content; `None` when read
    /// without the key (the content cannot be checked then, only the links).
    pub intact: Option<bool>,
}

/// Why a line is not a sealed record at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("not a sealed audit record (no trailing hash member)")]
    NoSeal,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no {0} member")]
    Missing(&'static str),
}

#[derive(Deserialize)]
struct Members {
    seq: Option<u64>,
    prev: Option<String>,
    hash: Option<String>,
}

/// Reads one line (without its newline) as a sealed record, checking its hash with `key`.
pub fn open(line: &str, key: Option<&ChainKey>) -> Result<Link, Unreadable> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() < SEAL_LEN + 2 || !line.ends_with("\"}") {
        return Err(Unreadable::NoSeal);
    }
    let body_end = line.len() - SEAL_LEN;
    if !line.is_char_boundary(body_end) || !line[body_end..].starts_with(HASH_MEMBER) {
        return Err(Unreadable::NoSeal);
    }
    let members: Members =
        serde_json::from_str(line).map_err(|e| Unreadable::NotJson(e.to_string()))?;
    let seq = members.seq.ok_or(Unreadable::Missing("seq"))?;
    let prev = members.prev.ok_or(Unreadable::Missing("prev"))?;
    let hash = members.hash.ok_or(Unreadable::Missing("hash"))?;
    let intact = key.map(|k| {
        let expected = k.mac(&[&line.as_bytes()[..body_end], b"}"]);
        subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), hash.as_bytes()).into()
    });
    Ok(Link {
        seq,
        prev,
        hash,
        intact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ChainKey {
        ChainKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_sealed_line_opens_intact_and_any_edit_shows() {
        let key = key();
        let (line, hash) = seal(br#"{"seq":1,"event":"start"}"#, GENESIS, &key);
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.ends_with("\"}\n"));
        assert!(
            text.starts_with(r#"{"seq":1,"event":"start","prev":"0000"#),
            "{text}"
        );
        let link = open(text.trim_end(), Some(&key)).unwrap();
        assert_eq!(
            link,
            Link {
                seq: 1,
                prev: GENESIS.into(),
                hash: hash.clone(),
                intact: Some(true)
            }
        );
        let edited = text.trim_end().replace("start", "stArt");
        assert_eq!(open(&edited, Some(&key)).unwrap().intact, Some(false));
        // Without the key the links are readable, the content is not checked.
        assert_eq!(open(&edited, None).unwrap().intact, None);

        // The next record links to this one.
        let (next, _) = seal(br#"{"seq":2}"#, &hash, &key);
        let next = open(std::str::from_utf8(&next).unwrap().trim_end(), Some(&key)).unwrap();
        assert_eq!(next.prev, hash);
        assert_eq!(next.intact, Some(true));
    }

    #[test]
    fn a_line_sealed_with_plain_sha256_or_another_key_is_not_intact() {
        use sha2::{Digest as _, Sha256};
        let key = key();
        let body = format!(r#"{{"seq":1,"event":"start","prev":"{GENESIS}"}}"#);
        let plain = super::super::keys::hex(&Sha256::digest(body.as_bytes()));
        let resealed = format!("{}{HASH_MEMBER}{plain}\"}}", &body[..body.len() - 1]);
        assert_eq!(open(&resealed, Some(&key)).unwrap().intact, Some(false));

        let other = ChainKey::new(b"another key, also thirty-two bytes long").unwrap();
        let (line, _) = seal(br#"{"seq":1}"#, GENESIS, &other);
        let line = std::str::from_utf8(&line).unwrap().trim_end();
        assert_eq!(open(line, Some(&key)).unwrap().intact, Some(false));
        assert_eq!(open(line, Some(&other)).unwrap().intact, Some(true));
    }

    #[test]
    fn lines_that_are_not_records_are_unreadable() {
        let open = |l: &str| open(l, None);
        assert_eq!(open("hello"), Err(Unreadable::NoSeal));
        assert_eq!(open(""), Err(Unreadable::NoSeal));
        let fake = format!("{{\"seq\":1{HASH_MEMBER}{}\"}}", "a".repeat(64));
        assert_eq!(open(&fake), Err(Unreadable::Missing("prev")));
        let broken = format!("{{\"seq\":1,{HASH_MEMBER}{}\"}}", "a".repeat(64));
        assert!(matches!(open(&broken), Err(Unreadable::NotJson(_))));
    }
}
