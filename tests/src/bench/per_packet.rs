//! Part 1: the per-packet cost of the program in the kernel, through BPF_PROG_TEST_RUN.
//!
//! Every variant (each measured packet at each table size, and the bare `XDP_PASS` floor)
//! is run `runs` times in one call, once per repeat; the variants are taken in a rotated
//! order in each repeat, so that a slow moment of a busy machine does not land on one
//! variant only. The value reported is the median over the repeats.

use std::os::fd::{AsFd, BorrowedFd};

use netpage_common::counters::Counter;
use serde_json::json;

use crate::{
    bench::{Config, HEADROOM, fill::fill, note, packets, report::Row, stats::Sorted, sys},
    datapath::{Datapath, XDP_PASS},
};

/// The floor's variant name, which the other rows name as their baseline.
pub const FLOOR: &str = "xdp_pass floor";

/// One program on one packet.
struct Job<'a> {
    prog: BorrowedFd<'a>,
    frame: &'a [u8],
}

/// Measures the floor and every variant at every table size of `cfg`.
pub fn run(cfg: &Config) -> Vec<Row> {
    let floor = sys::load_xdp_pass().expect("load the bare XDP_PASS program");
    let variants = packets::variants();
    let mut tables = Vec::new();
    for &size in &cfg.packet_sizes {
        note(format_args!("per-packet: a table of {size} entries"));
        let mut dp = Datapath::load(size + HEADROOM);
        packets::install(&mut dp);
        fill(&mut dp, size.saturating_sub(packets::RESERVED));
        for v in &variants {
            check(&dp, v);
        }
        tables.push((size, dp));
    }

    let mut jobs = vec![Job {
        prog: floor.as_fd(),
        frame: &variants[0].frame,
    }];
    for (_, dp) in &tables {
        for v in &variants {
            jobs.push(Job {
                prog: dp.program(v.side).fd().expect("loaded").as_fd(),
                frame: &v.frame,
            });
        }
    }
    let mut samples = vec![Vec::with_capacity(cfg.repeats); jobs.len()];
    for r in 0..cfg.repeats {
        note(format_args!("per-packet: repeat {}/{}", r + 1, cfg.repeats));
        for j in 0..jobs.len() {
            let k = (j + r) % jobs.len();
            samples[k].push(ns_per_run(&jobs[k], cfg.runs));
        }
    }
    let medians: Vec<f64> = samples
        .into_iter()
        .map(|s| Sorted::new(s).median())
        .collect();

    let floor_ns = medians[0];
    let params = |size: u32| json!({"table_entries": size, "side": "virtual", "runs": cfg.runs});
    let mut rows = vec![
        Row::new(
            "per_packet",
            FLOOR,
            json!({"runs": cfg.runs}),
            floor_ns,
            "ns",
        )
        .repeats(cfg.repeats),
    ];
    let per_size = medians[1..].chunks(variants.len());
    let first = medians[1..1 + variants.len()].to_vec();
    let mut growth = Vec::new();
    for ((size, _), ns) in tables.iter().zip(per_size) {
        for ((v, &value), &base) in variants.iter().zip(ns).zip(&first) {
            rows.push(
                Row::new("per_packet", v.name, params(*size), value, "ns")
                    .against(FLOOR, floor_ns)
                    .repeats(cfg.repeats),
            );
            if *size != cfg.packet_sizes[0] {
                let baseline = format!("{}, table_entries={}", v.name, cfg.packet_sizes[0]);
                growth.push(
                    Row::new("per_packet_growth", v.name, params(*size), value, "ns")
                        .against(baseline, base)
                        .repeats(cfg.repeats),
                );
            }
        }
    }
    rows.extend(growth);
    rows
}

/// Nanoseconds per run of one test-run call of `runs` runs.
fn ns_per_run(job: &Job, runs: u32) -> f64 {
    let run = sys::test_run(job.prog, job.frame, runs).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run.verdict, XDP_PASS, "verdict");
    run.cpu.as_nanos() as f64 / f64::from(runs)
}

/// Checks that every run of `v` has the outcome it is meant to measure (a translation each
/// time, not only the first), so that the numbers are of what they claim to be.
fn check(dp: &Datapath, v: &packets::Variant) {
    const RUNS: u32 = 4;
    let before = dp.counters();
    let prog = dp.program(v.side).fd().expect("loaded");
    sys::test_run(prog.as_fd(), &v.frame, RUNS).expect("BPF_PROG_TEST_RUN");
    let counted = dp.counters().since(&before);
    let all: u64 = Counter::ALL.iter().map(|&c| counted.get(c)).sum();
    assert_eq!(
        (counted.get(v.outcome), all),
        (u64::from(RUNS), u64::from(RUNS)),
        "{}: every run must count {:?}",
        v.name,
        v.outcome
    );
}
