//! Per-plugin key-value storage offered to policies (`host.kv-*`).
//!
//! Behind the [`KvStore`] trait: the built-in [`MemoryKv`] is a sharded in-process map with
//! expiry; with `[cluster] redis` set, [`super::kv_redis::RedisKv`] shares the store between
//! replicas. Keys are namespaced by plugin name by the host, so plugins cannot see each
//! other's data. Counters survive plugin reloads: the store belongs to the gateway, not to a
//! plugin instance. The methods are async (host imports await them), so a store reached over
//! the network never blocks a runtime worker; the in-memory one answers on the first poll.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Why a store could not answer. The host turns it into a failure of the plugin's call,
/// which the plugin's `fail-open` setting then decides (deny, or pass).
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("the key-value store (redis) did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the key-value store (redis) is unavailable: {0}")]
    Unavailable(String),
}

/// Store calls that failed since start, by kind (timeouts, unavailable): `/metrics` reads them.
pub static KV_TIMEOUTS: AtomicU64 = AtomicU64::new(0);
pub static KV_UNAVAILABLE: AtomicU64 = AtomicU64::new(0);

pub(crate) fn count_error(e: &KvError) {
    match e {
        KvError::Timeout(_) => KV_TIMEOUTS.fetch_add(1, Ordering::Relaxed),
        KvError::Unavailable(_) => KV_UNAVAILABLE.fetch_add(1, Ordering::Relaxed),
    };
}

/// Storage for plugins. Implementations must make `incr` and `compare_and_swap` atomic, and
/// store a counter as 8 bytes, a little-endian `i64` (what the SDK documents).
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError>;
    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError>;
    /// Stores `value` if the key holds `expected` (`None`: absent or expired); whether it did.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
    async fn delete(&self, key: &str) -> Result<(), KvError>;
}

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// Most entries kept; past it, expired entries are swept before inserting.
const SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct MemoryKv {
    map: DashMap<String, Entry>,
}

impl std::fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKv")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl MemoryKv {
    fn sweep_if_full(&self) {
        if self.map.len() >= SWEEP_AT {
            let now = Instant::now();
            self.map.retain(|_, e| e.live(now));
        }
    }
}

impl MemoryKv {
    pub fn get_now(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    pub fn set_now(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        self.sweep_if_full();
        let expires = ttl.map(|t| Instant::now() + t);
        self.map.insert(key.to_string(), Entry { value, expires });
    }

    pub fn incr_now(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        self.sweep_if_full();
        let now = Instant::now();
        let mut entry = self.map.entry(key.to_string()).or_insert_with(|| Entry {
            value: Vec::new(),
            expires: None,
        });
        if !entry.live(now) || entry.value.len() != 8 {
            entry.value = 0i64.to_le_bytes().to_vec();
            entry.expires = ttl.map(|t| now + t);
        }
        let current = i64::from_le_bytes(entry.value[..8].try_into().unwrap_or([0; 8]));
        let next = current.saturating_add(delta);
        entry.value = next.to_le_bytes().to_vec();
        next
    }

    pub fn compare_and_swap_now(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> bool {
        self.sweep_if_full();
        let now = Instant::now();
        let expires = ttl.map(|t| now + t);
        match self.map.entry(key.to_string()) {
            dashmap::Entry::Occupied(mut held) => {
                let current = held.get().live(now).then_some(held.get().value.as_slice());
                if current != expected {
                    return false;
                }
                held.insert(Entry { value, expires });
                true
            }
            dashmap::Entry::Vacant(free) => {
                if expected.is_some() {
                    return false;
                }
                free.insert(Entry { value, expires });
                true
            }
        }
    }

    pub fn delete_now(&self, key: &str) {
        self.map.remove(key);
    }
}

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.get_now(key))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        self.set_now(key, value, ttl);
        Ok(())
    }

    async fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        Ok(self.incr_now(key, delta, ttl))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        Ok(self.compare_and_swap_now(key, expected, value, ttl))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.delete_now(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_is_a_counter_with_expiry() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr_now("a", 2, None), 2);
        assert_eq!(kv.incr_now("a", 3, None), 5);
        assert_eq!(kv.incr_now("b", 1, Some(Duration::from_millis(1))), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.incr_now("b", 1, None), 1, "expired counters restart");
        kv.set_now("c", b"x".to_vec(), None);
        assert_eq!(kv.get_now("c").as_deref(), Some(&b"x"[..]));
        kv.delete_now("c");
        assert_eq!(kv.get_now("c"), None);
    }

    #[test]
    fn compare_and_swap_needs_the_value_it_expects() {
        let kv = MemoryKv::default();
        assert!(
            kv.compare_and_swap_now("k", None, b"1".to_vec(), None),
            "absent: none matches"
        );
        assert!(
            !kv.compare_and_swap_now("k", None, b"2".to_vec(), None),
            "now present"
        );
        assert!(
            !kv.compare_and_swap_now("k", Some(b"0"), b"2".to_vec(), None),
            "stale expectation"
        );
        assert!(kv.compare_and_swap_now("k", Some(b"1"), b"2".to_vec(), None));
        assert_eq!(kv.get_now("k").as_deref(), Some(&b"2"[..]));
        assert!(kv.compare_and_swap_now("t", None, b"x".to_vec(), Some(Duration::from_millis(1))));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            kv.compare_and_swap_now("t", None, b"y".to_vec(), None),
            "expired counts as absent"
        );
    }

    #[test]
    fn concurrent_swaps_lose_no_update() {
        let kv = std::sync::Arc::new(MemoryKv::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        loop {
                            let seen = kv.get_now("n");
                            let n = seen
                                .as_deref()
                                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                            if kv.compare_and_swap_now(
                                "n",
                                seen.as_deref(),
                                (n + 1).to_le_bytes().to_vec(),
                                None,
                            ) {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get_now("n"), Some(4000u64.to_le_bytes().to_vec()));
    }
}
