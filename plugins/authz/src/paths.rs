//! Lexical path checks for the `path-under` argument condition.
//!
//! A value is resolved without touching any filesystem: `.` and empty segments are dropped,
//! `..` removes the previous component, and a path that climbs above `/` is no path at all.
//! `file://` URIs are read as their path. Symbolic links are not (cannot be) resolved: the
//! upstream that opens the file must not follow links out of the folder.

/// The components of an absolute path, resolved lexically; `None` if `path` is not absolute
/// or climbs above `/`.
pub fn components(path: &str) -> Option<Vec<&str>> {
    let path = path.strip_prefix("file://").unwrap_or(path);
    let rest = path.strip_prefix('/')?;
    let mut out = Vec::new();
    for segment in rest.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out)
}

/// True if `path` is `folder` or inside it (`folder` given as its components).
pub fn is_under(path: &str, folder: &[Box<str>]) -> bool {
    // Most values are short; resolving them costs one small vector.
    match components(path) {
        Some(c) => c.len() >= folder.len() && c.iter().zip(folder).all(|(a, b)| *a == &**b),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(f: &str) -> Vec<Box<str>> {
        components(f).unwrap().into_iter().map(Into::into).collect()
    }

    #[test]
    fn resolves_lexically_and_compares_whole_components() {
        let shared = folder("/srv/shared/");
        assert!(is_under("/srv/shared/a.txt", &shared));
        assert!(is_under("/srv/shared", &shared));
        assert!(is_under("//srv/./shared//x/../y", &shared));
        assert!(is_under("file:///srv/shared/a", &shared));
        assert!(!is_under("/srv/shared/../secret", &shared));
        assert!(
            !is_under("/srv/shared-other/a", &shared),
            "components, not a string prefix"
        );
        assert!(
            !is_under("srv/shared/a", &shared),
            "relative paths are refused"
        );
        assert!(
            !is_under("/../srv/shared", &shared),
            "climbing above / is refused"
        );
        assert!(is_under("/anything", &folder("/")));
    }
}
