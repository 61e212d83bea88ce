//! `netpage trace`: the datapath's events under BPF_PROG_TEST_RUN (both hooks, both sides:
//! addresses before and after, reason, verdict, selection, rate, expiry), and the command
//! on a namespace world (probes against events, selection, a killed trace turning itself
//! off, refused input, a node without the trace maps).

use std::{
    io::{BufRead, BufReader, Read},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use netpage::{clock::node_ns, loader::Side};
use netpage_common::{
    counters::Counter,
    maps::{TRACE, TRACE_CPU, TRACE_EVENTS},
    trace::{
        DEADLINE_NS, EVENT_EGRESS, EVENT_PHYSICAL, EVENT_TC, SELECT_IFACES, SELECT_VMS,
        TraceConfig, TraceCpu, TraceEvent, TraceKey, VERDICT_PASS, addr,
    },
};
use netpage_tests::{
    build::{frame4, frame6, udp},
    datapath::{Datapath, Hook, LOOPBACK},
    world::{Node, Options, V4, World, netpage_bin},
};

const VA: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 10));
const RA: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));
const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 5));
const OTHER_VA: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 20));

/// A trace that runs for a minute, selecting what `flags` say, at `rate`.
fn on(flags: u32, rate: u32) -> TraceConfig {
    TraceConfig {
        deadline_ns: node_ns() + 60_000_000_000,
        flags,
        rate,
    }
}

/// The client's datagram to the VM (virtual side), or the VM's reply from its real
/// address (physical side).
fn frame(side: Side) -> Vec<u8> {
    let id = |a| a;
    match side {
        Side::Virtual => frame4(&id, CLIENT, VA, 17, |s, d| udp(s, d, b"trace")),
        Side::Physical => frame4(&id, RA, CLIENT, 17, |s, d| udp(s, d, b"trace")),
    }
}

fn datapath() -> Datapath {
    let mut dp = Datapath::load(1024);
    dp.map(VA, RA);
    dp
}

#[test]
fn datapath_events_carry_addresses_before_and_after_at_both_hooks_and_sides() {
    let mut dp = datapath();
    // Off: no event, nothing counted.
    for hook in Hook::ALL {
        dp.run_at(hook, Side::Virtual, &frame(Side::Virtual), None);
    }
    assert!(dp.trace_events().is_empty(), "events while off");
    assert_eq!(dp.trace_totals(), (0, 0));

    dp.set_trace(on(0, 1000));
    for hook in Hook::ALL {
        for side in [Side::Virtual, Side::Physical] {
            let (verdict, _) = dp.run_at(hook, side, &frame(side), None);
            assert_eq!(verdict, hook.pass());
            let events = dp.trace_events();
            let what = format!("{side} at {}", hook.name());
            assert_eq!(events.len(), 1, "{what}: {events:?}");
            let e = events[0];
            let a = |b| addr(e.family, b).unwrap();
            assert_eq!((e.family, e.proto), (4, 17), "{what}");
            assert_eq!(e.ifindex, LOOPBACK, "{what}");
            assert_eq!(e.verdict, VERDICT_PASS, "{what}");
            assert!(e.time_ns > 0 && e.time_ns <= node_ns(), "{what}");
            let tc = if hook == Hook::Tc { EVENT_TC } else { 0 };
            // A test run's socket buffer arrived on no interface: tc sees it at egress.
            let e = TraceEvent {
                flags: e.flags & !EVENT_EGRESS,
                ..e
            };
            match side {
                Side::Virtual => {
                    assert_eq!(e.flags, tc, "{what}");
                    assert_eq!(e.reason, Counter::V4ToReal as u32, "{what}");
                    assert_eq!((a(e.src_before), a(e.dst_before)), (CLIENT, VA), "{what}");
                    assert_eq!((a(e.src_after), a(e.dst_after)), (CLIENT, RA), "{what}");
                }
                Side::Physical => {
                    assert_eq!(e.flags, tc | EVENT_PHYSICAL, "{what}");
                    assert_eq!(e.reason, Counter::V4ToVirtual as u32, "{what}");
                    assert_eq!((a(e.src_before), a(e.dst_before)), (RA, CLIENT), "{what}");
                    assert_eq!((a(e.src_after), a(e.dst_after)), (VA, CLIENT), "{what}");
                }
            }
        }
    }
    assert_eq!(dp.trace_totals(), (4, 0));
    // IPv6: the 16-byte addresses.
    let (va6, ra6, client6): (IpAddr, IpAddr, IpAddr) = (
        "fd00::10".parse().unwrap(),
        "2001:db8:a::10".parse().unwrap(),
        "2001:db8:c::5".parse().unwrap(),
    );
    dp.map(va6, ra6);
    let id = |a| a;
    let v6 = frame6(&id, client6, va6, 17, |s, d| udp(s, d, b"trace"));
    for hook in Hook::ALL {
        dp.run_at(hook, Side::Virtual, &v6, None);
        let events = dp.trace_events();
        assert_eq!(events.len(), 1, "{}", hook.name());
        let e = events[0];
        let a = |b| addr(e.family, b).unwrap();
        assert_eq!(
            (e.family, e.proto, e.reason),
            (6, 17, Counter::V6ToReal as u32)
        );
        assert_eq!((a(e.src_before), a(e.dst_before)), (client6, va6));
        assert_eq!((a(e.src_after), a(e.dst_after)), (client6, ra6));
    }
}

#[test]
fn datapath_trace_selects_rates_and_expires() {
    let mut dp = datapath();
    let run = |dp: &mut Datapath, n: usize| {
        for _ in 0..n {
            for hook in Hook::ALL {
                dp.run_at(hook, Side::Virtual, &frame(Side::Virtual), None);
            }
        }
        dp.trace_events()
    };
    // Another VM selected: nothing; this one (its VA before, or its RA after): every packet.
    dp.trace_select(TraceKey::vm(OTHER_VA), true);
    dp.set_trace(on(SELECT_VMS, 1000));
    assert!(run(&mut dp, 2).is_empty(), "another VM's trace");
    dp.trace_select(TraceKey::vm(RA), true);
    assert_eq!(run(&mut dp, 2).len(), 4, "selected by the address after");
    dp.trace_select(TraceKey::vm(RA), false);
    dp.trace_select(TraceKey::vm(VA), true);
    assert_eq!(run(&mut dp, 2).len(), 4, "selected by the address before");
    // By interface.
    dp.set_trace(on(SELECT_IFACES, 1000));
    assert!(run(&mut dp, 1).is_empty(), "another interface's trace");
    dp.trace_select(TraceKey::iface(LOOPBACK), true);
    assert_eq!(run(&mut dp, 1).len(), 2, "the interface's trace");
    // The rate: within one window, the rest is lost.
    let (sent, lost) = dp.trace_totals();
    dp.set_trace(on(0, 3));
    // A new one-second window on every CPU, each of which allows 3 (test runs may land on
    // either of two CPUs, or more).
    std::thread::sleep(Duration::from_millis(1100));
    let events = run(&mut dp, 5);
    assert!((3..=6).contains(&events.len()), "rate 3: {}", events.len());
    let (sent2, lost2) = dp.trace_totals();
    assert_eq!(sent2 - sent, events.len() as u64);
    assert_eq!(lost2 - lost, 10 - events.len() as u64, "lost over the rate");
    // A deadline past: off, though set.
    dp.set_trace(TraceConfig {
        deadline_ns: node_ns() - 1,
        flags: 0,
        rate: 1000,
    });
    assert!(run(&mut dp, 2).is_empty(), "an expired trace");
    assert_eq!(dp.trace_totals(), (sent2, lost2));
}

/// A running `netpage trace` on `node`: its stdout, and stderr's first line read (the
/// trace is on).
struct Trace {
    child: Child,
}

impl Trace {
    fn start(world: &World, node: Node, args: &[&str]) -> Self {
        let mut child = world
            .ns(node)
            .command(netpage_bin())
            .arg("--pin-dir")
            .arg(world.pin_dir(node))
            .arg("trace")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netpage trace");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("read netpage's stderr");
        assert!(
            line.starts_with("netpage: tracing"),
            "trace did not start: {line}"
        );
        Self { child }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Stops it with SIGINT and returns its exit code and stdout's JSON lines.
    fn stop(mut self) -> (i32, Vec<serde_json::Value>) {
        self.signal(libc::SIGINT);
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.child.wait().unwrap();
        let lines = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (status.code().unwrap_or(-1), lines)
    }
}

/// Sends `n` datagrams from the client to `dst`, each echoed before the next; returns how
/// many were sent (a lost one is sent again).
fn probe(world: &World, dst: SocketAddr, n: usize) -> usize {
    let socket = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut sent = 0;
    let mut buf = [0u8; 64];
    for i in 0..n {
        let msg = format!("probe {i}");
        loop {
            socket.send_to(msg.as_bytes(), dst).unwrap();
            sent += 1;
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                assert_eq!(&buf[..len], msg.as_bytes());
                break;
            }
            assert!(sent < n + 5, "probes to {dst} unanswered");
        }
    }
    sent
}

/// A world with netpage on every edge and the VMs mapped (IPv4 is enough here).
fn netpage_world(options: Options) -> World {
    let world = World::with(options);
    world.attach_all();
    world.map_all(V4.va, V4.ra_a);
    if options.second_vm {
        world.map_all(V4.va2, V4.ra2);
    }
    world
}

fn open_map(dir: &Path, name: &str) -> Map {
    let data = MapData::from_pin(dir.join("maps").join(name)).expect("pinned trace map");
    Map::from_map_data(data).unwrap()
}

/// The node's trace configuration, as the datapath reads it.
fn config(dir: &Path) -> TraceConfig {
    let map = open_map(dir, TRACE);
    let array: Array<_, TraceConfig> = Array::try_from(&map).unwrap();
    array.get(&0, 0).unwrap()
}

/// The node's trace events sent and lost.
fn totals(dir: &Path) -> (u64, u64) {
    let map = open_map(dir, TRACE_CPU);
    let array: PerCpuArray<_, TraceCpu> = PerCpuArray::try_from(&map).unwrap();
    let per_cpu = array.get(&0, 0).unwrap();
    per_cpu
        .iter()
        .fold((0, 0), |(s, l), c| (s + c.sent, l + c.lost))
}

fn ip(v: &serde_json::Value) -> Option<IpAddr> {
    v.as_str().map(|s| s.parse().unwrap())
}

#[test]
fn trace_shows_each_probe_translated_on_both_sides_of_the_gateway() {
    let world = netpage_world(Options::default());
    let gw = world.pin_dir(Node::Gw);
    assert_eq!(config(&gw).deadline_ns, 0, "tracing is off until asked for");
    let echo = world.udp_echo(Node::Vm, SocketAddr::new(V4.va, 7000));
    let trace = Trace::start(&world, Node::Gw, &["--vm", &V4.va.to_string(), "--json"]);
    let on = config(&gw);
    assert!(
        on.deadline_ns > node_ns() && on.flags == SELECT_VMS,
        "{on:?}"
    );
    let sent = probe(&world, echo.addr(), 5);
    // The replies' events are in the ring by now; give the reader a moment.
    std::thread::sleep(Duration::from_millis(300));
    let (code, lines) = trace.stop();
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(config(&gw), TraceConfig::default(), "tracing is off again");
    let (summary, events) = lines.split_last().expect("a summary");
    assert_eq!(summary["lost"], 0, "{summary}");
    let udp: Vec<_> = events.iter().filter(|e| e["proto"] == 17).collect();
    let on = |iface: &str, at: &str| -> Vec<_> {
        udp.iter()
            .filter(|e| e["iface"] == iface && e["at"] == at)
            .copied()
            .collect()
    };
    let (to_vm, from_vm, to_client) =
        (on("g0", "ingress"), on("ga", "ingress"), on("g0", "egress"));
    // The echoes leave through g0, whose egress runs the physical side's program: they
    // pass it untouched (their source is a VA already).
    assert_eq!(
        (to_vm.len(), from_vm.len(), to_client.len()),
        (sent, sent, sent),
        "{events:#?}"
    );
    assert_eq!(
        udp.len(),
        3 * sent,
        "only the probes and their echoes: {events:#?}"
    );
    assert_eq!(summary["events"], events.len() as u64);
    for e in to_client {
        assert_eq!(
            (e["side"].as_str(), e["reason"].as_str()),
            (Some("physical"), Some("pass_miss"))
        );
        assert_eq!(
            (ip(&e["src_before"]), ip(&e["src_after"])),
            (Some(V4.va), Some(V4.va))
        );
    }
    for e in to_vm {
        assert_eq!(
            (e["side"].as_str(), e["hook"].as_str()),
            (Some("virtual"), Some("tc"))
        );
        assert_eq!(
            (ip(&e["src_before"]), ip(&e["dst_before"])),
            (Some(V4.client), Some(V4.va))
        );
        assert_eq!(
            (ip(&e["src_after"]), ip(&e["dst_after"])),
            (Some(V4.client), Some(V4.ra_a))
        );
        assert_eq!(
            (e["verdict"].as_str(), e["reason"].as_str()),
            (Some("pass"), Some("translated_v4_to_real"))
        );
    }
    for e in from_vm {
        assert_eq!(e["side"], "physical");
        assert_eq!(
            (ip(&e["src_before"]), ip(&e["dst_before"])),
            (Some(V4.ra_a), Some(V4.client))
        );
        assert_eq!(
            (ip(&e["src_after"]), ip(&e["dst_after"])),
            (Some(V4.va), Some(V4.client))
        );
        assert_eq!(
            (e["verdict"].as_str(), e["reason"].as_str()),
            (Some("pass"), Some("translated_v4_to_virtual"))
        );
    }
}

#[test]
fn trace_of_another_vm_sees_none_of_this_ones_packets() {
    let world = netpage_world(Options {
        second_vm: true,
        ..Options::default()
    });
    let echo = world.udp_echo(Node::Vm, SocketAddr::new(V4.va, 7000));
    let trace = Trace::start(&world, Node::Gw, &["--vm", &V4.va2.to_string(), "--json"]);
    let (sent_before, _) = totals(&world.pin_dir(Node::Gw));
    probe(&world, echo.addr(), 5);
    std::thread::sleep(Duration::from_millis(300));
    let (code, lines) = trace.stop();
    assert_eq!(code, 0);
    assert_eq!(lines, vec![serde_json::json!({"events": 0, "lost": 0})]);
    assert_eq!(
        totals(&world.pin_dir(Node::Gw)).0,
        sent_before,
        "events sent"
    );
}

#[test]
fn a_killed_trace_turns_itself_off_at_its_deadline() {
    let world = netpage_world(Options::default());
    let gw = world.pin_dir(Node::Gw);
    let echo = world.udp_echo(Node::Vm, SocketAddr::new(V4.va, 7000));
    let mut trace = Trace::start(&world, Node::Gw, &["--json"]);
    probe(&world, echo.addr(), 3);
    trace.signal(libc::SIGKILL);
    trace.child.wait().unwrap();
    let left = config(&gw);
    assert!(
        left.deadline_ns != 0,
        "a killed trace cannot clear its flag"
    );
    assert!(left.deadline_ns <= node_ns() + DEADLINE_NS);
    let (sent, lost) = totals(&gw);
    assert!(sent >= 6, "the probes and echoes were traced: {sent}");
    // Until the deadline another trace is refused; after it the datapath is quiet.
    let busy = world.netpage(Node::Gw, &["--json", "trace"]);
    assert_eq!(busy.status.code(), Some(3), "{busy:?}");
    let wait = Instant::now();
    while node_ns() < left.deadline_ns {
        assert!(wait.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(100));
    }
    probe(&world, echo.addr(), 5);
    assert_eq!(totals(&gw), (sent, lost), "events after the deadline");
    // A new trace starts, without what the killed one left unread.
    let (code, lines) = Trace::start(&world, Node::Gw, &["--json"]).stop();
    assert_eq!(code, 0);
    assert_eq!(lines, vec![serde_json::json!({"events": 0, "lost": 0})]);
    assert_eq!(config(&gw), TraceConfig::default());
}

#[test]
fn trace_refuses_bad_input_and_a_node_without_its_maps() {
    let world = netpage_world(Options::default());
    let run = |args: &[&str]| {
        let out = world.netpage(Node::Gw, args);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {out:?}"));
        (
            out.status.code(),
            json["error"]["kind"].as_str().map(String::from),
            json,
        )
    };
    let (code, kind, json) = run(&["--json", "trace", "--iface", "nosuch0"]);
    assert_eq!(
        (code, kind.as_deref()),
        (Some(4), Some("not_found")),
        "{json}"
    );
    assert_eq!(json["error"]["iface"], "nosuch0");
    let (code, kind, _) = run(&["--json", "trace", "--vm", "10.0.0.300"]);
    assert_eq!((code, kind.as_deref()), (Some(2), Some("bad_input")));
    let (code, kind, _) = run(&["--json", "trace", "--rate", "0"]);
    assert_eq!((code, kind.as_deref()), (Some(2), Some("bad_input")));
    // A node attached by a build without the trace maps: told to attach again.
    let gw = world.pin_dir(Node::Gw);
    assert_eq!(
        config(&gw),
        TraceConfig::default(),
        "the last trace turned it off"
    );
    std::fs::remove_file(gw.join("maps").join(TRACE_EVENTS)).unwrap();
    let (code, kind, json) = run(&["--json", "trace"]);
    assert_eq!(
        (code, kind.as_deref()),
        (Some(3), Some("conflict")),
        "{json}"
    );
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("attach its interfaces again"), "{message}");
    // Other commands still work, and attaching again brings the maps back.
    world.netpage_ok(Node::Gw, &["stats"]);
    world.attach(Node::Gw, "g0", true);
    assert!(gw.join("maps").join(TRACE_EVENTS).exists());
    let (code, lines) = Trace::start(&world, Node::Gw, &["--json", "--iface", "g0"]).stop();
    assert_eq!(code, 0, "{lines:?}");
}
