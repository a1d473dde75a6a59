//! Prints a new random API key for the authn policy and the SHA-256 to put in its sidecar.
//!
//! ```text
//! authn-keygen            # a new key and its hash
//! authn-keygen --hash     # the hash of a key read from standard input (one line)
//! ```
//!
//! The key goes to the client; only the hash goes in `authn.toml` (`sha256 = "…"`).

use std::io::BufRead;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => match authn::new_key() {
            Ok(key) => {
                println!("key:    {key}");
                println!("sha256: {}", authn::hash_key(&key));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("authn-keygen: {e}");
                ExitCode::FAILURE
            }
        },
        ["--hash"] => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("authn-keygen: cannot read the key: {e}");
                return ExitCode::FAILURE;
            }
            let key = line.trim_end_matches(['\r', '\n']);
            if key.is_empty() {
                eprintln!("authn-keygen: no key on standard input");
                return ExitCode::FAILURE;
            }
            println!("{}", authn::hash_key(key));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: authn-keygen [--hash]");
            eprintln!(
                "  prints a new API key and its sha256; with --hash, the sha256 of a key read from stdin"
            );
            ExitCode::from(2)
        }
    }
}
