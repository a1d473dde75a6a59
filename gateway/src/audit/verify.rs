//! Checking a trail: `portcullis audit verify FILE...`.
//!
//! The files may be given in any order (a shell glob puts `audit.jsonl.10` before
//! `audit.jsonl.2`): they are put in chain order by the number of their first record. Then
//! every line must be a sealed record whose hash matches its content, whose `prev` is the
//! hash of the record before it and whose `seq` is one more. The first line that breaks this
//! is named, with what most likely happened:
//!
//! - **altered**: the line's content does not match its hash (it was edited), or the record
//!   before it was edited and re-hashed (the chain still holds the original hash);
//! - **removed**: records are missing: the numbers jump and the missing ones are nowhere in
//!   the files;
//! - **reordered**: the numbers jump but the missing record is further on, or a number comes
//!   after a larger one.
//!
//! A trail whose first record is not number 1 continues a chain whose earlier files were
//! rotated away (`keep-files`): it is checked from there on. Cutting records off the *end* of
//! the newest file cannot be seen from the files alone; compare the last hash with one kept
//! elsewhere (the `start` records and the metrics help, see docs/governance.md).

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use super::chain::{self, GENESIS, Link};

/// An intact trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The hash of the last record: keep it elsewhere to detect truncation later.
    pub last_hash: String,
    /// The first record is not number 1: earlier records are in files not given.
    pub continues: bool,
}

/// What went wrong first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Altered,
    Removed,
    Reordered,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Altered => "altered",
            Kind::Removed => "removed",
            Kind::Reordered => "reordered",
        }
    }
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
    pub kind: Kind,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.kind.as_str(),
            self.detail
        )
    }
}

/// Where a record is.
#[derive(Debug, Clone)]
struct At {
    file: usize,
    line: usize,
}

/// Lines of a file, lossily decoded, without their newline.
fn lines(path: &Path) -> std::io::Result<impl Iterator<Item = std::io::Result<String>>> {
    let mut reader = BufReader::new(File::open(path)?);
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Some(Ok(String::from_utf8_lossy(&buf).into_owned()))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Checks the trail made of `files`. `Err` only when a file cannot be read.
pub fn verify(files: &[PathBuf]) -> std::io::Result<Result<Report, Problem>> {
    // Chain order: by the number of each file's first record.
    let mut ordered = Vec::with_capacity(files.len());
    for path in files {
        let first = lines(path)?
            .next()
            .transpose()?
            .and_then(|l| chain::open(&l).ok())
            .map_or(u64::MAX, |l| l.seq);
        ordered.push((first, path.clone()));
    }
    ordered.sort_by_key(|(first, _)| *first);
    let files: Vec<PathBuf> = ordered.into_iter().map(|(_, p)| p).collect();

    let mut report = Report {
        files: files.len(),
        records: 0,
        first_seq: 0,
        last_seq: 0,
        last_hash: String::new(),
        continues: false,
    };
    // The record before the one being checked, and where it is.
    let mut last: Option<(Link, At)> = None;
    for (f, path) in files.iter().enumerate() {
        for (i, line) in lines(path)?.enumerate() {
            let at = At {
                file: f,
                line: i + 1,
            };
            let problem = |kind, detail: String| Problem {
                file: files[at.file].clone(),
                line: at.line,
                kind,
                detail,
            };
            let link = match chain::open(&line?) {
                Ok(l) => l,
                Err(e) => {
                    return Ok(Err(problem(
                        Kind::Altered,
                        format!("not an audit record: {e}"),
                    )));
                }
            };
            if !link.intact {
                return Ok(Err(problem(
                    Kind::Altered,
                    format!(
                        "record {}: its content does not match its hash (it was edited)",
                        link.seq
                    ),
                )));
            }
            match &last {
                None => {
                    if link.seq == 1 && link.prev != GENESIS {
                        return Ok(Err(problem(
                            Kind::Altered,
                            "record 1 does not start a chain (its prev is not the genesis hash)"
                                .into(),
                        )));
                    }
                    report.first_seq = link.seq;
                    report.continues = link.seq != 1;
                }
                Some((before, before_at)) => {
                    if let Some(p) = check_link(&files, before, before_at, &link, &at)? {
                        return Ok(Err(p));
                    }
                }
            }
            report.records += 1;
            last = Some((link, at));
        }
    }
    if let Some((link, _)) = last {
        report.last_seq = link.seq;
        report.last_hash = link.hash;
    }
    Ok(Ok(report))
}

/// Whether `link` (at `at`) follows `before` (at `before_at`); the problem if not.
fn check_link(
    files: &[PathBuf],
    before: &Link,
    before_at: &At,
    link: &Link,
    at: &At,
) -> std::io::Result<Option<Problem>> {
    let expected = before.seq + 1;
    let here = |kind, detail: String| Problem {
        file: files[at.file].clone(),
        line: at.line,
        kind,
        detail,
    };
    let boundary = if before_at.file != at.file {
        format!(
            " (across files: {} ends with record {})",
            files[before_at.file].display(),
            before.seq
        )
    } else {
        String::new()
    };
    if link.prev == before.hash {
        if link.seq == expected {
            return Ok(None);
        }
        return Ok(Some(here(
            Kind::Altered,
            format!(
                "record {} follows record {} but is numbered {} (its number was changed)",
                expected, before.seq, link.seq
            ),
        )));
    }
    if link.seq == expected {
        // The numbers agree, the hashes do not: the record before was rewritten with a fresh
        // hash (or this record's link was).
        return Ok(Some(Problem {
            file: files[before_at.file].clone(),
            line: before_at.line,
            kind: Kind::Altered,
            detail: format!(
                "record {} was rewritten: record {} links to a different hash{boundary}",
                before.seq, link.seq
            ),
        }));
    }
    if link.seq < expected {
        return Ok(Some(here(
            Kind::Reordered,
            format!(
                "record {} comes after record {}{boundary}",
                link.seq, before.seq
            ),
        )));
    }
    if let Some((file, line)) = find(files, at, expected)? {
        return Ok(Some(here(
            Kind::Reordered,
            format!(
                "record {} comes before record {}, which is at {}:{line}{boundary}",
                link.seq,
                expected,
                files[file].display()
            ),
        )));
    }
    let missing = if link.seq - 1 == expected {
        format!("record {expected} is missing")
    } else {
        format!("records {expected} to {} are missing", link.seq - 1)
    };
    Ok(Some(here(
        Kind::Removed,
        format!("{missing} before record {}{boundary}", link.seq),
    )))
}

/// The first record numbered `seq` after `from`, if any.
fn find(files: &[PathBuf], from: &At, seq: u64) -> std::io::Result<Option<(usize, usize)>> {
    for (f, path) in files.iter().enumerate().skip(from.file) {
        for (i, line) in lines(path)?.enumerate() {
            if f == from.file && i < from.line {
                continue;
            }
            if chain::open(&line?).is_ok_and(|l| l.seq == seq) {
                return Ok(Some((f, i + 1)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::seal;

    /// A trail of `n` records as lines (without newlines).
    fn trail(n: u64, first: u64, prev: &str) -> (Vec<String>, String) {
        let mut prev = prev.to_string();
        let mut out = Vec::new();
        for seq in first..first + n {
            let (line, hash) = seal(
                format!(r#"{{"seq":{seq},"event":"request","method":"tools/call"}}"#).as_bytes(),
                &prev,
            );
            out.push(String::from_utf8(line).unwrap().trim_end().to_string());
            prev = hash;
        }
        (out, prev)
    }

    fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("portcullis-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn bad(files: &[PathBuf]) -> Problem {
        verify(files).unwrap().unwrap_err()
    }

    #[test]
    fn an_intact_trail_verifies() {
        let d = tmp("intact");
        let (lines, last) = trail(5, 1, GENESIS);
        let f = write(&d, "a.jsonl", &lines);
        let r = verify(&[f]).unwrap().unwrap();
        assert_eq!((r.records, r.first_seq, r.last_seq), (5, 1, 5));
        assert_eq!(r.last_hash, last);
        assert!(!r.continues);
    }

    #[test]
    fn edits_deletions_and_swaps_are_named_at_the_right_line() {
        let d = tmp("tamper");
        let (lines, _) = trail(6, 1, GENESIS);

        let mut edited = lines.clone();
        edited[2] = edited[2].replace("tools/call", "tools/list");
        let p = bad(&[write(&d, "edit", &edited)]);
        assert_eq!((p.line, p.kind), (3, Kind::Altered), "{p}");

        let mut deleted = lines.clone();
        deleted.remove(3);
        let p = bad(&[write(&d, "delete", &deleted)]);
        assert_eq!((p.line, p.kind), (4, Kind::Removed), "{p}");
        assert!(p.detail.contains("record 4 is missing"), "{p}");

        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let p = bad(&[write(&d, "swap", &swapped)]);
        assert_eq!((p.line, p.kind), (2, Kind::Reordered), "{p}");

        let mut garbage = lines.clone();
        garbage[4] = "not a record".into();
        let p = bad(&[write(&d, "garbage", &garbage)]);
        assert_eq!((p.line, p.kind), (5, Kind::Altered), "{p}");

        // An edit whose hash was recomputed shows at the next link, naming the edited line.
        let mut rehashed = lines.clone();
        let prev2 = chain::open(&lines[1]).unwrap().hash;
        let (line, _) = seal(br#"{"seq":3,"event":"request","method":"forged"}"#, &prev2);
        rehashed[2] = String::from_utf8(line).unwrap().trim_end().to_string();
        let p = bad(&[write(&d, "rehash", &rehashed)]);
        assert_eq!((p.line, p.kind), (3, Kind::Altered), "{p}");
    }

    #[test]
    fn a_rotated_set_verifies_in_any_order_and_a_missing_file_shows() {
        let d = tmp("rotated");
        let (a, h) = trail(3, 1, GENESIS);
        let (b, h2) = trail(3, 4, &h);
        let (c, _) = trail(2, 7, &h2);
        let fa = write(&d, "t.1", &a);
        let fb = write(&d, "t.2", &b);
        let fc = write(&d, "t", &c);
        let r = verify(&[fc.clone(), fa.clone(), fb.clone()])
            .unwrap()
            .unwrap();
        assert_eq!((r.files, r.records, r.last_seq), (3, 8, 8));

        // Without the middle file, the break is at the first record of the last one.
        let p = bad(&[fa, fc.clone()]);
        assert_eq!(
            (p.file.clone(), p.line, p.kind),
            (fc.clone(), 1, Kind::Removed),
            "{p}"
        );

        // A newest file alone continues a chain: fine.
        let r = verify(&[fb, fc]).unwrap().unwrap();
        assert!(r.continues);
        assert_eq!(r.first_seq, 4);
    }
}
