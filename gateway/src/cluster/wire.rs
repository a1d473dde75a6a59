//! What travels on the bus, and how it is sealed.
//!
//! Every bus message is `nonce ‖ AES-256-GCM(session key, JSON)` with its own associated
//! data: Redis (and whoever can read or publish there) sees neither the notifications nor
//! the answers it carries, and a message not sealed under a configured key is dropped.
//! Sealed with the current key, opened with the current or any previous one, like session
//! ids, so a key rotation does not split the cluster. A message names its sender (a random
//! replica id) and when it was sent; one older than [`MAX_AGE`] is dropped, so a captured
//! message cannot be replayed later.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::seal::Keyring;

/// Associated data of bus messages.
const AAD: &[u8] = b"portcullis cluster bus v1";
/// Associated data of the `requestState` of parked calls.
const STATE_AAD: &[u8] = b"portcullis request state v1";
/// Prefix of a `requestState` the gateway issued.
const STATE_PREFIX: &str = "pgs1.";

/// Oldest message accepted (clocks of replicas are assumed within this of each other).
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// One message on the bus.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending replica.
    pub from: String,
    /// Sent at, Unix milliseconds.
    pub at: u64,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A message of a session for whichever replica holds a stream of it.
    Session {
        /// What names the session on every replica (see `Session::bus_topic`).
        topic: String,
        /// The upstream that sent it.
        upstream: String,
        msg: Value,
        /// A change (list changed, resource updated): for listen streams too.
        change: bool,
    },
    /// A client's answer to a request the receiving replica sent it (session era).
    Answer { session: String, msg: Value },
    /// A request for the replica that owns something (a parked call).
    Call { corr: u64, payload: Value },
    /// The caller of `corr` went away.
    Cancel { corr: u64 },
    /// One step of the answer to `corr`.
    Reply { corr: u64, step: Step },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The owner has the call and is working on it.
    Ack,
    /// Still working (sent while nothing else was).
    Alive,
    /// The HTTP answer's status and content type.
    Head {
        status: u16,
        content_type: Option<String>,
    },
    /// Bytes of its body.
    Chunk { data: String },
    /// The body is complete.
    End,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The session keys as ciphers: the first seals, all open.
pub struct Seal {
    keys: Keyring,
}

impl Seal {
    pub fn new(keys: &[[u8; 32]]) -> Option<Seal> {
        Some(Seal {
            keys: Keyring::new(keys)?,
        })
    }

    pub fn seal_envelope(&self, envelope: &Envelope) -> Vec<u8> {
        let text = serde_json::to_vec(envelope).unwrap_or_default();
        self.keys.seal(&text, AAD)
    }

    /// The envelope in `raw`, if it was sealed under one of the keys and is recent.
    pub fn open_envelope(&self, raw: &[u8]) -> Result<Envelope, Unreadable> {
        let text = self.keys.open(raw, AAD).ok_or(Unreadable::Seal)?;
        let envelope: Envelope = serde_json::from_slice(&text).map_err(|_| Unreadable::Shape)?;
        if now_ms().saturating_sub(envelope.at) > MAX_AGE.as_millis() as u64 {
            return Err(Unreadable::Stale);
        }
        Ok(envelope)
    }

    /// A `requestState` naming `replica` as the owner of a parked call.
    pub fn seal_state(&self, replica: &[u8; 8]) -> String {
        let mut text = [0u8; 24];
        text[..8].copy_from_slice(replica);
        text[8..].copy_from_slice(&rand::random::<[u8; 16]>());
        Keyring::text(STATE_PREFIX, &self.keys.seal(&text, STATE_AAD))
    }

    /// The replica a `requestState` the gateway issued names; `None` for any other state
    /// (an upstream's, a forged one).
    pub fn state_owner(&self, state: &str) -> Option<[u8; 8]> {
        let max = STATE_PREFIX.len() + 128;
        let text = self.keys.open_text(STATE_PREFIX, max, state, STATE_AAD)?;
        text.get(..8)?.try_into().ok()
    }
}

/// Why a bus message was dropped unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not sealed under a configured key (another cluster's, tampered, garbage).
    Seal,
    /// Sealed, but not a message this version knows.
    Shape,
    /// Older than [`MAX_AGE`].
    Stale,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_and_states_open_under_current_and_previous_keys_only() {
        let old = Seal::new(&[[1; 32]]).unwrap();
        let rotated = Seal::new(&[[2; 32], [1; 32]]).unwrap();
        let other = Seal::new(&[[3; 32]]).unwrap();
        let env = Envelope {
            from: "a".into(),
            at: now_ms(),
            body: Body::Cancel { corr: 7 },
        };
        let raw = old.seal_envelope(&env);
        assert!(matches!(
            rotated.open_envelope(&raw),
            Ok(Envelope {
                body: Body::Cancel { corr: 7 },
                ..
            })
        ));
        assert_eq!(other.open_envelope(&raw).unwrap_err(), Unreadable::Seal);
        let mut tampered = raw.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(old.open_envelope(&tampered).unwrap_err(), Unreadable::Seal);
        let stale = Envelope {
            at: now_ms() - 2 * MAX_AGE.as_millis() as u64,
            ..env
        };
        assert_eq!(
            old.open_envelope(&old.seal_envelope(&stale)).unwrap_err(),
            Unreadable::Stale
        );

        let state = old.seal_state(b"replica1");
        assert!(state.starts_with("pgs1."), "{state}");
        assert_eq!(rotated.state_owner(&state), Some(*b"replica1"));
        assert_eq!(other.state_owner(&state), None);
        assert_ne!(old.seal_state(b"replica1"), state, "states are unique");
        assert_eq!(old.state_owner("0123456789abcdef"), None);
        assert_eq!(old.state_owner("pgs1.AAAA"), None);
    }
}
