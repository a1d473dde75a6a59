//! `portcullis authn`: API keys for the authn plugin.
//!
//! The client gets the key; the sidecar gets only its SHA-256 (`sha256 = "…"` in
//! `[[config.api-keys]]`, docs/authn.md). The hash is the plugin's: lowercase hex of the
//! SHA-256 of the key's bytes exactly as sent (`authn::hash_key`).

use std::io::BufRead;
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Subcommand;
use rand::Rng as _;

use portcullis::policy::sha256_hex;

#[derive(Subcommand)]
pub enum AuthnCommand {
    /// Print a new random API key (`pk_` + 256 random bits) and the hash for the sidecar.
    NewKey,
    /// Read a key from standard input (one line) and print the hash for the sidecar.
    HashKey,
}

pub fn run(command: AuthnCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthnCommand::NewKey => {
            let mut random = [0u8; 32];
            // ThreadRng: a CSPRNG seeded from the operating system.
            rand::rng().fill(&mut random);
            let key = format!("pk_{}", URL_SAFE_NO_PAD.encode(random));
            println!("key:    {key}");
            println!("sha256: {}", sha256_hex(key.as_bytes()));
            eprintln!("Give the key to the client; put only the sha256 in authn.toml.");
        }
        AuthnCommand::HashKey => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let key = line.trim_end_matches(['\n', '\r']);
            anyhow::ensure!(!key.is_empty(), "no key on standard input");
            println!("{}", sha256_hex(key.as_bytes()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
