//! Checking a trail: `portcullis audit verify FILE...`.
//!
//! The files may be given in any order (a shell glob puts `audit.jsonl.10` before
//! `audit.jsonl.2`): they are put in chain order by the number of their first record. Then
//! every line must be a sealed record whose keyed hash matches its content (when the chain
//! key is given), whose `prev` is the hash of the record before it and whose `seq` is one
//! more; and every signed checkpoint (when given) must find its record, with its hash. The
//! first line that breaks this is named, with what most likely happened:
//!
//! - **altered**: the line's content does not match its keyed hash (it was edited, or written
//!   by someone without the key: a forged append, a re-sealed file, renumbered records), or
//!   the record before it was edited and re-hashed (the chain still holds the original hash),
//!   or the record is not the one a signed checkpoint names;
//! - **removed**: records are missing: the numbers jump and the missing ones are nowhere in
//!   the files;
//! - **reordered**: the numbers jump but the missing record is further on, or a number comes
//!   after a larger one;
//! - **truncated**: the trail ends before the record the last signed checkpoint names.
//!
//! A trail whose first record is not number 1 continues a chain whose earlier files were
//! rotated away (`keep-files`): it is checked from there on, and checkpoints of records
//! before it are skipped.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use super::chain::{self, GENESIS, Link};
use super::checkpoint::Found;
use super::keys::ChainKey;

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
    /// Whether every record's keyed hash was checked (the chain key was given).
    pub keyed: bool,
    /// Checkpoints whose record was found in the files, with its hash.
    pub checkpoints: usize,
    /// The record the last of them covers.
    pub last_checkpoint: Option<u64>,
}

/// What went wrong first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Altered,
    Removed,
    Reordered,
    Truncated,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Altered => "altered",
            Kind::Removed => "removed",
            Kind::Reordered => "reordered",
            Kind::Truncated => "truncated",
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

/// Checks the trail made of `files`: its keyed hashes with `key` (when given) and its records
/// against `checkpoints` (signatures already checked). `Err` only when a file cannot be read.
pub fn verify(
    files: &[PathBuf],
    key: Option<&ChainKey>,
    checkpoints: &[Found],
) -> std::io::Result<Result<Report, Problem>> {
    // Chain order: by the number of each file's first record.
    let mut ordered = Vec::with_capacity(files.len());
    for path in files {
        let first = lines(path)?
            .next()
            .transpose()?
            .and_then(|l| chain::open(&l, None).ok())
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
        keyed: key.is_some(),
        checkpoints: 0,
        last_checkpoint: None,
    };
    let mut signed: BTreeMap<u64, Vec<&Found>> = BTreeMap::new();
    for c in checkpoints {
        signed.entry(c.checkpoint.seq).or_default().push(c);
    }
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
            let link = match chain::open(&line?, key) {
                Ok(l) => l,
                Err(e) => {
                    return Ok(Err(problem(
                        Kind::Altered,
                        format!("not an audit record: {e}"),
                    )));
                }
            };
            if link.intact == Some(false) {
                return Ok(Err(problem(
                    Kind::Altered,
                    format!(
                        "record {}: its hash is not the keyed hash of its content: it was edited, \
                         or written without the chain key (a forged, re-sealed or renumbered record)",
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
                    if let Some(other) = checkpoints
                        .iter()
                        .find(|c| link.seq == 1 && c.checkpoint.segment != link.hash)
                    {
                        return Ok(Err(problem(
                            Kind::Altered,
                            format!(
                                "record 1 is not the first record of the segment the checkpoint at {} signs: the trail was replaced, or the checkpoints are another segment's",
                                other.place()
                            ),
                        )));
                    }
                }
                Some((before, before_at)) => {
                    if let Some(p) = check_link(&files, before, before_at, &link, &at)? {
                        return Ok(Err(p));
                    }
                }
            }
            for c in signed.get(&link.seq).into_iter().flatten() {
                if c.checkpoint.hash != link.hash {
                    return Ok(Err(problem(
                        Kind::Altered,
                        format!(
                            "record {} is not the record the checkpoint at {} signs (its hash differs): the trail was rewritten up to here",
                            link.seq,
                            c.place()
                        ),
                    )));
                }
                report.checkpoints += 1;
                report.last_checkpoint = Some(link.seq);
            }
            report.records += 1;
            last = Some((link, at));
        }
    }
    let end = match &last {
        Some((link, at)) => {
            report.last_seq = link.seq;
            report.last_hash = link.hash.clone();
            Some(at.clone())
        }
        None => None,
    };
    // Records cut off the end: the last checkpoint names a record after the last one here.
    if let Some((&seq, found)) = signed.last_key_value()
        && seq > report.last_seq
        && let Some(c) = found.first()
    {
        let (file, line) = match end {
            Some(at) => (files[at.file].clone(), at.line + 1),
            None => (files.last().cloned().unwrap_or_default(), 1),
        };
        let from = report.last_seq + 1;
        let missing = if from == seq {
            format!("record {seq} is missing")
        } else {
            format!("records {from} to {seq} are missing")
        };
        return Ok(Err(Problem {
            file,
            line,
            kind: Kind::Truncated,
            detail: format!(
                "{missing} at the end: the checkpoint at {} signs record {seq}",
                c.place()
            ),
        }));
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
            if chain::open(&line?, None).is_ok_and(|l| l.seq == seq) {
                return Ok(Some((f, i + 1)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::Checkpoint;

    fn key() -> ChainKey {
        ChainKey::new(b"the gateway's chain key, 32 bytes or more").unwrap()
    }

    fn seal(json: &[u8], prev: &str) -> (Vec<u8>, String) {
        chain::seal(json, prev, &key())
    }

    /// What an attacker without the key can do: seal with plain SHA-256, as before keys.
    fn plain_seal(json: &[u8], prev: &str) -> (Vec<u8>, String) {
        use sha2::{Digest as _, Sha256};
        let body = format!(
            "{},\"prev\":\"{prev}\"}}",
            std::str::from_utf8(&json[..json.len() - 1]).unwrap()
        );
        let hash = crate::audit::keys::hex(&Sha256::digest(body.as_bytes()));
        let line = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
        (line.into_bytes(), hash)
    }

    fn record(seq: u64) -> String {
        format!(r#"{{"seq":{seq},"event":"request","method":"tools/call"}}"#)
    }

    /// A trail of `n` records as lines (without newlines).
    fn trail(n: u64, first: u64, prev: &str) -> (Vec<String>, String) {
        sealed_with(n, first, prev, seal)
    }

    fn sealed_with(
        n: u64,
        first: u64,
        prev: &str,
        seal: fn(&[u8], &str) -> (Vec<u8>, String),
    ) -> (Vec<String>, String) {
        let mut prev = prev.to_string();
        let mut out = Vec::new();
        for seq in first..first + n {
            let (line, hash) = seal(record(seq).as_bytes(), &prev);
            out.push(String::from_utf8(line).unwrap().trim_end().to_string());
            prev = hash;
        }
        (out, prev)
    }

    fn hash_of(line: &str) -> String {
        chain::open(line, None).unwrap().hash
    }

    /// A checkpoint the gateway signed of record `seq` with `hash` (signature checked).
    fn signed(seq: u64, hash: &str, segment: &str) -> Found {
        Found {
            checkpoint: Checkpoint {
                seq,
                hash: hash.into(),
                segment: segment.into(),
                file: "audit.jsonl".into(),
                time: "2026-12-07T02:00:00Z".into(),
            },
            file: PathBuf::from("audit.jsonl.checkpoints"),
            line: 1,
        }
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
        verify(files, Some(&key()), &[]).unwrap().unwrap_err()
    }

    fn ok(files: &[PathBuf]) -> Report {
        verify(files, Some(&key()), &[]).unwrap().unwrap()
    }

    #[test]
    fn an_intact_trail_verifies() {
        let d = tmp("intact");
        let (lines, last) = trail(5, 1, GENESIS);
        let f = write(&d, "a.jsonl", &lines);
        let r = ok(&[f]);
        assert_eq!((r.records, r.first_seq, r.last_seq), (5, 1, 5));
        assert!(r.keyed);
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
        let prev2 = hash_of(&lines[1]);
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
        let r = ok(&[fc.clone(), fa.clone(), fb.clone()]);
        assert_eq!((r.files, r.records, r.last_seq), (3, 8, 8));

        // Without the middle file, the break is at the first record of the last one.
        let p = bad(&[fa, fc.clone()]);
        assert_eq!(
            (p.file.clone(), p.line, p.kind),
            (fc.clone(), 1, Kind::Removed),
            "{p}"
        );

        // A newest file alone continues a chain: fine.
        let r = ok(&[fb, fc]);
        assert!(r.continues);
        assert_eq!(r.first_seq, 4);
    }

    #[test]
    fn a_forged_append_is_named() {
        let d = tmp("append");
        let (mut lines, last) = trail(5, 1, GENESIS);
        let guessed = ChainKey::new(b"not the key, but just as long as one").unwrap();
        let (forged, _) = chain::seal(record(6).as_bytes(), &last, &guessed);
        lines.push(String::from_utf8(forged).unwrap().trim_end().into());
        let p = bad(&[write(&d, "append", &lines)]);
        assert_eq!((p.line, p.kind), (6, Kind::Altered), "{p}");
        assert!(p.detail.contains("without the chain key"), "{p}");
        // So is one sealed with plain SHA-256.
        let (forged, _) = plain_seal(record(6).as_bytes(), &last);
        lines[5] = String::from_utf8(forged).unwrap().trim_end().into();
        let p = bad(&[write(&d, "append-sha", &lines)]);
        assert_eq!((p.line, p.kind), (6, Kind::Altered), "{p}");
    }

    #[test]
    fn a_file_resealed_with_plain_sha256_is_named_at_its_first_record() {
        let d = tmp("reseal");
        let (lines, _) = sealed_with(5, 1, GENESIS, plain_seal);
        let p = bad(&[write(&d, "resealed", &lines)]);
        assert_eq!((p.line, p.kind), (1, Kind::Altered), "{p}");
        // Re-sealed from record 3 on (after an edit there): named at record 3.
        let (good, _) = trail(2, 1, GENESIS);
        let (rest, _) = sealed_with(3, 3, &hash_of(&good[1]), plain_seal);
        let p = bad(&[write(&d, "resealed-tail", &[good, rest].concat())]);
        assert_eq!((p.line, p.kind), (3, Kind::Altered), "{p}");
    }

    #[test]
    fn a_deleted_and_renumbered_record_is_named_with_or_without_the_key() {
        let d = tmp("renumber");
        let (lines, _) = trail(6, 1, GENESIS);
        let segment = hash_of(&lines[0]);
        // Record 3 (a denial, say) deleted, 4 to 6 renumbered 3 to 5 and re-sealed.
        let mut renumbered = lines[..2].to_vec();
        let (rest, _) = sealed_with(3, 3, &hash_of(&lines[1]), plain_seal);
        renumbered.extend(rest);
        let f = write(&d, "renumbered", &renumbered);
        let p = bad(std::slice::from_ref(&f));
        assert_eq!((p.line, p.kind), (3, Kind::Altered), "{p}");

        // With only the public key: the checkpoints show it.
        let at4 = signed(4, &hash_of(&lines[3]), &segment);
        let p = verify(std::slice::from_ref(&f), None, &[at4])
            .unwrap()
            .unwrap_err();
        assert_eq!((p.line, p.kind), (4, Kind::Altered), "{p}");
        assert!(p.detail.contains("checkpoint"), "{p}");
        let at6 = signed(6, &hash_of(&lines[5]), &segment);
        let p = verify(&[f], None, &[at6]).unwrap().unwrap_err();
        assert_eq!(p.kind, Kind::Truncated, "{p}");
    }

    #[test]
    fn a_truncated_tail_is_named_against_the_last_checkpoint() {
        let d = tmp("truncate");
        let (lines, _) = trail(6, 1, GENESIS);
        let segment = hash_of(&lines[0]);
        let checkpoints = [
            signed(1, &segment, &segment),
            signed(6, &hash_of(&lines[5]), &segment),
        ];
        let whole = write(&d, "whole", &lines);
        let r = verify(&[whole], Some(&key()), &checkpoints)
            .unwrap()
            .unwrap();
        assert_eq!((r.checkpoints, r.last_checkpoint), (2, Some(6)));

        let cut = write(&d, "cut", &lines[..4]);
        let p = verify(std::slice::from_ref(&cut), Some(&key()), &checkpoints)
            .unwrap()
            .unwrap_err();
        assert_eq!((p.line, p.kind), (5, Kind::Truncated), "{p}");
        assert!(p.detail.contains("records 5 to 6 are missing"), "{p}");
        // Without the checkpoints the cut cannot be seen.
        assert!(verify(&[cut], Some(&key()), &[]).unwrap().is_ok());

        // Checkpoints of another segment do not vouch for this one.
        let (other, _) = sealed_with(6, 1, GENESIS, |json, prev| {
            seal(
                String::from_utf8_lossy(json)
                    .replace("tools/call", "tools/list")
                    .as_bytes(),
                prev,
            )
        });
        let p = verify(&[write(&d, "other", &other)], Some(&key()), &checkpoints)
            .unwrap()
            .unwrap_err();
        assert_eq!((p.line, p.kind), (1, Kind::Altered), "{p}");
    }

    #[test]
    fn a_trail_checked_with_another_key_is_named_at_its_first_record() {
        let d = tmp("wrong-key");
        let (lines, _) = trail(3, 1, GENESIS);
        let f = write(&d, "trail", &lines);
        let wrong = ChainKey::new(b"a wrong key that is long enough!!").unwrap();
        let p = verify(std::slice::from_ref(&f), Some(&wrong), &[])
            .unwrap()
            .unwrap_err();
        assert_eq!((p.line, p.kind), (1, Kind::Altered), "{p}");
        // Without any key only the links are checked.
        let r = verify(&[f], None, &[]).unwrap().unwrap();
        assert!(!r.keyed);
    }
}
