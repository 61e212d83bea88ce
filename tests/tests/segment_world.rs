//! Segmentation in the namespace world: every edge has locators (its uplink addresses; the
//! gateway's is also every host's default locator), the VM is mapped with method encap,
//! and the demo's move (make-before-break, every edge switched with one `netpage switch`)
//! loses no probe, keeps a TCP connection, and takes new ones after it. The outer family
//! is the VA's, or the other one: segmentation carries either family over either. At the
//! tc hook, senders with offloads on (partial checksums, GSO packets) are tunnelled too.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use netpage_tests::{
    bulk::{echo_bulk, tcp_csum_errors},
    world::{Addrs, Host, Node, Options, Prober, V4, V6, Vm, World},
};

const MS: Duration = Duration::from_millis(1);
const PORT: u16 = 7100;

/// The family whose locators a world uses.
fn family(v6: bool) -> &'static Addrs {
    if v6 { &V6 } else { &V4 }
}

/// A world whose edges have both locators, the gateway's IPv4 one as default, and the VM
/// mapped with method encap at host A's locator of family `outer_v6`.
fn segment_world(f: &Addrs, outer_v6: bool) -> World {
    segment_world_with(f, outer_v6, &[])
}

/// [`segment_world`], every edge attached with `how` (`attach` arguments).
fn segment_world_with(f: &Addrs, outer_v6: bool, how: &[&str]) -> World {
    let world = World::with(Options {
        host_link: true,
        ..Options::default()
    });
    world.set_locators();
    for (node, ifname, virtual_side) in world.attachments() {
        let mut args = world.attach_args(ifname, virtual_side);
        args.extend(how.iter().map(|a| a.to_string()));
        world.netpage_ok(node, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
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
fn a_node_with_a_locator_takes_either_hook_and_auto_chooses_xdp() {
    let world = World::new();
    world.netpage_ok(Node::Gw, &["locator", "--own", "198.18.3.1"]);
    world.netpage_ok(
        Node::Gw,
        &["attach", "g0", "--side", "virtual", "--hook", "tc"],
    );
    let status = world.netpage_json(Node::Gw, &["status"]);
    assert_eq!(status["interfaces"][0]["hook"], "tc", "{status}");
    // auto chooses XDP there, and says why.
    world.netpage_ok(Node::Gw, &["detach", "g0"]);
    let status = world.netpage_ok(Node::Gw, &["attach", "g0", "--side", "virtual"]);
    assert!(
        status.contains("XDP is segmentation's quicker hook"),
        "{status}"
    );
    // A node attached at tc takes a locator.
    world.netpage_ok(
        Node::HostA,
        &["attach", "a0", "--side", "physical", "--hook", "tc"],
    );
    world.netpage_ok(Node::HostA, &["locator", "--own", "198.18.3.2"]);
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

/// With tc at every edge and offloads on at the senders (the client and the VM: checksum
/// offload, TSO and GSO), 1 MiB each way between the client and the VM arrives intact under
/// segmentation: the edges tunnel GSO packets whose segments fit whole, with their partial
/// checksums, answer those whose segments do not, and open what arrives; neither end
/// counts a checksum error.
///
/// `between`: how the link between the gateway and host A carries what the edges tunnel.
/// [`Between::Segmented`]: with transmit offload off, so the kernel cuts a tunnelled GSO
/// packet into its segments and completes their checksums on the way out, and the other
/// edge opens segments. [`Between::Whole`]: with offloads on, so a tunnelled GSO packet
/// crosses whole and the other edge's tc hook opens a whole GSO tunnel packet, which
/// reaches its receiver whole (its segments cut, if at all, behind that edge).
fn offloaded_tcp_through_tc_arrives_intact(f: &Addrs, between: Between) {
    let world = segment_world_with(f, f.va.is_ipv6(), &["--hook", "tc"]);
    let mut offloaded = vec![(Node::Client, "c0"), (Node::Vm, "eth0")];
    if between == Between::Whole {
        offloaded.extend([(Node::Gw, "ga"), (Node::HostA, "a0")]);
    }
    for (node, ifname) in offloaded {
        world.exec_ok(
            node,
            "ethtool",
            &[
                "-K",
                ifname,
                "tx",
                "on",
                "tso",
                "on",
                "gso",
                "on",
                "tx-udp_tnl-segmentation",
                "on",
                "tx-udp_tnl-csum-segmentation",
                "on",
            ],
        );
    }
    let edges_rx = || {
        [(Node::HostA, "a0"), (Node::Gw, "ga")]
            .map(|(node, ifname)| world.ns(node).rx_counts(ifname))
    };
    let rx_before = edges_rx();
    let before = [Node::Client, Node::Vm].map(|n| tcp_csum_errors(&world, n));
    let server = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, PORT + 1));
    let took = echo_bulk(&world, server.addr(), 1 << 20)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", f.va, world.diagnostics()));
    let after = [Node::Client, Node::Vm].map(|n| tcp_csum_errors(&world, n));
    let counter = |node, name| world.counter(node, name);
    // Bytes per frame each edge received from the other meanwhile.
    let per_frame: Vec<f64> = edges_rx()
        .iter()
        .zip(&rx_before)
        .map(|(now, then)| (now.0 - then.0) as f64 / (now.1 - then.1).max(1) as f64)
        .collect();
    println!(
        "{} through tc with offloads ({between:?} between the edges): 1 MiB each way in \
         {took:.2?}; gateway encapsulated {}, answered {}, decapsulated {}; host A \
         encapsulated {}, answered {}, decapsulated {}; bytes per frame received by host A \
         {:.0}, by the gateway {:.0}",
        f.va,
        counter(Node::Gw, "encapsulated"),
        counter(Node::Gw, "answered_too_big"),
        counter(Node::Gw, "decapsulated"),
        counter(Node::HostA, "encapsulated"),
        counter(Node::HostA, "answered_too_big"),
        counter(Node::HostA, "decapsulated"),
        per_frame[0],
        per_frame[1],
    );
    assert_eq!(before, after, "checksum errors at the client, the VM");
    for node in [Node::Gw, Node::HostA] {
        assert!(counter(node, "encapsulated") > 0, "{node:?}");
        assert!(counter(node, "decapsulated") > 0, "{node:?}");
        // The senders' first full-sized segments did not fit the tunnel: answered, and the
        // answers, completed on links without checksum offload, reached them.
        assert!(counter(node, "answered_too_big") > 0, "{node:?}");
    }
    match between {
        // The gateway tunnelled GSO packets whole, which the kernel cut into segments
        // after it: host A opened more packets than the gateway made.
        Between::Segmented => assert!(
            counter(Node::Gw, "encapsulated") < counter(Node::HostA, "decapsulated"),
            "no GSO packet went through the tunnel whole"
        ),
        // Each edge received tunnelled frames larger, on average, than the link's MTU:
        // whole GSO tunnel packets, which it opened.
        Between::Whole => {
            for (at, bytes) in ["host A", "the gateway"].into_iter().zip(&per_frame) {
                assert!(
                    *bytes > 1500.0,
                    "{at} received {bytes:.0} bytes per frame: no whole GSO packet"
                );
            }
        }
    }
    world.assert_hook(Node::HostA, "tc");
}

/// How the link between two edges carries a tunnelled GSO packet (see
/// [`offloaded_tcp_through_tc_arrives_intact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Between {
    Segmented,
    Whole,
}

#[test]
fn offloaded_tcp_through_tc_arrives_intact_v4() {
    offloaded_tcp_through_tc_arrives_intact(&V4, Between::Segmented);
}

#[test]
fn offloaded_tcp_through_tc_arrives_intact_v6() {
    offloaded_tcp_through_tc_arrives_intact(&V6, Between::Segmented);
}

#[test]
fn offloaded_tcp_tunnelled_whole_between_tc_edges_arrives_intact_v4() {
    offloaded_tcp_through_tc_arrives_intact(&V4, Between::Whole);
}

#[test]
fn offloaded_tcp_tunnelled_whole_between_tc_edges_arrives_intact_v6() {
    offloaded_tcp_through_tc_arrives_intact(&V6, Between::Whole);
}
