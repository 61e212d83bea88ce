//! Part 1: the per-packet cost of the program in the kernel, through BPF_PROG_TEST_RUN, at
//! both hooks (XDP, and tc on a socket buffer).
//!
//! Every variant (each measured packet at each table size and hook, and the bare floors
//! of each hook: a program that only lets the packet go on) is run `runs` times in one
//! call, once per repeat; the variants are taken in a rotated
//! order in each repeat, so that a slow moment of a busy machine does not land on one
//! variant only. The value reported is the median over the repeats.

use std::os::fd::{AsFd, BorrowedFd};

use netpage_common::{
    counters::Counter,
    trace::{SELECT_VMS, TraceConfig, TraceKey},
};
use serde_json::json;

use crate::{
    bench::{
        Config, HEADROOM, fill::fill, methods, note, packets, report::Row, stats::Sorted, sys,
    },
    datapath::{Datapath, Hook},
};

/// The floors' variant names, which the other rows name as their baseline.
pub const FLOOR: &str = "xdp_pass floor";
pub const TC_FLOOR: &str = "tc_next floor";

/// One program on one packet, at a hook.
struct Job<'a> {
    prog: BorrowedFd<'a>,
    frame: &'a [u8],
    hook: Hook,
}

/// Measures the floor and every variant at every table size of `cfg`.
pub fn run(cfg: &Config) -> Vec<Row> {
    let floor = sys::load_xdp_pass().expect("load the bare XDP_PASS program");
    let tc_floor = sys::load_tc_next().expect("load the bare tc program");
    let variants = packets::variants();
    let mut tables = Vec::new();
    for &size in &cfg.packet_sizes {
        note(format_args!("per-packet: a table of {size} entries"));
        let mut dp = Datapath::load(size + HEADROOM);
        packets::install(&mut dp);
        fill(&mut dp, size.saturating_sub(packets::RESERVED));
        for v in &variants {
            for hook in Hook::ALL {
                check(&dp, v, hook);
            }
        }
        tables.push((size, dp));
    }

    let mut jobs = vec![
        Job {
            prog: floor.as_fd(),
            frame: &variants[0].frame,
            hook: Hook::Xdp,
        },
        Job {
            prog: tc_floor.as_fd(),
            frame: &variants[0].frame,
            hook: Hook::Tc,
        },
    ];
    for (_, dp) in &tables {
        for hook in Hook::ALL {
            for v in &variants {
                jobs.push(Job {
                    prog: dp.program_fd(hook, v.side),
                    frame: &v.frame,
                    hook,
                });
            }
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

    let floors = [(FLOOR, medians[0]), (TC_FLOOR, medians[1])];
    let params = |size: u32, hook: Hook| json!({"table_entries": size, "side": "virtual", "runs": cfg.runs, "hook": hook.name()});
    let mut rows: Vec<Row> = floors
        .iter()
        .zip(Hook::ALL)
        .map(|(&(name, ns), hook)| {
            let params = json!({"runs": cfg.runs, "hook": hook.name()});
            Row::new("per_packet", name, params, ns, "ns").repeats(cfg.repeats)
        })
        .collect();
    let measured = &medians[2..];
    let per_table = variants.len() * Hook::ALL.len();
    let mut growth = Vec::new();
    for ((size, _), ns) in tables.iter().zip(measured.chunks(per_table)) {
        for (h, (hook, (floor_name, floor_ns))) in Hook::ALL.iter().zip(floors).enumerate() {
            let at_hook = &ns[h * variants.len()..(h + 1) * variants.len()];
            let first = &measured[h * variants.len()..(h + 1) * variants.len()];
            for ((v, &value), &base) in variants.iter().zip(at_hook).zip(first) {
                let name = hook.variant(v.name);
                rows.push(
                    Row::new("per_packet", &name, params(*size, *hook), value, "ns")
                        .against(floor_name, floor_ns)
                        .repeats(cfg.repeats),
                );
                if *size != cfg.packet_sizes[0] {
                    let baseline = format!("{name}, table_entries={}", cfg.packet_sizes[0]);
                    growth.push(
                        Row::new(
                            "per_packet_growth",
                            &name,
                            params(*size, *hook),
                            value,
                            "ns",
                        )
                        .against(baseline, base)
                        .repeats(cfg.repeats),
                    );
                }
            }
        }
    }
    rows.extend(growth);
    let udp = variants.iter().find(|v| v.name == "ipv4 udp");
    rows.extend(trace_rows(cfg, udp.expect("the IPv4 UDP packet")));
    rows.extend(methods::run(cfg));
    rows
}

/// The trace's states measured, each on a datapath of its own (the state is in its maps).
const TRACE_STATES: [&str; 3] = ["trace off", "trace on, not selected", "trace on, selected"];

/// The cost of the trace's flag (`per_packet_trace`): packet `v` at each hook with the
/// trace off, on but selecting another VM, and on for every packet. The build has no
/// program without the flag, so the rows on are compared with the row off, and the row
/// off with the hook's floor.
fn trace_rows(cfg: &Config, v: &packets::Variant) -> Vec<Row> {
    let size = cfg.packet_sizes[0];
    note(format_args!("per-packet: the trace's states"));
    let deadline_ns = netpage::clock::node_ns() + 3_600_000_000_000;
    let floors = [
        sys::load_xdp_pass().expect("load the bare XDP_PASS program"),
        sys::load_tc_next().expect("load the bare tc program"),
    ];
    let dps: Vec<Datapath> = TRACE_STATES
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let mut dp = Datapath::load(size + HEADROOM);
            packets::install(&mut dp);
            if i > 0 {
                let other = TraceKey::vm("192.0.2.250".parse().unwrap());
                dp.trace_select(other, true);
                dp.set_trace(TraceConfig {
                    deadline_ns,
                    flags: if i == 1 { SELECT_VMS } else { 0 },
                    rate: u32::MAX,
                });
            }
            for hook in Hook::ALL {
                check(&dp, v, hook);
            }
            let events = dp.trace_events().len();
            assert_eq!(events > 0, i == 2, "{}: {events} events", TRACE_STATES[i]);
            dp
        })
        .collect();
    let mut jobs = Vec::new();
    for (hook, floor) in Hook::ALL.into_iter().zip(&floors) {
        jobs.push(Job {
            prog: floor.as_fd(),
            frame: &v.frame,
            hook,
        });
        for dp in &dps {
            jobs.push(Job {
                prog: dp.program_fd(hook, v.side),
                frame: &v.frame,
                hook,
            });
        }
    }
    let mut samples = vec![Vec::with_capacity(cfg.repeats); jobs.len()];
    for r in 0..cfg.repeats {
        for j in 0..jobs.len() {
            let k = (j + r) % jobs.len();
            samples[k].push(ns_per_run(&jobs[k], cfg.runs));
        }
    }
    let medians: Vec<f64> = samples
        .into_iter()
        .map(|s| Sorted::new(s).median())
        .collect();
    let mut rows = Vec::new();
    for (h, (hook, floor_name)) in Hook::ALL.iter().zip([FLOOR, TC_FLOOR]).enumerate() {
        let at_hook = &medians[h * 4..(h + 1) * 4];
        let off_name = hook.variant(&format!("{}, {}", v.name, TRACE_STATES[0]));
        for (i, state) in TRACE_STATES.iter().enumerate() {
            let params = json!({
                "table_entries": size,
                "side": "virtual",
                "runs": cfg.runs,
                "hook": hook.name(),
                "trace": state,
                "baseline": "no build without the flag runs beside this one: off is compared with the floor, on with off",
                "ring": if i == 2 { "not read: full after its first few thousand events, the rest counted as lost" } else { "unused" },
            });
            let name = hook.variant(&format!("{}, {state}", v.name));
            let row = Row::new("per_packet_trace", &name, params, at_hook[i + 1], "ns")
                .repeats(cfg.repeats);
            rows.push(if i == 0 {
                row.against(floor_name, at_hook[0])
            } else {
                row.against(off_name.clone(), at_hook[1])
            });
        }
    }
    rows
}

/// Nanoseconds per run of one test-run call of `runs` runs.
fn ns_per_run(job: &Job, runs: u32) -> f64 {
    let run = sys::test_run(job.prog, job.frame, runs).expect("BPF_PROG_TEST_RUN");
    assert_eq!(run.verdict, job.hook.pass(), "verdict");
    run.cpu.as_nanos() as f64 / f64::from(runs)
}

/// Checks that every run of `v` has the outcome it is meant to measure (a translation each
/// time, not only the first), so that the numbers are of what they claim to be.
fn check(dp: &Datapath, v: &packets::Variant, hook: Hook) {
    const RUNS: u32 = 4;
    let before = dp.counters();
    sys::test_run(dp.program_fd(hook, v.side), &v.frame, RUNS).expect("BPF_PROG_TEST_RUN");
    let counted = dp.counters().since(&before);
    let all: u64 = Counter::ALL.iter().map(|&c| counted.get(c)).sum();
    assert_eq!(
        (counted.get(v.outcome), all),
        (u64::from(RUNS), u64::from(RUNS)),
        "{}: every run must count {:?}",
        hook.variant(v.name),
        v.outcome
    );
}
