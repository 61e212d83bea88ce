//! `cargo xtask bench`: builds the benchmark and the `netpage` binary in release and runs
//! the benchmark; it writes `target/bench/report.json` and `report.md` and prints them.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::Result;

use crate::{cmd, toolchain::BuildEnv};

/// Runs the benchmark binary of the tests crate, in full or (with `smoke`) briefly, all
/// its default parts or only `parts`, with `rounds` of each live migration if given.
pub fn run(env: &BuildEnv, smoke: bool, parts: &[String], rounds: Option<u32>) -> Result<()> {
    cmd::require_root(
        "the benchmark loads XDP programs and builds network namespaces and bpffs mounts",
    )?;
    // The benchmark times target/release/netpage, which it finds next to itself.
    cmd::build_release_netpage(env)?;
    let out = target_dir().join("bench");
    let out = out.to_string_lossy();
    let mut args = vec!["--out", &*out];
    if smoke {
        args.push("--smoke");
    }
    let only = parts.join(",");
    if !parts.is_empty() {
        args.extend(["--only", &only]);
    }
    let rounds = rounds.map(|n| n.to_string());
    if let Some(n) = &rounds {
        args.extend(["--rounds", n]);
    }
    cmd::run_release_tool(env, "netpage-bench", &args)
}

/// The workspace's target directory (`CARGO_TARGET_DIR` if set).
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("xtask lives in the workspace")
                .join("target")
        })
}
