//! Name patterns: `*` matches any run of characters (including none, and including `/`),
//! `?` matches exactly one character, everything else matches itself (case-sensitive).
//!
//! Patterns are classified once, when the configuration is loaded, so the common shapes
//! (`get_issue`, `get_*`, `*_admin`, `*`) cost one comparison; the rest run a small
//! backtracking matcher that never allocates.
//!
//! Why not a crate: `globset` pulls in `regex` (hundreds of KiB of Wasm for an instance that is
//! created per call); `glob-match` treats `/` as a path separator, so `file:///srv/*` would
//! silently miss `file:///srv/a/b.md` in a resource rule; `wildmatch` has the semantics wanted
//! here but is no smaller than this file, and does not give the fast paths.

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Glob {
    /// `*` (or `**`…): anything.
    Any,
    /// No wildcard: the text itself.
    Exact(Box<str>),
    /// `text*`.
    Prefix(Box<str>),
    /// `*text`.
    Suffix(Box<str>),
    /// Anything else.
    Wild(Box<str>),
}

impl Glob {
    /// Compiles a pattern. Every string is a valid pattern; the caller rejects empty ones.
    pub fn new(pattern: &str) -> Glob {
        let wild = |c: char| c == '*' || c == '?';
        if !pattern.is_empty() && pattern.chars().all(|c| c == '*') {
            return Glob::Any;
        }
        if !pattern.contains(wild) {
            return Glob::Exact(pattern.into());
        }
        if let Some(head) = pattern.strip_suffix('*')
            && !head.contains(wild)
        {
            return Glob::Prefix(head.into());
        }
        if let Some(tail) = pattern.strip_prefix('*')
            && !tail.contains(wild)
        {
            return Glob::Suffix(tail.into());
        }
        Glob::Wild(pattern.into())
    }

    /// True for the empty pattern (which only matches the empty string: a mistake in a rule).
    pub fn is_empty(&self) -> bool {
        matches!(self, Glob::Exact(e) if e.is_empty())
    }

    /// True if `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(e) => text == &**e,
            Glob::Prefix(p) => text.starts_with(&**p),
            Glob::Suffix(s) => text.ends_with(&**s),
            Glob::Wild(p) => wild_match(p.as_bytes(), text.as_bytes()),
        }
    }
}

/// True if any of `globs` matches `text`.
pub fn any_match(globs: &[Glob], text: &str) -> bool {
    globs.iter().any(|g| g.is_match(text))
}

/// Length of the UTF-8 sequence that starts with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// The classic greedy matcher with one backtrack point (the last `*`), on bytes. `?` and a
/// `*` retry step over whole characters, and literal characters compare as whole UTF-8
/// sequences, so matching stays on character boundaries.
fn wild_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t = (t + char_len(text[t])).min(text.len());
                    continue;
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                let next = (st + char_len(text[st])).min(text.len());
                star = Some((sp, next));
                p = sp + 1;
                t = next;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).is_match(text)
    }

    #[test]
    fn classifies_the_common_shapes() {
        assert_eq!(Glob::new("*"), Glob::Any);
        assert_eq!(Glob::new("**"), Glob::Any);
        assert_eq!(Glob::new("get_issue"), Glob::Exact("get_issue".into()));
        assert_eq!(Glob::new("get_*"), Glob::Prefix("get_".into()));
        assert_eq!(Glob::new("*_admin"), Glob::Suffix("_admin".into()));
        assert_eq!(Glob::new("get_*_x"), Glob::Wild("get_*_x".into()));
        assert_eq!(Glob::new("a?"), Glob::Wild("a?".into()));
    }

    #[test]
    fn star_and_question_mark() {
        assert!(m("get_*", "get_issue"));
        assert!(m("get_*", "get_"));
        assert!(!m("get_*", "list_issues"));
        assert!(m("*_issue", "create_issue"));
        assert!(m("*issue*", "create_issue_comment"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("a*b", "abbb"));
        assert!(!m("a*b", "abba"));
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v"));
        assert!(!m("v?", "v12"));
        assert!(m("?é?", "aéb"));
        assert!(m("?", "é"), "? is one character, not one byte");
        assert!(m("*é", "aaé"));
        assert!(!m("Get_*", "get_issue"), "case-sensitive");
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
    }

    #[test]
    fn star_crosses_slashes() {
        assert!(m("file:///srv/*", "file:///srv/a/b.md"));
        assert!(m("file:///srv/*.md", "file:///srv/a/b.md"));
        assert!(!m("file:///srv/*.md", "file:///srv/a/b.txt"));
        assert!(m("*://*/docs/*", "https://example.com/docs/x"));
    }
}
