//! On-disk cache of compiled guest components.
//!
//! Compiling a component with Cranelift takes tens of milliseconds to
//! seconds; loading a cached compilation takes well under a millisecond. The
//! cache key covers the component's bytes and everything about the engine
//! that affects the machine code (wasmtime's version and configuration), so
//! a host upgrade or config change simply misses.
//!
//! Safety: [`wasmtime::component::Component::deserialize_file`] trusts its
//! input completely. Artifacts are only ever read from the host-owned cache
//! directory (mode 0700) that this module writes, never from guests or the
//! network.

use crate::state::fsutil;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a compiled artifact on disk.
    Hit,
    /// Compiled now (and stored, when the cache is enabled).
    Compiled,
}

#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
}

impl CompileCache {
    /// A cache in `dir`, or no caching at all when `None`.
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            fsutil::ensure_dir(dir, 0o700)?;
            fsutil::remove_stale_temp_files(dir, |t| t.ends_with(".cwasm"))?;
        }
        Ok(Self { dir })
    }

    /// Load the compiled form of `bytes` (whose SHA-256 is `digest`),
    /// compiling and storing it on a miss.
    pub fn load(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let loaded = self.load_or_compile(engine, digest, bytes);
        if matches!(loaded, Ok((_, CacheOutcome::Compiled)) | Err(_)) {
            release_compiler_memory();
        }
        loaded
    }

    fn load_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(path) = self.artifact_path(engine, digest) else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Compiled));
        };
        if path.is_file() {
            // SAFETY: the artifact was produced by `Component::serialize` on an
            // engine with the same compatibility hash (it is in the file
            // name), and lives in the host-owned cache directory (see module docs).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(
                    path = %path.display(), error = %e,
                    "compiled guest cache entry is unusable; compiling again"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(artifact) => {
                if let Err(e) = fsutil::write_atomic(&path, &artifact, 0o600) {
                    tracing::warn!(path = %path.display(), error = %e, "could not store compiled guest");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not serialize compiled guest"),
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn artifact_path(&self, engine: &Engine, digest: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{digest}-{}.cwasm", engine_key(engine))))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }
}

/// Give the heap pages Cranelift used back to the kernel. Compiling a guest
/// allocates tens of MiB on the compiler's threads; freed, they stay in
/// glibc's per-thread arenas, so a host whose first start compiled three
/// guests kept about twice the RSS of one that loaded them from the cache
/// (42 vs 21 MiB, `cargo bench --bench memory`) for as long as it ran.
/// Compiling is rare (a cache miss), so the cost of a trim does not matter.
fn release_compiler_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A short key for the engine's compatibility: the hash wasmtime itself uses
/// to accept or refuse precompiled code (it covers wasmtime's version and the
/// compiler settings), plus this host's version, which pins the wasmtime build.
fn engine_key(engine: &Engine) -> String {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only used through `write`")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.0.finalize()[..8])
}

/// SHA-256 of a component file, hex: the guest's identity everywhere.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
