//! `${NAME}` expansion from the environment.

/// Replaces `${NAME}` with the variable's value and `$$` with `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix('{') {
            let end = body.find('}').ok_or("unterminated ${ in value")?;
            let name = &body[..end];
            if name.is_empty() {
                return Err("empty ${} in value".into());
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cr3t".to_string())
    }

    #[test]
    fn expands_escapes_and_reports_missing() {
        assert_eq!(expand("Bearer ${TOKEN}", &env).unwrap(), "Bearer s3cr3t");
        assert_eq!(expand("a$$b $x", &env).unwrap(), "a$b $x");
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(expand("${TOKEN", &env).is_err());
    }
}
