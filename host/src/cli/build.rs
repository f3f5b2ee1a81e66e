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
    ensure_wasm_target(manifest);
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

/// The target the components build for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Adds the wasm32-wasip2 target when a build command needs it and rustup
/// lacks it. `rust-toolchain.toml` names the target, but rustup adds it
/// only when it installs the toolchain, not to one already installed. Best
/// effort: without rustup the build command's own error says what is wrong.
fn ensure_wasm_target(manifest: &Manifest) {
    let needed = manifest
        .components
        .values()
        .filter_map(|c| c.build.as_ref())
        .any(|b| b.command.contains(WASM_TARGET));
    if !needed {
        return;
    }
    // In the manifest's directory, so its rust-toolchain.toml applies.
    let installed =
        Command::new("rustup").args(["target", "list", "--installed"]).current_dir(&manifest.dir).output();
    let Ok(installed) = installed else { return };
    if !installed.status.success()
        || String::from_utf8_lossy(&installed.stdout).lines().any(|l| l == WASM_TARGET)
    {
        return;
    }
    eprintln!("adding the {WASM_TARGET} target (rustup target add {WASM_TARGET}; once per toolchain)");
    let added =
        Command::new("rustup").args(["target", "add", WASM_TARGET]).current_dir(&manifest.dir).status();
    if !matches!(added, Ok(status) if status.success()) {
        eprintln!("rustup could not add {WASM_TARGET}; the build will say why");
    }
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
