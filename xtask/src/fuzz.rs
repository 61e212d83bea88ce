//! `cargo xtask fuzz`: builds the differential fuzzer in release and runs it (as root: it
//! loads the eBPF programs); it prints packets/s, the kinds covered and every
//! counterexample as a fixture to paste into a test.

use anyhow::Result;

use crate::{cmd, toolchain::BuildEnv};

/// What the fuzzer runs.
#[derive(clap::Args)]
pub struct Options {
    /// Frames to generate (each runs at every chosen hook).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// The seed: a run is the same every time.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The hooks to run at.
    #[arg(long, default_value = "both", value_parser = ["xdp", "tc", "both"])]
    pub hook: String,
    /// The summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the frame of this index (to replay a counterexample).
    #[arg(long)]
    pub only: Option<u64>,
    /// Fail on the known defects too (each a fixture in tests/tests/fuzz_found.rs).
    #[arg(long)]
    pub strict: bool,
    /// Let virtual-side frames come from mapped addresses (source validation drops
    /// those the ingress port does not own).
    #[arg(long)]
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
