//! The writer: a thread of its own that seals records into the chain and writes them, so the
//! request path never waits for the disk.
//!
//! Files: the trail is written to `path`; once it reaches `max-file-mib` it is renamed to
//! `<path>.<n>` (n counts up: higher is newer) and a new `path` is started. The chain goes
//! on across files: the first record of a new file carries the hash of the last record of
//! the previous one. A restarted gateway continues the chain where the last file ends (a
//! partial last line, from a crash mid-write, is cut off with a warning).
//!
//! Durability: every batch of records is flushed to the operating system as soon as it is
//! written (a gateway crash loses nothing written); files are `fsync`ed when rotated and at
//! shutdown, not per record.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use super::chain::{self, GENESIS};
use super::record::{Event, Record};
use crate::config::AuditConfig;

/// What the request path sends the writer.
pub(super) enum Msg {
    Record(Box<Record>),
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

struct Writer {
    out: Out,
    prev: String,
    seq: u64,
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

/// Opens the trail (continuing its chain) and starts the writer thread.
pub(super) fn start(
    cfg: &AuditConfig,
    stats: Arc<Stats>,
) -> anyhow::Result<(mpsc::Sender<Msg>, std::thread::JoinHandle<()>)> {
    let (out, prev, seq) = if cfg.to_stdout() {
        (Out::Stdout(std::io::stdout()), GENESIS.to_string(), 0)
    } else {
        open_file(&cfg.path, cfg.max_file_bytes(), cfg.keep_files)?
    };
    let (tx, rx) = mpsc::channel(cfg.queue_records);
    let writer = Writer {
        out,
        prev,
        seq,
        stats,
        last_error_log: None,
    };
    let thread = std::thread::Builder::new()
        .name("portcullis-audit".into())
        .spawn(move || writer.run(rx))
        .context("cannot start the audit writer thread")?;
    Ok((tx, thread))
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut start = Record::new(Event::Start);
        start.version = Some(env!("CARGO_PKG_VERSION"));
        self.write(start);
        self.flush();
        while let Some(msg) = rx.blocking_recv() {
            let mut next = Some(msg);
            let mut n = 0;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => self.write(*r),
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
        let (line, hash) = chain::seal(&json, &self.prev);
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

    fn close(&mut self) {
        self.flush();
        if let Out::File { file, .. } = &self.out {
            let _ = file.get_ref().sync_all();
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

/// Opens `path` for appending and finds where its chain stands: the hash and number of the
/// last record in it (or in the newest rotated file, when it is empty).
fn open_file(path: &Path, max: u64, keep: u32) -> anyhow::Result<(Out, String, u64)> {
    let rotated = rotated_numbers(path);
    let next = rotated.last().map_or(1, |n| n + 1);
    let mut head = last_record(path)?;
    if head.is_none()
        && let Some(n) = rotated.last()
    {
        head = last_record(&numbered(path, *n))?;
    }
    let (prev, seq) = match head {
        None => (GENESIS.to_string(), 0),
        Some(Ok(link)) => (link.hash, link.seq),
        Some(Err(e)) => {
            // The chain cannot be continued from a line that is not a record: say so loudly;
            // `audit verify` will point at the break.
            tracing::error!(file = %path.display(), error = %e, "the last line of the audit trail is not a sealed record; starting a new chain");
            (GENESIS.to_string(), 0)
        }
    };
    let file = append(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((
        Out::File {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            size,
            max,
            keep,
            next,
        },
        prev,
        seq,
    ))
}

/// The last complete line of `path`, read as a sealed record; `None` for a missing or empty
/// file. A partial last line (a crash mid-write) is cut off.
fn last_record(path: &Path) -> anyhow::Result<Option<Result<chain::Link, chain::Unreadable>>> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
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
                if !tail.is_empty() {
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
        if complete + 1 < tail.len() {
            let cut = tail.len() - complete - 1;
            tracing::warn!(file = %path.display(), bytes = cut, "cutting off a partial audit record");
            file.set_len(from + complete as u64 + 1)?;
        }
        let body = &tail[..complete];
        match body.iter().rposition(|b| *b == b'\n') {
            Some(start) => {
                let line = String::from_utf8_lossy(&body[start + 1..]);
                return Ok(Some(chain::open(&line)));
            }
            None if from == 0 => {
                let line = String::from_utf8_lossy(body);
                return Ok(Some(chain::open(&line)));
            }
            None => chunk *= 4,
        }
    }
}
