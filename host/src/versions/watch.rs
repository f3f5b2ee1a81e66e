//! `payfn up --watch`: when a file matching a component's `watch` globs
//! changes, run its build command and swap the new binary in, the way a
//! deploy does. The host keeps running and keeps its connections; only the
//! rebuilt component changes. (Spin's `spin watch` restarts the whole app.)
//!
//! Only the literal directories the globs start with are watched (say
//! `functions/authorize/src`), never the whole tree: `target/` alone holds
//! thousands of directories that churn on every build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{RecursiveMode, Watcher};

use super::store::Origin;
use super::Versions;
use crate::manifest::Manifest;

/// Changes closer together than this make one rebuild (an editor's save is
/// often several events).
const DEBOUNCE: Duration = Duration::from_millis(300);
/// A steady stream of changes still gets built after this long.
const MAX_GATHER: Duration = Duration::from_secs(2);

/// What one component watches.
struct Watched {
    component: String,
    base: PathBuf,
    globs: GlobSet,
}

/// Starts watching; the returned watcher must be kept alive.
pub fn start(
    manifest: Manifest,
    versions: Arc<Versions>,
) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    let mut watched = Vec::new();
    // Directories watched with everything below them, and directories
    // watched alone (those holding a file a glob names literally).
    let mut roots = BTreeSet::new();
    let mut file_dirs = BTreeSet::new();
    for (name, component) in &manifest.components {
        let Some(build) = &component.build else { continue };
        if build.watch.is_empty() {
            continue;
        }
        let base = manifest.dir.join(build.workdir.clone().unwrap_or_default());
        let base = base.canonicalize().unwrap_or(base);
        let mut set = GlobSetBuilder::new();
        for pattern in &build.watch {
            set.add(
                Glob::new(pattern).with_context(|| format!("component `{name}`: watch glob `{pattern}`"))?,
            );
            let root = base.join(literal_prefix(pattern));
            if root.is_file() {
                // A glob naming one file: watch its directory, not the file.
                // Editors save by writing a new file and renaming it over
                // the old one, which would end a watch on the old inode.
                if let Some(dir) = root.parent() {
                    file_dirs.insert(dir.to_path_buf());
                }
            } else if root.exists() {
                roots.insert(root);
            } else {
                // Watching an ancestor instead could mean the whole tree.
                eprintln!("  watch           {name}: `{}` does not exist; not watched", root.display());
            }
        }
        watched.push(Watched { component: name.clone(), base, globs: set.build()? });
    }
    if watched.is_empty() {
        eprintln!("  watch           no component has `watch` globs; nothing to watch");
        return Ok(None);
    }
    // Matching happens here, on notify's thread: only changes that concern a
    // component reach the rebuild loop (the watched directories may hold
    // other busy files).
    let watched = Arc::new(watched);
    let matcher = watched.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(String, PathBuf)>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !(event.kind.is_create() || event.kind.is_modify() || event.kind.is_remove()) {
            return;
        }
        for path in &event.paths {
            for w in matcher.iter() {
                if let Ok(relative) = path.strip_prefix(&w.base) {
                    if w.globs.is_match(relative) {
                        let _ = tx.send((w.component.clone(), relative.to_path_buf()));
                    }
                }
            }
        }
    })?;
    // A root inside another is covered by the outer one.
    let roots: Vec<PathBuf> =
        roots.iter().filter(|r| !roots.iter().any(|o| o != *r && r.starts_with(o))).cloned().collect();
    let file_dirs: Vec<PathBuf> =
        file_dirs.into_iter().filter(|d| !roots.iter().any(|r| d.starts_with(r))).collect();
    let modes = roots
        .iter()
        .map(|r| (r, RecursiveMode::Recursive))
        .chain(file_dirs.iter().map(|d| (d, RecursiveMode::NonRecursive)));
    for (dir, mode) in modes {
        watcher.watch(dir, mode).with_context(|| format!("watching {}", dir.display()))?;
    }
    eprintln!(
        "  watch           {} components, {} directories (changes rebuild and swap in place)",
        watched.len(),
        roots.len() + file_dirs.len()
    );
    tokio::spawn(rebuild_loop(manifest, versions, rx));
    Ok(Some(watcher))
}

async fn rebuild_loop(
    manifest: Manifest,
    versions: Arc<Versions>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<(String, PathBuf)>,
) {
    while let Some((component, cause)) = changes.recv().await {
        let mut due: BTreeMap<String, PathBuf> = BTreeMap::from([(component, cause)]);
        // Gather the burst, but never for longer than MAX_GATHER.
        let started = Instant::now();
        while started.elapsed() < MAX_GATHER {
            match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                Ok(Some((component, cause))) => {
                    due.entry(component).or_insert(cause);
                }
                _ => break,
            }
        }
        for (component, cause) in due {
            rebuild(&manifest, &versions, &component, &cause).await;
        }
    }
}

/// Builds `component` and swaps the result in; a failed build or a refused
/// version leaves the running one serving.
async fn rebuild(manifest: &Manifest, versions: &Versions, component: &str, cause: &Path) {
    let started = Instant::now();
    eprintln!("watch: {} changed; rebuilding {component}", cause.display());
    let build = {
        let manifest = manifest.clone();
        let component = component.to_string();
        tokio::task::spawn_blocking(move || crate::cli::build_one(&manifest, &component)).await
    };
    if let Err(e) = build.map_err(anyhow::Error::from).and_then(|r| r) {
        eprintln!("watch: {component}: build failed, the running version keeps serving: {e:#}");
        return;
    }
    let Some(spec) = manifest.component_spec(component) else { return };
    let bytes = match std::fs::read(&spec.source) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("watch: {component}: cannot read {}: {e}", spec.source.display());
            return;
        }
    };
    let result = async {
        let (record, _) = versions.upload(component, bytes, None, "payfn up --watch").await?;
        let report =
            versions.activate(component, &record.digest, Origin::Manifest, "payfn up --watch").await?;
        Ok::<_, super::DeployError>(report)
    }
    .await;
    match result {
        Ok(report) => eprintln!(
            "watch: {component} now serves {} (built and swapped in {:.1?}; previous {})",
            &report.active.digest[..12],
            started.elapsed(),
            report.active.previous_digest.as_deref().map_or("none", |d| &d[..12])
        ),
        Err(e) => eprintln!("watch: {component}: refused, the running version keeps serving: {e}"),
    }
}

/// The directories of `pattern` before its first wildcard.
fn literal_prefix(pattern: &str) -> PathBuf {
    Path::new(pattern)
        .components()
        .take_while(|c| match c {
            Component::Normal(part) => !part.to_string_lossy().contains(['*', '?', '[', '{']),
            _ => true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_stop_at_the_first_wildcard() {
        assert_eq!(
            literal_prefix("functions/authorize/src/**/*.rs"),
            PathBuf::from("functions/authorize/src")
        );
        assert_eq!(literal_prefix("src/lib.rs"), PathBuf::from("src/lib.rs"));
        assert_eq!(literal_prefix("*.rs"), PathBuf::new());
    }
}
