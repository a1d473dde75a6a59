//! Matching a concrete URI against an RFC 6570 URI template, enough to route
//! `resources/read` to the upstream whose template produced the URI.

/// Whether `uri` can be an expansion of `template`. Simple expressions (`{id}`) match a
/// non-empty run without `/`, `?` or `#`; reserved and path-style expressions (`{+path}`,
/// `{/seg}`, `{?q}`, `{&q}`, `{#frag}`, `{.ext}`, `{;p}`) match any run, possibly empty.
pub fn matches(template: &str, uri: &str) -> bool {
    match template.find('{') {
        None => template == uri,
        Some(open) => {
            let (literal, rest) = template.split_at(open);
            let Some(uri) = uri.strip_prefix(literal) else {
                return false;
            };
            let Some(close) = rest.find('}') else {
                return false;
            };
            let expr = &rest[1..close];
            let after = &rest[close + 1..];
            let greedy = expr.starts_with(['+', '/', '?', '&', '#', '.', ';']);
            let min = usize::from(!greedy);
            // Try every split point; templates are short, so this stays cheap.
            (min..=uri.len())
                .filter(|&i| uri.is_char_boundary(i))
                .any(|i| {
                    let taken = &uri[..i];
                    (greedy || !taken.contains(['/', '?', '#'])) && matches(after, &uri[i..])
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matches_simple_and_reserved_expressions() {
        assert!(matches(
            "test://template/{id}/data",
            "test://template/42/data"
        ));
        assert!(!matches(
            "test://template/{id}/data",
            "test://template/4/2/data"
        ));
        assert!(!matches(
            "test://template/{id}/data",
            "test://template//data"
        ));
        assert!(matches("file:///{+path}", "file:///a/b/c.txt"));
        assert!(matches("db://{table}{?limit}", "db://users?limit=3"));
        assert!(!matches("test://static", "test://other"));
    }
}
