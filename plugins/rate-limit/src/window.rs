//! The limiter: a sliding window of `burst` requests per `burst / rate`, counted in slots on
//! the gateway's atomic `kv-incr`.
//!
//! A limit of `burst` requests at `rate` allows **at most `burst` requests in any window of
//! `W = burst / rate`** (`"100/min"`: at most 100 in any minute; `rate = "10/s", burst = 20`:
//! at most 20 in any 2 s, so 10/s sustained). The window is cut into [`SLOTS`] slots of
//! `S = W / SLOTS`, each with its own counter, created by `kv-incr` with a TTL of one window
//! plus one slot, so idle buckets cost nothing and disappear. A request in slot `s`:
//!
//! 1. adds 1 to the counter of slot `s` (atomic: concurrent requests get different values);
//! 2. reads the counters of the `SLOTS - 1` slots before it;
//! 3. passes if the sum, including itself, is at most `burst`;
//! 4. otherwise takes its 1 back (`kv-incr -1`), so refused requests consume nothing, and is
//!    refused with the time at which the oldest slots will have left the window enough for
//!    it to pass.
//!
//! **Exactness.** The counted span is the current slot so far plus the `SLOTS - 1` slots
//! before it: between `W - S` and `W` long. Every granted request's increment happens
//! before its check and is visible to every later check, so there is no read-modify-write
//! to race: at most `burst` requests pass in any interval of `W - S` (90 % of `W`), however
//! many instances run at once, and steady traffic at exactly `rate` always passes. The
//! sustained rate is `rate`; an adversarial pattern (a full burst at the end of one slot,
//! the next as soon as it leaves the window) gets at most `burst` per `W - S`, i.e. up to
//! 11 % over `rate` for a moment. The only race is a request that read the clock just
//! before a slot boundary and increments the old slot after a later request read it: up to
//! the number of such requests in flight (microseconds) may pass over `burst`. A refused
//! request's own increment is visible for the microseconds until it is taken back, so a
//! concurrent request may see it: that errs on the side of refusing. Time is the host's
//! wall clock (WASI), the same in every instance.
//!
//! Unlike a token bucket, which refills one token every `1 / rate`, a window frees a burst
//! `W` after it was used; both allow `burst` at once and `rate` sustained.
//!
//! Why not GCRA (the exact token bucket): its update `tat = max(tat, now) + T` needs a
//! compare-and-swap or a lock, which the host's key-value store does not offer; a
//! get-then-set version lets concurrent requests through together, and a lock built from
//! `kv-incr` would spin while its holder is suspended at an epoch tick. Why not the
//! two-window sliding counter (previous window weighted by its overlap): with requests
//! exactly `1 / rate` apart it estimates one request too many per window, which halves a
//! burst-2 limit in practice.

use std::fmt::Write as _;
use std::time::Duration;

use portcullis_sdk::kv;

/// Slots per window: the precision of the window (its counted span is at least
/// `1 - 1/SLOTS` of it) against the key-value reads per request (`SLOTS - 1`).
pub const SLOTS: u64 = 10;

/// The shape of one limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Window length `W`, in milliseconds (at least 1).
    pub ms: u64,
    /// Requests a window holds (`burst`, at least 1).
    pub burst: u64,
}

/// What [`acquire`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; `key` is the counter taken from (to give back if a later limit refuses).
    Granted { key: String, ttl: Duration },
    /// Refused; the same request would pass after `retry_ms` (if nobody else takes first).
    Denied { retry_ms: u64 },
}

impl Window {
    /// Slots per window (fewer for windows under [`SLOTS`] ms, so a slot is at least 1 ms).
    fn slots(self) -> u64 {
        SLOTS.min(self.ms).max(1)
    }

    /// Slot length `S`, in milliseconds.
    fn slot_ms(self) -> u64 {
        (self.ms / self.slots()).max(1)
    }

    /// A slot's counter is read while it is in the window: one window plus one slot.
    fn ttl(self) -> Duration {
        Duration::from_millis(self.ms.saturating_add(self.slot_ms()))
    }
}

/// The counter of slot `index` of `bucket`.
fn counter_key(bucket: &str, index: u64) -> String {
    let mut key = String::with_capacity(bucket.len() + 21);
    key.push_str(bucket);
    let _ = write!(key, "\u{1f}{index}");
    key
}

/// A counter's value (0 when absent or not a counter).
fn read(key: &str) -> u64 {
    kv::get(key)
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(i64::from_le_bytes)
        .map_or(0, |n| n.max(0) as u64)
}

/// Takes one request from `bucket` at wall-clock time `now_ms`.
pub fn acquire(bucket: &str, w: Window, now_ms: u64) -> Outcome {
    let slot_ms = w.slot_ms();
    let slot = now_ms / slot_ms;
    let key = counter_key(bucket, slot);
    let ttl = w.ttl();
    let mine = kv::incr(&key, 1, Some(ttl)).max(0) as u64;
    // Counts of the earlier slots in the window, newest first.
    let earlier: Vec<u64> = (1..w.slots())
        .map_while(|back| slot.checked_sub(back))
        .map(|s| read(&counter_key(bucket, s)))
        .collect();
    let total = mine.saturating_add(earlier.iter().sum::<u64>());
    if total <= w.burst {
        return Outcome::Granted { key, ttl };
    }
    kv::incr(&key, -1, Some(ttl));
    // As the window moves on by `m` slots, the `m` oldest slots leave it.
    let mut left = total - 1;
    let mut oldest = earlier.iter().rev();
    let mut m = 1;
    while m < w.slots() {
        left = left.saturating_sub(oldest.next().copied().unwrap_or(0));
        if left < w.burst {
            break;
        }
        m += 1;
    }
    let retry = (slot + m).saturating_mul(slot_ms).saturating_sub(now_ms);
    Outcome::Denied {
        retry_ms: retry.max(1),
    }
}

/// Gives back what [`Outcome::Granted`] took (a later limit refused the request).
pub fn release(key: &str, ttl: Duration) {
    kv::incr(key, -1, Some(ttl));
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        ms: 1_000,
        burst: 5,
    };

    fn take(bucket: &str, w: Window, now: u64) -> Result<(), u64> {
        match acquire(bucket, w, now) {
            Outcome::Granted { .. } => Ok(()),
            Outcome::Denied { retry_ms } => Err(retry_ms),
        }
    }

    #[test]
    fn a_burst_passes_then_waits_for_its_slot_to_leave_the_window() {
        let t0 = 50_000; // the start of slot 500 (slots of 100 ms)
        for i in 0..5 {
            assert_eq!(take("b", W, t0 + i), Ok(()), "request {i}");
        }
        // The burst's slot leaves the window at t0 + 1000.
        assert_eq!(take("b", W, t0 + 10), Err(990));
        // Refused requests took nothing: still refused, with an honest hint.
        assert_eq!(take("b", W, t0 + 500), Err(500));
        assert_eq!(take("b", W, t0 + 999), Err(1));
        for _ in 0..5 {
            assert_eq!(take("b", W, t0 + 1_000), Ok(()));
        }
        assert_eq!(take("b", W, t0 + 1_000), Err(1_000));
    }

    #[test]
    fn steady_traffic_at_the_rate_passes_and_extra_requests_do_not() {
        // 5 per second, one every 200 ms, for 10 s; once a second's worth has passed, the
        // window is full between them.
        for i in 0..50 {
            let t = 20_000 + i * 200;
            assert_eq!(take("s", W, t), Ok(()), "steady request {i}");
            if i >= 4 {
                assert!(take("s", W, t + 1).is_err(), "extra request {i}");
            }
        }
    }

    #[test]
    fn the_oldest_slots_free_the_room() {
        // 2 in slot 0, 3 in slot 3: full until slot 0 leaves (then 2 fit), then slot 3.
        for _ in 0..2 {
            assert_eq!(take("o", W, 30_000), Ok(()));
        }
        for _ in 0..3 {
            assert_eq!(take("o", W, 30_300), Ok(()));
        }
        assert_eq!(take("o", W, 30_450), Err(550));
        assert_eq!(take("o", W, 31_000), Ok(()));
        assert_eq!(take("o", W, 31_000), Ok(()));
        assert_eq!(take("o", W, 31_000), Err(300));
        assert_eq!(take("o", W, 31_300), Ok(()));
    }

    #[test]
    fn never_more_than_burst_in_any_nine_tenths_of_a_window() {
        // Attempts at pseudo-random times, about 3x the rate, for 20 s.
        let mut t = 100_000u64;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut granted = Vec::new();
        while t < 120_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += x % 130;
            if take("r", W, t).is_ok() {
                granted.push(t);
            }
        }
        for (i, &start) in granted.iter().enumerate() {
            let within = granted[i..]
                .iter()
                .take_while(|&&g| g < start + 900)
                .count();
            assert!(within <= 5, "{within} granted in 900 ms from {start}");
        }
        // Sustained: 5/s over 20 s, give or take the first and last window.
        assert!((95..=111).contains(&granted.len()), "{}", granted.len());
    }

    #[test]
    fn a_burst_of_one_spaces_requests_by_the_period() {
        let w = Window { ms: 100, burst: 1 };
        assert_eq!(take("p", w, 1_000), Ok(()));
        assert_eq!(take("p", w, 1_000), Err(100));
        assert_eq!(take("p", w, 1_099), Err(1));
        assert_eq!(take("p", w, 1_100), Ok(()));
        let tiny = Window { ms: 3, burst: 1 };
        assert_eq!(take("q", tiny, 10), Ok(()));
        assert_eq!(take("q", tiny, 11), Err(2));
        assert_eq!(take("q", tiny, 13), Ok(()));
    }

    #[test]
    fn buckets_are_independent_and_windows_expire() {
        for _ in 0..5 {
            assert_eq!(take("a", W, 7_000), Ok(()));
        }
        assert!(take("a", W, 7_000).is_err());
        assert_eq!(take("other", W, 7_000), Ok(()), "another bucket");
        assert_eq!(
            take("a", W, 8_000),
            Ok(()),
            "a window later the burst is forgotten"
        );
    }

    #[test]
    fn counters_are_kept_per_slot() {
        assert_eq!(take("k", W, 2_550), Ok(()));
        assert_eq!(read("k\u{1f}25"), 1);
        assert!(kv::get("k\u{1f}24").is_none());
    }
}
