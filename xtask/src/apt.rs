//! Debian packages through apt, never removing one: every install runs with `--no-remove`,
//! and a refused install names the packages it would have removed.

use std::{
    path::Path,
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

/// A field (`Version`, `Depends`, ...) of the version of `package` that apt would install,
/// if apt knows the package and the record has the field.
pub fn candidate_field(package: &str, field: &str) -> Option<String> {
    let record =
        cmd::output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    let mut lines = record.lines().take_while(|l| !l.is_empty());
    let first = lines.find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let continued = lines.take_while(|l| l.starts_with([' ', '\t']));
    Some(
        std::iter::once(first)
            .chain(continued)
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_owned(),
    )
}

/// The candidate's `Depends` of `package`: one entry per dependency, listing its
/// alternatives by name (versions and architecture qualifiers dropped).
pub fn candidate_depends(package: &str) -> Result<Vec<Vec<String>>> {
    let field = candidate_field(package, "Depends")
        .with_context(|| format!("`apt-cache show {package}` gives no Depends"))?;
    Ok(parse_depends(&field))
}

/// The package names in a `Depends` field, one list of alternatives per dependency.
fn parse_depends(field: &str) -> Vec<Vec<String>> {
    field
        .split(',')
        .map(|dependency| {
            dependency
                .split('|')
                .filter_map(|alternative| alternative.split_whitespace().next())
                .map(|name| name.split(':').next().unwrap_or(name).to_owned())
                .collect()
        })
        .collect()
}

/// Downloads the candidate `.deb` of each of `packages` into `dir` (root's), installing
/// nothing.
pub fn download(packages: &[&str], dir: &Path) -> Result<()> {
    cmd::run(
        Command::new("apt-get")
            // apt's unprivileged user cannot write to `dir`: download as root, as apt would
            // anyway after a warning.
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .args(packages)
            .current_dir(dir),
    )
    .with_context(|| format!("downloading {}", packages.join(" ")))
}

/// `apt-get`, never asking questions.
fn apt_get() -> Command {
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive");
    apt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_lists_names_without_versions_or_architectures() {
        let parsed = parse_depends(
            "libaio1 (>= 0.3.93), libc6:any (>= 2.34), qemu-system-data (>> 1:7.2+dfsg~), \
             default-mta | mail-transport-agent, seabios",
        );
        assert_eq!(
            parsed,
            [
                vec!["libaio1"],
                vec!["libc6"],
                vec!["qemu-system-data"],
                vec!["default-mta", "mail-transport-agent"],
                vec!["seabios"],
            ]
        );
    }
}
