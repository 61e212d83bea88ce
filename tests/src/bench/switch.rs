//! Part 2: how long a switch takes, as map updates timed from user space.
//!
//! A switch moves a VM's virtual address to a new real address. Two things are timed,
//! each over many switches back and forth between two real addresses, at every table size
//! of the configuration, on an idle program and with traffic flowing:
//! - `v2r_update`: the one V2R update that redirects traffic (the switch's critical step);
//! - `switch_whole`: the whole switch as `netpage::ops::switch` makes it, the new R2V
//!   entry inserted first and then the V2R update. The old reverse entry is removed after
//!   each switch, untimed (a drain that ended), so every insert is of a new entry.
//!
//! Traffic is a thread running the virtual side's program in a loop, one packet per
//! BPF_PROG_TEST_RUN call, on packets to the VM being switched: every packet looks up the
//! entry being updated. The wall time of the whole `netpage switch` command (from start to
//! exit) is measured in `command`.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, BorrowedFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Instant,
};

use netpage::{
    loader::Side,
    table::{BpfTable, PageTable},
};
use serde_json::json;

use crate::{
    bench::{Config, HEADROOM, fill::fill, note, report::Row, stats::Sorted, sys},
    build::{frame4, udp},
    datapath::Datapath,
};

const VM: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10));
const RA_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const RA_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

/// Untimed switches made before timing, so that first-touch costs are not counted.
const WARMUP: usize = 100;

/// Update times of one block of switches, in nanoseconds.
struct Timings {
    v2r: Vec<f64>,
    whole: Vec<f64>,
}

/// The two kinds of switch, in the order of their summaries.
const MEASURES: [&str; 2] = ["v2r_update", "switch_whole"];

/// Measures both kinds of switch at every table size of `cfg`, idle and under traffic.
pub fn run(cfg: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut smallest: Option<(u32, [Summary; 2])> = None;
    for &size in &cfg.switch_sizes {
        note(format_args!("switch: a table of {size} entries"));
        let mut dp = Datapath::load(size + HEADROOM);
        fill(&mut dp, size.saturating_sub(1));
        dp.map(VM, RA_A);
        let prog = dp
            .program(Side::Virtual)
            .fd()
            .expect("loaded")
            .try_clone()
            .expect("duplicate the program descriptor");
        let packet = frame4(&|a| a, CLIENT, VM, 17, |s, d| udp(s, d, b"to the VM"));
        let mut idle: Option<[Summary; 2]> = None;
        for traffic in [false, true] {
            let state = if traffic { "traffic" } else { "idle" };
            note(format_args!(
                "switch: {} switches of each kind, {size} entries, {state}",
                cfg.switches
            ));
            let t = with_traffic(traffic, prog.as_fd(), &packet, || {
                switches(dp.table(), cfg.switches)
            });
            let measured = [Summary::of(t.v2r), Summary::of(t.whole)];
            let baseline = match (&idle, &smallest) {
                (Some(base), _) => Some(("idle, same table_entries".to_owned(), base)),
                (None, Some((n, base))) => Some((format!("idle, table_entries={n}"), base)),
                (None, None) => None,
            };
            rows.extend(rows_of(size, state, &measured, baseline));
            if !traffic {
                idle = Some(measured);
            }
        }
        smallest = smallest.or(idle.map(|s| (size, s)));
    }
    rows
}

/// The rows of one block: each statistic of each kind of switch, against `baseline`.
fn rows_of(
    size: u32,
    state: &str,
    measured: &[Summary; 2],
    baseline: Option<(String, &[Summary; 2])>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, (measure, s)) in MEASURES.iter().zip(measured).enumerate() {
        for (j, (stat, value)) in s.stats.iter().enumerate() {
            let params = json!({"table_entries": size, "stat": stat});
            let mut row = Row::new(measure, state, params, *value, "us").repeats(s.n);
            if let Some((name, base)) = &baseline {
                row = row.against(name.clone(), base[i].stats[j].1);
            }
            rows.push(row);
        }
    }
    rows
}

/// p50, p99 and maximum of one kind of switch, in microseconds.
#[derive(Clone, Copy)]
struct Summary {
    stats: [(&'static str, f64); 3],
    n: usize,
}

impl Summary {
    fn of(ns: Vec<f64>) -> Self {
        let s = Sorted::new(ns);
        Self {
            stats: [
                ("p50", s.percentile(50.0) / 1e3),
                ("p99", s.percentile(99.0) / 1e3),
                ("max", s.max() / 1e3),
            ],
            n: s.count(),
        }
    }
}

/// Runs `f` while, if `on`, a thread runs `prog` on `packet` in a loop.
fn with_traffic<R>(on: bool, prog: BorrowedFd, packet: &[u8], f: impl FnOnce() -> R) -> R {
    if !on {
        return f();
    }
    let (started, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    thread::scope(|s| {
        let traffic = s.spawn(|| {
            let (start, mut packets) = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                sys::test_run(prog, packet, 1).expect("BPF_PROG_TEST_RUN");
                packets += 1;
                started.store(true, Ordering::Relaxed);
            }
            packets as f64 / start.elapsed().as_secs_f64()
        });
        while !started.load(Ordering::Relaxed) && !traffic.is_finished() {
            thread::yield_now();
        }
        let r = f();
        stop.store(true, Ordering::Relaxed);
        let rate = traffic.join().expect("traffic thread");
        note(format_args!("switch: traffic ran at {:.0} packets/s", rate));
        r
    })
}

/// Times `n` switches of each kind, back and forth between two real addresses.
fn switches(table: &mut BpfTable, n: usize) -> Timings {
    let other = |ra| if ra == RA_A { RA_B } else { RA_A };
    let mut at = RA_A;
    let mut v2r = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let to = other(at);
        let start = Instant::now();
        table.set_forward(VM, to).expect("V2R update");
        let ns = start.elapsed().as_nanos() as f64;
        if i >= WARMUP {
            v2r.push(ns);
        }
        at = to;
    }
    // Back to the mapping as netpage leaves it: V2R and R2V agree, one reverse entry.
    table.set_forward(VM, RA_A).expect("V2R update");
    table.set_reverse(RA_A, VM).expect("R2V insert");
    table.remove_reverse(RA_B).expect("R2V removal");
    at = RA_A;
    let mut whole = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let to = other(at);
        let start = Instant::now();
        table.set_reverse(to, VM).expect("R2V insert");
        table.set_forward(VM, to).expect("V2R update");
        let ns = start.elapsed().as_nanos() as f64;
        table.remove_reverse(at).expect("R2V removal");
        if i >= WARMUP {
            whole.push(ns);
        }
        at = to;
    }
    Timings { v2r, whole }
}
