//! libvirt for the test of netpage's libvirt hook and follower (a live migration with
//! `virsh migrate --live` between two libvirtds): Debian's daemon, its QEMU driver and
//! virsh, installed without recommends and without removing any package, and the user
//! Debian's libvirtd is built to run QEMU as. That user comes with libvirt-daemon-system,
//! which the tests do not need (it brings systemd units and a default network, and would
//! upgrade systemd); without it libvirtd refuses to start, even when qemu.conf says root.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{apt, cmd};

/// The packages: the daemon, its QEMU driver, and virsh.
const PACKAGES: &[&str] = &[
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
];
/// The user (and group) Debian's libvirt runs QEMU as by default.
const QEMU_USER: &str = "libvirt-qemu";

/// Installs the packages and creates the user, if missing (idempotently).
pub fn ensure() -> Result<()> {
    let missing = apt::missing(PACKAGES);
    let user = cmd::succeeds(Command::new("getent").args(["passwd", QEMU_USER]));
    if missing.is_empty() && user {
        eprintln!("setup: libvirt present");
        return Ok(());
    }
    if cmd::require_root("setting up libvirt").is_err() {
        bail!(
            "libvirt is not set up (missing packages: {}; user {QEMU_USER}: {}): run setup as \
             root, or install them with `apt-get install --no-install-recommends --no-remove \
             {}` and `useradd --system --user-group --no-create-home --home-dir \
             /var/lib/libvirt --shell /usr/sbin/nologin {QEMU_USER}`",
            if missing.is_empty() {
                "none".to_owned()
            } else {
                missing.join(" ")
            },
            if user { "present" } else { "missing" },
            PACKAGES.join(" ")
        );
    }
    if !missing.is_empty() {
        eprintln!("setup: installing libvirt: {}", missing.join(" "));
        apt::update()?;
        apt::install(&missing)?;
    }
    if !user {
        eprintln!("setup: creating the system user {QEMU_USER} that libvirtd requires");
        cmd::run(Command::new("useradd").args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/var/lib/libvirt",
            "--shell",
            "/usr/sbin/nologin",
            QEMU_USER,
        ]))?;
    }
    Ok(())
}
