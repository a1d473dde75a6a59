//! `[audit]`: the tamper-evident audit trail (see `audit/` and docs/governance.md).

use std::path::PathBuf;

use serde::Deserialize;

use super::load::{ConfigError, key_line, line_of};

/// `[audit]`: one JSON line per decision-relevant event, hash-chained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AuditConfig {
    /// Write the audit trail. Default false.
    pub enabled: bool,
    /// Where: a file (relative to the configuration file) or `-` for standard output.
    /// Default `audit.jsonl`.
    pub path: PathBuf,
    /// Rotate the file once it reaches this size, in MiB (fractions allowed: `0.5` is 512 KiB).
    /// The chain continues across files. Default 100.
    pub max_file_mib: f64,
    /// Rotated files kept beside the current one (`<path>.1` is the oldest, higher numbers are
    /// newer); older ones are deleted. `0` keeps every file. Default 10.
    pub keep_files: u32,
    /// Also record each `tools/call`'s arguments, as forwarded (after the request phase, so
    /// after any redaction of arguments). Default false.
    pub record_arguments: bool,
    /// Also record each result, as the client received it (after the response phase, so
    /// after redaction). Default false.
    pub record_results: bool,
    /// Records waiting for the writer. The request path never waits for the disk: when the
    /// queue is full a record is dropped, counted, and a `dropped` record in the trail says
    /// how many. 8192 absorbs a burst of several seconds of a busy gateway on a slow disk
    /// (a record is a few hundred bytes). Default 8192.
    pub queue_records: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: false,
            path: PathBuf::from("audit.jsonl"),
            max_file_mib: 100.0,
            keep_files: 10,
            record_arguments: false,
            record_results: false,
            queue_records: 8192,
        }
    }
}

impl AuditConfig {
    /// Whether records go to standard output rather than a file.
    pub fn to_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }

    /// The rotation threshold in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        (self.max_file_mib * 1024.0 * 1024.0) as u64
    }
}

/// Checks the values of `[audit]`.
pub(super) fn check(config: &AuditConfig, text: &str, file: &str) -> Result<(), ConfigError> {
    let err = |key: &str, message: &str| {
        let line = line_of(text, "[audit]");
        ConfigError {
            file: file.to_string(),
            line: key_line(text, line, key).or(line),
            field: format!("audit.{key}"),
            message: message.to_string(),
        }
    };
    // At least one record must fit; below 4 KiB a file would rotate at every record.
    if !config.max_file_mib.is_finite() || config.max_file_mib * 1024.0 * 1024.0 < 4096.0 {
        return Err(err("max-file-mib", "must be at least 0.004 (4 KiB)"));
    }
    if config.queue_records == 0 {
        return Err(err("queue-records", "must be positive"));
    }
    if config.path.as_os_str().is_empty() {
        return Err(err(
            "path",
            "must be a file path or \"-\" for standard output",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    fn parse_audit(text: &str) -> Result<super::AuditConfig, String> {
        parse(
            &format!("{text}\n[upstreams.a]\ncommand = \"x\"\n"),
            "t.toml",
            &|_| None,
        )
        .map(|c| c.audit)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_off_without_payloads() {
        let a = parse_audit("").unwrap();
        assert!(!a.enabled);
        assert!(!a.record_arguments && !a.record_results);
        assert_eq!(a.max_file_bytes(), 100 << 20);
        assert_eq!(a.keep_files, 10);
    }

    #[test]
    fn values_are_read_and_checked() {
        let a = parse_audit("[audit]\nenabled = true\npath = \"-\"\nmax-file-mib = 0.5\n").unwrap();
        assert!(a.enabled && a.to_stdout());
        assert_eq!(a.max_file_bytes(), 512 << 10);

        let e = parse_audit("[audit]\nenabled = true\nmax-file-mib = 0\n").unwrap_err();
        assert!(e.starts_with("t.toml:3: audit.max-file-mib:"), "{e}");
        let e = parse_audit("[audit]\nrecord-argument = true\n").unwrap_err();
        assert!(e.contains("t.toml:2"), "{e}");
        let e = parse_audit("[audit]\nqueue-records = 0\n").unwrap_err();
        assert!(e.contains("audit.queue-records"), "{e}");
    }
}
