//! Sealing: AES-256-GCM under a [`Keyring`], the one cipher behind everything the gateway
//! hands out sealed — session ids (`session/seal.rs`), task ids (`session/tasks.rs`), the
//! cluster bus and its `requestState`s (`cluster/wire.rs`).
//!
//! - Wire shape: `nonce (96 bits) ‖ ciphertext ‖ tag (128 bits)`; as text, a prefix naming
//!   the kind and version (`ps1.`, `pt1.`, `pgs1.`) + base64url without padding.
//! - Rotation: the current key seals; the current and every previous key open.
//! - Domain separation: each user passes its own associated data, so a sealed thing of one
//!   kind never opens as another (a task id is no session id, even under the same key).
//! - Nonces are random, or given by the caller (task ids use a synthetic one, so one task
//!   always gets one id).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest as _;

/// Bytes of the nonce at the start of everything sealed.
const NONCE: usize = 12;
/// Bytes of the authentication tag at its end.
const TAG: usize = 16;

/// The keys things are sealed with: the first seals, all open.
pub struct Keyring {
    current: Aes256Gcm,
    previous: Vec<Aes256Gcm>,
}

/// A key for one purpose derived from a configured key (SHA-256 of `purpose ‖ key`), so one
/// key never serves two purposes.
pub fn derive(key: &[u8; 32], purpose: &[u8]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(purpose);
    h.update(key);
    h.finalize().into()
}

impl Keyring {
    /// `keys[0]` seals; every key opens. `None` without keys.
    pub fn new(keys: &[[u8; 32]]) -> Option<Keyring> {
        let (first, rest) = keys.split_first()?;
        let cipher = |k: &[u8; 32]| Aes256Gcm::new(k.into());
        Some(Keyring {
            current: cipher(first),
            previous: rest.iter().map(cipher).collect(),
        })
    }

    /// A keyring of one random key: what it seals opens only in this process.
    pub fn random() -> Keyring {
        let key: [u8; 32] = rand::random();
        Keyring {
            current: Aes256Gcm::new(&key.into()),
            previous: Vec::new(),
        }
    }

    /// `text` sealed under the current key with a random nonce.
    pub fn seal(&self, text: &[u8], aad: &[u8]) -> Vec<u8> {
        self.seal_with_nonce(rand::random(), text, aad)
    }

    /// `text` sealed under the current key with `nonce`, which must never seal another
    /// plaintext under this key (a synthetic nonce: a keyed hash of what is sealed).
    pub fn seal_with_nonce(&self, nonce: [u8; NONCE], text: &[u8], aad: &[u8]) -> Vec<u8> {
        let sealed = self
            .current
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: text, aad })
            // AES-GCM fails only on inputs of gigabytes; nothing sealed here comes close.
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        raw
    }

    /// What `raw` seals, if a key of the ring sealed it with `aad`.
    pub fn open(&self, raw: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if raw.len() < NONCE + TAG {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE);
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|c| {
                c.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
                    .ok()
            })
    }

    /// `prefix` + base64url of `raw` (what [`Keyring::seal`] gave).
    pub fn text(prefix: &str, raw: &[u8]) -> String {
        format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// What a text token seals: it must start with `prefix`, be at most `max` bytes long
    /// (checked before anything is decoded) and open with `aad`.
    pub fn open_text(&self, prefix: &str, max: usize, token: &str, aad: &[u8]) -> Option<Vec<u8>> {
        if token.len() > max {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token.strip_prefix(prefix)?).ok()?;
        self.open(&raw, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_under_any_key_of_the_ring_with_its_own_aad_only() {
        let old = Keyring::new(&[[1; 32]]).unwrap();
        let rotated = Keyring::new(&[[2; 32], [1; 32]]).unwrap();
        let token = Keyring::text("x1.", &old.seal(b"hello", b"kind a"));
        assert_eq!(
            rotated.open_text("x1.", 100, &token, b"kind a").as_deref(),
            Some(&b"hello"[..])
        );
        assert!(rotated.open_text("x1.", 100, &token, b"kind b").is_none());
        assert!(rotated.open_text("y1.", 100, &token, b"kind a").is_none());
        assert!(rotated.open_text("x1.", 10, &token, b"kind a").is_none());
        let new = Keyring::text("x1.", &rotated.seal(b"hello", b"kind a"));
        assert!(old.open_text("x1.", 100, &new, b"kind a").is_none());
        assert!(
            Keyring::random()
                .open_text("x1.", 100, &token, b"kind a")
                .is_none()
        );
        assert!(old.open(b"short", b"kind a").is_none());
    }

    #[test]
    fn what_aes_gcm_sealed_directly_opens() {
        // The wire shape every user had before sharing this file: nonce ‖ ciphertext ‖ tag.
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let cipher = Aes256Gcm::new(&[4u8; 32].into());
        let nonce = [7u8; NONCE];
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: b"old",
                    aad: b"ad",
                },
            )
            .unwrap();
        let raw = [&nonce[..], &sealed].concat();
        let ring = Keyring::new(&[[9; 32], [4; 32]]).unwrap();
        assert_eq!(ring.open(&raw, b"ad").as_deref(), Some(&b"old"[..]));
        assert_eq!(
            Keyring::new(&[[4; 32]])
                .unwrap()
                .seal_with_nonce(nonce, b"old", b"ad"),
            raw
        );
    }

    #[test]
    fn a_given_nonce_makes_the_same_sealing() {
        let ring = Keyring::new(&[[3; 32]]).unwrap();
        let a = ring.seal_with_nonce([9; 12], b"t", b"aad");
        assert_eq!(a, ring.seal_with_nonce([9; 12], b"t", b"aad"));
        assert_ne!(ring.seal(b"t", b"aad"), ring.seal(b"t", b"aad"));
        assert_eq!(ring.open(&a, b"aad").as_deref(), Some(&b"t"[..]));
    }
}
