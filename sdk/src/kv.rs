//! The policy's own key-value store, kept by the gateway.
//!
//! Each evaluation runs in a fresh instance, so anything that must outlive one call (rate
//! limit counters, caches) goes here. Other policies cannot see this policy's keys. A counter
//! made by [`incr`] is stored as 8 bytes, a little-endian `i64`.
//!
//! Natively (in unit tests) the store is an in-memory map per thread, with the same
//! semantics, so each `#[test]` starts empty.
//!
//! ```
//! use std::time::Duration;
//! use portcullis_sdk::kv;
//!
//! let calls = kv::incr("calls:alice", 1, Some(Duration::from_secs(60)));
//! assert_eq!(calls, 1);
//! kv::set("last-tool", b"search", None);
//! assert_eq!(kv::get_string("last-tool").as_deref(), Some("search"));
//! ```

use std::time::Duration;

/// Reads a value.
pub fn get(key: &str) -> Option<Vec<u8>> {
    imp::get(key)
}

/// Reads a value that was stored as UTF-8 text (`None` if absent or not UTF-8).
pub fn get_string(key: &str) -> Option<String> {
    String::from_utf8(get(key)?).ok()
}

/// Stores a value, optionally expiring after `ttl`.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) {
    imp::set(key, value, ttl.map(millis));
}

/// Adds `delta` to a counter (starting at 0) and returns the new value, atomically across
/// concurrent evaluations; `ttl` sets the expiry when the counter is created.
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
    imp::incr(key, delta, ttl.map(millis))
}

/// Stores `value` only if the key holds `expected` (`None`: absent or expired), atomically
/// across concurrent evaluations; says whether it did. `ttl` sets the new value's expiry.
///
/// For updates a counter cannot express: read, compute, swap, and read again on `false`.
///
/// ```
/// use portcullis_sdk::kv;
///
/// // Keep the largest value seen, however many evaluations race.
/// let offer = 42u64;
/// loop {
///     let seen = kv::get("max");
///     let max = seen.as_deref().map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
///     if offer <= max || kv::compare_and_swap("max", seen.as_deref(), &offer.to_le_bytes(), None) {
///         break;
///     }
/// }
/// assert_eq!(kv::get("max"), Some(42u64.to_le_bytes().to_vec()));
/// ```
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: &[u8],
    ttl: Option<Duration>,
) -> bool {
    imp::compare_and_swap(key, expected, value, ttl.map(millis))
}

/// Removes a value.
pub fn delete(key: &str) {
    imp::delete(key);
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::portcullis::policy::host;

    pub fn get(key: &str) -> Option<Vec<u8>> {
        host::kv_get(key)
    }

    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        host::kv_set(key, value, ttl_ms);
    }

    pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        host::kv_incr(key, delta, ttl_ms)
    }

    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> bool {
        host::kv_compare_and_swap(key, expected, value, ttl_ms)
    }

    pub fn delete(key: &str) {
        host::kv_delete(key);
    }
}

/// The native stand-in for the gateway's store, with its semantics (expiry, counters).
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    struct Entry {
        value: Vec<u8>,
        expires: Option<Instant>,
    }

    impl Entry {
        fn live(&self, now: Instant) -> bool {
            self.expires.is_none_or(|e| e > now)
        }
    }

    thread_local! {
        static STORE: RefCell<HashMap<String, Entry>> = RefCell::new(HashMap::new());
    }

    fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
        ttl_ms.map(|ms| now + Duration::from_millis(ms))
    }

    pub fn get(key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        STORE.with_borrow(|s| s.get(key).filter(|e| e.live(now)).map(|e| e.value.clone()))
    }

    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
        let expires = expiry(Instant::now(), ttl_ms);
        STORE.with_borrow_mut(|s| {
            s.insert(
                key.to_string(),
                Entry {
                    value: value.to_vec(),
                    expires,
                },
            )
        });
    }

    pub fn incr(key: &str, delta: i64, ttl_ms: Option<u64>) -> i64 {
        let now = Instant::now();
        STORE.with_borrow_mut(|s| {
            let entry = s.entry(key.to_string()).or_insert_with(|| Entry {
                value: Vec::new(),
                expires: None,
            });
            let current = match <[u8; 8]>::try_from(entry.value.as_slice()) {
                Ok(bytes) if entry.live(now) => i64::from_le_bytes(bytes),
                _ => {
                    entry.expires = expiry(now, ttl_ms);
                    0
                }
            };
            let next = current.saturating_add(delta);
            entry.value = next.to_le_bytes().to_vec();
            next
        })
    }

    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> bool {
        let now = Instant::now();
        STORE.with_borrow_mut(|s| {
            let current = s
                .get(key)
                .filter(|e| e.live(now))
                .map(|e| e.value.as_slice());
            if current != expected {
                return false;
            }
            s.insert(
                key.to_string(),
                Entry {
                    value: value.to_vec(),
                    expires: expiry(now, ttl_ms),
                },
            );
            true
        })
    }

    pub fn delete(key: &str) {
        STORE.with_borrow_mut(|s| s.remove(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_little_endian_and_expire() {
        assert_eq!(incr("c", 2, None), 2);
        assert_eq!(incr("c", -5, None), -3);
        assert_eq!(get("c"), Some((-3i64).to_le_bytes().to_vec()));
        set("c", b"text", None);
        assert_eq!(
            incr("c", 1, None),
            1,
            "a value that is not a counter restarts at 0"
        );
        assert_eq!(incr("t", 1, Some(Duration::from_millis(1))), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(incr("t", 1, None), 1, "an expired counter restarts");
        delete("c");
        assert_eq!(get_string("c"), None);
    }

    #[test]
    fn compare_and_swap_needs_the_value_it_expects() {
        assert!(compare_and_swap("k", None, b"1", None));
        assert!(!compare_and_swap("k", None, b"2", None));
        assert!(!compare_and_swap("k", Some(b"0"), b"2", None));
        assert!(compare_and_swap("k", Some(b"1"), b"2", None));
        assert_eq!(get_string("k").as_deref(), Some("2"));
        assert!(compare_and_swap(
            "t",
            None,
            b"x",
            Some(Duration::from_millis(1))
        ));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            compare_and_swap("t", None, b"y", None),
            "expired counts as absent"
        );
    }
}
