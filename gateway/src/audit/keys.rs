//! The trail's two keys: the chain key (HMAC-SHA256, shared by the gateway and whoever
//! verifies) and the checkpoint signing key (Ed25519: the gateway signs, anyone holding the
//! public key verifies).
//!
//! Neither key is ever written to the trail, a log line or an error message: errors name the
//! file or setting, never the value.

use std::io::Write as _;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The shortest chain key accepted: 32 bytes, the HMAC-SHA256 block's worth of entropy that
/// `openssl rand -hex 32` or `portcullis audit keygen --chain` gives (as 64 characters).
pub const MIN_KEY_BYTES: usize = 32;

/// Why a key cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("is shorter than {MIN_KEY_BYTES} bytes")]
    TooShort,
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} does not hold an Ed25519 key (64 hexadecimal digits)")]
    NotEd25519(String),
    #[error("{0} is not an Ed25519 public key (64 hexadecimal digits, or a file holding them)")]
    NotPublicKey(String),
}

/// The chain key, ready to seal: the HMAC state after the key is absorbed, cloned per record.
#[derive(Clone)]
pub struct ChainKey(Hmac<Sha256>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(…)")
    }
}

impl ChainKey {
    /// A key from its bytes (at least [`MIN_KEY_BYTES`]).
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort);
        }
        // HMAC takes a key of any length: this cannot fail.
        Hmac::<Sha256>::new_from_slice(bytes)
            .map(ChainKey)
            .map_err(|_| KeyError::TooShort)
    }

    /// A key from a file: its bytes, without trailing whitespace (a final newline).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes =
            std::fs::read(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Self::new(&bytes[..end])
    }

    /// HMAC-SHA256 of `parts`, in lower-case hex.
    pub fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        hex(&mac.finalize().into_bytes())
    }
}

/// Reads a checkpoint signing key: a file holding the 32-byte Ed25519 seed in hex.
pub fn signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| KeyError::Read(path.display().to_string(), e))?;
    let seed =
        unhex32(text.trim()).ok_or_else(|| KeyError::NotEd25519(path.display().to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A checkpoint public key: 64 hex digits, or a file holding them.
pub fn verifying_key(given: &str) -> Result<VerifyingKey, KeyError> {
    let bad = || KeyError::NotPublicKey(given.to_string());
    let text = match unhex32(given.trim()) {
        Some(_) => given.to_string(),
        None => std::fs::read_to_string(given).map_err(|_| bad())?,
    };
    let bytes = unhex32(text.trim()).ok_or_else(bad)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad())
}

/// The public key as `audit keygen` prints it and `audit verify --public-key` takes it.
pub fn public_hex(key: &VerifyingKey) -> String {
    hex(key.as_bytes())
}

/// What `portcullis audit keygen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A chain (HMAC) key: 32 random bytes as 64 hex characters.
    Chain,
    /// A checkpoint signing key: a 32-byte Ed25519 seed as 64 hex characters.
    Checkpoint,
}

/// Writes a new random key to `path` (which must not exist), readable by its owner only.
/// Returns the public key for a checkpoint key.
pub fn generate(path: &Path, kind: KeyKind) -> anyhow::Result<Option<String>> {
    use anyhow::Context as _;
    use rand::TryRngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("the operating system gave no random bytes")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(format!("{}\n", hex(&seed)).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(match kind {
        KeyKind::Chain => None,
        KeyKind::Checkpoint => Some(public_hex(&SigningKey::from_bytes(&seed).verifying_key())),
    })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

pub(super) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    unhex::<32>(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_and_errors_never_carry_the_key() {
        let short = "0123456789abcdef0123456789abcde"; // 31 bytes
        let e = ChainKey::new(short.as_bytes()).unwrap_err().to_string();
        assert!(!e.contains(short), "{e}");
        assert!(ChainKey::new(&[7u8; 32]).is_ok());
        assert_eq!(
            format!("{:?}", ChainKey::new(&[7u8; 32]).unwrap()),
            "ChainKey(…)"
        );
    }

    #[test]
    fn generated_keys_load_back_and_are_private() {
        let dir = std::env::temp_dir().join(format!("portcullis-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let chain = dir.join("chain.key");
        assert_eq!(generate(&chain, KeyKind::Chain).unwrap(), None);
        ChainKey::from_file(&chain).unwrap();
        let signing = dir.join("checkpoint.key");
        let public = generate(&signing, KeyKind::Checkpoint).unwrap().unwrap();
        let key = signing_key(&signing).unwrap();
        assert_eq!(public_hex(&key.verifying_key()), public);
        assert_eq!(verifying_key(&public).unwrap(), key.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&signing).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwritten.
        assert!(generate(&signing, KeyKind::Checkpoint).is_err());
    }
}
