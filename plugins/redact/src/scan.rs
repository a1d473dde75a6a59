//! The scan: one pass of the multi-pattern regex over each string, validators on each
//! candidate, replacements written into a copy only when something is found.
//!
//! At each position the regex reports the leftmost match and, among detectors matching
//! there, the first in priority order. When that detector's validator rejects the candidate
//! (a 16-digit number failing Luhn), the other detectors are tried anchored at the same
//! position before the scan moves on by one character, so a rejection never hides another
//! detector's finding.

use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, PatternID, PatternSet};
use serde_json::{Map, Value};

use crate::action::{self, Action};
use crate::config::Config;

/// Scans strings and JSON values against one configuration, counting findings per detector.
pub struct Scanner<'c> {
    config: &'c Config,
    caps: Option<Captures>,
    /// The detectors matching where a candidate was rejected.
    others: PatternSet,
    /// Findings per detector (index as in `config.detectors`).
    pub counts: Vec<u32>,
    /// The first detector whose action is `block` that found something.
    pub blocked: Option<usize>,
}

/// A finding: detector, match span, and the span to replace.
struct Finding {
    detector: usize,
    end: usize,
    value: (usize, usize),
}

impl<'c> Scanner<'c> {
    /// A scanner with zero counts.
    pub fn new(config: &'c Config) -> Self {
        Scanner {
            config,
            caps: config.regex.as_ref().map(|r| r.create_captures()),
            others: PatternSet::new(config.detectors.len()),
            counts: vec![0; config.detectors.len()],
            blocked: None,
        }
    }

    /// True when any detector found something.
    pub fn found_any(&self) -> bool {
        self.counts.iter().any(|c| *c > 0)
    }

    /// The name of the `block` detector that fired, if one did.
    pub fn blocked_name(&self) -> Option<&'c str> {
        let config = self.config;
        self.blocked
            .and_then(|d| config.detectors.get(d))
            .map(|d| &*d.name)
    }

    /// `(name, count)` for every detector that found something, in priority order.
    pub fn summary(&self) -> Vec<(&'c str, u32)> {
        self.config
            .detectors
            .iter()
            .zip(&self.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(d, n)| (&*d.name, *n))
            .collect()
    }

    /// Redacts `s`; `None` when nothing in it is redacted (or the message is blocked).
    pub fn string(&mut self, s: &str) -> Option<String> {
        if self.blocked.is_some() {
            return None;
        }
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut pos = 0;
        while pos < s.len() {
            let Some(found) = self.next(s, pos) else {
                break;
            };
            let (start, end) = found.value;
            let d = &self.config.detectors[found.detector];
            self.counts[found.detector] += 1;
            if d.action == Action::Block {
                self.blocked.get_or_insert(found.detector);
                return None;
            }
            let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
            o.push_str(&s[copied..start]);
            action::render(
                d.action,
                &s[start..end],
                &d.name,
                &d.label,
                d.normalize,
                &self.config.style,
                o,
            );
            copied = end;
            pos = found.end.max(next_char(s, pos));
        }
        out.map(|mut o| {
            o.push_str(&s[copied..]);
            o
        })
    }

    /// Redacts the whole of `s` as a finding of `detector` (a value under a secret key),
    /// unless one detector matches all of it, in which case that one counts.
    fn whole(&mut self, s: &str, detector: usize) -> Option<String> {
        if self.blocked.is_some() || s.is_empty() {
            return None;
        }
        let detector = match self.next(s, 0) {
            Some(f) if f.value == (0, s.len()) => f.detector,
            _ => detector,
        };
        let d = &self.config.detectors[detector];
        self.counts[detector] += 1;
        if d.action == Action::Block {
            self.blocked.get_or_insert(detector);
            return None;
        }
        let mut out = String::new();
        let style = &self.config.style;
        action::render(d.action, s, &d.name, &d.label, d.normalize, style, &mut out);
        Some(out)
    }

    /// The next finding at or after `pos`.
    fn next(&mut self, s: &str, mut pos: usize) -> Option<Finding> {
        let config = self.config;
        let regex = config.regex.as_ref()?;
        while pos < s.len() {
            // Where and which: the lazy DFA alone (capture groups only for a finding that
            // has them, below).
            let m = regex.search(&Input::new(s).span(pos..s.len()))?;
            if let Some(f) = self.accept(s, m.pattern(), m.start(), m.end()) {
                return Some(f);
            }
            // Rejected: another detector may still match here. One anchored DFA run says
            // which could; only those are searched and validated, in priority order.
            let (start, rejected) = (m.start(), m.pattern());
            let anchored = Input::new(s).span(start..s.len()).anchored(Anchored::Yes);
            self.others.clear();
            if let Some(starts) = config.starts() {
                starts.which_overlapping_matches(&anchored, &mut self.others);
            }
            for other in 0..config.detectors.len() {
                let Ok(pid) = PatternID::new(other) else {
                    break;
                };
                if pid == rejected || !self.others.contains(pid) {
                    continue;
                }
                let input = Input::new(s)
                    .span(start..s.len())
                    .anchored(Anchored::Pattern(pid));
                if let Some(m) = regex.search(&input)
                    && let Some(f) = self.accept(s, pid, m.start(), m.end())
                {
                    return Some(f);
                }
            }
            pos = next_char(s, start);
        }
        None
    }

    /// The finding of detector `pid` at `start..end`, if its validator accepts it.
    fn accept(&mut self, s: &str, pid: PatternID, start: usize, end: usize) -> Option<Finding> {
        let detector = pid.as_usize();
        let d = self.config.detectors.get(detector)?;
        let end = match d.validate {
            Some(validate) => validate(s, start, end)?,
            None => end,
        };
        if end <= start {
            return None;
        }
        let value = match d.value_groups.is_empty() {
            true => (start, end),
            false => self.value_span(s, pid, start, end)?,
        };
        Some(Finding {
            detector,
            end,
            value,
        })
    }

    /// The span of the first participating `value…` group of detector `pid`'s match at
    /// `start..end` (the whole match when none participates).
    fn value_span(
        &mut self,
        s: &str,
        pid: PatternID,
        start: usize,
        end: usize,
    ) -> Option<(usize, usize)> {
        let regex = self.config.regex.as_ref()?;
        let d = self.config.detectors.get(pid.as_usize())?;
        let caps = self.caps.as_mut()?;
        let input = Input::new(s)
            .range(start..end)
            .anchored(Anchored::Pattern(pid));
        regex.search_captures(&input, caps);
        caps.get_match()?;
        let span = d
            .value_groups
            .iter()
            .find_map(|g| caps.get_group(*g))
            .filter(|span| !span.is_empty());
        Some(span.map_or((start, end), |span| (span.start, span.end)))
    }

    /// Redacts every string in `v` (not object keys); with `json-keys`, the whole value of a
    /// member whose key names a secret. Numbers, booleans and nulls are left as they are, so
    /// the value keeps its shape and types. Returns true when anything changed.
    pub fn value(&mut self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => match self.string(s) {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            },
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.value(item);
                }
                changed
            }
            Value::Object(map) => self.object(map),
            _ => false,
        }
    }

    fn object(&mut self, map: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for (key, item) in map.iter_mut() {
            if self.blocked.is_some() {
                break;
            }
            let secret = self
                .config
                .keys
                .as_ref()
                .filter(|(re, _)| re.is_match(key.as_str()))
                .map(|(_, d)| *d);
            match (secret, item) {
                (Some(d), Value::String(s)) => {
                    if let Some(new) = self.whole(s, d) {
                        *s = new;
                        changed = true;
                    }
                }
                (_, item) => changed |= self.value(item),
            }
        }
        changed
    }
}

/// The byte index of the character after the one at `i`.
fn next_char(s: &str, i: usize) -> usize {
    s[i..].chars().next().map_or(s.len(), |c| i + c.len_utf8())
}
