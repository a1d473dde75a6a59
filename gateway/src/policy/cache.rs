//! The compile cache: native code the gateway compiled from a plugin's `.wasm`, kept on disk
//! so a restart does not compile again (Cranelift takes 30 ms for a small Rust policy and
//! seconds for a JavaScript or Python engine; loading a cached compilation takes
//! milliseconds).
//!
//! **Trust boundary.** A cached artifact is machine code the gateway maps executable: whoever
//! can write it runs code inside the gateway, outside every sandbox. So an artifact is trusted
//! only if this gateway made it:
//!
//! - The cache is a private directory (created `0700`, owned by the gateway's user, not
//!   writable by anyone else; by default under the user's cache directory, never in the
//!   plugins folder). A cache directory, key or artifact owned by someone else, or open to
//!   other users, is not used.
//! - Every artifact carries an HMAC-SHA256 tag under a 256-bit key that only the gateway
//!   reads (`<cache>/key`, `0600`, created on first use). The tag covers the artifact's bytes
//!   *and* its identity (the SHA-256 of the `.wasm` it was compiled from and the engine
//!   fingerprint), so a tampered, truncated, planted or swapped artifact (another plugin's
//!   compilation copied under this one's name) fails the check.
//! - The check runs on a copy of the file read into the gateway's own memory, and that copy
//!   is what wasmtime deserializes (into code memory it owns): changing the file afterwards,
//!   even while the gateway runs, cannot change the code it runs.
//!
//! An artifact that fails is logged, deleted and compiled again from its `.wasm`; the plugin
//! loads as if the cache were empty.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use wasmtime::Engine;
use wasmtime::component::Component;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of the tag in front of every artifact.
const TAG_LEN: usize = 32;
/// What the tag binds besides the bytes: a change of format starts a new domain.
const DOMAIN: &[u8] = b"portcullis compile cache v1\0";
/// The largest artifact read back (the biggest guests, Python engines, compile to ~60 MiB).
const MAX_ARTIFACT: u64 = 1 << 30;

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create or read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(
        "{0} is not private to this user ({1}); the compile cache holds native code, so it must be owned by the gateway's user and closed to others (chmod 700, or choose another [policy] cache)"
    )]
    NotPrivate(PathBuf, String),
}

/// An open compile cache: its directory and the key that authenticates its artifacts.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// Opens (creating if needed) the cache at `dir`, with its key.
    pub fn open(dir: &Path) -> Result<Self, CacheError> {
        let io = |e| CacheError::Io(dir.to_path_buf(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        private(dir, true)?;
        let key = read_or_make_key(&dir.join("key"))?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, sha256: &str, fingerprint: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{fingerprint}.cwasm"))
    }

    fn tag(&self, sha256: &str, fingerprint: &str, code: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(DOMAIN);
        mac.update(sha256.as_bytes());
        mac.update(b"\0");
        mac.update(fingerprint.as_bytes());
        mac.update(b"\0");
        mac.update(code);
        mac
    }

    /// The compilation of the `.wasm` whose SHA-256 is `sha256`, if the cache holds one this
    /// gateway made. A file that fails authentication is logged, deleted and reported as a
    /// miss.
    pub fn load(&self, engine: &Engine, sha256: &str, fingerprint: &str) -> Option<Component> {
        let path = self.path(sha256, fingerprint);
        let meta = fs::symlink_metadata(&path).ok()?;
        let refuse = |why: &str| {
            tracing::error!(
                file = %path.display(), reason = why,
                "compile cache entry refused (not made by this gateway: tampered, truncated, swapped or planted); compiling the plugin again"
            );
            let _ = fs::remove_file(&path);
            None
        };
        if !meta.file_type().is_file() {
            return refuse("not a regular file");
        }
        if meta.len() > MAX_ARTIFACT || meta.len() < TAG_LEN as u64 {
            return refuse("size out of bounds");
        }
        // Read into memory the gateway owns: what is checked is what is deserialized.
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a compile cache entry; compiling again");
                return None;
            }
        };
        let (tag, code) = bytes.split_at(TAG_LEN.min(bytes.len()));
        if self
            .tag(sha256, fingerprint, code)
            .verify_slice(tag)
            .is_err()
        {
            return refuse("authentication tag does not match");
        }
        // SAFETY: `code` is exactly what `store` serialized with this engine's fingerprint
        // (the HMAC under the gateway's private key proves it), read into memory no one
        // else can change; wasmtime copies it into code memory of its own.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %format!("{e:#}"), "authentic compile cache entry does not load; compiling again");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes `component`'s compilation with its tag (write, then rename: a concurrent
    /// reader never sees half a file). A failure is logged; the plugin still runs.
    pub fn store(&self, component: &Component, sha256: &str, fingerprint: &str) {
        let path = self.path(sha256, fingerprint);
        let written = component
            .serialize()
            .map_err(|e| e.to_string())
            .and_then(|code| {
                let tag = self.tag(sha256, fingerprint, &code).finalize().into_bytes();
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| e.to_string())?;
                file.write_all(&tag)
                    .and_then(|()| file.write_all(&code))
                    .map_err(|e| e.to_string())?;
                fs::rename(&tmp, &path).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "could not write the compile cache");
        }
    }
}

/// Checks that `path` is owned by this user and closed to others. A directory the gateway
/// owns but left open (an older gateway, a umask) is closed with chmod 700.
fn private(path: &Path, is_dir: bool) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(|e| CacheError::Io(path.to_path_buf(), e))?;
    let not_private = |why: String| Err(CacheError::NotPrivate(path.to_path_buf(), why));
    if meta.file_type().is_symlink() {
        return not_private("a symbolic link".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return not_private(format!(
            "owned by uid {}, the gateway runs as {me}",
            meta.uid()
        ));
    }
    let open_to_others = meta.mode() & 0o077;
    if open_to_others != 0 {
        if !is_dir {
            return not_private(format!("mode {:o}", meta.mode() & 0o777));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| CacheError::Io(path.to_path_buf(), e))?;
    }
    Ok(())
}

/// The cache key at `path`, made (32 random bytes, `0600`) if there is none. Two gateways
/// starting together agree: the key is written to a temporary file and linked into place,
/// which fails if the other was first, and then the other's key is read.
fn read_or_make_key(path: &Path) -> Result<[u8; 32], CacheError> {
    let io = |e| CacheError::Io(path.to_path_buf(), e);
    for _ in 0..2 {
        match fs::symlink_metadata(path) {
            Ok(_) => {
                private(path, false)?;
                let bytes = fs::read(path).map_err(io)?;
                return <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                    CacheError::NotPrivate(
                        path.to_path_buf(),
                        format!("{} bytes, not a 32-byte key", bytes.len()),
                    )
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                let _ = fs::remove_file(&tmp);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(io)?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                let linked = fs::hard_link(&tmp, path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => return Ok(key),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        }
    }
    Err(io(std::io::Error::other("the key file keeps changing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_cache_is_private_and_keeps_its_key() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-cache-test-{}", rand::random::<u64>()));
        let cache = CompileCache::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("key")), 0o600);
        let again = CompileCache::open(&dir).unwrap();
        assert_eq!(cache.key, again.key, "the key survives a restart");

        // Opened up by someone: the directory is closed again, a readable key is refused.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        CompileCache::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        fs::set_permissions(dir.join("key"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = CompileCache::open(&dir).unwrap_err().to_string();
        assert!(
            err.contains("not private") && err.contains("mode 644"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_tag_binds_the_bytes_and_the_identity() {
        let cache = CompileCache {
            dir: PathBuf::new(),
            key: [7; 32],
        };
        let tag = cache.tag("aa", "fp", b"code").finalize().into_bytes();
        assert!(cache.tag("aa", "fp", b"code").verify_slice(&tag).is_ok());
        assert!(cache.tag("aa", "fp", b"cod").verify_slice(&tag).is_err());
        assert!(cache.tag("ab", "fp", b"code").verify_slice(&tag).is_err());
        assert!(cache.tag("aa", "fq", b"code").verify_slice(&tag).is_err());
        let other = CompileCache {
            dir: PathBuf::new(),
            key: [8; 32],
        };
        assert!(other.tag("aa", "fp", b"code").verify_slice(&tag).is_err());
    }
}
