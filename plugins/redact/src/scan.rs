//! The scan: one pass of the multi-pattern regex over each string, validators on each
//! candidate, replacements written into a copy only when something is found.
//!
//! At each position the regex reports the leftmost match and, among detectors matching
//! there, the first in priority order. When that detector's validator rejects the candidate
//! (a 16-digit number failing Luhn), the other detectors are tried anchored at the same
//! position before the scan moves on by one character, so a rejection never hides another
//! detector's finding.
//!
//! With `normalize`, a string that holds something to normalize is scanned a second time as
//! it reads (`normalize.rs`), and base64 and hex runs in it are decoded and scanned
//! (`encoded.rs`), up to `decode-depth` layers deep. Every finding is mapped back to the span
//! of the original it came from; findings that overlap are folded into the first, so the
//! extra scans only ever add to what the plain scan replaces. Adjacent content items are
//! scanned once more as one text for findings that cross from one into the next.

use regex_automata::util::captures::Captures;
use regex_automata::{Anchored, Input, PatternID, PatternSet};
use serde_json::{Map, Value};

use crate::action::{self, Action};
use crate::config::Config;
use crate::detectors;
use crate::encoded;
use crate::normalize::{self, View};

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

/// A finding to replace, in the coordinates of the string it is in.
struct Hit {
    start: usize,
    end: usize,
    detector: usize,
    /// The value as the detector read it, when that is not the text replaced (found in the
    /// normalized view, in decoded text, or across items): a mask or hash is made from it.
    seen: Option<String>,
    /// A later part of a finding that crosses items: counted with its first part.
    part: bool,
    /// The replacement, when made already (a mask cut to one part of a crossing finding).
    text: Option<String>,
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
        let mut hits = Vec::new();
        self.collect(s, 0, &mut hits);
        let hits = self.settle(hits)?;
        Some(self.render(s, &hits))
    }

    /// Redacts adjacent content items of one message as one text, so a secret cut in two
    /// (a PEM key whose `BEGIN` line ends one item, a token split across two) is found:
    /// each item is scanned alone, and their concatenation once more for findings that
    /// cross from one item into the next; each item gets its part replaced. Returns true
    /// when anything changed.
    pub fn strings(&mut self, items: &mut [&mut String]) -> bool {
        if self.blocked.is_some() {
            return false;
        }
        let mut per_item: Vec<Vec<Hit>> = Vec::with_capacity(items.len());
        for item in items.iter() {
            let mut hits = Vec::new();
            self.collect(item, 0, &mut hits);
            per_item.push(hits);
        }
        if items.len() > 1 && self.config.join_items {
            self.across(items, &mut per_item);
        }
        let mut changed = false;
        for (item, hits) in items.iter_mut().zip(per_item) {
            if self.blocked.is_some() {
                return false;
            }
            let Some(hits) = self.settle(hits) else {
                continue;
            };
            **item = self.render(item, &hits);
            changed = true;
        }
        changed && self.blocked.is_none()
    }

    /// Findings of the concatenation of `items` that cross from one into the next, added
    /// to each item's findings as parts.
    fn across(&mut self, items: &[&mut String], per_item: &mut [Vec<Hit>]) {
        let mut joined = String::with_capacity(items.iter().map(|s| s.len()).sum());
        let mut offsets = Vec::with_capacity(items.len() + 1);
        for item in items {
            offsets.push(joined.len());
            joined.push_str(item);
        }
        offsets.push(joined.len());
        let mut hits = Vec::new();
        self.collect(&joined, 0, &mut hits);
        for hit in hits {
            // The items the finding touches.
            let first = offsets
                .partition_point(|o| *o <= hit.start)
                .saturating_sub(1);
            let last = offsets.partition_point(|o| *o < hit.end).saturating_sub(1);
            if first == last || self.glued(&hit, first, last, &offsets, per_item) {
                continue;
            }
            // A mask of text as written is cut where the items meet, so together the parts
            // show what the mask of the whole shows.
            let d = &self.config.detectors[hit.detector];
            let mask: Option<Vec<char>> = match (d.action, &hit.seen) {
                (Action::Mask { .. }, None) => {
                    let mut full = String::new();
                    let value = &joined[hit.start..hit.end];
                    let style = &self.config.style;
                    action::render(
                        d.action,
                        value,
                        &d.name,
                        &d.label,
                        d.normalize,
                        style,
                        &mut full,
                    );
                    Some(full.chars().collect())
                }
                _ => None,
            };
            for (k, hits) in per_item.iter_mut().enumerate().take(last + 1).skip(first) {
                let (a, b) = (offsets[k], offsets[k + 1]);
                let (start, end) = (hit.start.max(a) - a, hit.end.min(b) - a);
                if start >= end {
                    continue;
                }
                let text = mask.as_ref().map(|chars| {
                    let from = joined[hit.start..a.max(hit.start)].chars().count();
                    let to = from + joined[a + start..a + end].chars().count();
                    chars.get(from..to).unwrap_or_default().iter().collect()
                });
                hits.push(Hit {
                    start,
                    end,
                    detector: hit.detector,
                    seen: if k == first {
                        Some(
                            hit.seen
                                .clone()
                                .unwrap_or_else(|| joined[hit.start..hit.end].to_string()),
                        )
                    } else {
                        None
                    },
                    part: k != first,
                    text,
                });
            }
        }
    }

    /// True when a finding across items is only a finding of one item with the edge of its
    /// neighbours glued on (`to` + `alice@example.com` + `Thanks`): that item's own scan found
    /// it already. For a detector whose values have no fixed end (a key cut before its `END`
    /// line, a token) only a finding at the very start of the last item counts: anything
    /// else is a real continuation.
    fn glued(
        &self,
        hit: &Hit,
        first: usize,
        last: usize,
        offsets: &[usize],
        per_item: &[Vec<Hit>],
    ) -> bool {
        let same = |h: &&Hit| h.detector == hit.detector;
        let tail = hit.end - offsets[last];
        let found_in_last = per_item[last]
            .iter()
            .filter(same)
            .any(|h| h.start == 0 && h.end >= tail);
        if found_in_last {
            return true;
        }
        let name = &*self.config.detectors[hit.detector].name;
        if detectors::open_ended(name) {
            return false;
        }
        (first..=last).any(|k| {
            let (a, b) = (offsets[k], offsets[k + 1]);
            let (start, end) = (hit.start.max(a) - a, hit.end.min(b) - a);
            per_item[k]
                .iter()
                .filter(same)
                .any(|h| h.start < end && h.end > start)
        })
    }

    /// Every finding in `s`: the plain scan, then (with `normalize`) the normalized view and
    /// the encoded runs, up to `decode-depth` encodings deep.
    fn collect(&mut self, s: &str, depth: u8, out: &mut Vec<Hit>) {
        self.plain(s, out);
        if !self.config.normalize {
            return;
        }
        let decode_depth = self.config.decode_depth.saturating_sub(depth);
        let view = if normalize::needed(s) {
            View::build(s, decode_depth)
        } else {
            None
        };
        let text = view.as_ref().map_or(s, |v| v.text.as_str());
        let source = |a: usize, b: usize| view.as_ref().map_or((a, b), |v| v.source(a, b));
        if let Some(view) = &view {
            let mut inner = Vec::new();
            self.plain(&view.text, &mut inner);
            for h in inner {
                let (start, end) = view.source(h.start, h.end);
                out.push(Hit {
                    start,
                    end,
                    detector: h.detector,
                    seen: Some(view.text[h.start..h.end].to_string()),
                    part: false,
                    text: None,
                });
            }
        }
        if decode_depth == 0 {
            return;
        }
        out.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        let found = out.len();
        for run in encoded::runs(text, self.config.encoded_min_length) {
            let (start, end) = source(run.start, run.end());
            // A run inside a finding (a JWT, a token, a key's body) is already replaced.
            let i = out[..found].partition_point(|h| h.start <= start);
            if i > 0 && out[i - 1].end >= end {
                continue;
            }
            let mut inner = Vec::new();
            self.collect(&run.text, depth + 1, &mut inner);
            for h in inner {
                let (a, b) = run.source(h.start, h.end);
                let (start, end) = source(a, b);
                out.push(Hit {
                    start,
                    end,
                    detector: h.detector,
                    seen: Some(
                        h.seen
                            .unwrap_or_else(|| run.text[h.start..h.end].to_string()),
                    ),
                    part: false,
                    text: None,
                });
            }
        }
    }

    /// The findings of one pass of the detectors over `s`.
    fn plain(&mut self, s: &str, out: &mut Vec<Hit>) {
        let mut pos = 0;
        while pos < s.len() {
            let Some(found) = self.next(s, pos) else {
                break;
            };
            let (start, end) = found.value;
            out.push(Hit {
                start,
                end,
                detector: found.detector,
                seen: None,
                part: false,
                text: None,
            });
            pos = found.end.max(next_char(s, pos));
        }
    }

    /// Orders `hits`, folds overlapping ones into the first, counts them and notes a
    /// `block`; `None` when there is nothing to replace (or the message is blocked).
    fn settle(&mut self, mut hits: Vec<Hit>) -> Option<Vec<Hit>> {
        if hits.is_empty() {
            return None;
        }
        hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        let mut kept: Vec<Hit> = Vec::with_capacity(hits.len());
        for hit in hits {
            if self.config.detectors[hit.detector].action == Action::Block {
                self.blocked.get_or_insert(hit.detector);
            }
            match kept.last_mut() {
                Some(last) if hit.start < last.end => last.end = last.end.max(hit.end),
                _ => {
                    if !hit.part {
                        self.counts[hit.detector] += 1;
                    }
                    kept.push(hit);
                }
            }
        }
        if self.blocked.is_some() {
            return None;
        }
        Some(kept)
    }

    /// `s` with `hits` (ordered, not overlapping) replaced.
    fn render(&self, s: &str, hits: &[Hit]) -> String {
        let mut out = String::with_capacity(s.len());
        let mut copied = 0;
        for hit in hits {
            let d = &self.config.detectors[hit.detector];
            let (start, end) = (hit.start.min(s.len()), hit.end.min(s.len()));
            if start < copied || !s.is_char_boundary(start) || !s.is_char_boundary(end) {
                continue;
            }
            out.push_str(&s[copied..start]);
            let action = match (hit.part, d.action) {
                // The rest of a value whose first part shows what a mask keeps.
                (true, Action::Mask { .. }) => Action::Mask { keep: 0 },
                (_, action) => action,
            };
            if let Some(text) = &hit.text {
                out.push_str(text);
                copied = end;
                continue;
            }
            let value = hit.seen.as_deref().unwrap_or(&s[start..end]);
            let style = &self.config.style;
            action::render(
                action,
                value,
                &d.name,
                &d.label,
                d.normalize,
                style,
                &mut out,
            );
            copied = end;
        }
        out.push_str(&s[copied..]);
        out
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
            let secret = self.config.keys.as_ref().and_then(|(re, d)| {
                let named = re.is_match(key.as_str())
                    || (self.config.normalize
                        && normalize::needed(key)
                        && View::build(key, self.config.decode_depth)
                            .is_some_and(|v| re.is_match(v.text.as_str())));
                named.then_some(*d)
            });
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
