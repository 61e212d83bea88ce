//! `cargo xtask demo [--local]`: builds netpage and the demo in release and runs the demo,
//! through the directory on etcd or (`--local`) on the pin directories of one machine.

use anyhow::Result;

use crate::{cmd, toolchain::BuildEnv};

/// Runs the demo. Ctrl-C goes to the demo, which removes its namespaces before it exits;
/// this process waits for that instead of dying first.
pub fn run(env: &BuildEnv, local: bool) -> Result<()> {
    cmd::require_root("the demo creates network namespaces and loads XDP programs")?;
    cmd::build_release_netpage(env)?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: SIG_IGN is a valid disposition; no handler code runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let args: &[&str] = if local { &["--local"] } else { &[] };
    cmd::run_release_tool(env, "netpage-demo", args)
}
