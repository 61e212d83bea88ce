//! Project tasks: `cargo xtask setup | build | test | demo | bench | fuzz`.
//!
//! Every task first brings the machine to a state that can build the XDP program (see
//! `toolchain`), so each is one command on a fresh machine.

mod apt;
mod bench;
mod cmd;
mod demo;
mod fuzz;
mod libvirt;
mod qemu;
#[path = "../../tests/src/qemu/location.rs"]
mod qemu_location;
mod toolchain;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netpage project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the XDP program needs (idempotent).
    Setup,
    /// Set up and build the workspace.
    Build,
    /// Set up, build, lint and run every test (root: the tests load XDP programs).
    Test {
        /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, then run the demo (root): a VM switched between two hosts mid-stream,
    /// through the directory on etcd (an etcd member and an agent per edge node).
    Demo {
        /// The single-machine demo instead: one `netpage switch --node DIR ...` over every
        /// node's pin directory, no etcd.
        #[arg(long)]
        local: bool,
    },
    /// Set up, then run the benchmarks (root): per-packet cost, switch latency, forwarding
    /// against plain routing and nftables, switch gap, propagation through the directory
    /// on etcd, accuracy of the test world's WAN delay line; writes
    /// target/bench/report.json and report.md.
    Bench {
        /// A brief run that checks the benchmark works; its numbers mean nothing.
        #[arg(long)]
        smoke: bool,
        /// Only these parts: per-packet, switch, command, forward, wire, gap, directory, wan,
        /// migration (in the plain world and over a WAN), migration-wan (over a WAN alone).
        /// Without any, all but the migrations (live migrations of a QEMU guest take
        /// minutes under TCG).
        parts: Vec<String>,
        /// Rounds of each live migration (default: 3 in the plain world, 1 over a WAN).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        rounds: Option<u32>,
    },
    /// Set up, then fuzz the datapath (root): generated and mutated frames of every kind it
    /// knows, run at both hooks with BPF_PROG_TEST_RUN and judged by an independent oracle;
    /// prints packets/s and every counterexample as a fixture.
    Fuzz(fuzz::Options),
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let env = toolchain::setup()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Build => cmd::cargo(&env, &["build", "--workspace", "--all-targets"]),
        Task::Test { args } => {
            cmd::require_root("the tests load XDP programs and create network namespaces")?;
            cmd::cargo(&env, &["fmt", "--all", "--check"])?;
            cmd::cargo(
                &env,
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            // The namespace tests run the `netpage` binary itself.
            cmd::cargo(&env, &["build", "-p", "netpage-user", "--bins"])?;
            let mut test = vec!["--workspace"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cmd::cargo_test(&env, &test)
        }
        Task::Demo { local } => demo::run(&env, local),
        Task::Bench {
            smoke,
            parts,
            rounds,
        } => bench::run(&env, smoke, &parts, rounds),
        Task::Fuzz(options) => fuzz::run(&env, &options),
    }
}
