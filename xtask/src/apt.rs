//! Debian packages through apt, never removing one: every install runs with `--no-remove`,
//! and a refused install names the packages it would have removed.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Whether `package` is installed.
pub fn installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Those of `packages` that are not installed.
pub fn missing<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages.iter().copied().filter(|p| !installed(p)).collect()
}

/// Refreshes the package lists, at most once per run.
pub fn update() -> Result<()> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    cmd::run(apt_get().args(["update", "-q"]))
        .context("apt-get update (are the Debian package mirrors reachable?)")?;
    DONE.store(true, Ordering::Relaxed);
    Ok(())
}

/// Installs `packages` without recommends and without removing any package; if apt could
/// install them only by removing some, fails naming those.
pub fn install(packages: &[&str]) -> Result<()> {
    cmd::run(
        apt_get()
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "--no-remove",
            ])
            .args(packages),
    )
    .with_context(|| match removals(packages) {
        Ok(removed) if !removed.is_empty() => format!(
            "installing {} would remove {}, and setup never removes packages: resolve the \
             conflict, then run setup again",
            packages.join(" "),
            removed.join(" ")
        ),
        _ => format!("installing Debian packages {}", packages.join(" ")),
    })
}

/// The packages that installing `packages` (without recommends) would remove, by apt's
/// simulation (`Remv` lines); nothing is changed.
pub fn removals(packages: &[&str]) -> Result<Vec<String>> {
    let out = apt_get()
        .args(["install", "-s", "-q", "--no-install-recommends"])
        .args(packages)
        .output()
        .context("cannot run apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get install -s {} failed: {}",
            packages.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// `apt-get`, never asking questions.
fn apt_get() -> Command {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive");
    apt
}
