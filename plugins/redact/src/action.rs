//! What happens to a finding: mask it, replace it with a label or a salted hash, remove it,
//! or block the whole message.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::detectors::Normalize;

/// An action, as the configuration names it (`action = "mask"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Replace every letter and digit with the mask character except the last `keep`.
    Mask,
    /// Replace the value with `[LABEL]`.
    Label,
    /// Replace the value with `[LABEL:<hex>]`, a salted HMAC-SHA-256 of the value.
    Hash,
    /// Replace the value with nothing.
    Remove,
    /// Refuse the whole message with a JSON-RPC error.
    Block,
}

/// An action with its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep the last `keep` letters and digits (at most half of them) visible.
    Mask {
        /// How many trailing letters and digits stay visible.
        keep: usize,
    },
    /// `[LABEL]`.
    Label,
    /// `[LABEL:<hex>]`.
    Hash,
    /// Nothing.
    Remove,
    /// Refuse the message.
    Block,
}

impl Action {
    /// The action of kind `kind`, with `keep` for masks (else `default_keep`).
    pub fn of(kind: ActionKind, keep: Option<usize>, default_keep: usize) -> Action {
        match kind {
            ActionKind::Mask => Action::Mask {
                keep: keep.unwrap_or(default_keep),
            },
            ActionKind::Label => Action::Label,
            ActionKind::Hash => Action::Hash,
            ActionKind::Remove => Action::Remove,
            ActionKind::Block => Action::Block,
        }
    }

    /// The configuration's name for it.
    pub fn kind(self) -> ActionKind {
        match self {
            Action::Mask { .. } => ActionKind::Mask,
            Action::Label => ActionKind::Label,
            Action::Hash => ActionKind::Hash,
            Action::Remove => ActionKind::Remove,
            Action::Block => ActionKind::Block,
        }
    }
}

/// Settings every replacement shares.
#[derive(Clone)]
pub struct Style {
    /// The character masks are drawn with.
    pub mask_char: char,
    /// HMAC-SHA-256 keyed with the salt, ready to be cloned per value.
    pub mac: Hmac<Sha256>,
    /// Hex digits of the HMAC kept in a hash token.
    pub hash_len: usize,
}

impl Style {
    /// The style for `salt`.
    pub fn new(mask_char: char, salt: &[u8], hash_len: usize) -> Result<Style, String> {
        let mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(salt).map_err(|e| format!("salt: {e}"))?;
        Ok(Style {
            mask_char,
            mac,
            hash_len,
        })
    }
}

impl std::fmt::Debug for Style {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Style")
            .field("mask_char", &self.mask_char)
            .field("hash_len", &self.hash_len)
            .finish_non_exhaustive()
    }
}

/// Writes the replacement for `value`, found by detector `name` (its label `label`), to `out`.
/// `Block` writes nothing: the scanner stops before replacing anything.
pub fn render(
    action: Action,
    value: &str,
    name: &str,
    label: &str,
    normalize: Normalize,
    style: &Style,
    out: &mut String,
) {
    match action {
        Action::Mask { keep } => mask(value, keep, style.mask_char, out),
        Action::Label => {
            out.push('[');
            out.push_str(label);
            out.push(']');
        }
        Action::Hash => {
            out.push('[');
            out.push_str(label);
            out.push(':');
            hash(value, name, normalize, style, out);
            out.push(']');
        }
        Action::Remove | Action::Block => {}
    }
}

/// Masks letters and digits, keeping separators (so `4111 1111 1111 1111` becomes
/// `**** **** **** 1111`) and at most half of the letters and digits visible, so a short
/// value is never shown whole.
fn mask(value: &str, keep: usize, mask_char: char, out: &mut String) {
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let visible = keep.min(total / 2);
    let mut seen = 0;
    for c in value.chars() {
        if c.is_alphanumeric() {
            seen += 1;
            if seen > total - visible {
                out.push(c);
            } else {
                out.push(mask_char);
            }
        } else {
            out.push(c);
        }
    }
}

/// The first `hash_len` hex digits of HMAC-SHA-256(salt, detector name ‖ 0 ‖ normalised
/// value): stable for one salt, useless without it.
fn hash(value: &str, name: &str, normalize: Normalize, style: &Style, out: &mut String) {
    let mut mac = style.mac.clone();
    mac.update(name.as_bytes());
    mac.update(&[0]);
    match normalize {
        Normalize::None => mac.update(value.as_bytes()),
        Normalize::Lowercase => mac.update(value.to_lowercase().as_bytes()),
        Normalize::Alphanumeric => {
            let v: String = value
                .chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_uppercase)
                .collect();
            mac.update(v.as_bytes());
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = mac.finalize().into_bytes();
    let hex = digest
        .iter()
        .flat_map(|b| [b >> 4, b & 15])
        .map(|n| char::from(HEX[usize::from(n)]));
    out.extend(hex.take(style.hash_len));
}
