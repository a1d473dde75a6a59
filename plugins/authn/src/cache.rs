//! The verified-token cache: once a JWT's signature and claims check out, the identity mapped
//! from it is kept in the gateway's key-value store, so the same token on the next request
//! (agents send theirs on every one) costs two hashes and a lookup instead of a signature
//! verification (RS256 in Wasm: about half a millisecond).
//!
//! - **Key**: `jwt:` + hex SHA-256 of (the SHA-256 of the whole `[config]` text, the token).
//!   Any change to the configuration (keys, issuers, claim mapping, required scopes) keys
//!   every token afresh, so an identity computed under the old one is never served, and the
//!   entries of the old one simply expire. The token itself is stored nowhere.
//! - **Value**: the identity exactly as verification and claim mapping produced it, and the
//!   token's `exp`, as JSON.
//! - **Lifetime**: until `exp` (leeway does not count) or for `cache-seconds`, whichever
//!   ends first. `exp` is also checked on every hit, so the store's clock, which starts
//!   the TTL a moment after ours read `now`, cannot stretch an entry past it.
//! - Only accepted tokens are stored. `required-scopes` is checked on every call, cached
//!   or not.
//! - Not seen by the cache: a key removed from `jwks-file` (read per call) keeps accepting
//!   tokens already cached under it, for at most `cache-seconds`.
//!
//! The store belongs to the gateway (per plugin, in its process), so an entry serves fresh
//! and warm instances alike and outlives plugin reloads; the configuration hash in the key
//! is what makes that safe.

use std::cell::OnceCell;
use std::fmt;
use std::time::Duration;

use portcullis_sdk::serde_json::{self, value::RawValue};
use portcullis_sdk::{Identity, kv};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apikey;

/// Bump it when the entry's format, the meaning of the claim mapping or what verification
/// accepts changes, so that a new version of the plugin never serves an entry an old one
/// wrote. v2: unknown `kid`s, duplicate members and out-of-range times are refused; a token
/// the v1 plugin accepted for them must not outlive the upgrade in the store.
pub(crate) const FORMAT: &[u8] = b"authn verified-token cache v2\0";

/// The cache of one configuration: `[config.jwt] cache-seconds` above 0.
pub struct TokenCache {
    /// The longest an entry lives, in seconds (at least 1).
    lifetime: u32,
    /// The whole `[config]` as the gateway passed it.
    config_text: Box<RawValue>,
    /// The SHA-256 of [`FORMAT`] and `config_text`, made on the first token an instance sees
    /// (API-key calls never pay for it).
    fingerprint: OnceCell<[u8; 32]>,
}

impl fmt::Debug for TokenCache {
    /// Never prints the configuration: it may hold the HS256 secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenCache({}s)", self.lifetime)
    }
}

/// An entry as stored.
#[derive(Serialize, Deserialize)]
struct Entry {
    exp: i64,
    subject: String,
    roles: Vec<String>,
    scopes: Vec<String>,
    tenant: Option<String>,
    attributes: Vec<(String, String)>,
}

impl TokenCache {
    /// A cache keeping entries at most `lifetime` seconds; `None` if `lifetime` is 0 (off).
    pub fn new(lifetime: u32, config_text: Box<RawValue>) -> Option<TokenCache> {
        (lifetime > 0).then(|| TokenCache {
            lifetime,
            config_text,
            fingerprint: OnceCell::new(),
        })
    }

    /// The store key of `token` under this configuration.
    pub fn key(&self, token: &str) -> String {
        let fingerprint = self.fingerprint.get_or_init(|| {
            Sha256::new()
                .chain_update(FORMAT)
                .chain_update(self.config_text.get())
                .finalize()
                .into()
        });
        let digest = Sha256::new()
            .chain_update(fingerprint)
            .chain_update(token)
            .finalize();
        format!("jwt:{}", apikey::hex(&digest))
    }

    /// The identity cached under `key`, if any and its token has not expired at `now`.
    pub fn lookup(&self, key: &str, now: i64) -> Option<Identity> {
        let bytes = kv::get(key)?;
        // An entry that does not parse is a miss: the token is verified and stored again.
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        if now >= entry.exp {
            return None;
        }
        Some(Identity {
            subject: entry.subject,
            roles: entry.roles,
            scopes: entry.scopes,
            tenant: entry.tenant,
            attributes: entry.attributes,
        })
    }

    /// Caches the `identity` of a token accepted at `now` that expires at `exp`; nothing if it
    /// is already past `exp` (accepted within the leeway).
    pub fn store(&self, key: &str, identity: &Identity, exp: i64, now: i64) {
        let ttl = exp.saturating_sub(now).min(i64::from(self.lifetime));
        let Ok(ttl) = u64::try_from(ttl) else {
            return;
        };
        if ttl == 0 {
            return;
        }
        let entry = Entry {
            exp,
            subject: identity.subject.clone(),
            roles: identity.roles.clone(),
            scopes: identity.scopes.clone(),
            tenant: identity.tenant.clone(),
            attributes: identity.attributes.clone(),
        };
        if let Ok(value) = serde_json::to_vec(&entry) {
            kv::set(key, &value, Some(Duration::from_secs(ttl)));
        }
    }
}
