//! Fuzz targets for Portcullis on stable Rust: the HTTP front ([`front`]) and the MCP message
//! model ([`message`]), run by a small corpus-driven mutational engine ([`engine`]).
//! The binary `portcullis-fuzz` runs them; docs/dev/fuzzing.md explains the choice.

pub mod engine;
pub mod front;
pub mod message;

use std::path::{Path, PathBuf};

/// The seed corpus folder of a target, in this crate.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// The seeds of a target: `dirs`, or its corpus folder. The message model also starts from
/// the bodies of the front's seeds (what follows the first empty line).
pub fn seeds(target: &str, dirs: &[PathBuf]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    if !dirs.is_empty() {
        return engine::load_corpus(dirs);
    }
    let mut seeds = engine::load_corpus(&[corpus_dir(target)])?;
    if target == "message" {
        for (name, bytes) in engine::load_corpus(&[corpus_dir("front")])? {
            if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n")
                && bytes.len() > at + 4
            {
                seeds.push((format!("{name} (body)"), bytes[at + 4..].to_vec()));
            }
        }
    }
    Ok(seeds)
}
