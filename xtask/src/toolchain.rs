//! Bringing a machine to a state that builds the XDP program, and the environment the
//! build then needs.
//!
//! Two ways are supported, tried in this order:
//! 1. rustup's `nightly` with `rust-src` (a typical developer machine): aya-build compiles
//!    `core` for the BPF target with `-Z build-std`; bpf-linker comes from crates.io.
//! 2. Debian 12 as root: Debian's Rust 1.96 ships a prebuilt `core` for `bpfel-unknown-none`
//!    and LLVM 22; bpf-linker is built against that LLVM; the toolchain is registered with
//!    rustup (if present) so that aya-build can select it.
//!
//! Every step checks first and installs only what is missing, saying what it installs.
//! Nothing is ever removed: apt runs with `--no-remove`, and QEMU is unpacked privately
//! when Debian's package would replace a newer `qemu-utils` (see `qemu`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{apt, cmd, libvirt, qemu};

/// Debian packages: Rust with a prebuilt `core` for BPF, LLVM 22 for bpf-linker, the
/// tools the tests and the demo drive, etcd (the directory), protoc (the etcd-client crate's
/// build), openssl (test certificates), Python's Prometheus client (its OpenMetrics parser
/// checks the metrics the tests scrape), and what builds the tiny guest (busybox, cpio; the
/// guest kernel is fetched with `apt-get download`). QEMU is set up apart (see `qemu`).
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "libllvm22",
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "util-linux",
    "nftables",
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    "openssl",
    "python3-prometheus-client",
    "busybox-static",
    "cpio",
];

/// The bpf-linker release that matches LLVM 22 and Rust 1.96.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The rustup name under which Debian's toolchain is registered.
const DEBIAN_TOOLCHAIN: &str = "netpage-bpf";
/// Where Debian's LLVM 22 lives.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// How to invoke cargo for this workspace once the machine is set up.
pub struct BuildEnv {
    cargo: PathBuf,
    vars: Vec<(&'static str, String)>,
}

impl BuildEnv {
    /// The cargo that runs the workspace build (the one that runs this task).
    pub fn cargo(&self) -> &Path {
        &self.cargo
    }

    /// Environment variables the build needs.
    pub fn vars(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.vars.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

/// Sets the machine up (idempotently) and returns the build environment.
pub fn setup() -> Result<BuildEnv> {
    let cargo = PathBuf::from(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if nightly_has_rust_src() {
        eprintln!("setup: using rustup's nightly toolchain with rust-src for the XDP program");
        ensure_bpf_linker(&cargo, &[])?;
        return Ok(BuildEnv {
            cargo,
            vars: vec![("NETPAGE_BPF_TOOLCHAIN", "nightly".into())],
        });
    }
    if !is_debian_12() {
        bail!(
            "cannot build the XDP program here: install rustup's nightly toolchain with \
             rust-src (`rustup toolchain install nightly --component rust-src`) and \
             bpf-linker (`cargo install bpf-linker`), or use Debian 12"
        );
    }
    eprintln!("setup: using Debian's Rust toolchain (prebuilt core for bpfel) for the XDP program");
    ensure_debian_packages()?;
    let qemu = qemu::ensure()?;
    libvirt::ensure()?;
    ensure_bpf_linker(&cargo, &["--no-default-features", "--features", "llvm-22"])?;
    let mut vars = vec![
        // aya-ebpf uses `asm_experimental_arch`; allow unstable features for that crate only.
        ("RUSTC_BOOTSTRAP", "aya_ebpf".to_string()),
    ];
    vars.extend(qemu);
    if cmd::succeeds(Command::new("rustup").arg("--version")) {
        ensure_rustup_link()?;
        vars.push(("NETPAGE_BPF_TOOLCHAIN", DEBIAN_TOOLCHAIN.into()));
    }
    Ok(BuildEnv { cargo, vars })
}

fn nightly_has_rust_src() -> bool {
    cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .map(|s| Path::new(s.trim()).join("lib/rustlib/src/rust/library/Cargo.lock"))
        .is_some_and(|p| p.exists())
}

fn is_debian_12() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|s| {
        s.lines().any(|l| l.trim() == "VERSION_ID=\"12\"") && s.contains("ID=debian")
    })
}

fn ensure_debian_packages() -> Result<()> {
    let missing = apt::missing(DEBIAN_PACKAGES);
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if cmd::require_root("installing Debian packages").is_err() {
        bail!(
            "missing Debian packages {}: run as root, or install them with \
             `apt-get install --no-install-recommends --no-remove {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    apt::update()?;
    apt::install(&missing)
}

/// Installs bpf-linker with `features` unless the right version is on PATH.
fn ensure_bpf_linker(cargo: &Path, features: &[&str]) -> Result<()> {
    let version = cmd::output(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} from crates.io (1-2 minutes)");
    let build_dir = env::temp_dir().join("netpage-bpf-linker-build");
    let result = cmd::run(
        Command::new(cargo)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(features)
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("CARGO_TARGET_DIR", &build_dir),
    );
    // The build directory is several hundred megabytes; nothing in it is needed later.
    let _ = std::fs::remove_dir_all(&build_dir);
    result.context("installing bpf-linker")?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!(
            "bpf-linker was installed but is not on PATH: add cargo's bin directory (~/.cargo/bin) to PATH"
        );
    }
    Ok(())
}

/// Registers Debian's toolchain with rustup so that aya-build can select it by name.
fn ensure_rustup_link() -> Result<()> {
    let listed =
        cmd::output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some(DEBIAN_TOOLCHAIN))
    {
        return Ok(());
    }
    eprintln!("setup: registering Debian's toolchain with rustup as `{DEBIAN_TOOLCHAIN}`");
    cmd::run(Command::new("rustup").args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"]))
}
