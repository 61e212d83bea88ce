//! Measurements of netpage's costs, for `cargo xtask bench`: per-packet cost in the kernel,
//! the latency of a switch (map updates and the whole `netpage switch` command), forwarding
//! throughput through a gateway namespace, the gap a VM's move leaves in a stream, and a
//! switch through the directory on etcd to N agents, and the accuracy of the WAN delay line
//! of the test world, written as report rows.
//!
//! Each part is a function from a [`Config`] to rows, so the benchmark binary runs them in
//! full and a test runs them in the smoke configuration. Nothing here asserts a timing.

use std::time::Duration;

/// The prefix of the benchmark's pin directories under /tmp, which `leftovers` sweeps.
pub const BENCH_PINS: &str = "netpage-bench";

pub mod about;
pub mod command;
pub mod directory;
pub mod fill;
pub mod forward;
pub mod gap;
pub mod leftovers;
pub mod live_frames;
pub mod methods;
pub mod migration;
pub mod packets;
pub mod per_packet;
pub mod report;
pub mod stats;
pub mod switch;
pub mod sys;
pub mod targets;
pub mod wan;
pub mod wan_tcp;
pub mod wire;

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Config {
    /// Table sizes (mappings per family) for the per-packet cost.
    pub packet_sizes: Vec<u32>,
    /// Repeats of every per-packet measurement; the reported value is their median.
    pub repeats: usize,
    /// Program runs in one BPF_PROG_TEST_RUN call (one repeat of one variant).
    pub runs: u32,
    /// Calls of one run each per repeat, where a run cannot be repeated on its own output
    /// (paging against segmentation, see `methods`).
    pub single_runs: u32,
    /// Table sizes for the switch latency.
    pub switch_sizes: Vec<u32>,
    /// Switches timed per table size, traffic state and kind of switch.
    pub switches: usize,
    /// Table sizes (mappings per family) of the nodes the `netpage switch` command runs on.
    pub command_sizes: Vec<u32>,
    /// Runs of each timed command; the reported value is their median.
    pub command_runs: usize,
    /// Repeats of the forwarding measurement, every variant once in each.
    pub forward_repeats: usize,
    /// How long the stream runs through the gateway per variant and repeat.
    pub forward_time: Duration,
    /// Moves of the VM between hosts, each with a quiet window of the same length before it.
    pub gap_switches: usize,
    /// Rounds of live migrations of a QEMU guest, every variant once in each.
    pub migration_rounds: usize,
    /// Rounds of live migrations over the WAN, every case once in each.
    pub migration_wan_rounds: usize,
    /// Agents (nodes) of the switch through the directory on etcd, one run per count.
    pub directory_agents: Vec<usize>,
    /// Switches through the directory per agent count.
    pub directory_switches: usize,
    /// Packets per second of the streams that measure the WAN delay line.
    pub wan_rates: Vec<u32>,
    /// How long each of those streams runs.
    pub wan_time: Duration,
    /// Payload bytes of the TCP stream that measures each method's cost on the wire.
    pub wire_bytes: usize,
}

impl Config {
    /// The measurement the report is made from.
    pub fn full() -> Self {
        Self {
            packet_sizes: vec![1, 10_000, 1_000_000],
            repeats: 15,
            runs: 1_000_000,
            single_runs: 20_000,
            switch_sizes: vec![1, 1_000_000],
            switches: 50_000,
            command_sizes: vec![1, 1_000_000],
            command_runs: 30,
            forward_repeats: 9,
            forward_time: Duration::from_millis(1500),
            gap_switches: 5,
            migration_rounds: 3,
            migration_wan_rounds: 1,
            directory_agents: vec![1, 4, 16],
            directory_switches: 50,
            wan_rates: vec![1_000, 10_000],
            wan_time: Duration::from_secs(4),
            wire_bytes: 16 << 20,
        }
    }

    /// A run of seconds that exercises every measurement, with small tables and few
    /// repeats: for checking that the benchmark works, not for its numbers.
    pub fn smoke() -> Self {
        Self {
            packet_sizes: vec![1, 1_000],
            repeats: 3,
            runs: 10_000,
            single_runs: 200,
            switch_sizes: vec![1, 1_000],
            switches: 200,
            command_sizes: vec![1, 1_000],
            command_runs: 3,
            forward_repeats: 1,
            forward_time: Duration::from_millis(300),
            gap_switches: 2,
            migration_rounds: 1,
            migration_wan_rounds: 1,
            directory_agents: vec![1, 4, 16],
            directory_switches: 4,
            wan_rates: vec![1_000, 10_000],
            wan_time: Duration::from_millis(300),
            wire_bytes: 1 << 20,
        }
    }
}

/// Extra capacity beyond a table's nominal size: room for the reverse entry that a switch
/// adds before the old one is removed.
pub const HEADROOM: u32 = 16;

/// A progress line on stderr (the report goes to stdout and files).
pub fn note(msg: impl std::fmt::Display) {
    let line = format!("bench: {msg}");
    match PROGRESS.get() {
        Some(p) => p.println(line),
        None => eprintln!("{line}"),
    }
}

/// The run's progress over its parts, on a terminal (see [`show_progress`]).
static PROGRESS: std::sync::OnceLock<netpage::progress::Progress> = std::sync::OnceLock::new();

/// Shows the run's progress over `parts` parts on a terminal (nothing otherwise), notes
/// printed above it; returns it, for the caller to advance.
pub fn show_progress(parts: u64) -> &'static netpage::progress::Progress {
    PROGRESS.get_or_init(|| netpage::progress::Progress::bar("bench", parts))
}
