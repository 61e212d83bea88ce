//! Segmentation in the namespace world: every edge has locators (its uplink addresses; the
//! gateway's is also every host's default locator), the VM is mapped with method encap,
//! and the demo's move (make-before-break, every edge switched with one `netpage switch`)
//! loses no probe, keeps a TCP connection, and takes new ones after it. The outer family
//! is the VA's, or the other one: segmentation carries either family over either.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use netpage_tests::world::{Addrs, Host, Node, Options, Prober, V4, V6, Vm, World};

const MS: Duration = Duration::from_millis(1);
const PORT: u16 = 7100;

/// The family whose locators a world uses.
fn family(v6: bool) -> &'static Addrs {
    if v6 { &V6 } else { &V4 }
}

/// A world whose edges have both locators, the gateway's IPv4 one as default, and the VM
/// mapped with method encap at host A's locator of family `outer_v6`.
fn segment_world(f: &Addrs, outer_v6: bool) -> World {
    let world = World::with(Options {
        host_link: true,
        ..Options::default()
    });
    world.set_locators();
    world.attach_all();
    world.segment_all(f.va, Node::HostA.locator(family(outer_v6)));
    world
}

/// Sends `len` bytes through the echo server on `stream` and checks they come back whole.
fn echo_intact(mut stream: TcpStream, len: usize) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; len];
    let sender = {
        let mut s = stream.try_clone().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let data = data.clone();
        thread::spawn(move || {
            for chunk in data.chunks(1024) {
                if s.write_all(chunk).is_err() {
                    return;
                }
                thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let ok = stream.read_exact(&mut back).is_ok() && back == data;
    sender.join().unwrap();
    ok
}

fn a_move_under_segmentation_loses_nothing(f: &Addrs, outer_v6: bool) {
    let world = segment_world(f, outer_v6);
    let server = world.udp_echo(Node::Vm, SocketAddr::new(f.va, PORT));
    let _echo = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, PORT + 1));
    let tcp_addr = SocketAddr::new(f.va, PORT + 1);
    let stream = world
        .tcp_connect(Node::Client, tcp_addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to the VM: {e}\n{}", world.diagnostics()));
    let tcp = thread::spawn(move || echo_intact(stream, 1 << 20));
    let socket = world.udp_socket(Node::Client, SocketAddr::new(f.client, 0));
    let probes = Prober::spawn(socket, server.addr(), MS, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(300));
    let to = Node::HostB.locator(family(outer_v6));
    world.replug_vm(Vm::One, Host::B, || {
        let out = world.switch_all(f.va, to);
        assert_eq!(out["to"], to.to_string(), "{out}");
        assert_eq!(out["drain_until_ms"], serde_json::Value::Null, "{out}");
    });
    thread::sleep(Duration::from_millis(300));
    let probes = probes.stop();
    let tcp_intact = tcp.join().expect("the TCP stream");
    let counter = |node, name| world.counter(node, name);
    let (decap_b, encap_gw) = (
        counter(Node::HostB, "decapsulated"),
        counter(Node::Gw, "encapsulated"),
    );
    println!(
        "{} over {} locators: {probes}; TCP intact: {tcp_intact}; gateway encapsulated \
         {encap_gw}, host B decapsulated {decap_b}",
        f.va,
        if outer_v6 { "IPv6" } else { "IPv4" },
    );
    let diagnose = || format!("{probes}\n{}", world.diagnostics());
    assert_eq!(probes.lost, 0, "{}", diagnose());
    assert_eq!(probes.strangers, 0, "{}", diagnose());
    assert!(tcp_intact, "the TCP stream arrived damaged\n{}", diagnose());
    assert!(decap_b > 0 && encap_gw > 0, "{}", diagnose());
    // A new connection after the move reaches the VM at host B.
    let mut fresh = world
        .tcp_connect(Node::Client, tcp_addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("a new connection after the move: {e}\n{}", diagnose()));
    fresh.write_all(b"after the move\n").unwrap();
    let mut line = [0u8; 15];
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fresh.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"after the move\n");
    // The VM's own packets now leave host B encapsulated; host A sends nothing more.
    let a_before = counter(Node::HostA, "encapsulated");
    let b_before = counter(Node::HostB, "encapsulated");
    assert!(world.ping(Node::Vm, f.client), "the VM reaches the client");
    assert_eq!(counter(Node::HostA, "encapsulated"), a_before);
    assert!(counter(Node::HostB, "encapsulated") > b_before);
    // No probe and no reply crossed the network unencapsulated, untranslated.
    assert_eq!(counter(Node::Gw, "translated_v4_to_real"), 0);
    assert_eq!(counter(Node::Gw, "translated_v6_to_real"), 0);
}

#[test]
fn a_move_under_segmentation_loses_nothing_v4() {
    a_move_under_segmentation_loses_nothing(&V4, false);
}

#[test]
fn a_move_under_segmentation_loses_nothing_v6() {
    a_move_under_segmentation_loses_nothing(&V6, true);
}

#[test]
fn a_move_under_segmentation_loses_nothing_v6_over_v4() {
    a_move_under_segmentation_loses_nothing(&V6, false);
}

#[test]
fn a_node_with_a_locator_refuses_the_tc_hook_and_a_locator_refuses_a_tc_node() {
    let world = World::new();
    world.netpage_ok(Node::Gw, &["locator", "--own", "198.18.3.1"]);
    let out = world.netpage(
        Node::Gw,
        &["attach", "g0", "--side", "virtual", "--hook", "tc"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("segmentation runs in XDP"));
    // auto chooses XDP there, and says why.
    let status = world.netpage_ok(Node::Gw, &["attach", "g0", "--side", "virtual"]);
    assert!(status.contains("segmentation runs in XDP"), "{status}");
    // A node attached at tc cannot take a locator until it is attached at XDP.
    world.netpage_ok(
        Node::HostA,
        &["attach", "a0", "--side", "physical", "--hook", "tc"],
    );
    let out = world.netpage(Node::HostA, &["locator", "--own", "198.18.3.2"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("a0 is attached at the tc hook"));
    // Settings are shown, and a mapping of method encap is listed as one.
    let shown = world.netpage_json(Node::Gw, &["locator"]);
    assert_eq!(shown["locators"][0], "198.18.3.1");
    assert_eq!(shown["tunnel_mtu"], 1500);
    world.netpage_ok(
        Node::Gw,
        &[
            "map",
            "add",
            "--vm",
            "198.19.0.10",
            "--locator",
            "2001:db8:3::2",
        ],
    );
    let list = world.netpage_json(Node::Gw, &["map", "list"]);
    assert_eq!(list["segment"][0]["locator"], "2001:db8:3::2", "{list}");
    let again = world.netpage(
        Node::Gw,
        &[
            "map",
            "add",
            "--vm",
            "198.19.0.10",
            "--real",
            "198.18.10.100",
        ],
    );
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    let small = world.netpage(Node::Gw, &["locator", "--tunnel-mtu", "1300"]);
    assert_eq!(small.status.code(), Some(2), "{small:?}");
}
