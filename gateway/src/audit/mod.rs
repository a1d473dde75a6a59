//! The audit trail: one JSON line per decision-relevant event, in a chain keyed with
//! HMAC-SHA256 so that an edit, a deletion, a reordering or a record written without the key
//! is detected, with Ed25519-signed checkpoints beside it so that records cut off the end are
//! detected too (`portcullis audit verify`).
//!
//! | file | job |
//! | --- | --- |
//! | `record.rs` | the record: who, what, where, which policies, the outcome |
//! | `keys.rs` | the chain key and the checkpoint signing key: loading, generating |
//! | `chain.rs` | sealing a record into the keyed chain; reading a sealed line back |
//! | `checkpoint.rs` | signing and reading checkpoints |
//! | `writer.rs` | the writer thread: batches, rotation, checkpoints, new segments |
//! | `files.rs` | the trail's files: stdout or `path`, the rotated `<path>.<n>`, checking the tail a restart continues |
//! | `verify.rs` | checking a file or a rotated set, naming the first bad record |
//!
//! The request path only builds a [`Record`] and hands it over a bounded queue
//! ([`Audit::record`]); serializing, hashing and writing happen on the writer's own thread,
//! in arrival order. A full queue never makes a request wait: the record is dropped and the
//! next record written is preceded by a `dropped` record saying how many were lost, so the
//! loss is itself in the (intact) chain.

mod chain;
mod checkpoint;
mod files;
mod keys;
mod record;
mod verify;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
pub use chain::GENESIS;
pub use checkpoint::{BadCheckpoint, Found as FoundCheckpoint, read_all as read_checkpoints};
pub use keys::{ChainKey, KeyKind, generate as generate_key, verifying_key};
pub use record::{Decision, Event, Outcome, Previous, Record, Timestamp};
pub use verify::{Kind, Problem, Report, verify};
pub use writer::{NewSegment, Stats, new_segment};

/// The open trail.
pub struct Audit {
    tx: mpsc::Sender<writer::Msg>,
    stats: Arc<Stats>,
    /// `[audit] record-arguments`.
    pub record_arguments: bool,
    /// `[audit] record-results`.
    pub record_results: bool,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Audit {
    /// Opens the trail `cfg` names (checking the tail it continues: an error when it does not
    /// verify) and starts the writer. The first record written is a `start` record.
    pub fn open(cfg: &AuditConfig) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let (tx, thread) = writer::start(cfg, stats.clone())?;
        // Time-based checkpoints: a tick the writer turns into a checkpoint when records
        // were written since the last one. The tick holds only a weak sender, so a dropped
        // `Audit` still ends the writer.
        if cfg.checkpoint_file().is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let weak = tx.downgrade();
            // Validated positive at load; `interval` panics on zero, so never hand it one.
            let every = cfg
                .checkpoint_interval
                .max(std::time::Duration::from_millis(1));
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let Some(tx) = weak.upgrade() else { break };
                    // A full queue means a batch checkpoint is near anyway.
                    let _ = tx.try_send(writer::Msg::Tick);
                }
            });
        }
        Ok(Audit {
            tx,
            stats,
            record_arguments: cfg.record_arguments,
            record_results: cfg.record_results,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Queues a record; never waits. A record that does not fit is counted as dropped.
    pub fn record(&self, record: Record) {
        match self.tx.try_send(writer::Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
                self.stats.unreported.fetch_add(1, Relaxed);
            }
            // Closed at shutdown: nothing more is written.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Writes what is queued, syncs the file and stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(writer::Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const KEY: &str = "a chain key of at least thirty-two bytes";

    fn config(dir: &Path, max_file_mib: f64) -> AuditConfig {
        let seed = dir.join("checkpoint.key");
        if !seed.exists() {
            std::fs::write(&seed, format!("{}\n", "5a".repeat(32))).unwrap();
        }
        AuditConfig {
            enabled: true,
            path: dir.join("audit.jsonl"),
            max_file_mib,
            keep_files: 0,
            key: Some(crate::config::Secret::from(KEY.to_string())),
            checkpoint_key_file: Some(seed),
            ..AuditConfig::default()
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("portcullis-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn request(method: &str) -> Record {
        let mut r = Record::new(Event::Request);
        r.method = Some(method.into());
        r.outcome = Some(Outcome::Ok);
        r
    }

    /// The trail's files (not its checkpoints), and the checkpoints.
    fn trail(dir: &Path) -> (Vec<PathBuf>, Vec<FoundCheckpoint>) {
        let files = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("audit.jsonl") && !name.ends_with(".checkpoints")
            })
            .collect();
        let public = ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]).verifying_key();
        let checkpoints = read_checkpoints(&dir.join("audit.jsonl.checkpoints"), &public)
            .unwrap()
            .unwrap_or(Ok(Vec::new()))
            .unwrap();
        (files, checkpoints)
    }

    fn check(dir: &Path) -> Result<Report, Problem> {
        let (files, checkpoints) = trail(dir);
        let key = ChainKey::new(KEY.as_bytes()).unwrap();
        verify(&files, Some(&key), &checkpoints).unwrap()
    }

    async fn write(cfg: &AuditConfig, n: usize) {
        let audit = Audit::open(cfg).unwrap();
        for _ in 0..n {
            audit.record(request("tools/call"));
        }
        audit.close().await;
    }

    fn refusal(cfg: &AuditConfig) -> String {
        match Audit::open(cfg) {
            Ok(_) => panic!("the gateway continued a trail it cannot verify"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[tokio::test]
    async fn a_restarted_gateway_continues_the_chain() {
        let dir = tmp("restart");
        for _ in 0..2 {
            let audit = Audit::open(&config(&dir, 100.0)).unwrap();
            for _ in 0..3 {
                audit.record(request("tools/call"));
            }
            audit.close().await;
            assert_eq!(audit.stats().written.load(Relaxed), 4);
            // One after the start record, one at shutdown.
            assert_eq!(audit.stats().checkpoints.load(Relaxed), 2);
        }
        let r = check(&dir).unwrap();
        assert_eq!((r.records, r.first_seq, r.last_seq), (8, 1, 8));
        assert_eq!((r.checkpoints, r.last_checkpoint), (4, Some(8)));
        let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
        assert!(!text.contains(KEY));
    }

    #[tokio::test]
    async fn checkpoints_come_every_n_records() {
        let dir = tmp("every");
        let mut cfg = config(&dir, 100.0);
        cfg.checkpoint_records = 10;
        let audit = Audit::open(&cfg).unwrap();
        for _ in 0..50 {
            audit.record(request("tools/call"));
            // Let the writer take them in small batches, as under a light load.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        audit.close().await;
        // The start record's, then one per 10 records (not only the one at shutdown).
        let signed = audit.stats().checkpoints.load(Relaxed);
        assert!(signed >= 4, "{signed} checkpoints");
        assert_eq!(check(&dir).unwrap().last_checkpoint, Some(51));
    }

    #[tokio::test]
    async fn rotation_continues_the_chain_across_files() {
        let dir = tmp("rotate");
        let mut cfg = config(&dir, 0.004);
        cfg.keep_files = 2;
        write(&cfg, 200).await;
        let (files, _) = trail(&dir);
        // Three rotated files at most are ever there: two kept and the current one.
        assert_eq!(files.len(), 3, "{files:?}");
        let r = check(&dir).unwrap();
        assert!(r.continues, "the oldest files were deleted");
        assert_eq!(r.last_seq, 201);

        // Restarting picks the chain up from the current file.
        write(&cfg, 1).await;
        let r = check(&dir).unwrap();
        assert_eq!(r.last_seq, 203);
    }

    #[tokio::test]
    async fn a_partial_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tmp("partial");
        let cfg = config(&dir, 100.0);
        write(&cfg, 1).await;
        let path = dir.join("audit.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":3,\"event\":\"req").unwrap();
        drop(f);
        write(&cfg, 0).await;
        let r = check(&dir).unwrap();
        assert_eq!(r.last_seq, 3);
    }

    #[tokio::test]
    async fn the_gateway_refuses_a_forged_or_cut_tail_and_a_new_segment_goes_on() {
        let dir = tmp("refuse");
        let cfg = config(&dir, 100.0);
        write(&cfg, 3).await;
        let path = dir.join("audit.jsonl");
        let good = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = good.lines().collect();

        // start and three requests.
        assert_eq!(lines.len(), 4);

        // A forged append: the last record as an attacker without the key would write it.
        let forged = |seq: u64| lines[3].replace("\"seq\":4", &format!("\"seq\":{seq}"));
        std::fs::write(&path, format!("{good}{}\n", forged(5))).unwrap();
        let e = refusal(&cfg);
        assert!(e.contains("cannot be continued"), "{e}");
        assert!(e.contains("audit.jsonl:5: altered"), "{e}");
        assert!(e.contains("audit new-segment"), "{e}");
        assert!(!e.contains(KEY), "{e}");

        // The tail cut off: the last checkpoint names record 5.
        std::fs::write(&path, format!("{}\n", lines[..2].join("\n"))).unwrap();
        let e = refusal(&cfg);
        assert!(e.contains("truncated: records 3 to 4 are missing"), "{e}");

        // The checkpoint file deleted.
        std::fs::write(&path, &good).unwrap();
        let checkpoints = dir.join("audit.jsonl.checkpoints");
        let signed = std::fs::read(&checkpoints).unwrap();
        std::fs::remove_file(&checkpoints).unwrap();
        let e = refusal(&cfg);
        assert!(e.contains("holds no checkpoint"), "{e}");

        // Another chain key.
        std::fs::write(&checkpoints, &signed).unwrap();
        let mut other = cfg.clone();
        other.key = Some(crate::config::Secret::from("x".repeat(32)));
        let e = refusal(&other);
        assert!(e.contains("altered"), "{e}");
        // The intact trail is continued.
        write(&cfg, 0).await;

        // A new segment: the old files moved aside, the new trail names their head.
        let continued = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{continued}{}\n", forged(6))).unwrap();
        refusal(&cfg);
        let segment = new_segment(&cfg).unwrap();
        assert_eq!(segment.moved.len(), 2, "{segment:?}");
        assert_eq!(segment.previous.seq, Some(6));
        assert!(!segment.previous.intact);
        assert_eq!(segment.previous.checkpoint_seq, Some(5));
        write(&cfg, 1).await;
        let r = check(&dir).unwrap();
        assert_eq!((r.first_seq, r.last_seq), (1, 3));
        let first = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(first["event"], "segment");
        assert_eq!(first["previous"]["checkpoint_seq"], 5);
        // The old segment still shows its forgery.
        let old: Vec<PathBuf> = segment
            .moved
            .iter()
            .filter(|p| !p.to_string_lossy().ends_with(".checkpoints"))
            .cloned()
            .collect();
        let key = ChainKey::new(KEY.as_bytes()).unwrap();
        let p = verify(&old, Some(&key), &[]).unwrap().unwrap_err();
        assert_eq!((p.line, p.kind), (6, Kind::Altered), "{p}");
    }
}
