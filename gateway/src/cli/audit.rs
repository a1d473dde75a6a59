//! `portcullis audit verify | keygen | new-segment`: checking the keyed chain and its signed
//! checkpoints, making keys, starting a new segment.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use portcullis::audit::{self, ChainKey, KeyKind};

/// The environment variable `audit verify` reads the chain key from (the same one the
/// documented `[audit] key = "${PORTCULLIS_AUDIT_KEY}"` uses).
const KEY_ENV: &str = "PORTCULLIS_AUDIT_KEY";

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check an audit file, or a rotated set (`audit.jsonl*`, any order; a `.checkpoints` file
    /// among them is taken as the checkpoints). With the chain key (PORTCULLIS_AUDIT_KEY or
    /// --key-file) every record's keyed hash is checked; with the checkpoint public key the
    /// signed checkpoints are checked and records cut off the end are found. Exit 0 when
    /// intact; exit 1 naming the first bad record (FILE:LINE: kind: detail).
    Verify {
        /// A file holding the chain key (instead of PORTCULLIS_AUDIT_KEY).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The checkpoint public key: 64 hex digits as `audit keygen` prints them, or a file
        /// holding them.
        #[arg(long)]
        public_key: Option<String>,
        /// The checkpoint file. Default: a `*.checkpoints` file among FILES, else
        /// `<path>.checkpoints` beside the trail.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a new random key to FILE (readable by its owner only; an existing file is never
    /// overwritten): a checkpoint signing key (its public key is printed), or with --chain a
    /// chain key.
    Keygen {
        /// A chain (HMAC) key for `[audit] key-file` instead of a checkpoint signing key.
        #[arg(long)]
        chain: bool,
        file: PathBuf,
    },
    /// With the gateway stopped: move the trail `[audit]` names (its rotated files and its
    /// checkpoints) into a new folder beside it and start a new segment whose first record
    /// names the old one's head. The way forward when the gateway refuses to continue a trail
    /// that does not verify.
    NewSegment {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            key_file,
            public_key,
            checkpoints,
            files,
        } => verify(key_file, public_key, checkpoints, files),
        AuditCommand::Keygen { chain, file } => keygen(chain, &file),
        AuditCommand::NewSegment { config } => new_segment(&config),
    }
}

fn is_checkpoints(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".checkpoints")
}

/// `<trail>.checkpoints` for the trail `files` make up (`audit.jsonl.3` → `audit.jsonl`).
fn checkpoints_beside(files: &[PathBuf]) -> Option<PathBuf> {
    files.iter().find_map(|f| {
        let name = f.to_string_lossy();
        let base = match name.rsplit_once('.') {
            Some((base, n)) if n.parse::<u64>().is_ok() => base.to_string(),
            _ => name.into_owned(),
        };
        let candidate = PathBuf::from(format!("{base}.checkpoints"));
        candidate.exists().then_some(candidate)
    })
}

fn verify(
    key_file: Option<PathBuf>,
    public_key: Option<String>,
    checkpoints: Option<PathBuf>,
    files: Vec<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (given, trail): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| is_checkpoints(f));
    anyhow::ensure!(!trail.is_empty(), "no audit file given");
    let key = match key_file {
        Some(file) => {
            Some(ChainKey::from_file(&file).map_err(|e| anyhow::anyhow!("--key-file: {e}"))?)
        }
        None => match std::env::var_os(KEY_ENV) {
            Some(k) => Some(
                ChainKey::new(k.as_encoded_bytes())
                    .map_err(|e| anyhow::anyhow!("{KEY_ENV} {e}"))?,
            ),
            None => None,
        },
    };
    let public = public_key
        .map(|k| audit::verifying_key(&k).map_err(|e| anyhow::anyhow!("--public-key: {e}")))
        .transpose()?;
    anyhow::ensure!(
        key.is_some() || public.is_some(),
        "give the chain key ({KEY_ENV} or --key-file) and/or the checkpoint public key \
         (--public-key): without either, a forged trail cannot be told from a real one"
    );
    let checkpoint_file = checkpoints
        .or_else(|| given.into_iter().next())
        .or_else(|| checkpoints_beside(&trail));
    let signed = match (&public, &checkpoint_file) {
        (Some(public), Some(file)) => match audit::read_checkpoints(file, public)
            .with_context(|| format!("cannot read {}", file.display()))?
        {
            Some(Ok(found)) => found,
            Some(Err(bad)) => {
                println!("{bad}");
                return Ok(ExitCode::FAILURE);
            }
            None => anyhow::bail!("{} does not exist", file.display()),
        },
        (Some(_), None) => anyhow::bail!(
            "no checkpoint file beside the trail: give it with --checkpoints (or among the files)"
        ),
        (None, _) => Vec::new(),
    };

    let names = trail
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match audit::verify(&trail, key.as_ref(), &signed)? {
        Ok(report) => {
            let range = if report.records == 0 {
                "no records".to_string()
            } else {
                format!(
                    "{} records (seq {} to {}), last hash {}",
                    report.records, report.first_seq, report.last_seq, report.last_hash
                )
            };
            let files = if report.files > 1 {
                format!(" across {} files", report.files)
            } else {
                String::new()
            };
            println!("{names}: intact: {range}{files}");
            if report.continues {
                println!(
                    "  (the first record is number {}: the chain continues from earlier files not given)",
                    report.first_seq
                );
            }
            if report.keyed {
                println!("  keyed hashes: every record checked with the chain key");
            } else {
                println!(
                    "  keyed hashes: not checked (no chain key): the links and checkpoints are, a record's content is not"
                );
            }
            match (&public, report.last_checkpoint) {
                (None, _) => println!(
                    "  checkpoints: not checked (no --public-key): records cut off the end would not show"
                ),
                (Some(_), None) => println!(
                    "  checkpoints: none of the {} signed checkpoints names a record in these files",
                    signed.len()
                ),
                (Some(_), Some(seq)) => {
                    println!(
                        "  checkpoints: {} signed checkpoints match, the last signs record {seq}",
                        report.checkpoints
                    );
                    if seq < report.last_seq {
                        println!(
                            "  (records {} to {} come after the last checkpoint: only the chain key vouches for them)",
                            seq + 1,
                            report.last_seq
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("{problem}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn keygen(chain: bool, file: &Path) -> anyhow::Result<ExitCode> {
    let kind = if chain {
        KeyKind::Chain
    } else {
        KeyKind::Checkpoint
    };
    match audit::generate_key(file, kind)? {
        Some(public) => {
            println!(
                "wrote {} (Ed25519 checkpoint signing key: `[audit] checkpoint-key-file`)",
                file.display()
            );
            println!("public key: {public}");
            println!(
                "  give it to auditors: portcullis audit verify --public-key {public} audit.jsonl*"
            );
        }
        None => println!(
            "wrote {} (chain key: `[audit] key-file`, or its content in {KEY_ENV})",
            file.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn new_segment(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = portcullis::config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let done = audit::new_segment(&cfg.audit)?;
    println!(
        "moved {} files to {}",
        done.moved.len(),
        done.moved_to.display()
    );
    let p = &done.previous;
    match (p.seq, &p.hash) {
        (Some(seq), Some(hash)) => println!(
            "  its last record: seq {seq}, hash {hash} ({})",
            if p.intact {
                "its keyed hash checks out"
            } else {
                "its keyed hash does NOT check out"
            }
        ),
        _ => println!("  its last line is not a record"),
    }
    match (p.checkpoint_seq, &p.checkpoint_hash) {
        (Some(seq), Some(hash)) => println!("  its last signed checkpoint: seq {seq}, hash {hash}"),
        _ => println!("  it has no valid signed checkpoint"),
    }
    println!(
        "{}: a new segment starts with a `segment` record naming these",
        cfg.audit.path.display()
    );
    Ok(ExitCode::SUCCESS)
}
