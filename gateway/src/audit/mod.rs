//! The audit trail: one JSON line per decision-relevant event, hash-chained so that an edit,
//! a deletion or a reordering is detected (`portcullis audit verify`).
//!
//! | file | job |
//! | --- | --- |
//! | `record.rs` | the record: who, what, where, which policies, the outcome |
//! | `chain.rs` | sealing a record into the chain; reading a sealed line back |
//! | `writer.rs` | the writer thread: the file, its rotation, continuing the chain |
//! | `verify.rs` | checking a file or a rotated set, naming the first bad record |
//!
//! The request path only builds a [`Record`] and hands it over a bounded queue
//! ([`Audit::record`]); serializing, hashing and writing happen on the writer's own thread,
//! in arrival order. A full queue never makes a request wait: the record is dropped and the
//! next record written is preceded by a `dropped` record saying how many were lost, so the
//! loss is itself in the (intact) chain.

mod chain;
mod record;
mod verify;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{mpsc, oneshot};

use crate::config::AuditConfig;
pub use chain::GENESIS;
pub use record::{Decision, Event, Outcome, Record, Timestamp};
pub use verify::{Kind, Problem, Report, verify};
pub use writer::Stats;

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
    /// Opens the trail `cfg` names (continuing its chain) and starts the writer. The first
    /// record written is a `start` record.
    pub fn open(cfg: &AuditConfig) -> anyhow::Result<Self> {
        let stats = Arc::new(Stats::default());
        let (tx, thread) = writer::start(cfg, stats.clone())?;
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

    fn config(dir: &std::path::Path, max_file_mib: f64) -> AuditConfig {
        AuditConfig {
            enabled: true,
            path: dir.join("audit.jsonl"),
            max_file_mib,
            keep_files: 0,
            ..AuditConfig::default()
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
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

    fn all_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
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
        }
        let r = verify(&[dir.join("audit.jsonl")]).unwrap().unwrap();
        assert_eq!((r.records, r.first_seq, r.last_seq), (8, 1, 8));
    }

    #[tokio::test]
    async fn rotation_continues_the_chain_across_files() {
        let dir = tmp("rotate");
        let mut cfg = config(&dir, 0.004);
        cfg.keep_files = 2;
        let audit = Audit::open(&cfg).unwrap();
        for _ in 0..200 {
            audit.record(request("tools/list"));
        }
        audit.close().await;
        let files = all_files(&dir);
        // Three rotated files at most are ever there: two kept and the current one.
        assert_eq!(files.len(), 3, "{files:?}");
        let r = verify(&files).unwrap().unwrap();
        assert!(r.continues, "the oldest files were deleted");
        assert_eq!(r.last_seq, 201);

        // Restarting picks the chain up from the current file.
        let audit = Audit::open(&cfg).unwrap();
        audit.record(request("ping"));
        audit.close().await;
        let r = verify(&all_files(&dir)).unwrap().unwrap();
        assert_eq!(r.last_seq, 203);
    }

    #[tokio::test]
    async fn a_partial_last_line_is_cut_off_and_the_chain_goes_on() {
        let dir = tmp("partial");
        let cfg = config(&dir, 100.0);
        let audit = Audit::open(&cfg).unwrap();
        audit.record(request("tools/call"));
        audit.close().await;
        let path = dir.join("audit.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":3,\"event\":\"req").unwrap();
        drop(f);
        let audit = Audit::open(&cfg).unwrap();
        audit.close().await;
        let r = verify(&[path]).unwrap().unwrap();
        assert_eq!(r.last_seq, 3);
    }
}
