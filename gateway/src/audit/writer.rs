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

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, GENESIS};
use super::checkpoint::{self, Checkpoint};
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

enum Out {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        file: BufWriter<File>,
        size: u64,
        max: u64,
        keep: u32,
        /// The number the current file gets when it is rotated.
        next: u64,
    },
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

fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The numbers of the rotated files beside `path` (`<path>.<n>`).
fn rotated_numbers(path: &Path) -> Vec<u64> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let file = e.ok()?.file_name();
            file.to_str()?.strip_prefix(&prefix)?.parse().ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// Where the chain to continue stands.
struct Head {
    prev: String,
    seq: u64,
    segment: Option<String>,
}

/// Opens `path` for appending after checking the tail it continues: the files from the last
/// checkpoint's record to the end verify with the chain key, and that record is there with
/// the signed hash. Anything else is an error that names the first bad record.
fn open_file(
    cfg: &AuditConfig,
    key: &ChainKey,
    signer: &SigningKey,
    cp_path: &Path,
) -> anyhow::Result<(Out, Head)> {
    let path = &cfg.path;
    let rotated = rotated_numbers(path);
    let next = rotated.last().map_or(1, |n| n + 1);
    // Cut off a partial last line (a crash mid-write) before anything reads the files.
    let mut empty = last_record(path, true)?.is_none();
    if empty && let Some(n) = rotated.last() {
        empty = last_record(&numbered(path, *n), true)?.is_none();
    }
    let refuse = |why: String| {
        anyhow::anyhow!(
            "the audit trail {} cannot be continued: {why}. Nothing was written to it. Keep it \
             for the investigation (`portcullis audit verify` names the first bad record) and \
             start a new segment with `portcullis audit new-segment --config <this config>` \
             (docs/governance.md)",
            path.display()
        )
    };
    let last = match checkpoint::read_last(cp_path, &signer.verifying_key())
        .with_context(|| format!("cannot read {}", cp_path.display()))?
    {
        None => None,
        Some(Ok(mut found)) => found.pop(),
        Some(Err(bad)) => {
            return Err(refuse(format!(
                "its last checkpoint is not valid: {bad} (wrong checkpoint-key-file, or the checkpoint file was edited)"
            )));
        }
    };
    let head = match (empty, last) {
        (true, None) => Head {
            prev: GENESIS.to_string(),
            seq: 0,
            segment: None,
        },
        (true, Some(found)) => {
            return Err(refuse(format!(
                "it is empty, but the checkpoint at {} signs record {}: records were cut off",
                found.place(),
                found.checkpoint.seq
            )));
        }
        (false, None) => {
            return Err(refuse(format!(
                "it has records but {} holds no checkpoint: the checkpoint file was deleted or emptied, or the trail was not written with checkpoints",
                cp_path.display()
            )));
        }
        (false, Some(found)) => {
            // The files from the one holding the checkpoint's record to the newest.
            let mut files = vec![path.clone()];
            for n in rotated.iter().rev() {
                if first_seq(&files[0])?.is_some_and(|s| s <= found.checkpoint.seq) {
                    break;
                }
                files.insert(0, numbered(path, *n));
            }
            let report =
                match super::verify::verify(&files, Some(key), std::slice::from_ref(&found))? {
                    Ok(report) => report,
                    Err(problem) => return Err(refuse(problem.to_string())),
                };
            if report.last_checkpoint.is_none() {
                tracing::warn!(checkpoint = %found.place(), "the last audit checkpoint names a record in a file no longer kept; continuing from the verified files");
            }
            Head {
                prev: report.last_hash,
                seq: report.last_seq,
                segment: Some(found.checkpoint.segment),
            }
        }
    };
    let file = append(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((
        Out::File {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            size,
            max: cfg.max_file_bytes(),
            keep: cfg.keep_files,
            next,
        },
        head,
    ))
}

/// The number of the first record in `path`, if it has one.
fn first_seq(path: &Path) -> anyhow::Result<Option<u64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut line = Vec::new();
    std::io::BufRead::read_until(&mut std::io::BufReader::new(file), b'\n', &mut line)?;
    Ok(chain::open(String::from_utf8_lossy(&line).trim_end(), None)
        .ok()
        .map(|l| l.seq))
}

/// The last complete line of `path`; `None` for a missing or empty file. With `cut`, a
/// partial last line (a crash mid-write) is cut off.
fn last_record(path: &Path, cut: bool) -> anyhow::Result<Option<String>> {
    let mut file = match OpenOptions::new().read(true).write(cut).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let len = file.metadata()?.len();
    // Read backwards in growing chunks until the start of the last complete line.
    let mut chunk = 64 * 1024u64;
    loop {
        let from = len.saturating_sub(chunk);
        file.seek(SeekFrom::Start(from))?;
        let mut tail = Vec::with_capacity((len - from) as usize);
        file.read_to_end(&mut tail)?;
        let complete = match tail.iter().rposition(|b| *b == b'\n') {
            Some(end) => end,
            None if from == 0 => {
                if cut && !tail.is_empty() {
                    tracing::warn!(file = %path.display(), bytes = tail.len(), "cutting off a partial audit record");
                    file.set_len(0)?;
                }
                return Ok(None);
            }
            None => {
                chunk *= 4;
                continue;
            }
        };
        if cut && complete + 1 < tail.len() {
            let cut = tail.len() - complete - 1;
            tracing::warn!(file = %path.display(), bytes = cut, "cutting off a partial audit record");
            file.set_len(from + complete as u64 + 1)?;
        }
        let body = &tail[..complete];
        match body.iter().rposition(|b| *b == b'\n') {
            Some(start) => {
                return Ok(Some(
                    String::from_utf8_lossy(&body[start + 1..]).into_owned(),
                ));
            }
            None if from == 0 => return Ok(Some(String::from_utf8_lossy(body).into_owned())),
            None => chunk *= 4,
        }
    }
}
