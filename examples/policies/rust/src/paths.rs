//! Telling paths from other strings, and whether a path stays inside an allowed folder.
//!
//! Everything here is lexical: the policy never touches a filesystem (it has none), so `..`
//! is resolved on the text, and a relative path that climbs with `..` cannot be placed at all
//! and is never inside an allowed folder.

use portcullis_sdk::serde_json::Value;

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// `/…`
    Absolute,
    /// `~…`, the caller's home on the upstream's machine.
    Home,
    /// Anything else: relative to a working directory the policy cannot know.
    Relative,
}

/// A path reduced to its root and its components, with `.` and `..` resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    root: Root,
    parts: Vec<String>,
}

impl NormalPath {
    /// Resolves `.` and `..`; `None` when `..` climbs above the root (e.g. `/../etc`, `../x`).
    pub fn parse(path: &str) -> Option<NormalPath> {
        let path = path.strip_prefix("file://").unwrap_or(path);
        let (root, rest) = if let Some(rest) = path.strip_prefix('~') {
            (Root::Home, rest)
        } else if path.starts_with(['/', '\\']) {
            (Root::Absolute, path)
        } else {
            (Root::Relative, path)
        };
        let mut parts: Vec<String> = Vec::new();
        for part in rest.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                _ => parts.push(part.to_string()),
            }
        }
        Some(NormalPath { root, parts })
    }

    /// True if `self` is `folder` or lies below it (component-wise: `/srv/data-old` is not
    /// inside `/srv/data`).
    pub fn is_inside(&self, folder: &NormalPath) -> bool {
        self.root != Root::Relative
            && self.root == folder.root
            && self.parts.starts_with(&folder.parts)
    }

    /// True for the folders an operator may allow: absolute or under `~`.
    pub fn is_anchored(&self) -> bool {
        self.root != Root::Relative
    }
}

/// True for strings that look like filesystem paths: starting with `/`, `~` or `file://`, or
/// with a `..` component anywhere (`../etc`, `a/../../b`, `..\\x`).
pub fn looks_like_path(s: &str) -> bool {
    s.starts_with(['/', '~'])
        || s.starts_with("file://")
        || s.split(['/', '\\']).any(|part| part == "..")
}

/// True if `path` is inside one of `allowed`.
pub fn is_allowed(path: &str, allowed: &[NormalPath]) -> bool {
    NormalPath::parse(path).is_some_and(|p| allowed.iter().any(|folder| p.is_inside(folder)))
}

/// The first string in `value` (searched depth first, object keys in sorted order) that looks
/// like a path and is not allowed, with where it was found (e.g. `files[2].src`).
///
/// Keys are sorted explicitly, not taken in the map's order, so the verdict does not depend on
/// serde_json's `preserve_order` feature, and the Python, JavaScript and Go twins
/// (examples/policies/) name the same argument.
pub fn first_outside(value: &Value, allowed: &[NormalPath], at: &mut String) -> Option<String> {
    match value {
        Value::String(s) if looks_like_path(s) && !is_allowed(s, allowed) => Some(at.clone()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = at.len();
            at.push_str(&format!("[{i}]"));
            let found = first_outside(item, allowed, at);
            at.truncate(len);
            found
        }),
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            entries.into_iter().find_map(|(key, item)| {
                let len = at.len();
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(key);
                let found = first_outside(item, allowed, at);
                at.truncate(len);
                found
            })
        }
        _ => None,
    }
}

/// How many strings in `value` look like paths.
pub fn count_paths(value: &Value) -> usize {
    match value {
        Value::String(s) => usize::from(looks_like_path(s)),
        Value::Array(items) => items.iter().map(count_paths).sum(),
        Value::Object(map) => map.values().map(count_paths).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use portcullis_sdk::serde_json::json;

    use super::*;

    fn folders(list: &[&str]) -> Vec<NormalPath> {
        list.iter().map(|f| NormalPath::parse(f).unwrap()).collect()
    }

    #[test]
    fn recognises_paths_but_not_prose() {
        for path in [
            "/etc/passwd",
            "~/.ssh/id_rsa",
            "../secrets",
            "a/../../b",
            "..\\win",
            "file:///etc/hosts",
        ] {
            assert!(looks_like_path(path), "{path}");
        }
        for text in [
            "hello",
            "wait...",
            "https://example.com/a",
            "a/b",
            "v1.2..3",
        ] {
            assert!(!looks_like_path(text), "{text}");
        }
    }

    #[test]
    fn resolves_dot_dot_before_comparing() {
        let allowed = folders(&["/srv/data", "~/projects"]);
        assert!(is_allowed("/srv/data", &allowed));
        assert!(is_allowed("/srv/data/a/./b.txt", &allowed));
        assert!(is_allowed("~/projects/x", &allowed));
        assert!(is_allowed("file:///srv/data/report.csv", &allowed));
        assert!(!is_allowed("/srv/data/../../etc/passwd", &allowed));
        assert!(
            !is_allowed("/srv/data-old/x", &allowed),
            "prefixes match whole components"
        );
        assert!(
            !is_allowed("/../srv/data", &allowed),
            "climbing above the root is refused"
        );
        assert!(
            !is_allowed("../srv/data", &allowed),
            "relative paths cannot be placed"
        );
        assert!(!is_allowed("~/.ssh/id_rsa", &allowed));
        assert!(is_allowed("/anything", &folders(&["/"])));
    }

    #[test]
    fn finds_the_first_offending_argument_anywhere_in_the_arguments() {
        let allowed = folders(&["/srv"]);
        let args =
            json!({ "note": "fine", "files": [ { "src": "/srv/a" }, { "src": "/etc/shadow" } ] });
        assert_eq!(
            first_outside(&args, &allowed, &mut String::new()).as_deref(),
            Some("files[1].src")
        );
        assert_eq!(count_paths(&args), 2);
        assert_eq!(
            first_outside(
                &json!({ "zeta": "/etc/z", "alpha": "/etc/a" }),
                &allowed,
                &mut String::new()
            )
            .as_deref(),
            Some("alpha"),
            "keys are searched in sorted order, whatever the map's own order"
        );
        assert_eq!(
            first_outside(&json!({ "path": "/srv/ok" }), &allowed, &mut String::new()),
            None
        );
    }
}
