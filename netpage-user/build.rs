//! Builds the XDP program for the BPF target and places the object in OUT_DIR.
//!
//! The toolchain defaults to rustup's `nightly` (with rust-src, for `-Z build-std`).
//! `NETPAGE_BPF_TOOLCHAIN` names another rustup toolchain, such as a distribution rustc with
//! a prebuilt `core` for bpfel that `cargo xtask setup` links; `cargo xtask` sets it.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETPAGE_BPF_TOOLCHAIN");
    let name = std::env::var("NETPAGE_BPF_TOOLCHAIN").ok();
    let toolchain = match name.as_deref() {
        None | Some("" | "nightly") => Toolchain::Nightly,
        Some(name) => Toolchain::Custom(name),
    };
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../netpage-ebpf");
    // aya-build watches the eBPF crate; the program also compiles the shared crate in.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../netpage-common")
    );
    aya_build::build_ebpf(
        [Package {
            name: "netpage-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
}
