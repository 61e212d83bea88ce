//! Where QEMU is found: the environment variable that names its binary, and the prefix that
//! `cargo xtask setup` unpacks QEMU under when the distribution's package could be installed
//! only by removing packages. The tests crate and xtask both compile this file (xtask by
//! path), so the prefix is written once.

/// The environment variable that names the QEMU binary to run (xtask sets it to the
/// privately unpacked one).
pub const QEMU_ENV: &str = "NETPAGE_QEMU";
/// The QEMU binary's name, as found on PATH.
pub const QEMU_NAME: &str = "qemu-system-x86_64";
/// The private prefix: the packages' files lie under it as they would under `/`.
pub const PRIVATE_PREFIX: &str = "/var/lib/netpage/qemu";
/// The binary's path under the private prefix.
pub const PRIVATE_BINARY: &str = "usr/bin/qemu-system-x86_64";
