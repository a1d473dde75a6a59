//! Rates as operators write them: `"10/s"`, `"100/min"`, `"5000/h"`, `"20/day"`, or with a
//! period of their own, `"3/10s"`, `"4/500ms"`.

/// `count` requests per `period_ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period_ms: u64,
}

impl Rate {
    /// Reads `"<count>/<period>"`, where the period is a unit (`ms`, `s`, `min`, `h`, `day`
    /// and their long forms) optionally preceded by a number (`10s`, `500ms`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = |why: &str| {
            format!("rate {text:?}: {why} (write e.g. \"10/s\", \"100/min\", \"3/10s\")")
        };
        let (count, period) = text.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        let period = period.trim();
        let digits = period
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(period.len());
        let (n, unit) = period.split_at(digits);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad("the period is too long"))?
        };
        let unit_ms: u64 = match unit.trim() {
            "ms" => 1,
            "s" | "sec" | "second" | "seconds" => 1_000,
            "m" | "min" | "minute" | "minutes" => 60_000,
            "h" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            _ => return Err(bad("unknown unit")),
        };
        let period_ms = n
            .checked_mul(unit_ms)
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("the period must be positive and at most a few years"))?;
        Ok(Rate { count, period_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> (u64, u64) {
        let r = Rate::parse(text).unwrap();
        (r.count, r.period_ms)
    }

    #[test]
    fn units_and_periods() {
        assert_eq!(ms("10/s"), (10, 1_000));
        assert_eq!(ms("100/min"), (100, 60_000));
        assert_eq!(ms("5000/h"), (5000, 3_600_000));
        assert_eq!(ms("20/day"), (20, 86_400_000));
        assert_eq!(ms("3/10s"), (3, 10_000));
        assert_eq!(ms("4/500ms"), (4, 500));
        assert_eq!(ms(" 7 / 2 minutes "), (7, 120_000));
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        for (text, why) in [
            ("10", "no '/'"),
            ("ten/s", "not a whole number"),
            ("0/s", "at least 1"),
            ("10/fortnight", "unknown unit"),
            ("10/0s", "positive"),
            ("10/99999999999999999999s", "too long"),
        ] {
            let err = Rate::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
