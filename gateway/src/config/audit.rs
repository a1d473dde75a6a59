//! `[audit]`: the tamper-evident audit trail (see `audit/` and docs/governance.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::env;
use super::load::{ConfigError, key_line, line_of};

/// The shortest chain key: 32 bytes (`audit::keys::MIN_KEY_BYTES`).
const MIN_KEY_BYTES: usize = 32;

/// A secret from the configuration: never shown by `Debug`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `[audit]`: one JSON line per decision-relevant event, in a keyed chain with signed
/// checkpoints.
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
    /// The chain key (HMAC-SHA256), at least 32 bytes; `${ENV}` is expanded, so
    /// `key = "${PORTCULLIS_AUDIT_KEY}"` keeps it out of the file. Required (or `key-file`)
    /// when `enabled`: the gateway does not write an unkeyed trail. No default.
    pub key: Option<Secret>,
    /// A file holding the chain key (its bytes, without trailing whitespace; at least 32),
    /// relative to the configuration file. The alternative to `key`. No default.
    pub key_file: Option<PathBuf>,
    /// A file holding the Ed25519 key that signs checkpoints (64 hex digits, written by
    /// `portcullis audit keygen FILE`), relative to the configuration file. Required when
    /// `enabled` with a file `path`. No default.
    pub checkpoint_key_file: Option<PathBuf>,
    /// Where the signed checkpoints go, relative to the configuration file. Default
    /// `<path>.checkpoints`.
    pub checkpoint_path: Option<PathBuf>,
    /// Sign a checkpoint after this many records. Default 1000.
    pub checkpoint_records: u64,
    /// … and at least this often while records are written (and at shutdown). Records
    /// written after the last checkpoint can be cut off unseen: this bounds that window.
    /// Default 60s.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
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
            key: None,
            key_file: None,
            checkpoint_key_file: None,
            checkpoint_path: None,
            checkpoint_records: 1000,
            checkpoint_interval: Duration::from_secs(60),
        }
    }
}

impl AuditConfig {
    /// Whether records go to standard output rather than a file.
    pub fn to_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }

    /// Where checkpoints are written: none for standard output.
    pub fn checkpoint_file(&self) -> Option<PathBuf> {
        if self.to_stdout() {
            return None;
        }
        Some(self.checkpoint_path.clone().unwrap_or_else(|| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(".checkpoints");
            PathBuf::from(name)
        }))
    }

    /// Makes the file paths relative to `base` (the configuration file's folder).
    pub(super) fn resolve(&mut self, base: &Path) {
        let paths = [
            (!self.to_stdout()).then_some(&mut self.path),
            self.key_file.as_mut(),
            self.checkpoint_key_file.as_mut(),
            self.checkpoint_path.as_mut(),
        ];
        for p in paths.into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// The rotation threshold in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        (self.max_file_mib * 1024.0 * 1024.0) as u64
    }
}

/// Checks the values of `[audit]` and expands `${ENV}` in `key`.
pub(super) fn check(
    config: &mut AuditConfig,
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
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
    if config.checkpoint_records == 0 {
        return Err(err("checkpoint-records", "must be positive"));
    }
    if config.checkpoint_interval.is_zero() {
        return Err(err("checkpoint-interval", "must be positive"));
    }
    if !config.enabled {
        return Ok(());
    }
    match (&mut config.key, &config.key_file) {
        (Some(_), Some(_)) => return Err(err("key", "set `key` or `key-file`, not both")),
        (None, None) => {
            return Err(err(
                "key",
                "required when the audit trail is enabled (the chain is keyed): set \
                 `key = \"${PORTCULLIS_AUDIT_KEY}\"` or `key-file`, at least 32 bytes \
                 (`portcullis audit keygen --chain FILE` makes one)",
            ));
        }
        (Some(key), None) => {
            // The message names the variable, never the value.
            let expanded = env::expand(&key.0, lookup).map_err(|m| err("key", &m))?;
            if expanded.len() < MIN_KEY_BYTES {
                return Err(err("key", "is shorter than 32 bytes"));
            }
            key.0 = expanded;
        }
        (None, Some(_)) => {}
    }
    if !config.to_stdout() && config.checkpoint_key_file.is_none() {
        return Err(err(
            "checkpoint-key-file",
            "required for a file trail (checkpoints are what shows records cut off its end): \
             `portcullis audit keygen FILE` makes one and prints its public key",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const KEYS: &str = "key = \"${AUDIT_KEY}\"\ncheckpoint-key-file = \"cp.key\"\n";

    fn parse_audit(text: &str) -> Result<super::AuditConfig, String> {
        parse(
            &format!("{text}\n[upstreams.a]\ncommand = \"x\"\n"),
            "t.toml",
            &|name| (name == "AUDIT_KEY").then(|| "k".repeat(32)),
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
        let a = parse_audit(&format!(
            "[audit]\nenabled = true\npath = \"-\"\nmax-file-mib = 0.5\n{KEYS}"
        ))
        .unwrap();
        assert!(a.enabled && a.to_stdout());
        assert_eq!(a.max_file_bytes(), 512 << 10);
        assert_eq!(a.checkpoint_file(), None);
        assert_eq!(a.checkpoint_records, 1000);

        let e = parse_audit("[audit]\nenabled = true\nmax-file-mib = 0\n").unwrap_err();
        assert!(e.starts_with("t.toml:3: audit.max-file-mib:"), "{e}");
        let e = parse_audit("[audit]\nrecord-argument = true\n").unwrap_err();
        assert!(e.contains("t.toml:2"), "{e}");
        let e = parse_audit("[audit]\nqueue-records = 0\n").unwrap_err();
        assert!(e.contains("audit.queue-records"), "{e}");
    }

    #[test]
    fn an_enabled_trail_needs_both_keys_and_errors_never_show_one() {
        let e = parse_audit("[audit]\nenabled = true\n").unwrap_err();
        assert!(e.contains("audit.key: required"), "{e}");
        assert!(e.contains("PORTCULLIS_AUDIT_KEY"), "{e}");
        let e = parse_audit("[audit]\nenabled = true\nkey = \"${AUDIT_KEY}\"\n").unwrap_err();
        assert!(e.contains("audit.checkpoint-key-file: required"), "{e}");
        let e = parse_audit("[audit]\nenabled = true\nkey = \"short-secret\"\n").unwrap_err();
        assert!(e.contains("shorter than 32 bytes"), "{e}");
        assert!(!e.contains("short-secret"), "{e}");
        let e = parse_audit("[audit]\nenabled = true\nkey = \"${NOPE}\"\n").unwrap_err();
        assert!(e.contains("NOPE is not set"), "{e}");
        let e = parse_audit(&format!(
            "[audit]\nenabled = true\nkey-file = \"k\"\n{KEYS}"
        ))
        .unwrap_err();
        assert!(e.contains("not both"), "{e}");

        let a = parse_audit(&format!("[audit]\nenabled = true\n{KEYS}")).unwrap();
        assert_eq!(
            a.key.as_ref().unwrap().as_bytes(),
            "k".repeat(32).as_bytes()
        );
        assert!(!format!("{a:?}").contains(&"k".repeat(32)));
        assert_eq!(
            a.checkpoint_file(),
            Some(std::path::PathBuf::from("audit.jsonl.checkpoints"))
        );
    }
}
