//! Part 5: the gap a VM's move leaves in a live stream, in the namespace world.
//!
//! The client probes the VM's UDP echo every millisecond. Each repeat is two windows of
//! the same length: a quiet one (nothing happens: the baseline of a busy machine's own
//! jitter), then one in which the VM moves to the other host and one `netpage switch`
//! process switches every node (gateway and both hosts; it installs every reverse entry
//! before any V2R update). Each window reports the probes lost and the largest time between
//! two answers.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, stats::Sorted},
    netns::{assert_ok, output},
    world::{Host, Node, ProbeReport, Prober, V4, Vm, World, netpage_bin},
};

/// Time between probes.
const INTERVAL: Duration = Duration::from_millis(1);
/// Probing before the move starts, and after the switch ends.
const LEAD: Duration = Duration::from_millis(300);
const TAIL: Duration = Duration::from_millis(400);
/// The UDP echo port of the VM.
const PORT: u16 = 7000;

/// The variant names of the two windows.
pub const QUIET: &str = "quiet window";
pub const MOVE: &str = "move + switch";

/// How the VM changes hosts (see [`move_vm`]).
pub const HOW: &str = "make-before-break (`World::replug_vm`: a new port at the destination \
                       host, netpage attached to it, the VM's routes turned to it), then one \
                       `netpage switch --node gw --node hostA --node hostB` while the VM is \
                       plugged into both hosts, then the old port unplugged";

/// One window: what the prober saw, and how long the move and the switch took.
struct Window {
    probes: ProbeReport,
    move_ms: f64,
    switch_ms: f64,
}

/// Moves the VM back and forth `cfg.gap_switches` times, each after a quiet window.
pub fn run(cfg: &Config) -> Vec<Row> {
    note("switch gap: building the namespace world");
    let world = World::new();
    world.attach_all();
    world.map_all(V4.va, V4.ra_a);
    let target = SocketAddr::new(V4.va, PORT);
    let _echo = world.udp_echo(Node::Vm, target);
    assert!(world.ping(Node::Client, V4.va), "the VM answers no ping");

    let (mut quiet, mut moved) = (Vec::new(), Vec::new());
    for i in 0..cfg.gap_switches {
        quiet.push(window(&world, target, |_| (0.0, 0.0)));
        let to = match world.vm_host(Vm::One) {
            Host::A => Host::B,
            Host::B => Host::A,
        };
        let w = window(&world, target, |w| move_and_switch(w, to));
        note(format_args!(
            "switch gap: move {}/{} to host {to:?}: {} lost, largest gap {:.1} ms \
             (move {:.1} ms, switch {:.1} ms); quiet window before: {} lost, {:.1} ms",
            i + 1,
            cfg.gap_switches,
            w.probes.lost,
            ms(w.probes.largest_gap),
            w.move_ms,
            w.switch_ms,
            quiet[i].probes.lost,
            ms(quiet[i].probes.largest_gap),
        ));
        moved.push(w);
    }
    rows(&quiet, &moved)
}

/// Moves the VM to `to` make-before-break, switching every node while it is plugged into
/// both hosts; returns the time of the move without the switch, and of the switch.
fn move_and_switch(world: &World, to: Host) -> (f64, f64) {
    let start = Instant::now();
    let mut switch_ms = 0.0;
    world.replug_vm(Vm::One, to, || {
        let t = Instant::now();
        switch_all(world, ra(to));
        switch_ms = ms(t.elapsed());
    });
    (ms(start.elapsed()) - switch_ms, switch_ms)
}

/// The VM's real address at `host`.
fn ra(host: Host) -> IpAddr {
    match host {
        Host::A => V4.ra_a,
        Host::B => V4.ra_b,
    }
}

/// One `netpage switch` for the gateway and both hosts.
fn switch_all(world: &World, to: IpAddr) {
    let dirs: Vec<PathBuf> = [Node::Gw, Node::HostA, Node::HostB]
        .into_iter()
        .map(|n| world.pin_dir(n))
        .collect();
    let mut cmd = Command::new(netpage_bin());
    cmd.args([
        "switch",
        "--vm",
        &V4.va.to_string(),
        "--to",
        &to.to_string(),
    ]);
    for d in &dirs {
        cmd.arg("--node").arg(d);
    }
    let out = output(&mut cmd);
    assert_ok(&out, &format!("{cmd:?}"));
}

/// Probes for `LEAD`, runs `action` (which returns its move and switch times), probes for
/// `TAIL` more and reports.
fn window(world: &World, target: SocketAddr, action: impl FnOnce(&World) -> (f64, f64)) -> Window {
    let client = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    let probes = Prober::spawn(client, target, INTERVAL, Duration::from_secs(60));
    thread::sleep(LEAD);
    let (move_ms, switch_ms) = action(world);
    thread::sleep(TAIL);
    Window {
        probes: probes.stop(),
        move_ms,
        switch_ms,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median and maximum of each quantity, the move windows against the quiet ones.
fn rows(quiet: &[Window], moved: &[Window]) -> Vec<Row> {
    type Pick = fn(&Window) -> f64;
    let quantities: [(&str, &str, Pick); 2] = [
        ("switch_gap_lost", "probes", |w| w.probes.lost as f64),
        ("switch_gap_largest", "ms", |w| ms(w.probes.largest_gap)),
    ];
    let params = |stat: &str, w: &[Window]| {
        let sent = Sorted::new(w.iter().map(|w| w.probes.sent as f64).collect());
        json!({
            "stat": stat,
            "interval_ms": ms(INTERVAL),
            "probes_per_window": sent.median(),
        })
    };
    let mut rows = Vec::new();
    for (measure, unit, pick) in quantities {
        let q = Sorted::new(quiet.iter().map(pick).collect());
        let m = Sorted::new(moved.iter().map(pick).collect());
        for (stat, qv, mv) in [("p50", q.median(), m.median()), ("max", q.max(), m.max())] {
            rows.push(Row::new(measure, QUIET, params(stat, quiet), qv, unit).repeats(q.count()));
            let mut row = Row::new(measure, MOVE, params(stat, moved), mv, unit).repeats(m.count());
            if qv > 0.0 {
                row = row.against(format!("{QUIET}, stat={stat}"), qv);
            }
            rows.push(row);
        }
    }
    for (measure, pick) in [
        ("switch_gap_move", (|w| w.move_ms) as Pick),
        ("switch_gap_command", |w| w.switch_ms),
    ] {
        let s = Sorted::new(moved.iter().map(pick).collect());
        for (stat, v) in [("p50", s.median()), ("max", s.max())] {
            rows.push(Row::new(measure, MOVE, json!({"stat": stat}), v, "ms").repeats(s.count()));
        }
    }
    rows
}
