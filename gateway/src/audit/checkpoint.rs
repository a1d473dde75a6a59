//! Signed checkpoints: where the chain stood, signed with the gateway's Ed25519 key, one JSON
//! line each in a file of their own (`<path>.checkpoints` by default).
//!
//! ```text
//! {"seq":1840,"hash":"5be1…","segment":"9f2c…","file":"audit.jsonl","time":"2026-12-07T…Z","sig":"…"}
//! ```
//!
//! `seq` and `hash` are the last record written when the checkpoint was taken (the trail is
//! synced to disk first, so a checkpoint never gets ahead of the records); `segment` is the
//! hash of the segment's first record (it tells the checkpoints of two segments apart);
//! `file` the file that record was in then (rotation renames it later). `sig` is the Ed25519
//! signature of [`DOMAIN`] followed by the line's bytes without the `,"sig":"…"` member,
//! closed with `}` — the same "bytes as written" rule as the chain.
//!
//! The chain's keyed hashes stop anyone without the chain key from adding or rewriting
//! records; they cannot show records cut off the end. A checkpoint can: the trail must reach
//! the last checkpoint's record and have its hash there. Anyone with the public key can check
//! the checkpoints; only the gateway, with the private key, can make one.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::keys::{hex, unhex};

/// What every signature covers before the line: keeps a checkpoint signature from being
/// taken for anything else signed with the same key.
pub const DOMAIN: &[u8] = b"portcullis audit checkpoint v1\n";

const SIG_MEMBER: &str = ",\"sig\":\"";
const SIG_LEN: usize = SIG_MEMBER.len() + 128 + 2;

/// One checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The hash of the segment's first record.
    pub segment: String,
    /// The file the record was in when the checkpoint was taken.
    pub file: String,
    /// When, RFC 3339 UTC.
    pub time: String,
}

impl Checkpoint {
    /// The signed line, with its newline.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        // A struct of strings and a number always serializes.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        let sig = key.sign(&[DOMAIN, &line].concat());
        line.pop();
        line.extend_from_slice(SIG_MEMBER.as_bytes());
        line.extend_from_slice(hex(&sig.to_bytes()).as_bytes());
        line.extend_from_slice(b"\"}\n");
        line
    }

    /// Reads a signed line (without its newline); `Err` says why it is not a valid checkpoint.
    pub fn open(line: &str, key: &VerifyingKey) -> Result<Checkpoint, &'static str> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() < SIG_LEN + 2 || !line.ends_with("\"}") {
            return Err("not a signed checkpoint");
        }
        let body_end = line.len() - SIG_LEN;
        if !line.is_char_boundary(body_end) || !line[body_end..].starts_with(SIG_MEMBER) {
            return Err("not a signed checkpoint");
        }
        let sig = unhex::<64>(&line[body_end + SIG_MEMBER.len()..line.len() - 2])
            .ok_or("not a signed checkpoint")?;
        let body = format!("{}}}", &line[..body_end]);
        key.verify_strict(
            &[DOMAIN, body.as_bytes()].concat(),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| "its signature does not verify with the checkpoint key")?;
        serde_json::from_str(&body).map_err(|_| "not a checkpoint")
    }
}

/// A checkpoint and where it is.
#[derive(Debug, Clone)]
pub struct Found {
    pub checkpoint: Checkpoint,
    pub file: PathBuf,
    /// 1-based line in `file`.
    pub line: usize,
}

impl Found {
    /// `FILE:LINE (time T)`, for messages.
    pub fn place(&self) -> String {
        format!(
            "{}:{} ({})",
            self.file.display(),
            self.line,
            self.checkpoint.time
        )
    }
}

/// A checkpoint file that does not check out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct BadCheckpoint {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// Every checkpoint in `path`, each signature checked, in order. `Ok(None)` when the file
/// does not exist. A partial last line (a crash mid-write) is ignored.
pub fn read_all(
    path: &Path,
    key: &VerifyingKey,
) -> std::io::Result<Option<Result<Vec<Found>, BadCheckpoint>>> {
    read(path, key, false)
}

/// The last checkpoint in `path` (its signature checked; earlier ones are not read).
pub fn read_last(
    path: &Path,
    key: &VerifyingKey,
) -> std::io::Result<Option<Result<Vec<Found>, BadCheckpoint>>> {
    read(path, key, true)
}

fn read(
    path: &Path,
    key: &VerifyingKey,
    last_only: bool,
) -> std::io::Result<Option<Result<Vec<Found>, BadCheckpoint>>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    // (line number, text) of the complete lines to check.
    let mut lines: Vec<(usize, String)> = Vec::new();
    let mut n = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        buf.pop();
        n += 1;
        if last_only {
            lines.clear();
        }
        lines.push((n, String::from_utf8_lossy(&buf).into_owned()));
    }
    let mut found = Vec::with_capacity(lines.len());
    for (line, text) in lines {
        match Checkpoint::open(&text, key) {
            Ok(checkpoint) => found.push(Found {
                checkpoint,
                file: path.to_path_buf(),
                line,
            }),
            Err(reason) => {
                return Ok(Some(Err(BadCheckpoint {
                    file: path.display().to_string(),
                    line,
                    reason: reason.to_string(),
                })));
            }
        }
    }
    Ok(Some(Ok(found)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_and_any_change_or_other_key_fails() {
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let cp = Checkpoint {
            seq: 7,
            hash: "ab".repeat(32),
            segment: "cd".repeat(32),
            file: "audit.jsonl".into(),
            time: "2026-12-07T02:00:00Z".into(),
        };
        let line = String::from_utf8(cp.sign(&key)).unwrap();
        let line = line.trim_end();
        assert_eq!(Checkpoint::open(line, &key.verifying_key()).unwrap(), cp);
        let moved = line.replace("\"seq\":7", "\"seq\":9");
        assert!(Checkpoint::open(&moved, &key.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(Checkpoint::open(line, &other).is_err());
    }
}
