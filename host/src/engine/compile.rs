//! Compiling components, with an on-disk AOT cache keyed by content hash.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::Engine;

/// The hex SHA-256 of a component binary: its version identity.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Engine {
    /// Compiles `bytes` or loads the cached native code for them. Returns
    /// the component and whether the cache served it.
    pub(super) fn compile(&self, bytes: &[u8], digest: &str) -> anyhow::Result<(Component, bool)> {
        // The cache entry must match this exact engine build and settings.
        let mut hasher = DefaultHasher::new();
        self.inner.precompile_compatibility_hash().hash(&mut hasher);
        let path = self.cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()));
        if path.exists() {
            // SAFETY: the cache directory is ours; its files are written below
            // from `Component::serialize` by an engine with the same hash.
            match unsafe { Component::deserialize_file(&self.inner, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring bad cache entry")
                }
            }
        }
        let component = Component::new(&self.inner, bytes)
            .map_err(anyhow::Error::from)
            .context("compiling the component")?;
        if let Err(e) = write_atomically(&path, &component.serialize().map_err(anyhow::Error::from)?) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the compile cache");
        }
        Ok((component, false))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, path)
}
