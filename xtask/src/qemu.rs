//! QEMU for the guests of the migration tests, set up without removing any package. In
//! this order: the user's own QEMU (`NETPAGE_QEMU`, or `qemu-system-x86_64` on PATH);
//! else Debian's `qemu-system-x86` if apt can install it without removals; else that
//! package's files unpacked under a private prefix with `dpkg-deb -x`, dpkg's state left
//! untouched, and only the shared libraries it needs installed through apt. The last case
//! is a machine with a newer `qemu-utils` (from backports), which Debian 12's QEMU breaks.
//! The tests run that QEMU with its own data files (`-L PREFIX/usr/share/qemu`; it also
//! looks for its firmware and modules relative to its binary).

use std::{
    env, fs,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    apt, cmd,
    qemu_location::{PRIVATE_BINARY, PRIVATE_PREFIX, QEMU_ENV, QEMU_NAME},
};

/// The Debian package of the emulator.
const PACKAGE: &str = "qemu-system-x86";
/// The packages whose files make the private QEMU: the emulator, its modules, its data
/// files, and its firmware (BIOS and network option ROMs).
const UNPACKED: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
    "ipxe-qemu",
];
/// The packages whose `Depends` name the shared libraries to install.
const LINKED_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common"];
/// The files under the prefix that must find every library: the emulator and the TCG
/// accelerator, which QEMU loads as a module.
const LINKED_FILES: &[&str] = &[
    PRIVATE_BINARY,
    "usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so",
];
/// The file under the prefix that records the unpacked version of [`PACKAGE`].
const VERSION_FILE: &str = "qemu-system-x86.version";

/// Makes a QEMU available (idempotently); returns the environment variable that names it
/// when the tests would not find it on PATH.
pub fn ensure() -> Result<Option<(&'static str, String)>> {
    if let Some(own) = env::var_os(QEMU_ENV) {
        if !cmd::succeeds(Command::new(&own).arg("--version")) {
            bail!(
                "{QEMU_ENV}={} does not run (`--version` fails)",
                own.display()
            );
        }
        eprintln!("setup: QEMU is {} ({QEMU_ENV})", own.display());
        return Ok(None);
    }
    if cmd::succeeds(Command::new(QEMU_NAME).arg("--version")) {
        eprintln!("setup: QEMU present ({QEMU_NAME} on PATH)");
        return Ok(None);
    }
    let version = candidate_version()?;
    let removed = apt::removals(&[PACKAGE])?;
    if removed.is_empty() {
        require_root(&format!("installing {PACKAGE}"))?;
        eprintln!("setup: installing {PACKAGE}");
        apt::update()?;
        apt::install(&[PACKAGE])?;
        return Ok(None);
    }
    let binary = ensure_private(&version, &removed)?;
    Ok(Some((QEMU_ENV, binary.display().to_string())))
}

/// The version of [`PACKAGE`] apt would install, refreshing the package lists if apt knows
/// none.
fn candidate_version() -> Result<String> {
    if let Some(version) = apt::candidate_field(PACKAGE, "Version") {
        return Ok(version);
    }
    apt::update()?;
    apt::candidate_field(PACKAGE, "Version").with_context(|| {
        format!("apt knows no {PACKAGE} (is Debian's main archive in its sources?)")
    })
}

/// QEMU `version` unpacked under the private prefix, unpacking apt's candidate (after
/// refreshing the package lists) unless that version is there and works; returns the
/// binary.
fn ensure_private(version: &str, removed: &[String]) -> Result<PathBuf> {
    let prefix = Path::new(PRIVATE_PREFIX);
    let binary = prefix.join(PRIVATE_BINARY);
    let recorded = fs::read_to_string(prefix.join(VERSION_FILE)).ok();
    if recorded.as_deref() == Some(version) && check(prefix).is_ok() {
        eprintln!("setup: QEMU {version} present, unpacked under {PRIVATE_PREFIX}");
        return Ok(binary);
    }
    eprintln!(
        "setup: {PACKAGE} from apt would remove {}, so QEMU {} is unpacked privately under \
         {PRIVATE_PREFIX} (dpkg-deb -x; only its libraries are installed through apt)",
        removed.join(" "),
        upstream(version)
    );
    require_root(&format!("unpacking QEMU under {PRIVATE_PREFIX}"))?;
    apt::update()?;
    install_libraries()?;
    unpack(prefix, &candidate_version()?)?;
    check(prefix)?;
    Ok(binary)
}

/// The upstream part of a Debian version (`1:7.2+dfsg-7+deb12u18` -> `7.2`).
fn upstream(version: &str) -> &str {
    let version = version.split_once(':').map_or(version, |(_, v)| v);
    version.split(['+', '-', '~']).next().unwrap_or(version)
}

/// Fails unless running as root, saying that `what` needs it.
fn require_root(what: &str) -> Result<()> {
    cmd::require_root(&format!(
        "{what} (or point {QEMU_ENV} at a QEMU of your own)"
    ))
}

/// Installs through apt, removing nothing, the libraries that the unpacked packages
/// depend on: the candidate's `Depends` of [`LINKED_PACKAGES`], less what is unpacked
/// itself and less any library whose install would remove a package.
fn install_libraries() -> Result<()> {
    let mut wanted: Vec<String> = Vec::new();
    for package in LINKED_PACKAGES {
        for alternatives in apt::candidate_depends(package)? {
            if alternatives.iter().any(|p| apt::installed(p)) {
                continue;
            }
            if let Some(first) = alternatives.into_iter().find(|p| !is_unpacked(p))
                && !wanted.contains(&first)
            {
                wanted.push(first);
            }
        }
    }
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let libraries = without_removals(&wanted)?;
    if libraries.is_empty() {
        return Ok(());
    }
    eprintln!(
        "setup: installing the libraries QEMU needs: {}",
        libraries.join(" ")
    );
    apt::install(&libraries)
}

/// Whether `package` is part of the private QEMU rather than a library to install.
fn is_unpacked(package: &str) -> bool {
    package.starts_with("qemu-") || UNPACKED.contains(&package)
}

/// Those of `packages` that apt installs without removing anything (all of them when
/// together they remove nothing), saying which are left out and why.
fn without_removals<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>> {
    if packages.is_empty() || apt::removals(packages)?.is_empty() {
        return Ok(packages.to_vec());
    }
    let mut kept = Vec::new();
    for &package in packages {
        match apt::removals(&[package]) {
            Ok(removed) if removed.is_empty() => kept.push(package),
            Ok(removed) => eprintln!(
                "setup: not installing {package}: it would remove {}",
                removed.join(" ")
            ),
            Err(e) => eprintln!("setup: not installing {package}: {e:#}"),
        }
    }
    Ok(kept)
}

/// Downloads [`UNPACKED`] and unpacks them into a fresh `prefix`, recording `version`.
/// The files are unpacked beside it first, so a failure leaves any earlier QEMU in place.
fn unpack(prefix: &Path, version: &str) -> Result<()> {
    let staging = prefix.with_extension("new");
    let debs = staging.with_extension("debs");
    for dir in [&staging, &debs] {
        remove_dir(dir)?;
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    apt::download(UNPACKED, &debs)?;
    for deb in fs::read_dir(&debs).with_context(|| format!("read {}", debs.display()))? {
        let deb = deb
            .with_context(|| format!("read {}", debs.display()))?
            .path();
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    }
    remove_dir(&debs)?;
    make_links_relative(&staging)?;
    fs::write(staging.join(VERSION_FILE), version)
        .with_context(|| format!("write {}", staging.join(VERSION_FILE).display()))?;
    remove_dir(prefix)?;
    fs::rename(&staging, prefix)
        .with_context(|| format!("rename {} to {}", staging.display(), prefix.display()))
}

/// Removes `dir` and everything in it, if it exists.
fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Calls `f` on every symlink under `dir`, recursively (links are not followed).
fn for_each_link(dir: &Path, f: &mut impl FnMut(&Path) -> Result<()>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("read {}", dir.display()))?
            .path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        if meta.is_dir() {
            for_each_link(&path, f)?;
        } else if meta.file_type().is_symlink() {
            f(&path)?;
        }
    }
    Ok(())
}

/// Re-points every absolute symlink under `root` (the unpacked tree) at the same path
/// inside `root`, relatively, so that the tree's links never leave it.
fn make_links_relative(root: &Path) -> Result<()> {
    for_each_link(root, &mut |path| {
        let target = fs::read_link(path).with_context(|| format!("read {}", path.display()))?;
        if target.is_absolute() {
            let depth = path.strip_prefix(root)?.components().count() - 1;
            let inside: PathBuf = std::iter::repeat_n(Component::ParentDir.as_os_str(), depth)
                .collect::<PathBuf>()
                .join(target.strip_prefix("/")?);
            fs::remove_file(path).with_context(|| format!("remove {}", path.display()))?;
            std::os::unix::fs::symlink(&inside, path)
                .with_context(|| format!("link {} to {}", path.display(), inside.display()))?;
        }
        Ok(())
    })
}

/// Checks the QEMU under `prefix`: the binary runs, the binary and its TCG module find every
/// library, and every symlink under the prefix resolves inside it.
fn check(prefix: &Path) -> Result<()> {
    let binary = prefix.join(PRIVATE_BINARY);
    let out = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for file in LINKED_FILES {
        check_libraries(&prefix.join(file))?;
    }
    let root = fs::canonicalize(prefix).with_context(|| format!("resolve {}", prefix.display()))?;
    check_links(&root)
}

/// Fails, naming them, if `ldd` finds libraries of `file` missing.
fn check_libraries(file: &Path) -> Result<()> {
    let listed = cmd::output(Command::new("ldd").arg(file))
        .with_context(|| format!("ldd {} failed", file.display()))?;
    let missing: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("not found"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} needs libraries that are not installed: {} (install the packages that \
             provide them with `apt-get install --no-remove`)",
            file.display(),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Fails unless every symlink under `root` resolves to a file inside `root`.
fn check_links(root: &Path) -> Result<()> {
    for_each_link(root, &mut |path| {
        let resolved = fs::canonicalize(path).ok();
        if !resolved.is_some_and(|r| r.starts_with(root)) {
            bail!(
                "the symlink {} does not resolve inside {}",
                path.display(),
                root.display()
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_version_drops_epoch_and_debian_revision() {
        assert_eq!(upstream("1:7.2+dfsg-7+deb12u18+b3"), "7.2");
        assert_eq!(upstream("1.16.2-1"), "1.16.2");
    }

    #[test]
    fn absolute_links_are_made_to_resolve_inside_the_tree() {
        let root = env::temp_dir().join(format!("xtask-links-{}", std::process::id()));
        let qemu = root.join("usr/share/qemu");
        let seabios = root.join("usr/share/seabios");
        fs::create_dir_all(&qemu).unwrap();
        fs::create_dir_all(&seabios).unwrap();
        fs::write(seabios.join("bios-256k.bin"), "bios").unwrap();
        let link = qemu.join("bios-256k.bin");
        std::os::unix::fs::symlink("/usr/share/seabios/bios-256k.bin", &link).unwrap();

        make_links_relative(&root).unwrap();
        let root = fs::canonicalize(&root).unwrap();
        let checked = check_links(&root);
        let target = fs::read_link(&link).unwrap();
        fs::remove_dir_all(&root).unwrap();

        checked.unwrap();
        assert_eq!(
            target,
            Path::new("../../../usr/share/seabios/bios-256k.bin")
        );
    }

    #[test]
    fn a_link_leaving_the_tree_is_refused() {
        let root = env::temp_dir().join(format!("xtask-escape-{}", std::process::id()));
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("/etc/os-release", root.join("escape")).unwrap();
        let root = fs::canonicalize(&root).unwrap();
        let checked = check_links(&root);
        fs::remove_dir_all(&root).unwrap();
        assert!(checked.is_err());
    }
}
