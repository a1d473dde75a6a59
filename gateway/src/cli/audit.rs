//! `portcullis audit verify FILE...`: checks an audit trail's hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit file, or of a rotated set (`audit.jsonl*`, any
    /// order). Exit 0 with the record count when intact; exit 1 naming the first record
    /// that was altered, removed or reordered (FILE:LINE).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify { files } => verify(&files),
    }
}

fn verify(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let names = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match portcullis::audit::verify(files)? {
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
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            println!("{problem}");
            Ok(ExitCode::FAILURE)
        }
    }
}
