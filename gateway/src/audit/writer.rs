//! The writer: a thread of its own that seals records into the chain and writes them, so the
//! request path never waits for the disk.
//!
//! Files: the trail is written to `path`; once it reaches `max-file-mib` it is renamed to
//! `<path>.<n>` (n counts up: higher is newer) and a new `path` is started. The chain goes
//! on across files: the first record of a new file carries the hash of the last record of
//! the previous one. A partial last line, from a crash mid-write, is cut off with a warning.
//!
//! Continuing: a restarted gateway checks the trail it is about to extend before writing to
//! it — the keyed hashes and links of the files from the last signed checkpoint's record to
//! the end, and that the checkpoint's record is there with its hash — and refuses to start
//! when they do not check out (a forged or cut tail, a deleted checkpoint file): extending a
//! chain it cannot vouch for would launder the forgery. `new_segment` moves such a trail
//! aside and starts a new one whose first record names it.
//!
//! Checkpoints: every `checkpoint-records` records, every `checkpoint-interval` while records
//! come, after the `start` record and at shutdown, the writer syncs the trail to disk and
//! appends a signed checkpoint (`checkpoint.rs`).
//!
//! Durability: every batch of records is flushed to the operating system as soon as it is
//! written (a gateway crash loses nothing written); files are `fsync`ed when rotated, before
//! each checkpoint and at shutdown, not per record.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, GENESIS};
use super::checkpoint::{self, Checkpoint};
use super::files::{Out, append, last_record, numbered, open_file, rotated_numbers};
use super::keys::{self, ChainKey};
use super::record::{Event, Previous, Record};
use crate::config::AuditConfig;

/// What the request path sends the writer.
pub(super) enum Msg {
    Record(Box<Record>),
    /// `checkpoint-interval` passed: sign a checkpoint if records were written since the last.
    Tick,
    /// Flush, sync and stop; the sender hears when done.
    Close(oneshot::Sender<()>),
}

/// Counters the metrics read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records written (sealed and handed to the file).
    pub written: AtomicU64,
    /// Records lost because the queue was full.
    pub dropped: AtomicU64,
    /// Failed writes (the record is lost; the gateway keeps serving).
    pub write_errors: AtomicU64,
    /// Files rotated.
    pub rotations: AtomicU64,
    /// Checkpoints signed and written.
    pub checkpoints: AtomicU64,
    /// Drops not yet reported in the trail by a `dropped` record.
    pub(super) unreported: AtomicU64,
}

/// The checkpoint file and where the last checkpoint stands.
struct Checkpoints {
    file: File,
    key: SigningKey,
    /// The hash of the segment's first record, once known.
    segment: Option<String>,
    /// The record the last checkpoint covers.
    seq: u64,
    every: u64,
}

pub(super) struct Writer {
    out: Out,
    prev: String,
    seq: u64,
    key: ChainKey,
    checkpoints: Option<Checkpoints>,
    stats: Arc<Stats>,
    last_error_log: Option<Instant>,
}

/// The most records written between two flushes.
const BATCH: usize = 256;

/// After a batch, the writer rests this long before it looks for more. Under load the queue
/// fills meanwhile and the next batch is taken without sleeping and waking once per record
/// (a wake-up costs both the request path and the writer a system call); idle, the writer
/// sleeps in `blocking_recv` and costs nothing. Records reach the file at most this late.
const REST: Duration = Duration::from_millis(2);

/// The chain key `[audit]` names (`key` or `key-file`).
fn chain_key(cfg: &AuditConfig) -> anyhow::Result<ChainKey> {
    match (&cfg.key, &cfg.key_file) {
        (Some(key), _) => {
            ChainKey::new(key.as_bytes()).map_err(|e| anyhow::anyhow!("audit.key {e}"))
        }
        (None, Some(file)) => ChainKey::from_file(file).map_err(|e| match e {
            keys::KeyError::TooShort => {
                anyhow::anyhow!(
                    "audit.key-file: {} is shorter than 32 bytes",
                    file.display()
                )
            }
            e => anyhow::anyhow!("audit.key-file: {e}"),
        }),
        (None, None) => anyhow::bail!(
            "audit.key: required when the audit trail is enabled: set `key = \"${{PORTCULLIS_AUDIT_KEY}}\"` or `key-file`"
        ),
    }
}

/// The checkpoint signing key `[audit] checkpoint-key-file` names.
fn signing_key(cfg: &AuditConfig) -> anyhow::Result<SigningKey> {
    let file = cfg.checkpoint_key_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!("audit.checkpoint-key-file: required for a file trail (`portcullis audit keygen FILE` makes one)")
    })?;
    keys::signing_key(file).map_err(|e| anyhow::anyhow!("audit.checkpoint-key-file: {e}"))
}

/// Opens the trail (checking and continuing its chain) and starts the writer thread.
pub(super) fn start(
    cfg: &AuditConfig,
    stats: Arc<Stats>,
) -> anyhow::Result<(mpsc::Sender<Msg>, std::thread::JoinHandle<()>)> {
    let writer = Writer::open(cfg, stats)?;
    let (tx, rx) = mpsc::channel(cfg.queue_records);
    let thread = std::thread::Builder::new()
        .name("portcullis-audit".into())
        .spawn(move || writer.run(rx))
        .context("cannot start the audit writer thread")?;
    Ok((tx, thread))
}

/// What `new_segment` did.
#[derive(Debug)]
pub struct NewSegment {
    /// Where the previous segment's files went.
    pub moved_to: PathBuf,
    /// The files moved.
    pub moved: Vec<PathBuf>,
    /// The `segment` record that starts the new trail.
    pub previous: Previous,
}

/// Moves the trail `cfg` names (its rotated files and its checkpoints) into a new folder
/// beside it, `<name>-segment-<time>`, and starts a new trail whose first record, a `segment`
/// record, names the previous segment's head: as found, and as last signed. Run it with the
/// gateway stopped, when the gateway refuses to continue a trail it cannot verify.
pub fn new_segment(cfg: &AuditConfig) -> anyhow::Result<NewSegment> {
    anyhow::ensure!(
        !cfg.to_stdout(),
        "a trail on standard output has no segments"
    );
    let key = chain_key(cfg)?;
    let signer = signing_key(cfg)?;
    let path = &cfg.path;
    let mut files: Vec<PathBuf> = rotated_numbers(path)
        .into_iter()
        .map(|n| numbered(path, n))
        .collect();
    let newest_rotated = files.last().cloned();
    files.push(path.clone());
    files.retain(|f| f.exists());
    anyhow::ensure!(
        !files.is_empty(),
        "there is no trail at {}: the gateway starts a new one by itself",
        path.display()
    );
    // The head as found (read only: the old segment is evidence, it is not cut or changed).
    let mut head = last_record(path, false)?;
    if head.is_none()
        && let Some(rotated) = &newest_rotated
    {
        head = last_record(rotated, false)?;
    }
    let head = head.and_then(|line| chain::open(&line, Some(&key)).ok());
    let checkpoints = cfg.checkpoint_file();
    let signed = match &checkpoints {
        Some(cp) => match checkpoint::read_last(cp, &signer.verifying_key())? {
            Some(Ok(mut found)) => found.pop().map(|f| f.checkpoint),
            _ => None,
        },
        None => None,
    };
    if let Some(cp) = checkpoints.filter(|c| c.exists()) {
        files.push(cp);
    }

    let stem = path
        .file_stem()
        .map_or_else(|| "audit".into(), |s| s.to_string_lossy().into_owned());
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "-");
    let moved_to = path
        .parent()
        .unwrap_or(Path::new("."))
        .join(format!("{stem}-segment-{stamp}"));
    std::fs::create_dir(&moved_to)
        .with_context(|| format!("cannot create {}", moved_to.display()))?;
    let mut moved = Vec::with_capacity(files.len());
    for f in files {
        let to = moved_to.join(f.file_name().unwrap_or_default());
        std::fs::rename(&f, &to)
            .with_context(|| format!("cannot move {} to {}", f.display(), to.display()))?;
        moved.push(to);
    }

    let previous = Previous {
        moved_to: moved_to.display().to_string(),
        seq: head.as_ref().map(|l| l.seq),
        hash: head.as_ref().map(|l| l.hash.clone()),
        intact: head.as_ref().is_some_and(|l| l.intact == Some(true)),
        checkpoint_seq: signed.as_ref().map(|c| c.seq),
        checkpoint_hash: signed.map(|c| c.hash),
    };
    let mut writer = Writer::open(cfg, Arc::new(Stats::default()))?;
    let mut record = Record::new(Event::Segment);
    record.previous = Some(previous.clone());
    writer.write(record);
    writer.close();
    anyhow::ensure!(
        writer.stats.write_errors.load(Relaxed) == 0,
        "cannot write the new segment's first record to {}",
        path.display()
    );
    Ok(NewSegment {
        moved_to,
        moved,
        previous,
    })
}

impl Writer {
    /// Opens the trail `cfg` names, checking the tail it continues (see the module docs).
    fn open(cfg: &AuditConfig, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let key = chain_key(cfg)?;
        let (out, prev, seq, checkpoints) = match cfg.checkpoint_file() {
            None => (Out::Stdout(std::io::stdout()), GENESIS.to_string(), 0, None),
            Some(cp_path) => {
                let signer = signing_key(cfg)?;
                let (out, head) = open_file(cfg, &key, &signer, &cp_path)?;
                // A checkpoint half-written by a crash would corrupt the next one's line.
                last_record(&cp_path, true)?;
                let file = append(&cp_path)
                    .with_context(|| format!("cannot open {}", cp_path.display()))?;
                let checkpoints = Checkpoints {
                    file,
                    key: signer,
                    segment: head.segment,
                    seq: head.seq,
                    every: cfg.checkpoint_records,
                };
                (out, head.prev, head.seq, Some(checkpoints))
            }
        };
        Ok(Writer {
            out,
            prev,
            seq,
            key,
            checkpoints,
            stats,
            last_error_log: None,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut start = Record::new(Event::Start);
        start.version = Some(env!("CARGO_PKG_VERSION"));
        self.write(start);
        self.flush();
        self.checkpoint();
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            let mut n = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => self.write(*r),
                    Msg::Tick => {
                        self.flush();
                        self.checkpoint();
                    }
                    Msg::Close(done) => {
                        self.close();
                        let _ = done.send(());
                        return;
                    }
                }
                n += 1;
                if n < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.flush();
            if let Some(cp) = &self.checkpoints
                && self.seq.saturating_sub(cp.seq) >= cp.every
            {
                self.checkpoint();
            }
            std::thread::sleep(REST);
        }
        self.close();
    }

    fn write(&mut self, record: Record) {
        let lost = self.stats.unreported.swap(0, Relaxed);
        if lost > 0 {
            let mut dropped = Record::new(Event::Dropped);
            dropped.count = Some(lost);
            self.seal_and_write(dropped);
        }
        self.seal_and_write(record);
    }

    fn seal_and_write(&mut self, mut record: Record) {
        record.seq = self.seq + 1;
        let json = match serde_json::to_vec(&record) {
            Ok(j) => j,
            Err(e) => return self.failed("cannot serialize an audit record", &e),
        };
        let (line, hash) = chain::seal(&json, &self.prev, &self.key);
        if let Err(e) = self.rotate_if_full() {
            self.failed("cannot rotate the audit file", &e);
        }
        let written = match &mut self.out {
            Out::Stdout(s) => s.lock().write_all(&line),
            Out::File { file, size, .. } => {
                *size += line.len() as u64;
                file.write_all(&line)
            }
        };
        match written {
            Ok(()) => {
                self.seq += 1;
                if let Some(cp) = &mut self.checkpoints
                    && cp.segment.is_none()
                {
                    cp.segment = Some(hash.clone());
                }
                self.prev = hash;
                self.stats.written.fetch_add(1, Relaxed);
            }
            Err(e) => self.failed("cannot write the audit record", &e),
        }
    }

    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        let Out::File {
            path,
            file,
            size,
            max,
            keep,
            next,
        } = &mut self.out
        else {
            return Ok(());
        };
        if *size < *max {
            return Ok(());
        }
        file.flush()?;
        file.get_ref().sync_all()?;
        let rotated = numbered(path, *next);
        std::fs::rename(&*path, &rotated)?;
        *file = BufWriter::new(append(path)?);
        *size = 0;
        if *keep > 0 && *next > u64::from(*keep) {
            let _ = std::fs::remove_file(numbered(path, *next - u64::from(*keep)));
        }
        *next += 1;
        self.stats.rotations.fetch_add(1, Relaxed);
        tracing::info!(file = %rotated.display(), "audit file rotated");
        Ok(())
    }

    fn flush(&mut self) {
        let flushed = match &mut self.out {
            Out::Stdout(s) => s.flush(),
            Out::File { file, .. } => file.flush(),
        };
        if let Err(e) = flushed {
            self.failed("cannot write the audit file", &e);
        }
    }

    /// Signs where the chain stands, if it moved since the last checkpoint. The records
    /// reach the disk first, so a checkpoint never gets ahead of the trail it covers.
    fn checkpoint(&mut self) {
        let Some(cp) = &self.checkpoints else {
            return;
        };
        if cp.seq == self.seq {
            return;
        }
        let (synced, name) = match &mut self.out {
            Out::File { file, path, .. } => (
                file.flush().and_then(|()| file.get_ref().sync_data()),
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            ),
            Out::Stdout(_) => (Ok(()), String::new()),
        };
        if let Err(e) = synced {
            return self.failed("cannot sync the audit file for a checkpoint", &e);
        }
        let Some(cp) = &mut self.checkpoints else {
            return;
        };
        let line = Checkpoint {
            seq: self.seq,
            hash: self.prev.clone(),
            segment: cp.segment.clone().unwrap_or_default(),
            file: name,
            time: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        }
        .sign(&cp.key);
        match cp.file.write_all(&line) {
            Ok(()) => {
                cp.seq = self.seq;
                self.stats.checkpoints.fetch_add(1, Relaxed);
            }
            Err(e) => self.failed("cannot write an audit checkpoint", &e),
        }
    }

    fn close(&mut self) {
        self.flush();
        self.checkpoint();
        if let Out::File { file, .. } = &self.out {
            let _ = file.get_ref().sync_all();
        }
        if let Some(cp) = &self.checkpoints {
            let _ = cp.file.sync_all();
        }
    }

    /// A lost record: counted, and logged at most every 10 s so a full disk does not flood
    /// the log.
    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.stats.write_errors.fetch_add(1, Relaxed);
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_error_log = Some(Instant::now());
            tracing::error!(error = %e, "{what}; audit records are being lost");
        }
    }
}
