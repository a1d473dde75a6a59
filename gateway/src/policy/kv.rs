//! Per-plugin key-value storage offered to policies (`host.kv-*`).
//!
//! Behind the [`KvStore`] trait so a cluster can back it with Redis later; the built-in
//! [`MemoryKv`] is a sharded in-process map with expiry. Keys are namespaced by plugin name
//! by the host, so plugins cannot see each other's data. Counters survive plugin reloads:
//! the store belongs to the gateway, not to a plugin instance.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Storage for plugins. Implementations must make `incr` and `compare_and_swap` atomic.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>);
    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64;
    /// Stores `value` if the key holds `expected` (`None`: absent or expired); whether it did.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> bool;
    fn delete(&self, key: &str);
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

impl MemoryKv {
    fn sweep_if_full(&self) {
        if self.map.len() >= SWEEP_AT {
            let now = Instant::now();
            self.map.retain(|_, e| e.live(now));
        }
    }
}

impl KvStore for MemoryKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) {
        self.sweep_if_full();
        let expires = ttl.map(|t| Instant::now() + t);
        self.map.insert(key.to_string(), Entry { value, expires });
    }

    fn incr(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
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

    fn compare_and_swap(
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

    fn delete(&self, key: &str) {
        self.map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incr_is_a_counter_with_expiry() {
        let kv = MemoryKv::default();
        assert_eq!(kv.incr("a", 2, None), 2);
        assert_eq!(kv.incr("a", 3, None), 5);
        assert_eq!(kv.incr("b", 1, Some(Duration::from_millis(1))), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.incr("b", 1, None), 1, "expired counters restart");
        kv.set("c", b"x".to_vec(), None);
        assert_eq!(kv.get("c").as_deref(), Some(&b"x"[..]));
        kv.delete("c");
        assert_eq!(kv.get("c"), None);
    }

    #[test]
    fn compare_and_swap_needs_the_value_it_expects() {
        let kv = MemoryKv::default();
        assert!(
            kv.compare_and_swap("k", None, b"1".to_vec(), None),
            "absent: none matches"
        );
        assert!(
            !kv.compare_and_swap("k", None, b"2".to_vec(), None),
            "now present"
        );
        assert!(
            !kv.compare_and_swap("k", Some(b"0"), b"2".to_vec(), None),
            "stale expectation"
        );
        assert!(kv.compare_and_swap("k", Some(b"1"), b"2".to_vec(), None));
        assert_eq!(kv.get("k").as_deref(), Some(&b"2"[..]));
        assert!(kv.compare_and_swap("t", None, b"x".to_vec(), Some(Duration::from_millis(1))));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            kv.compare_and_swap("t", None, b"y".to_vec(), None),
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
                            let seen = kv.get("n");
                            let n = seen
                                .as_deref()
                                .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                            if kv.compare_and_swap(
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
        assert_eq!(kv.get("n"), Some(4000u64.to_le_bytes().to_vec()));
    }
}
