//! Part 3: the wall time of the `netpage switch` command, from process start to exit, as an
//! operator or an orchestrator runs it; and on the same nodes, what a metrics scrape costs
//! (reading the node and writing its OpenMetrics text, as `netpage metrics` does for each
//! scrape, in this process).
//!
//! Each node is a bpffs pin directory under /tmp, mounted here, with netpage attached to a
//! veth in a namespace of its own and its table filled to a given size through
//! the library (`ops::apply`, the batched path of `netpage apply -f`). The runs alternate
//! between the nodes and `netpage --version`, the floor of starting and ending the binary
//! at all, so that every figure has a baseline measured in the same moments.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use netpage::{
    metrics::NodeSnapshot,
    node::Node,
    ops::{self, Mapping},
};
use serde_json::json;

use crate::{
    bench::{BENCH_PINS, Config, HEADROOM, fill::filler, note, report::Row, stats::Sorted},
    netns::{NetNs, check, output},
    pins::PinDirs,
    world::netpage_bin,
};

/// The VM that is switched, and the two real addresses it moves between.
const VM: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10));
const RA_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const RA_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));

/// The variant name of the floor, which the smallest node's rows name as their baseline.
pub const FLOOR: &str = "netpage --version";

/// One node: its pin directory and table size, and where its VM is now.
struct CmdNode {
    dir: PathBuf,
    size: u32,
    at: IpAddr,
}

/// Times the floor and `netpage switch` on a node of each size of `cfg`.
pub fn run(cfg: &Config) -> Vec<Row> {
    let bin = netpage_bin();
    let pid = std::process::id();
    // Declared before the pin directories: the interfaces go first.
    let ns = NetNs::create(&format!("npbench{pid}-cmd"));
    let mut pins = PinDirs::new(BENCH_PINS, "cmd");
    let mut nodes = Vec::new();
    for (i, &size) in cfg.command_sizes.iter().enumerate() {
        note(format_args!("switch command: a node of {size} entries"));
        let dir = pins.mount(&format!("node{i}"));
        let iface = format!("cmd{i}");
        let peer = format!("cmd{i}p");
        ns.veth(&iface, &peer, None);
        ns.ip(&["link", "set", &iface, "up"]);
        let capacity = (size + HEADROOM).to_string();
        check(ns.command(&bin).arg("--pin-dir").arg(&dir).args([
            "attach",
            &iface,
            "--side",
            "virtual",
            "--mode",
            "skb",
            "--capacity",
            &capacity,
        ]));
        fill(&dir, size);
        nodes.push(CmdNode {
            dir,
            size,
            at: RA_A,
        });
    }

    // Job 0 is the floor, job i + 1 a switch on node i.
    let jobs = 1 + nodes.len();
    let mut samples = vec![Vec::with_capacity(cfg.command_runs); jobs];
    for r in 0..cfg.command_runs {
        if r % 10 == 0 {
            note(format_args!(
                "switch command: run {}/{}",
                r + 1,
                cfg.command_runs
            ));
        }
        for j in 0..jobs {
            let k = (j + r) % jobs;
            let ms = if k == 0 {
                time(Command::new(&bin).arg("--version"))
            } else {
                let node = &mut nodes[k - 1];
                let to = if node.at == RA_A { RA_B } else { RA_A };
                let ms = time(&mut switch_command(&bin, &node.dir, to));
                node.at = to;
                ms
            };
            samples[k].push(ms);
        }
    }

    let summaries: Vec<Sorted> = samples.into_iter().map(Sorted::new).collect();
    let mut rows = Vec::new();
    let floor = &summaries[0];
    for (stat, pick) in [("p50", p50 as fn(&Sorted) -> f64), ("max", Sorted::max)] {
        rows.push(
            Row::new(
                "switch_command",
                FLOOR,
                json!({"stat": stat}),
                pick(floor),
                "ms",
            )
            .repeats(floor.count()),
        );
        for (node, s) in nodes.iter().zip(&summaries[1..]) {
            let params = json!({"table_entries": node.size, "stat": stat});
            let (name, base) = if node.size == nodes[0].size {
                (format!("{FLOOR}, stat={stat}"), pick(floor))
            } else {
                (
                    format!("switch, table_entries={}, stat={stat}", nodes[0].size),
                    pick(&summaries[1]),
                )
            };
            rows.push(
                Row::new("switch_command", "switch", params, pick(s), "ms")
                    .against(name, base)
                    .repeats(s.count()),
            );
        }
    }
    rows.extend(scrapes(&nodes));
    drop(ns);
    drop(pins);
    rows
}

/// Scrapes of each node timed.
const SCRAPES: usize = 3;

/// The time of a metrics scrape of each node (median of [`SCRAPES`]), against the
/// smallest node, and the size of its text.
fn scrapes(nodes: &[CmdNode]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut base = None;
    for node in nodes {
        let n = Node::new(&node.dir);
        let mut ms = Vec::with_capacity(SCRAPES);
        let mut bytes = 0;
        for _ in 0..SCRAPES {
            let start = Instant::now();
            let text = NodeSnapshot::read(&n, std::path::Path::new("/nonexistent"))
                .expect("read the node")
                .encode(None);
            ms.push(start.elapsed().as_secs_f64() * 1e3);
            bytes = text.len();
        }
        let s = Sorted::new(ms);
        note(format_args!(
            "metrics scrape: {} mappings per family: {:.1} ms, {bytes} bytes",
            node.size,
            s.median()
        ));
        let params = json!({"table_entries": node.size, "bytes": bytes});
        let mut row =
            Row::new("metrics_scrape", "scrape", params, s.median(), "ms").repeats(s.count());
        match base {
            None => base = Some(s.median()),
            Some(b) => {
                row = row.against(format!("scrape, table_entries={}", nodes[0].size), b);
            }
        }
        rows.push(row);
    }
    rows
}

fn p50(s: &Sorted) -> f64 {
    s.median()
}

/// `netpage --pin-dir DIR switch --vm VM --to TO`.
fn switch_command(bin: &Path, dir: &Path, to: IpAddr) -> Command {
    let mut c = Command::new(bin);
    c.arg("--pin-dir")
        .arg(dir)
        .args(["switch", "--vm", &VM.to_string(), "--to", &to.to_string()]);
    c
}

/// Milliseconds from starting `cmd` to its exit, which must be a success.
fn time(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let out = output(cmd);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    crate::netns::assert_ok(&out, &format!("{cmd:?}"));
    ms
}

/// Makes the node's table hold the measured VM and `size - 1` fillers per family, through
/// the batched path of `netpage apply`.
fn fill(dir: &Path, size: u32) {
    let start = Instant::now();
    let mut open = Node::new(dir).open().expect("open the node");
    let mut desired = vec![Mapping { vm: VM, real: RA_A }];
    for v6 in [false, true] {
        desired.extend((0..size.saturating_sub(1)).map(|i| {
            let (vm, real) = filler(i, v6);
            Mapping { vm, real }
        }));
    }
    let plan = ops::plan(&open.table, &desired).expect("plan the fill");
    let now_ms = netpage::clock::node_ms();
    ops::apply(&mut open.table, &plan, std::time::Duration::ZERO, now_ms).expect("fill");
    if size >= 100_000 {
        note(format_args!(
            "switch command: filled {size} mappings per family in {:.1} s",
            start.elapsed().as_secs_f64()
        ));
    }
}
