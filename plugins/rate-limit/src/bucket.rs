//! The limiter: an exact token bucket (GCRA), one value per bucket, updated with the
//! gateway's atomic `kv-compare-and-swap`.
//!
//! A limit of `burst` requests at `rate` holds at most `burst` requests and refills one every
//! `T = 1 / rate` (`"10/s"`: one every 100 ms). GCRA keeps such a bucket as one number, its
//! **theoretical arrival time** `TAT`: the time at which the bucket is full again. With
//! `tau = (burst - 1) * T`, a request at `now`:
//!
//! 1. reads `TAT` (none: the bucket is full), **then** the clock, and takes
//!    `tat = max(TAT, now)`;
//! 2. if `tat - now > tau`, the bucket is empty: the request is refused, and would pass at
//!    `tat - tau`;
//! 3. otherwise stores `tat + T` with a compare-and-swap against what it read in step 1; if
//!    another request changed the value in between, it starts again from step 1.
//!
//! **Exactness.** Every request that passes replaces exactly the value it decided on, so the
//! requests that pass on a bucket form one sequence, each seeing all before it. Each reads
//! the clock after the value it swaps against, and a swap that landed in between sends it
//! back to step 1 (and so to a fresh clock): the sequence's clock readings never go
//! backwards, so a request that read the clock early but reached the store late is not
//! refused for a token a later reading took. Of requests
//! that read the clock at `t1 ≤ … ≤ tn`, all pass only if `tn - t1 ≥ (n - burst) * T`. That
//! is, at most `burst + L / T` pass in any interval of length `L`, however many instances
//! run at once, and steady traffic at exactly `rate` always passes. `T` is counted in
//! nanoseconds, rounded up, which never lets more through. A refused request writes nothing,
//! and one that a later limit refuses gives back no more than it took ([`release`]).
//!
//! The value is the `TAT` in nanoseconds since 1970, as 8 little-endian bytes, and expires
//! when the bucket is full again (the time-to-live is rounded up to the store's
//! milliseconds), so an idle bucket costs nothing and an expired one loses nothing.
//!
//! A swap fails only when another request's swap succeeded in between, so retrying makes
//! progress; [`MAX_ATTEMPTS`] bounds it all the same (see [`Outcome::Contended`]).

use std::time::Duration;

use portcullis_sdk::kv;

/// Swaps tried before giving up. Each failure means another request's swap landed in the
/// microseconds between this one's read and swap, so losing this many in a row takes more
/// requests on one bucket at once than a gateway's cores run.
pub const MAX_ATTEMPTS: usize = 16;

const NS_PER_MS: u64 = 1_000_000;

/// The shape of one limit's buckets, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// `T`: the time one request takes to refill (the rate's period over its count, rounded
    /// up; at least 1).
    pub interval_ns: u64,
    /// `tau = (burst - 1) * T`: how far ahead of now `TAT` may be for a request to pass.
    pub tolerance_ns: u64,
}

/// What [`acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, having stored `tat` (what [`release`] gives back, if a later limit refuses).
    Granted { tat: u64 },
    /// The bucket is empty; the same request would pass after `retry_ms` (if nobody else
    /// takes first).
    Refused { retry_ms: u64 },
    /// [`MAX_ATTEMPTS`] swaps in a row lost to other requests: the bucket's state is
    /// unknown, so nothing was taken and it is up to the caller whether to pass.
    Contended,
}

/// The `TAT` a bucket's value holds (`None` for a value this limiter did not write).
fn decode(value: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(value).ok().map(u64::from_le_bytes)
}

/// A time-to-live of `ns`, rounded up to the store's milliseconds.
fn ttl(ns: u64) -> Option<Duration> {
    Some(Duration::from_millis(ns.div_ceil(NS_PER_MS)))
}

/// Takes one request from the bucket `key`; `clock` is now, in nanoseconds since 1970.
pub fn acquire(key: &str, b: Bucket, clock: impl Fn() -> u64) -> Outcome {
    for _ in 0..MAX_ATTEMPTS {
        let seen = kv::get(key);
        let now = clock();
        let tat = seen.as_deref().and_then(decode).unwrap_or(0).max(now);
        if tat - now > b.tolerance_ns {
            let wait = tat - b.tolerance_ns - now;
            return Outcome::Refused {
                retry_ms: wait.div_ceil(NS_PER_MS),
            };
        }
        let next = tat.saturating_add(b.interval_ns);
        if kv::compare_and_swap(key, seen.as_deref(), &next.to_le_bytes(), ttl(next - now)) {
            return Outcome::Granted { tat: next };
        }
    }
    Outcome::Contended
}

/// Gives back, at `now` (read afresh: the request may have taken a while), the request an
/// [`Outcome::Granted`] took, which stored `granted`: moves the bucket's `TAT` back by the
/// part of that request's `T` that has not refilled yet (`granted - now`, at most `T`), and
/// not before `now` (a bucket holds at most `burst`). What others took since stays taken:
/// requests are alike, so any `T` of the `TAT` can be the one given back. Returns `false`
/// if it lost [`MAX_ATTEMPTS`] swaps, leaving the bucket that much short.
pub fn release(key: &str, b: Bucket, granted: u64, now: u64) -> bool {
    // Once `granted` is past, the bucket has refilled this request's share by itself; taking
    // `T` off a later request's time then would give back that request's share instead.
    let share = b.interval_ns.min(granted.saturating_sub(now));
    if share == 0 {
        return true;
    }
    // Usually nobody has taken from the bucket since, so the first swap needs no read.
    let mut seen = Some(granted.to_le_bytes().to_vec());
    for _ in 0..MAX_ATTEMPTS {
        let Some(tat) = seen.as_deref().and_then(decode).filter(|&t| t > now) else {
            // Absent, expired or not ours: the bucket is full already.
            return true;
        };
        let back = tat.saturating_sub(share).max(now);
        if kv::compare_and_swap(key, seen.as_deref(), &back.to_le_bytes(), ttl(back - now)) {
            return true;
        }
        seen = kv::get(key);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = NS_PER_MS;
    /// 5 at once, one more every 200 ms ("5/s").
    const FIVE: Bucket = Bucket {
        interval_ns: 200 * MS,
        tolerance_ns: 800 * MS,
    };
    const T0: u64 = 1_700_000_000_000 * MS;

    fn take(key: &str, b: Bucket, now: u64) -> Result<u64, u64> {
        match acquire(key, b, || now) {
            Outcome::Granted { tat } => Ok(tat),
            Outcome::Refused { retry_ms } => Err(retry_ms),
            Outcome::Contended => panic!("no contention in a single thread"),
        }
    }

    #[test]
    fn never_more_than_burst_plus_what_refilled_in_any_interval() {
        // Attempts at pseudo-random times, about 3x the rate, for 20 s.
        let mut t = T0;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut granted = Vec::new();
        while t < T0 + 20_000 * MS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += (x % 130_000) * 1_000;
            if take("r", FIVE, t).is_ok() {
                granted.push(t);
            }
        }
        for (i, &start) in granted.iter().enumerate() {
            for (n, &end) in granted[i..].iter().enumerate() {
                // n + 1 requests in [start, end]: at most 5 plus one per 200 ms.
                assert!(
                    (n as u64 + 1) <= 5 + (end - start) / FIVE.interval_ns,
                    "{} granted in {} ns from {start}",
                    n + 1,
                    end - start
                );
            }
        }
        // Sustained: 5/s over 20 s, plus the first burst at most.
        assert!((100..=105).contains(&granted.len()), "{}", granted.len());
    }

    #[test]
    fn a_release_gives_back_one_request_and_never_more_than_a_full_bucket() {
        let a = take("a", FIVE, T0).unwrap();
        let b = take("a", FIVE, T0).unwrap();
        // Someone else took after `a`: giving `a` back still frees one request.
        assert!(release("a", FIVE, a, T0));
        for _ in 0..4 {
            take("a", FIVE, T0).unwrap();
        }
        assert_eq!(take("a", FIVE, T0), Err(200));
        // Releasing when time has refilled the bucket leaves it full, not fuller.
        assert!(release("a", FIVE, b, T0 + 2_000 * MS));
        for _ in 0..5 {
            take("a", FIVE, T0 + 2_000 * MS).unwrap();
        }
        assert!(take("a", FIVE, T0 + 2_000 * MS).is_err());
    }

    #[test]
    fn a_late_release_gives_back_only_what_has_not_refilled() {
        // Granted at 0 from a full bucket; another request at 100 ms; the release at 150 ms.
        // Had the released request never come, the bucket would hold 4 at 150 ms, and the
        // 5th would wait until the other request's share refills, at 300 ms.
        let a = take("h", FIVE, T0).unwrap();
        take("h", FIVE, T0 + 100 * MS).unwrap();
        assert!(release("h", FIVE, a, T0 + 150 * MS));
        for _ in 0..4 {
            take("h", FIVE, T0 + 150 * MS).unwrap();
        }
        let retry = take("h", FIVE, T0 + 150 * MS).unwrap_err();
        assert!(
            retry >= 150,
            "gave back more than was taken: retry in {retry} ms"
        );
        // Once the released request's share has refilled by itself, nothing is given back:
        // not the share of a request that came after.
        let b = take("l", FIVE, T0 + 10_000 * MS).unwrap();
        take("l", FIVE, T0 + 11_000 * MS).unwrap();
        assert!(release("l", FIVE, b, T0 + 11_000 * MS));
        for _ in 0..4 {
            take("l", FIVE, T0 + 11_000 * MS).unwrap();
        }
        assert!(take("l", FIVE, T0 + 11_000 * MS).is_err());
    }

    #[test]
    fn an_idle_bucket_disappears_once_full_again() {
        let quick = Bucket {
            interval_ns: 5 * MS,
            tolerance_ns: 0,
        };
        take("f", quick, T0).unwrap();
        assert!(kv::get("f").is_some());
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            kv::get("f").is_none(),
            "nothing kept once the bucket is full"
        );
        kv::set("g", b"not a time", None);
        assert!(take("g", FIVE, T0).is_ok(), "a foreign value reads as full");
    }
}
