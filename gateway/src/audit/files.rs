//! The trail's files: where records go (standard output or `path`), the rotated files
//! beside it (`<path>.<n>`), and opening the trail to continue after checking its tail.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;

use super::chain::{self, GENESIS};
use super::checkpoint;
use super::keys::ChainKey;
use crate::config::AuditConfig;

/// Where records go: standard output, or the trail's current file.
pub(super) enum Out {
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

pub(super) fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

pub(super) fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The numbers of the rotated files beside `path` (`<path>.<n>`).
pub(super) fn rotated_numbers(path: &Path) -> Vec<u64> {
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
pub(super) struct Head {
    pub(super) prev: String,
    pub(super) seq: u64,
    pub(super) segment: Option<String>,
}

/// Opens `path` for appending after checking the tail it continues: the files from the last
/// checkpoint's record to the end verify with the chain key, and that record is there with
/// the signed hash. Anything else is an error that names the first bad record.
pub(super) fn open_file(
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
pub(super) fn first_seq(path: &Path) -> anyhow::Result<Option<u64>> {
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
pub(super) fn last_record(path: &Path, cut: bool) -> anyhow::Result<Option<String>> {
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
