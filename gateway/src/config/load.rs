//! Reading, expanding and validating a configuration file.

use std::fmt;
use std::path::Path;

use super::{Config, HttpTransport, PrefixMode, TransportKind, UpstreamProtocol, env};

/// A configuration problem, naming the file, line (when known) and field at fault.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: None,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    let mut config = parse(&text, &file, &|name| std::env::var(name).ok())?;
    // Paths in the file are relative to the file.
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [&mut config.policy.plugins, &mut config.policy.cache]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    // So is a stdio `command` given as a relative path (`../target/debug/portcullis`); a
    // bare name (`npx`) is looked up on PATH.
    for up in config.upstreams.values_mut() {
        if let Some(cmd) = up.command.as_mut()
            && cmd.contains('/')
            && Path::new(cmd.as_str()).is_relative()
        {
            *cmd = base.join(cmd.as_str()).to_string_lossy().into_owned();
        }
    }
    config.audit.resolve(base);
    if let Some(tls) = config.server.tls.as_mut() {
        tls.resolve(base);
    }
    Ok(config)
}

/// The configuration `portcullis serve` runs without `--config`: the demo upstream from
/// `examples/demo-server`, run as a child process of this very binary.
pub fn embedded_default() -> Config {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "portcullis".into());
    let text = format!(
        "[upstreams.demo]\ncommand = {exe:?}\nargs = [\"demo-upstream\"]\n",
        exe = exe.replace('$', "$$")
    );
    // The text above is fixed apart from the executable path, so it always parses.
    parse(&text, "<embedded default>", &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses, expands `${ENV}` and validates configuration text. `file` names it in errors.
pub fn parse(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let err = |line: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        line,
        field,
        message,
    };
    let mut config: Config = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_at(text, s.start));
        err(line, String::new(), e.message().trim().to_string())
    })?;

    let server = &config.server;
    let server_line = line_of(text, "[server]");
    if !server.path.starts_with('/') {
        return Err(err(
            server_line,
            "server.path".into(),
            "must start with '/'".into(),
        ));
    }
    if server.max_body_bytes == 0 {
        return Err(err(
            server_line,
            "server.max-body-bytes".into(),
            "must be positive".into(),
        ));
    }
    if server.legacy_sse {
        let paths = [
            ("server.legacy-sse-path", &server.legacy_sse_path),
            ("server.legacy-message-path", &server.legacy_message_path),
        ];
        for (field, path) in paths {
            if !path.starts_with('/') || path.contains('?') {
                return Err(err(
                    server_line,
                    field.into(),
                    "must start with '/' and have no query".into(),
                ));
            }
            if *path == server.path {
                return Err(err(
                    server_line,
                    field.into(),
                    "must differ from server.path".into(),
                ));
            }
        }
        if server.legacy_sse_path == server.legacy_message_path {
            return Err(err(
                server_line,
                "server.legacy-message-path".into(),
                "must differ from server.legacy-sse-path".into(),
            ));
        }
    }
    if let Some(Err(message)) = server.tls.as_ref().map(|t| t.validate()) {
        let line = line_of(text, "[server.tls]");
        return Err(err(line, "server.tls.client-auth".into(), message));
    }
    let sep = &config.namespacing.separator;
    if sep.is_empty() || sep.chars().any(char::is_whitespace) {
        return Err(err(
            line_of(text, "[namespacing]"),
            "namespacing.separator".into(),
            "must be non-empty and contain no whitespace".into(),
        ));
    }
    if let Some(oauth) = &config.oauth {
        let line = line_of(text, "[oauth]");
        match reqwest::Url::parse(&oauth.public_url) {
            Ok(u)
                if (u.scheme() == "https" || u.scheme() == "http")
                    && u.path() == "/"
                    && u.query().is_none() => {}
            _ => {
                return Err(err(
                    line,
                    "oauth.public-url".into(),
                    "must be an http(s) origin such as https://mcp.example.com (no path)".into(),
                ));
            }
        }
        if oauth.authorization_servers.is_empty() {
            return Err(err(
                line,
                "oauth.authorization-servers".into(),
                "list at least one issuer URL".into(),
            ));
        }
    }
    if config.upstreams.is_empty() {
        return Err(err(
            None,
            "upstreams".into(),
            "no upstream servers are configured".into(),
        ));
    }

    for (name, up) in config.upstreams.iter_mut() {
        let line = line_of(text, &format!("[upstreams.{name}]"));
        let field = |f: &str| format!("upstreams.{name}.{f}");
        // The line of the key itself when it is in the table, else the table header's.
        let at = |f: &str| key_line(text, line, f.split('.').next().unwrap_or(f)).or(line);
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(err(
                line,
                format!("upstreams.{name}"),
                "an upstream name may contain only ASCII letters, digits and '-'".into(),
            ));
        }
        if name.contains(sep.as_str()) {
            return Err(err(
                line,
                format!("upstreams.{name}"),
                format!("the name contains the namespacing separator {sep:?}"),
            ));
        }
        match (&up.command, &up.url) {
            (Some(_), Some(_)) => {
                return Err(err(
                    at("url"),
                    field("url"),
                    "set either `command` or `url`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    line,
                    format!("upstreams.{name}"),
                    "set `command` (a stdio server) or `url` (a Streamable HTTP server)".into(),
                ));
            }
            _ => {}
        }
        let expand = |f: &str, v: &mut String| -> Result<(), ConfigError> {
            *v = env::expand(v, lookup).map_err(|m| err(at(f), field(f), m))?;
            Ok(())
        };
        if let Some(c) = up.command.as_mut() {
            expand("command", c)?;
        }
        for a in up.args.iter_mut() {
            expand("args", a)?;
        }
        for (k, v) in up.env.iter_mut() {
            expand(&format!("env.{k}"), v)?;
        }
        if let Some(u) = up.url.as_mut() {
            expand("url", u)?;
        }
        for (k, v) in up.headers.iter_mut() {
            expand(&format!("headers.{k}"), v)?;
        }
        if let Some(t) = up.bearer_token.as_mut() {
            expand("bearer-token", t)?;
        }
        super::upstream_auth::check(name, up, text, file, lookup)?;
        if up.timeout.is_zero()
            || up.connect_timeout.is_zero()
            || up.list_timeout.is_zero()
            || up.list_timeout_failing.is_zero()
        {
            return Err(err(
                at("timeout"),
                field("timeout"),
                "timeouts must be positive".into(),
            ));
        }
        for (key, value) in [
            ("max-response-mib", up.max_response_mib),
            ("max-sse-event-mib", up.max_sse_event_mib),
            ("max-line-mib", up.max_line_mib),
        ] {
            if value.is_some_and(|v| !(1..=super::MAX_MESSAGE_MIB).contains(&v)) {
                return Err(err(
                    at(key),
                    field(key),
                    format!("must be between 1 and {} (MiB)", super::MAX_MESSAGE_MIB),
                ));
            }
        }
        if up.max_children == Some(0) {
            return Err(err(
                at("max-children"),
                field("max-children"),
                "must be at least 1".into(),
            ));
        }
        if up.pool.is_some_and(|p| !(1..=super::MAX_POOL).contains(&p)) {
            return Err(err(
                at("pool"),
                field("pool"),
                format!("must be between 1 and {}", super::MAX_POOL),
            ));
        }
        if up.pool.is_some() && up.share != super::Share::Shared {
            return Err(err(
                at("pool"),
                field("pool"),
                "applies with `share = \"shared\"` only".into(),
            ));
        }
        if up.share == super::Share::Shared
            && up.pool.map_or(super::DEFAULT_POOL, |p| p)
                > up.max_children.unwrap_or(super::DEFAULT_MAX_CHILDREN)
        {
            return Err(err(
                at("pool"),
                field("pool"),
                "must not exceed `max-children`".into(),
            ));
        }
        let share = (up.share == super::Share::Shared).then_some(0);
        let (stdio_only, http_only) = (
            [
                ("max-line-mib", up.max_line_mib),
                ("max-children", up.max_children),
                ("share", share),
            ],
            [
                ("max-response-mib", up.max_response_mib),
                ("max-sse-event-mib", up.max_sse_event_mib),
            ],
        );
        let misplaced = match up.transport() {
            TransportKind::Stdio => http_only
                .iter()
                .find(|(_, v)| v.is_some())
                .map(|(k, _)| (*k, "applies to HTTP upstreams (`url`) only")),
            TransportKind::Http => stdio_only
                .iter()
                .find(|(_, v)| v.is_some())
                .map(|(k, _)| (*k, "applies to stdio upstreams (`command`) only")),
        };
        if let Some((key, why)) = misplaced {
            return Err(err(at(key), field(key), why.into()));
        }
        match up.transport() {
            TransportKind::Stdio => {
                if !up.headers.is_empty() || up.bearer_token.is_some() {
                    return Err(err(
                        at("headers"),
                        field("headers"),
                        "`headers` and `bearer-token` apply to HTTP upstreams only".into(),
                    ));
                }
                if up.transport != HttpTransport::Auto {
                    return Err(err(
                        at("transport"),
                        field("transport"),
                        "applies to HTTP upstreams (`url`) only".into(),
                    ));
                }
            }
            TransportKind::Http => {
                if up.transport == HttpTransport::Sse && up.protocol == UpstreamProtocol::Stateless
                {
                    return Err(err(
                        at("protocol"),
                        field("protocol"),
                        "2026-07-28 runs over Streamable HTTP, not the legacy HTTP+SSE transport"
                            .into(),
                    ));
                }
                if !up.args.is_empty() || !up.env.is_empty() || up.cwd.is_some() {
                    return Err(err(
                        at("args"),
                        field("args"),
                        "`args`, `env` and `cwd` apply to stdio upstreams only".into(),
                    ));
                }
                let url = up.url.as_deref().unwrap_or_default();
                match reqwest::Url::parse(url) {
                    Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                    Ok(_) => {
                        return Err(err(
                            at("url"),
                            field("url"),
                            "must be an http:// or https:// URL".into(),
                        ));
                    }
                    Err(e) => {
                        return Err(err(at("url"), field("url"), format!("invalid URL: {e}")));
                    }
                }
                for (k, v) in &up.headers {
                    if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                        return Err(err(
                            at("headers"),
                            field("headers"),
                            format!("{k:?} is not a valid header name"),
                        ));
                    }
                    if http::HeaderValue::from_str(v).is_err() {
                        // The value may be a secret: name the header, never print the value.
                        return Err(err(
                            at(&format!("headers.{k}")),
                            field(&format!("headers.{k}")),
                            "is not a valid header value".into(),
                        ));
                    }
                    if k.eq_ignore_ascii_case("authorization") && up.bearer_token.is_some() {
                        return Err(err(
                            at("headers"),
                            field("headers"),
                            "set `Authorization` in `headers` or `bearer-token`, not both".into(),
                        ));
                    }
                }
            }
        }
    }
    super::bounds::check(&config, text, file)?;
    super::observe::check(&mut config, text, file, lookup)?;
    super::audit::check(&mut config.audit, text, file, lookup)?;
    super::cluster::check(&mut config.cluster, text, file, lookup)?;
    if config.namespacing.prefix == PrefixMode::Never {
        tracing::debug!("namespacing.prefix = never: name collisions are checked at start-up");
    }
    Ok(config)
}

/// The 1-based line of the first occurrence of `needle`, if any.
pub(super) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.find(needle).map(|at| line_at(text, at))
}

/// The line of `key = …` in the table whose header is on line `table`.
pub(super) fn key_line(text: &str, table: Option<usize>, key: &str) -> Option<usize> {
    let table = table?;
    for (i, l) in text.lines().enumerate().skip(table) {
        let l = l.trim_start();
        if l.starts_with('[') {
            return None;
        }
        if l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// The 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, String> {
        parse(text, "t.toml", &|n| (n == "TOKEN").then(|| "abc".into())).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = check("[upstreams.a]\ncommand = \"srv\"\n").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.path, "/mcp");
        assert_eq!(c.namespacing.separator, "__");
        assert_eq!(c.upstreams["a"].transport(), TransportKind::Stdio);
    }

    #[test]
    fn a_relative_command_path_is_relative_to_the_file_and_a_bare_name_is_not() {
        let dir = std::env::temp_dir().join(format!("portcullis-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "[upstreams.a]\ncommand = \"../bin/srv\"\n[upstreams.b]\ncommand = \"npx\"\n[upstreams.c]\ncommand = \"/usr/bin/srv\"\n",
        )
        .unwrap();
        let c = load(&file).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            c.upstreams["a"].command.as_deref(),
            Some(dir.join("../bin/srv").to_string_lossy().as_ref())
        );
        assert_eq!(c.upstreams["b"].command.as_deref(), Some("npx"));
        assert_eq!(c.upstreams["c"].command.as_deref(), Some("/usr/bin/srv"));
        assert_eq!(
            c.upstreams["b"].list_timeout,
            std::time::Duration::from_secs(5)
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = check(
            "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n[upstreams.a]\ncommand = \"x\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field_and_line() {
        let e = check("\n[upstreams.a]\ncommand = \"x\"\nurl = \"http://h\"\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:4: upstreams.a.url: set either `command` or `url`, not both"
        );
        let e = check("[upstreams.b]\nurl = \"ftp://h\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:2: upstreams.b.url"), "{e}");
        let e = check("[upstreams.a_b]\ncommand = \"x\"\n").unwrap_err();
        assert!(
            e.contains("upstreams.a_b: an upstream name may contain only"),
            "{e}"
        );
        let e = check("[namespacing]\nseparator = \"-\"\n[upstreams.a-b]\ncommand = \"x\"\n")
            .unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.a-b: the name contains the namespacing separator \"-\""
        );
        let e = check("[upstreams.c]\nurl = \"http://h\"\nbearer-token = \"${MISSING}\"\n")
            .unwrap_err();
        assert!(
            e.contains("upstreams.c.bearer-token: environment variable MISSING is not set"),
            "{e}"
        );
        assert!(check("").unwrap_err().contains("no upstream"));
    }

    #[test]
    fn expands_environment_in_upstream_fields() {
        let c =
            check("[upstreams.c]\nurl = \"http://h/mcp\"\nbearer-token = \"${TOKEN}\"\n").unwrap();
        assert_eq!(c.upstreams["c"].bearer_token.as_deref(), Some("abc"));
    }

    #[test]
    fn legacy_sse_keys() {
        let c = check("[upstreams.a]\nurl = \"http://h/sse\"\ntransport = \"sse\"\n").unwrap();
        assert_eq!(c.upstreams["a"].transport, HttpTransport::Sse);
        assert!(c.server.legacy_sse);
        assert_eq!(c.server.legacy_sse_path, "/sse");
        assert_eq!(c.server.legacy_message_path, "/message");
        let c = check("[upstreams.a]\ncommand = \"x\"\nprotocol = \"2026-07-28\"\n").unwrap();
        assert_eq!(c.upstreams["a"].protocol, UpstreamProtocol::Stateless);
        let c =
            check("[upstreams.a]\nurl = \"http://h/mcp\"\nprotocol = \"2026-07-28\"\n").unwrap();
        assert_eq!(c.upstreams["a"].protocol, UpstreamProtocol::Stateless);
        let e = check("[upstreams.a]\nurl = \"http://h/mcp\"\nprotocol = \"2027\"\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("t.toml:3: unknown variant `2027`"),
            "{e}"
        );
        let e = check("[upstreams.a]\ncommand = \"x\"\ntransport = \"sse\"\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.a.transport: applies to HTTP upstreams (`url`) only"
        );
        let e =
            check("[upstreams.a]\nurl = \"http://h\"\ntransport = \"websocket\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:") && e.contains("websocket"), "{e}");
        let e = check("[server]\nlegacy-sse-path = \"/mcp\"\n[upstreams.a]\ncommand = \"x\"\n")
            .unwrap_err();
        assert_eq!(
            e,
            "t.toml:1: server.legacy-sse-path: must differ from server.path"
        );
        let off = "[server]\nlegacy-sse = false\nlegacy-sse-path = \"/mcp\"\n[upstreams.a]\ncommand = \"x\"\n";
        assert!(!check(off).unwrap().server.legacy_sse);
    }

    #[test]
    fn a_stdio_upstream_is_per_session_unless_shared() {
        use crate::config::Share;
        let c = check("[upstreams.a]\ncommand = \"x\"\n").unwrap();
        assert_eq!(c.upstreams["a"].share, Share::PerSession);
        let c = check("[upstreams.a]\ncommand = \"x\"\nshare = \"shared\"\n").unwrap();
        assert_eq!(c.upstreams["a"].share, Share::Shared);
        assert_eq!(c.upstreams["a"].pool(), 1);
        let c = check("[upstreams.a]\ncommand = \"x\"\nshare = \"shared\"\npool = 4\n").unwrap();
        assert_eq!(c.upstreams["a"].pool(), 4);
        let e = check("[upstreams.a]\ncommand = \"x\"\npool = 2\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.a.pool: applies with `share = \"shared\"` only"
        );
        let e =
            check("[upstreams.a]\ncommand = \"x\"\nshare = \"shared\"\npool = 0\n").unwrap_err();
        assert_eq!(e, "t.toml:4: upstreams.a.pool: must be between 1 and 64");
        let e = check(
            "[upstreams.a]\ncommand = \"x\"\nshare = \"shared\"\npool = 8\nmax-children = 4\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            "t.toml:4: upstreams.a.pool: must not exceed `max-children`"
        );
        let e = check("[upstreams.b]\nurl = \"http://h\"\nshare = \"shared\"\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.b.share: applies to stdio upstreams (`command`) only"
        );
        let e = check("[upstreams.a]\ncommand = \"x\"\nshare = \"sometimes\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:") && e.contains("sometimes"), "{e}");
    }

    #[test]
    fn upstream_bounds_have_defaults_and_precise_errors() {
        let c =
            check("[upstreams.a]\ncommand = \"x\"\n[upstreams.b]\nurl = \"http://h\"\n").unwrap();
        assert_eq!(c.upstreams["a"].max_line_bytes(), 16 << 20);
        assert_eq!(c.upstreams["a"].max_children(), 64);
        assert_eq!(c.upstreams["b"].max_response_bytes(), 16 << 20);
        assert_eq!(c.upstreams["b"].max_sse_event_bytes(), 16 << 20);
        let c = check(
            "[upstreams.a]\ncommand = \"x\"\nmax-line-mib = 2\nmax-children = 3\n[upstreams.b]\nurl = \"http://h\"\nmax-response-mib = 4\nmax-sse-event-mib = 5\n",
        )
        .unwrap();
        assert_eq!(c.upstreams["a"].max_line_bytes(), 2 << 20);
        assert_eq!(c.upstreams["a"].max_children(), 3);
        assert_eq!(c.upstreams["b"].max_response_bytes(), 4 << 20);
        assert_eq!(c.upstreams["b"].max_sse_event_bytes(), 5 << 20);
        let e = check("[upstreams.b]\nurl = \"http://h\"\n\nmax-response-mib = 0\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:4: upstreams.b.max-response-mib: must be between 1 and 1024 (MiB)"
        );
        let e = check("[upstreams.a]\ncommand = \"x\"\nmax-line-mib = 4096\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.a.max-line-mib: must be between 1 and 1024 (MiB)"
        );
        let e = check("[upstreams.a]\ncommand = \"x\"\nmax-children = 0\n").unwrap_err();
        assert_eq!(e, "t.toml:3: upstreams.a.max-children: must be at least 1");
        let e = check("[upstreams.a]\ncommand = \"x\"\nmax-sse-event-mib = 1\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.a.max-sse-event-mib: applies to HTTP upstreams (`url`) only"
        );
        let e = check("[upstreams.b]\nurl = \"http://h\"\nmax-children = 2\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:3: upstreams.b.max-children: applies to stdio upstreams (`command`) only"
        );
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = embedded_default();
        assert_eq!(c.upstreams["demo"].args, ["demo-upstream"]);
    }
}
