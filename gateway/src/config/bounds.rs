//! Validation of the bounds on client input (`[server]`) and plugin output (`[policy]`):
//! each must be positive, since zero would refuse everything rather than mean "unbounded".

use super::Config;
use super::load::{ConfigError, key_line, line_of};

pub(super) fn check(config: &Config, text: &str, file: &str) -> Result<(), ConfigError> {
    let err = |table: &str, key: &str, message: String| {
        let line = line_of(text, &format!("[{table}]"));
        ConfigError {
            file: file.to_string(),
            line: key_line(text, line, key).or(line),
            field: format!("{table}.{key}"),
            message,
        }
    };
    let s = &config.server;
    // A clientInfo smaller than this cannot carry a name and a version.
    if s.max_client_info_bytes < 64 {
        return Err(err(
            "server",
            "max-client-info-bytes",
            "must be at least 64".into(),
        ));
    }
    if s.max_stream_buffer_kib == 0 || s.max_stream_buffer_kib > 1024 * 1024 {
        return Err(err(
            "server",
            "max-stream-buffer-kib",
            "must be between 1 and 1048576 (1 GiB)".into(),
        ));
    }
    if s.worker_threads.is_some_and(|n| n == 0 || n > 1024) {
        return Err(err(
            "server",
            "worker-threads",
            "must be between 1 and 1024".into(),
        ));
    }
    if s.max_sessions_per_caller == 0 {
        return Err(err(
            "server",
            "max-sessions-per-caller",
            "must be positive".into(),
        ));
    }
    let p = &config.policy;
    if p.plugin_log_lines_per_second == 0 {
        return Err(err(
            "policy",
            "plugin-log-lines-per-second",
            "must be positive".into(),
        ));
    }
    if p.plugin_log_burst == 0 {
        return Err(err("policy", "plugin-log-burst", "must be positive".into()));
    }
    if p.plugin_log_line_bytes < 16 {
        return Err(err(
            "policy",
            "plugin-log-line-bytes",
            "must be at least 16".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    fn check(table: &str) -> Result<super::Config, String> {
        let text = format!("{table}\n[upstreams.a]\ncommand = \"x\"\n");
        parse(&text, "t.toml", &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_bound_everything() {
        let c = check("").unwrap();
        assert_eq!(c.server.max_client_info_bytes, 4096);
        assert_eq!(c.server.max_stream_buffer_kib, 4096);
        assert_eq!(c.server.max_sessions_per_caller, 64);
        assert_eq!(c.policy.plugin_log_lines_per_second, 20);
        assert_eq!(c.policy.plugin_log_burst, 100);
        assert_eq!(c.policy.plugin_log_line_bytes, 4096);
    }

    #[test]
    fn zero_bounds_are_refused_naming_key_and_line() {
        assert_eq!(
            check("[server]\nlisten = \"127.0.0.1:0\"\nmax-sessions-per-caller = 0").unwrap_err(),
            "t.toml:3: server.max-sessions-per-caller: must be positive"
        );
        assert_eq!(
            check("[server]\nmax-stream-buffer-kib = 0").unwrap_err(),
            "t.toml:2: server.max-stream-buffer-kib: must be between 1 and 1048576 (1 GiB)"
        );
        assert_eq!(
            check("[server]\nworker-threads = 0").unwrap_err(),
            "t.toml:2: server.worker-threads: must be between 1 and 1024"
        );
        assert_eq!(
            check("[server]\nworker-threads = 1")
                .unwrap()
                .server
                .worker_threads,
            Some(1)
        );
        assert_eq!(
            check("[server]\nmax-client-info-bytes = 10").unwrap_err(),
            "t.toml:2: server.max-client-info-bytes: must be at least 64"
        );
        assert_eq!(
            check("[policy]\nplugin-log-lines-per-second = 0").unwrap_err(),
            "t.toml:2: policy.plugin-log-lines-per-second: must be positive"
        );
        let c = check("[policy]\nplugin-log-burst = 5\nplugin-log-line-bytes = 200").unwrap();
        assert_eq!(
            (c.policy.plugin_log_burst, c.policy.plugin_log_line_bytes),
            (5, 200)
        );
    }
}
