//! `cargo xtask fuzz`: builds the differential fuzzer in release and runs it (as root: it
//! loads the eBPF programs); it prints packets/s, the kinds covered and every
//! counterexample as a fixture to paste into a test.

use anyhow::Result;

use crate::{cmd, toolchain::BuildEnv};

/// What the fuzzer runs.
pub struct Options {
    pub packets: u64,
    pub seed: u64,
    pub hook: String,
    pub json: bool,
    pub only: Option<u64>,
    pub strict: bool,
    pub mapped_virtual_sources: bool,
}

/// Runs the fuzzer binary of the tests crate with `o`.
pub fn run(env: &BuildEnv, o: &Options) -> Result<()> {
    cmd::require_root("the fuzzer loads the eBPF programs to run them with BPF_PROG_TEST_RUN")?;
    let (packets, seed) = (o.packets.to_string(), o.seed.to_string());
    let only = o.only.map(|i| i.to_string());
    let mut args = vec!["--packets", &*packets, "--seed", &*seed, "--hook", &*o.hook];
    if let Some(i) = &only {
        args.extend(["--only", i]);
    }
    if o.json {
        args.push("--json");
    }
    if o.strict {
        args.push("--strict");
    }
    if o.mapped_virtual_sources {
        args.push("--mapped-virtual-sources");
    }
    cmd::run_release_tool(env, "netpage-fuzz", &args)
}
