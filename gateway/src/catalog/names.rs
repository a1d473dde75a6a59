//! Namespacing: how an upstream's item names and resource URIs appear to clients.
//!
//! Tool and prompt names become `<upstream><separator><name>` (default separator `__`).
//! Resource URIs and URI templates become `<upstream>+<uri>` (`docs+file:///a.md`): `+` is a
//! legal URI-scheme character, so the result is still a valid URI, and upstream names cannot
//! contain `+`.

use std::sync::Arc;

use crate::config::{Namespacing, PrefixMode};

/// The URI prefix separator; see the module docs.
const URI_SEPARATOR: char = '+';

#[derive(Debug, Clone)]
pub struct Names {
    separator: String,
    pub mode: PrefixMode,
    upstreams: Vec<Arc<str>>,
}

impl Names {
    pub fn new(ns: &Namespacing, upstreams: Vec<Arc<str>>) -> Self {
        Names {
            separator: ns.separator.clone(),
            mode: ns.prefix,
            upstreams,
        }
    }

    pub fn upstream(&self, idx: usize) -> &str {
        &self.upstreams[idx]
    }

    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }

    /// The name clients see for upstream `idx`'s item `name`. `collides` says whether
    /// another upstream exposes the same name (matters in `when-needed` mode).
    pub fn expose(&self, idx: usize, name: &str, collides: bool) -> String {
        if self.prefixed(collides) {
            format!("{}{}{name}", self.upstreams[idx], self.separator)
        } else {
            name.to_string()
        }
    }

    pub fn expose_uri(&self, idx: usize, uri: &str, collides: bool) -> String {
        if self.prefixed(collides) {
            format!("{}{URI_SEPARATOR}{uri}", self.upstreams[idx])
        } else {
            uri.to_string()
        }
    }

    fn prefixed(&self, collides: bool) -> bool {
        match self.mode {
            PrefixMode::Always => true,
            PrefixMode::WhenNeeded => collides,
            PrefixMode::Never => false,
        }
    }

    /// Splits a prefixed name into the upstream index and the upstream's own name.
    pub fn split<'a>(&self, exposed: &'a str) -> Option<(usize, &'a str)> {
        if self.mode == PrefixMode::Never {
            return None;
        }
        let (prefix, rest) = exposed.split_once(self.separator.as_str())?;
        let idx = self.upstreams.iter().position(|u| &**u == prefix)?;
        (!rest.is_empty()).then_some((idx, rest))
    }

    pub fn split_uri<'a>(&self, exposed: &'a str) -> Option<(usize, &'a str)> {
        if self.mode == PrefixMode::Never {
            return None;
        }
        let (prefix, rest) = exposed.split_once(URI_SEPARATOR)?;
        let idx = self.upstreams.iter().position(|u| &**u == prefix)?;
        (!rest.is_empty()).then_some((idx, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(mode: PrefixMode) -> Names {
        let ns = Namespacing {
            separator: "__".into(),
            prefix: mode,
        };
        Names::new(&ns, vec!["alpha".into(), "beta-2".into()])
    }

    #[test]
    fn always_prefixes_and_splits_back() {
        let n = names(PrefixMode::Always);
        assert_eq!(n.expose(1, "make__thing", false), "beta-2__make__thing");
        assert_eq!(n.split("beta-2__make__thing"), Some((1, "make__thing")));
        assert_eq!(n.split("gamma__x"), None);
        assert_eq!(n.split("alpha__"), None);
        assert_eq!(n.expose_uri(0, "file:///a", false), "alpha+file:///a");
        assert_eq!(n.split_uri("alpha+file:///a"), Some((0, "file:///a")));
        assert_eq!(n.split_uri("svn+ssh://x"), None);
    }

    #[test]
    fn when_needed_prefixes_only_collisions_and_never_never() {
        let n = names(PrefixMode::WhenNeeded);
        assert_eq!(n.expose(0, "x", false), "x");
        assert_eq!(n.expose(0, "x", true), "alpha__x");
        let n = names(PrefixMode::Never);
        assert_eq!(n.expose(0, "x", true), "x");
        assert_eq!(n.split("alpha__x"), None);
    }
}
