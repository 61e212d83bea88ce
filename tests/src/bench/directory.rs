//! Part `directory`: a switch through the directory on etcd. One etcd member and N
//! `netpage agent`s, each on a node of its own (a bpffs pin directory under /tmp, its tables
//! created by the agent, no interface: the agents only touch maps); one VM mapping, switched
//! back and forth between two RAs with `netpage --etcd URLS --json switch`.
//!
//! `directory_propagation`: each node's map update after the switch transaction
//! (`propagation_ms` of the command's JSON, the agent's clock against the command's), over
//! every node and switch. `directory_switch_command`: the whole command's wall time at the
//! largest N, against one local `netpage switch --node DIR ...` over the same number of
//! pin directories (a second set with no agent, since a node an agent manages refuses local
//! writes), the two taking turns.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::Command,
    time::Instant,
};

use netpage::node::Node;
use serde_json::json;

use crate::{
    bench::{BENCH_PINS, Config, note, report::Row, stats::Sorted},
    directory::{self, Agents},
    etcd::Etcd,
    netns::{assert_ok, check, output},
    pins::PinDirs,
    world::netpage_bin,
};

/// The VM that is switched, and the two real addresses it moves between.
const VM: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10));
const RA_A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const RA_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
/// Entries per table of every node.
const CAPACITY: u32 = 1024;

/// The variant of the propagation rows and of the command through the directory.
pub const VIA_ETCD: &str = "netpage --etcd switch";
/// The variant of the local command, the baseline of the directory's.
pub const LOCAL: &str = "netpage switch --node (local)";

/// Measures the propagation at every agent count of `cfg`, and the command at the largest.
pub fn run(cfg: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    let largest = cfg.directory_agents.iter().copied().max().unwrap_or(0);
    for &n in &cfg.directory_agents {
        rows.extend(measure(cfg, n, n == largest));
    }
    rows
}

/// One etcd member and `n` agents; with `command`, the local baseline too.
fn measure(cfg: &Config, n: usize, command: bool) -> Vec<Row> {
    note(format_args!("directory: etcd and {n} agents"));
    let etcd = Etcd::new();
    let mut pins = PinDirs::new(BENCH_PINS, &format!("dir{n}"));
    let nodes: Vec<(String, PathBuf)> = (0..n)
        .map(|i| {
            let name = format!("node{i}");
            let dir = pins.mount(&name);
            (name, dir)
        })
        .collect();
    let mut agents = Agents::start(&etcd, &nodes, &["--capacity", &CAPACITY.to_string()]);
    let revision = directory::map_add(&etcd, VM, RA_A);
    agents.wait_applied(&etcd, revision);

    // The baseline's nodes: tables of the same size, the VM mapped, no agent.
    let mut local_pins = PinDirs::new(BENCH_PINS, &format!("dir{n}-local"));
    let local: Vec<PathBuf> = if command {
        (0..n)
            .map(|i| {
                let dir = local_pins.mount(&format!("node{i}"));
                Node::new(&dir)
                    .load(Some(CAPACITY))
                    .unwrap_or_else(|e| panic!("tables under {}: {e}", dir.display()));
                check(
                    Command::new(netpage_bin())
                        .arg("--pin-dir")
                        .arg(&dir)
                        .args([
                            "map",
                            "add",
                            "--vm",
                            &VM.to_string(),
                            "--real",
                            &RA_A.to_string(),
                        ]),
                );
                dir
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut propagation = Vec::with_capacity(cfg.directory_switches * n);
    let (mut via_etcd, mut locally) = (Vec::new(), Vec::new());
    let mut at = RA_A;
    for k in 0..cfg.directory_switches {
        if k % 10 == 0 {
            note(format_args!(
                "directory: {n} agents, switch {}/{}",
                k + 1,
                cfg.directory_switches
            ));
        }
        let to = if at == RA_A { RA_B } else { RA_A };
        let mut through_etcd = || {
            let (ms, json) = timed_json(&mut directory::switch_command(&etcd, VM, to), &agents);
            let confirmations = json["nodes"].as_array().expect("nodes in switch output");
            assert_eq!(confirmations.len(), n, "every agent waited for: {json}");
            for c in confirmations {
                assert_eq!(c["confirmed"], true, "{json}\n{}", agents.log_tails());
                propagation.push(c["propagation_ms"].as_f64().expect("propagation_ms"));
            }
            via_etcd.push(ms);
        };
        if command && k % 2 == 1 {
            locally.push(timed_json(&mut local_switch(&local, to), &agents).0);
            through_etcd();
        } else {
            through_etcd();
            if command {
                locally.push(timed_json(&mut local_switch(&local, to), &agents).0);
            }
        }
        at = to;
    }
    agents.stop();

    let mut rows = Vec::new();
    let p = Sorted::new(propagation);
    for (stat, value) in [
        ("p50", p.percentile(50.0)),
        ("p99", p.percentile(99.0)),
        ("max", p.max()),
    ] {
        rows.push(
            Row::new(
                "directory_propagation",
                VIA_ETCD,
                json!({"agents": n, "stat": stat}),
                value,
                "ms",
            )
            .repeats(p.count()),
        );
    }
    if command {
        let (etcd_ms, local_ms) = (Sorted::new(via_etcd), Sorted::new(locally));
        rows.push(
            Row::new(
                "directory_switch_command",
                LOCAL,
                json!({"nodes": n, "stat": "p50"}),
                local_ms.median(),
                "ms",
            )
            .repeats(local_ms.count()),
        );
        rows.push(
            Row::new(
                "directory_switch_command",
                VIA_ETCD,
                json!({"agents": n, "stat": "p50"}),
                etcd_ms.median(),
                "ms",
            )
            .against(format!("{LOCAL}, nodes={n}, stat=p50"), local_ms.median())
            .repeats(etcd_ms.count()),
        );
    }
    drop(agents);
    drop(etcd);
    drop(pins);
    drop(local_pins);
    rows
}

/// `netpage --json switch --vm VM --to TO --node DIR ...` over `dirs`.
fn local_switch(dirs: &[PathBuf], to: IpAddr) -> Command {
    let mut c = Command::new(netpage_bin());
    c.args([
        "--json",
        "switch",
        "--vm",
        &VM.to_string(),
        "--to",
        &to.to_string(),
    ]);
    for d in dirs {
        c.arg("--node").arg(d);
    }
    c
}

/// Milliseconds from starting `cmd` to its exit, which must be a success, and its JSON.
fn timed_json(cmd: &mut Command, agents: &Agents) -> (f64, serde_json::Value) {
    let start = Instant::now();
    let out = output(cmd);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_ok(&out, &format!("{cmd:?}\n{}", agents.log_tails()));
    let json =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{cmd:?}: not JSON ({e})"));
    (ms, json)
}
