//! The fuzzing engine: a corpus-driven mutator and a runner that catches panics and hangs.
//!
//! No compiler instrumentation (docs/dev/fuzzing.md says why): inputs are seeds from the
//! corpus, mutated a few times each (bit flips, interesting bytes, deletions, duplications,
//! splices with another input, tokens from the target's dictionary). The only feedback is
//! the *behaviour* a target reports for an input (e.g. the statuses and JSON-RPC error codes
//! the gateway answered): an input that shows a behaviour not seen before joins the corpus,
//! so later mutations start from it.
//!
//! A panic anywhere in the process (also in a task the gateway spawned) fails the run, and so
//! does an input that runs longer than the hang timeout: a watchdog thread notices, saves the
//! input and exits the process, since a stuck thread cannot be stopped from outside.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Inputs larger than this are cut: big enough for pipelined requests and chunked bodies,
/// small enough that one input stays fast.
const MAX_INPUT: usize = 64 * 1024;

/// Behaviours kept in the corpus at most, beyond the seeds (memory stays bounded).
const MAX_CORPUS: usize = 20_000;

/// One fuzz target: bytes in, a behaviour fingerprint out; panics when a property fails.
pub trait Target {
    /// Tokens the mutator inserts: keywords of the input language.
    fn dictionary(&self) -> &[&[u8]];

    /// Repairs an input after mutation so more of it gets past the first check (e.g. a
    /// `Content-Length` that matches the body). Called on half of the mutated inputs.
    fn fixup(&self, _input: &mut Vec<u8>) {}

    /// Work between inputs that is not the next input's (e.g. replacing a gateway): runs
    /// before the hang clock starts.
    fn prepare(&self) {}

    /// Runs one input. Returns the facts it showed (statuses, error codes, kinds…);
    /// panics when a property the target checks does not hold.
    fn run(&self, input: &[u8]) -> Features;

    /// For replayed seeds: checks what a seed's file name promises (e.g. the statuses).
    fn expect(&self, _name: &str, _input: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// What an input showed: small facts (e.g. "status 400 with a JSON-RPC -32600"), hashed. An
/// input showing a fact never seen before joins the corpus: behaviour stands in for the
/// coverage an instrumented build would give.
#[derive(Debug, Default)]
pub struct Features(Vec<u64>);

impl Features {
    pub fn add(&mut self, fact: impl Hash) {
        let mut h = DefaultHasher::new();
        fact.hash(&mut h);
        self.0.push(h.finish());
    }
}

/// Reads every file of `dirs` (not recursive), in name order.
pub fn load_corpus(dirs: &[PathBuf]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut seeds = Vec::new();
    for dir in dirs {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read corpus folder {}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        for path in names {
            let bytes = std::fs::read(&path)?;
            seeds.push((path.display().to_string(), bytes));
        }
    }
    Ok(seeds)
}

/// Turns a seed into a new input.
pub struct Mutator {
    pub rng: fastrand::Rng,
}

/// Bytes that tend to matter to parsers.
const INTERESTING: &[u8] = b"\0\x7f\xff\r\n\t \"\\{}[]:,0123456789-+.eE%=;?/";

/// Numbers that tend to matter: lengths, limits, overflows.
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "255",
    "65536",
    "4194304",
    "4194305",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "-9223372036854775809",
    "1e308",
    "1e999",
    "-0",
    "0.5",
    "00",
    "0x10",
];

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// A mutated copy of `parent`: 1, 2, 4 or 8 stacked mutations. `other` is another corpus
    /// input to splice with.
    pub fn mutate(&mut self, parent: &[u8], other: &[u8], dictionary: &[&[u8]]) -> Vec<u8> {
        let mut out = parent.to_vec();
        for _ in 0..(1 << self.rng.u32(0..4)) {
            self.one(&mut out, other, dictionary);
        }
        out.truncate(MAX_INPUT);
        out
    }

    fn pos(&mut self, data: &[u8]) -> usize {
        self.rng.usize(0..=data.len())
    }

    /// A range of `data`, biased to short ones.
    fn range(&mut self, data: &[u8]) -> (usize, usize) {
        let start = self.rng.usize(0..=data.len());
        let max = (data.len() - start).min(if self.rng.bool() { 8 } else { 256 });
        (start, start + self.rng.usize(0..=max))
    }

    fn one(&mut self, data: &mut Vec<u8>, other: &[u8], dictionary: &[&[u8]]) {
        match self.rng.u32(0..11) {
            0 if !data.is_empty() => {
                let i = self.rng.usize(0..data.len());
                data[i] ^= 1 << self.rng.u32(0..8);
            }
            1 if !data.is_empty() => {
                let i = self.rng.usize(0..data.len());
                data[i] = INTERESTING[self.rng.usize(0..INTERESTING.len())];
            }
            2 => {
                let (a, b) = self.range(data);
                data.drain(a..b);
            }
            3 => {
                let (a, b) = self.range(data);
                let copy = data[a..b].to_vec();
                let at = self.pos(data);
                data.splice(at..at, copy);
            }
            4 | 5 if !dictionary.is_empty() => {
                let token = dictionary[self.rng.usize(0..dictionary.len())];
                let at = self.pos(data);
                data.splice(at..at, token.iter().copied());
            }
            6 if !dictionary.is_empty() => {
                let token = dictionary[self.rng.usize(0..dictionary.len())];
                let (a, b) = self.range(data);
                data.splice(a..b, token.iter().copied());
            }
            7 => {
                // Our head, their tail.
                let cut = self.pos(data);
                let from = self.rng.usize(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 => self.number(data),
            9 => {
                let (a, b) = self.range(data);
                let noise: Vec<u8> = (a..b).map(|_| self.rng.u8(..)).collect();
                data.splice(a..b, noise);
            }
            _ => {
                let cut = self.pos(data);
                data.truncate(cut);
            }
        }
    }

    /// Replaces a run of digits (a length, an id, a chunk size) with an interesting number.
    fn number(&mut self, data: &mut Vec<u8>) {
        let digits: Vec<usize> = (0..data.len())
            .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
            .collect();
        if digits.is_empty() {
            return;
        }
        let start = digits[self.rng.usize(0..digits.len())];
        let end = (start..data.len())
            .find(|&i| !data[i].is_ascii_digit())
            .unwrap_or(data.len());
        let n = NUMBERS[self.rng.usize(0..NUMBERS.len())];
        data.splice(start..end, n.bytes());
    }
}

/// What a run found.
pub struct Summary {
    pub runs: u64,
    pub elapsed: Duration,
    pub behaviours: usize,
    pub corpus: usize,
}

impl Summary {
    pub fn per_second(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long to run and where to put what is found.
#[derive(Clone)]
pub struct Options {
    pub target_name: String,
    pub duration: Duration,
    pub max_runs: Option<u64>,
    pub hang: Duration,
    pub seed: u64,
    /// Crashing and hanging inputs are written here.
    pub artifacts: PathBuf,
    /// Inputs with a new behaviour are written here, when set (to grow the corpus).
    pub save_new: Option<PathBuf>,
}

/// The input running now (its sequence number, from 1; 0 when idle), shared with the
/// watchdog thread.
struct Current {
    running: AtomicU64,
    input: Mutex<Vec<u8>>,
    /// The fuzzing thread's scheduler statistics (Linux), to tell waiting for a CPU from
    /// waiting on the gateway.
    schedstat: Option<PathBuf>,
}

/// Nanoseconds the thread behind `path` has spent runnable but not running (Linux
/// `schedstat`, second field); 0 where unknown.
fn waited_for_cpu(path: Option<&Path>) -> u64 {
    path.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Set by the panic hook: some thread panicked (message and place).
static PANICKED: AtomicBool = AtomicBool::new(false);
static PANIC_MESSAGE: Mutex<String> = Mutex::new(String::new());

/// Records every panic, in any thread: the gateway's spawned tasks panic inside tokio,
/// which would otherwise swallow them. The previous hook still runs (it prints the panic).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            record_panic(info);
            previous(info);
        }));
    });
}

fn record_panic(info: &std::panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let text = format!(
        "thread '{}' panicked at {}: {}",
        thread.name().unwrap_or("<unnamed>"),
        info.location()
            .map(|l| l.to_string())
            .unwrap_or_else(|| "?".into()),
        payload_text(info.payload()),
    );
    if let Ok(mut m) = PANIC_MESSAGE.lock()
        && m.is_empty()
    {
        *m = text;
    }
    PANICKED.store(true, Ordering::SeqCst);
}

fn payload_text(payload: &dyn std::any::Any) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string payload>".into()
    }
}

fn take_panic() -> Option<String> {
    if !PANICKED.swap(false, Ordering::SeqCst) {
        return None;
    }
    let mut m = PANIC_MESSAGE.lock().ok()?;
    Some(std::mem::take(&mut *m))
}

/// Runs one input, catching a panic: `Err(message)` when one happened.
pub fn run_one(target: &dyn Target, input: &[u8]) -> Result<Features, String> {
    let result = catch_unwind(AssertUnwindSafe(|| target.run(input)));
    match (result, take_panic()) {
        (Ok(features), None) => Ok(features),
        (_, Some(message)) => Err(message),
        (Err(payload), None) => Err(payload_text(&*payload)),
    }
}

/// A name for an artifact: its kind and a hash of its bytes.
fn artifact_path(dir: &Path, kind: &str, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    dir.join(format!("{kind}-{:016x}", h.finish()))
}

/// Saves a failing input and prints how to replay it.
fn report(opts: &Options, kind: &str, message: &str, input: &[u8]) {
    let _ = std::fs::create_dir_all(&opts.artifacts);
    let path = artifact_path(&opts.artifacts, kind, input);
    let saved = std::fs::write(&path, input).is_ok();
    eprintln!("\n==> fuzz {}: {kind}: {message}", opts.target_name);
    eprintln!("input ({} bytes): {}", input.len(), show(input));
    if saved {
        eprintln!(
            "saved to {}; replay: portcullis-fuzz {} --replay {}",
            path.display(),
            opts.target_name,
            path.display()
        );
    }
}

/// An input as printable text, cut at 2 KiB.
pub fn show(input: &[u8]) -> String {
    let cut = &input[..input.len().min(2048)];
    let mut s: String = cut.escape_ascii().to_string();
    if input.len() > cut.len() {
        s.push('…');
    }
    s
}

/// Watches the running input; exits the process when one runs past `opts.hang`.
fn start_watchdog(current: Arc<Current>, opts: &Options) {
    let hang = opts.hang;
    let opts = opts.clone();
    std::thread::spawn(move || {
        let (mut watched, mut ran, mut last) = (0, Duration::ZERO, Instant::now());
        let (mut started, mut excused) = (Instant::now(), Duration::ZERO);
        let mut waited = waited_for_cpu(current.schedstat.as_deref());
        loop {
            std::thread::sleep(TICK);
            let now = Instant::now();
            // Time the fuzzing thread spent waiting for a CPU (a loaded machine) is not
            // charged to the input, nor is a late tick beyond twice its length: only time
            // the gateway could have used adds up to a hang.
            let queued = waited_for_cpu(current.schedstat.as_deref());
            let starved = Duration::from_nanos(queued.saturating_sub(waited));
            waited = queued;
            let step = (now - last).min(TICK * 2).saturating_sub(starved);
            last = now;
            let running = current.running.load(Ordering::SeqCst);
            if running != watched {
                (watched, ran, started, excused) = (running, Duration::ZERO, now, Duration::ZERO);
                continue;
            }
            if running == 0 {
                continue;
            }
            ran += step;
            excused += (now - started).saturating_sub(ran + excused);
            if ran > hang {
                let input = current.input.lock().map(|i| i.clone()).unwrap_or_default();
                report(
                    &opts,
                    "hang",
                    &format!(
                        "one input ran for more than {hang:?} (plus {excused:?} not charged: \
                         waiting for a CPU, late ticks)"
                    ),
                    &input,
                );
                std::process::exit(2);
            }
        }
    });
}

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(50);

/// Runs every seed once, then mutated inputs until the time or run budget is spent.
/// `Err` when an input crashed (a hang exits the process from the watchdog).
pub fn fuzz(
    target: &dyn Target,
    seeds: Vec<(String, Vec<u8>)>,
    opts: &Options,
) -> anyhow::Result<Summary> {
    install_panic_hook();
    let current = Arc::new(Current {
        running: AtomicU64::new(0),
        input: Mutex::new(Vec::new()),
        schedstat: std::fs::read_link("/proc/thread-self")
            .ok()
            .map(|t| Path::new("/proc").join(t).join("schedstat")),
    });
    start_watchdog(current.clone(), opts);
    let mut corpus: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seed_count = corpus.len();
    let mut seen = HashSet::new();
    let mut mutator = Mutator::new(opts.seed);
    let started = Instant::now();
    let mut last_status = started;
    let mut runs = 0u64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= opts.duration || opts.max_runs.is_some_and(|m| runs >= m) {
            break;
        }
        let input = if (runs as usize) < seed_count {
            corpus[runs as usize].clone()
        } else {
            let parent = &corpus[mutator.rng.usize(0..corpus.len())];
            let other = &corpus[mutator.rng.usize(0..corpus.len())];
            let mut child = mutator.mutate(parent, other, target.dictionary());
            if mutator.rng.bool() {
                target.fixup(&mut child);
            }
            child
        };
        target.prepare();
        if let Ok(mut slot) = current.input.lock() {
            slot.clone_from(&input);
        }
        current.running.store(runs + 1, Ordering::SeqCst);
        let outcome = run_one(target, &input);
        current.running.store(0, Ordering::SeqCst);
        runs += 1;
        match outcome {
            Ok(features) => {
                let mut new = false;
                for f in features.0 {
                    new |= seen.insert(f);
                }
                if new && (runs as usize) > seed_count {
                    if let Some(dir) = &opts.save_new {
                        let _ = std::fs::create_dir_all(dir);
                        let _ = std::fs::write(artifact_path(dir, "new", &input), &input);
                    }
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input);
                    }
                }
            }
            Err(message) => {
                report(opts, "crash", &message, &input);
                anyhow::bail!("fuzz {}: an input crashed the target", opts.target_name);
            }
        }
        if last_status.elapsed() >= Duration::from_secs(10) {
            last_status = Instant::now();
            eprintln!(
                "fuzz {}: {runs} inputs, {:.0}/s, {} behaviours seen, corpus {}",
                opts.target_name,
                runs as f64 / started.elapsed().as_secs_f64(),
                seen.len(),
                corpus.len()
            );
        }
    }
    Ok(Summary {
        runs,
        elapsed: started.elapsed(),
        behaviours: seen.len(),
        corpus: corpus.len(),
    })
}

/// Runs each file once (a regression check, or a saved crash); checks what seed names
/// promise. `Err` lists every file that failed.
pub fn replay(target: &dyn Target, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    install_panic_hook();
    let mut failures = Vec::new();
    for (name, input) in files {
        match run_one(target, input) {
            Ok(_) => {
                if let Err(why) = target.expect(name, input) {
                    failures.push(format!("{name}: {why}"));
                }
            }
            Err(message) => failures.push(format!("{name}: crashed: {message}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_bounded_and_are_reproducible() {
        let dict: &[&[u8]] = &[b"tools/call", b"\r\n"];
        let seed = b"POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let run = |s| {
            let mut m = Mutator::new(s);
            (0..2000)
                .map(|_| m.mutate(&seed, &seed, dict))
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().all(|i| i.len() <= MAX_INPUT));
        assert!(a.iter().any(|i| i != &seed));
    }

    #[test]
    fn a_panic_in_another_thread_is_a_crash() {
        struct Spawns;
        impl Target for Spawns {
            fn dictionary(&self) -> &[&[u8]] {
                &[]
            }
            fn run(&self, input: &[u8]) -> Features {
                if input == b"boom" {
                    let _ = std::thread::spawn(|| panic!("boom in a task")).join();
                }
                Features::default()
            }
        }
        install_panic_hook();
        assert!(run_one(&Spawns, b"calm").is_ok());
        let err = run_one(&Spawns, b"boom").unwrap_err();
        assert!(err.contains("boom in a task"), "{err}");
        assert!(run_one(&Spawns, b"calm").is_ok());
    }
}
