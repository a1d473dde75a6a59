//! `portcullis-fuzz`: fuzzes the gateway's HTTP front or its MCP message model for a bounded
//! time on stable Rust, starting from the seed corpus in `fuzz/corpus/<target>/`.
//! Exit status: 0 when nothing was found, 1 on a crash (panic or broken property), 2 on a
//! hang; the input is printed and saved under `--artifacts`. See docs/dev/fuzzing.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use portcullis_fuzz::engine::{self, Options, Target};
use portcullis_fuzz::{front, message};

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    /// HTTP request bytes → the gateway's hyper service, over an in-memory connection.
    Front,
    /// Bytes → JSON-RPC / MCP message parsing and its round trips.
    Message,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Front => "front",
            Which::Message => "message",
        }
    }
}

#[derive(Parser)]
#[command(about = "Fuzz the Portcullis front or message model for a bounded time")]
struct Cli {
    /// Which target.
    target: Which,
    /// How long to fuzz, in seconds (after the seeds ran once).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop after this many inputs (seeds included), even before `--seconds`.
    #[arg(long)]
    runs: Option<u64>,
    /// An input running longer than this (milliseconds) is a hang.
    #[arg(long, default_value_t = 2000)]
    hang_ms: u64,
    /// Seed of the mutator (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Corpus folders (default: fuzz/corpus/<target>, and for `message` also the bodies of
    /// fuzz/corpus/front).
    #[arg(long)]
    corpus: Vec<PathBuf>,
    /// Where crashing and hanging inputs are written.
    #[arg(long, default_value = "target/fuzz-artifacts")]
    artifacts: PathBuf,
    /// Write inputs that showed a new behaviour here (to grow the corpus by hand).
    #[arg(long)]
    save_new: Option<PathBuf>,
    /// Run these files once each instead of fuzzing (a saved crash, or the seeds).
    #[arg(long, num_args = 1..)]
    replay: Vec<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis-fuzz: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let name = cli.target.name();
    let target: Box<dyn Target> = match cli.target {
        Which::Front => Box::new(front::Front::new()?),
        Which::Message => Box::new(message::MessageModel),
    };
    if !cli.replay.is_empty() {
        let mut files = Vec::new();
        for path in &cli.replay {
            files.push((path.display().to_string(), std::fs::read(path)?));
        }
        return Ok(match engine::replay(&*target, &files) {
            Ok(()) => {
                eprintln!("fuzz {name}: {} inputs replayed, all fine", files.len());
                ExitCode::SUCCESS
            }
            Err(failures) => {
                eprintln!("fuzz {name}: replay failed:\n{failures}");
                ExitCode::from(1)
            }
        });
    }
    let seeds = portcullis_fuzz::seeds(cli.target.name(), &cli.corpus)?;
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "fuzz {name}: {} seeds, {} s, hang after {} ms, seed {seed}",
        seeds.len(),
        cli.seconds,
        cli.hang_ms
    );
    let opts = Options {
        target_name: name.to_string(),
        duration: Duration::from_secs(cli.seconds),
        max_runs: cli.runs,
        hang: Duration::from_millis(cli.hang_ms),
        seed,
        artifacts: cli.artifacts,
        save_new: cli.save_new,
    };
    match engine::fuzz(&*target, seeds, &opts) {
        Ok(s) => {
            println!(
                "fuzz {name}: {} inputs in {:.1} s ({:.0}/s), {} behaviours, corpus {}; no crash, no hang",
                s.runs,
                s.elapsed.as_secs_f64(),
                s.per_second(),
                s.behaviours,
                s.corpus
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#} (seed {seed})");
            Ok(ExitCode::from(1))
        }
    }
}
