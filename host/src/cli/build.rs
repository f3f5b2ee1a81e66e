//! `payfn build`: runs each component's `[component.NAME.build]` command.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use super::AppArgs;
use crate::manifest::Manifest;

pub fn run(args: &AppArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    build_all(&manifest)
}

/// Builds every component that has a build command, in manifest order,
/// stopping at the first failure.
pub fn build_all(manifest: &Manifest) -> anyhow::Result<()> {
    let total = manifest.components.values().filter(|c| c.build.is_some()).count();
    let started = Instant::now();
    for (i, (name, component)) in manifest.components.iter().enumerate() {
        let Some(build) = &component.build else {
            continue;
        };
        eprintln!("[{}/{total}] building {name}: {}", i + 1, build.command);
        build_one(manifest, name)?;
    }
    eprintln!("built {total} components in {:.1?}", started.elapsed());
    Ok(())
}

/// Runs component `name`'s build command (nothing if it has none).
pub fn build_one(manifest: &Manifest, name: &str) -> anyhow::Result<()> {
    let Some(build) = manifest.components.get(name).and_then(|c| c.build.as_ref()) else {
        return Ok(());
    };
    let workdir = manifest.dir.join(build.workdir.clone().unwrap_or_default());
    let status =
        Command::new("sh").arg("-c").arg(&build.command).current_dir(&workdir).status().with_context(
            || format!("component `{name}`: cannot run its build command in {}", workdir.display()),
        )?;
    if !status.success() {
        bail!("component `{name}`: build command `{}` failed ({status})", build.command);
    }
    Ok(())
}
