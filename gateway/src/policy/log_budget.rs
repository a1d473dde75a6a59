//! How much a plugin may write to the gateway's log: a token bucket per plugin, shared by
//! all its calls (`[policy] plugin-log-lines-per-second`, `plugin-log-burst`).
//!
//! Host `log` calls and stdout/stderr lines both draw from it. A line over the budget is
//! dropped and counted (`portcullis_plugin_log_lines_dropped_total{plugin}`); once a second,
//! one summary line per plugin that dropped any says how many since the last one. Each line
//! is also cut to
//! `plugin-log-line-bytes`. Buckets are keyed by plugin name, so a reloaded plugin keeps its
//! budget.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The configured budget (`[policy]` keys).
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub per_second: u32,
    pub burst: u32,
    pub line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            per_second: 20,
            burst: 100,
            line_bytes: 4096,
        }
    }
}

static LIMITS: OnceLock<LogLimits> = OnceLock::new();
static BUCKETS: LazyLock<DashMap<std::sync::Arc<str>, Bucket>> = LazyLock::new(DashMap::new);

/// Sets the budget for this process (once, at start-up; later calls are ignored) and starts
/// the summary lines' ticker on the current runtime.
pub fn configure(limits: LogLimits) {
    if LIMITS.set(limits).is_err() {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async {
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            loop {
                tick.tick().await;
                summarize(Instant::now());
            }
        });
    }
}

/// Writes the summary line of every plugin whose line is due.
fn summarize(now: Instant) {
    let due: Vec<_> = BUCKETS
        .iter_mut()
        .filter_map(|mut b| Some((b.key().clone(), b.due(now)?)))
        .collect();
    for (plugin, dropped) in due {
        summary(&plugin, dropped);
    }
}

fn summary(plugin: &str, dropped: u64) {
    tracing::warn!(
        target: "portcullis::plugin",
        plugin,
        dropped,
        "plugin log lines dropped: over policy.plugin-log-lines-per-second"
    );
}

fn limits() -> LogLimits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Whether `plugin` may write one more line now. Writes the summary line when one is due.
pub fn admit(plugin: &std::sync::Arc<str>) -> bool {
    let limits = limits();
    let now = Instant::now();
    let (allowed, summary) = match BUCKETS.get_mut(&**plugin) {
        Some(mut b) => b.admit(&limits, now),
        None => {
            let mut b = Bucket::new(&limits, now);
            let verdict = b.admit(&limits, now);
            BUCKETS.insert(plugin.clone(), b);
            verdict
        }
    };
    if let Some(dropped) = summary {
        self::summary(plugin, dropped);
    }
    allowed
}

/// `line` cut to `plugin-log-line-bytes` (on a character boundary).
pub fn cut(line: &str) -> &str {
    let mut end = line.len().min(limits().line_bytes);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// Lines of `plugin` dropped since start.
pub fn dropped(plugin: &str) -> u64 {
    BUCKETS.get(plugin).map_or(0, |b| b.dropped_total)
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Dropped since the last summary line.
    pending: u64,
    dropped_total: u64,
    summarized: Instant,
}

impl Bucket {
    fn new(limits: &LogLimits, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(limits.burst),
            refilled: now,
            pending: 0,
            dropped_total: 0,
            summarized: now,
        }
    }

    /// Whether one line may go, and the count for a summary line when one is due.
    fn admit(&mut self, limits: &LogLimits, now: Instant) -> (bool, Option<u64>) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limits.per_second))
            .min(f64::from(limits.burst.max(1)));
        self.refilled = now;
        let summary = self.due(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            (true, summary)
        } else {
            self.pending += 1;
            self.dropped_total += 1;
            (false, summary)
        }
    }
}

impl Bucket {
    /// The count for a summary line, when one is due (drops pending, none said for a second).
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.pending {
            n if n > 0 && now.saturating_duration_since(self.summarized) >= SUMMARY_EVERY => {
                self.pending = 0;
                self.summarized = now;
                Some(n)
            }
            _ => None,
        }
    }
}

/// At most one summary line per plugin per this.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate_and_summarizes_drops() {
        let limits = LogLimits {
            per_second: 10,
            burst: 5,
            line_bytes: 100,
        };
        let t0 = Instant::now();
        let mut b = Bucket::new(&limits, t0);
        let allowed = (0..50).filter(|_| b.admit(&limits, t0).0).count();
        assert_eq!(allowed, 5, "the burst");
        assert_eq!(b.dropped_total, 45);
        // Half a second later: 5 more tokens, no summary yet.
        let t1 = t0 + Duration::from_millis(500);
        let (ok, summary) = b.admit(&limits, t1);
        assert!(ok);
        assert_eq!(summary, None);
        // A second after the first drop: one summary with everything dropped so far.
        let t2 = t0 + Duration::from_millis(1100);
        let (_, summary) = b.admit(&limits, t2);
        assert_eq!(summary, Some(45));
        let (_, summary) = b.admit(&limits, t2);
        assert_eq!(summary, None, "at most one summary per second");
    }

    #[test]
    fn lines_are_cut_on_a_character_boundary() {
        let long = "é".repeat(5000);
        let cut = cut(&long);
        assert!(cut.len() <= 4096 && cut.len() >= 4094, "{}", cut.len());
    }
}
