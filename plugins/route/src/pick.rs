//! Choosing among weighted destinations and sampling shadow copies: WASI randomness per
//! call, or a hash of the caller for sticky splits.

use crate::config::Destination;

/// A uniformly distributed 64-bit number from the host (WASI `random`). If the host could
/// not give one (it always can), a hash of the clock: still spread, just not secret.
pub fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix(nanos)
    })
}

/// A stable 64-bit hash of `salt` and `value` (FNV-1a, then the SplitMix64 finaliser so that
/// similar values spread over the whole range). The same input gives the same number in
/// every instance, every gateway process and every build, which keeps sticky splits sticky
/// across restarts and replicas.
pub fn stable_hash(salt: &str, value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The destination a 64-bit `draw` falls on, each taking a share of the range in proportion
/// to its weight. `None` only for an empty list (the configuration forbids it).
pub fn choose(split: &[Destination], draw: u64) -> Option<&Destination> {
    let total: u128 = split.iter().map(|d| u128::from(d.weight)).sum();
    if total == 0 {
        return split.first();
    }
    // Scale instead of `draw % total`: no modulo bias, and neighbouring draws stay on the
    // same side (useful when a split's weights are changed a little).
    let mut point = (u128::from(draw) * total) >> 64;
    for d in split {
        let w = u128::from(d.weight);
        if point < w {
            return Some(d);
        }
        point -= w;
    }
    split.last()
}

/// True for `percent` % of draws.
pub fn sampled(percent: f64, draw: u64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    // 53 bits are all an f64 holds.
    ((draw >> 11) as f64 / (1u64 << 53) as f64) * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(upstream: &str, weight: u32) -> Destination {
        Destination {
            upstream: upstream.into(),
            target: None,
            weight,
        }
    }

    #[test]
    fn draws_fall_in_proportion_to_weights() {
        let split = [dest("a", 90), dest("b", 10)];
        let n = 100_000u64;
        let b = (0..n)
            .filter(|i| {
                choose(&split, stable_hash("t", &i.to_string()))
                    .unwrap()
                    .upstream
                    .as_ref()
                    == "b"
            })
            .count() as f64;
        // Binomial(100000, 0.1): sd ≈ 95; 6 sd either way.
        assert!((b - 10_000.0).abs() < 600.0, "{b}");
        assert_eq!(choose(&split, 0).unwrap().upstream.as_ref(), "a");
        assert_eq!(choose(&split, u64::MAX).unwrap().upstream.as_ref(), "b");
        let zero = [dest("a", 0), dest("b", 3)];
        assert!((0..1000).all(|i| {
            choose(&zero, stable_hash("", &i.to_string()))
                .unwrap()
                .upstream
                .as_ref()
                == "b"
        }));
    }

    #[test]
    fn random_draws_split_too() {
        let split = [dest("a", 80), dest("b", 20)];
        let b = (0..20_000)
            .filter(|_| choose(&split, random()).unwrap().upstream.as_ref() == "b")
            .count() as f64;
        // Binomial(20000, 0.2): sd ≈ 57; 7 sd either way.
        assert!((b - 4_000.0).abs() < 400.0, "{b}");
    }

    #[test]
    fn hashes_are_stable_and_salted() {
        assert_eq!(stable_hash("r", "alice"), stable_hash("r", "alice"));
        assert_ne!(stable_hash("r", "alice"), stable_hash("r", "alicf"));
        assert_ne!(stable_hash("r1", "alice"), stable_hash("r2", "alice"));
        assert_ne!(stable_hash("ab", "c"), stable_hash("a", "bc"));
        // Pinned: a change here would move every sticky caller to the other side.
        assert_eq!(stable_hash("canary", "alice"), 0x6b58_97c5_59e7_a7e3);
    }

    #[test]
    fn sampling_takes_the_given_share() {
        let hits = (0..100_000u64)
            .filter(|i| sampled(25.0, stable_hash("s", &i.to_string())))
            .count() as f64;
        assert!((hits - 25_000.0).abs() < 900.0, "{hits}");
        assert!(sampled(100.0, u64::MAX));
        assert!(!sampled(0.0, 0));
    }
}
