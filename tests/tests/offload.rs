//! Senders with checksum offload and TSO on, through translating edges: the tc hook fixes
//! the partial checksums (CHECKSUM_PARTIAL) and GSO packets that such senders hand over,
//! where XDP cannot tell them from final ones.
//!
//! The client and the VM send with checksum offload and TSO on, so that the first
//! translator on each path (the gateway's client port, host A's VM port) sees partial sums
//! and GSO packets. Every link after it has transmit offload off: the kernel segments the
//! packet and completes its checksum in software on the way out of the first translator's
//! node, from the translated partial sum, and the second translator and the receiver see
//! final checksums, which the receiver verifies. A partial sum translated wrong shows up as
//! the receiver's checksum errors (`InCsumErrors`) and a stalled transfer. (Were the
//! checksum completed only at the receiver, the two translators' errors, of opposite signs,
//! would cancel out.)

use std::net::SocketAddr;

use netpage_tests::{
    bulk::{echo_bulk, tcp_csum_errors},
    world::{Addrs, Node, Options, V4, V6, World},
};

/// Bytes sent each way per family.
const BULK: usize = 64 << 20;

/// The world with offloads on at the senders (the client and the VM), netpage attached on
/// every edge with `how` (`attach` arguments), and the VM mapped at host A in both
/// families.
fn offloaded_world(how: &[&str]) -> World {
    let world = World::with(Options::default());
    for (node, ifname) in [(Node::Client, "c0"), (Node::Vm, "eth0")] {
        world.exec_ok(
            node,
            "ethtool",
            &["-K", ifname, "tx", "on", "tso", "on", "gso", "on"],
        );
    }
    for (node, ifname, virtual_side) in world.attachments() {
        let mut args = world.attach_args(ifname, virtual_side);
        args.extend(how.iter().map(|a| a.to_string()));
        world.netpage_json(node, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for f in [&V4, &V6] {
        world.map_all(f.va, f.ra_a);
    }
    world
}

/// With tc at every edge, 64 MiB each way per family arrive whole, and neither the client
/// nor the VM counts a single checksum error.
#[test]
fn offloaded_bulk_tcp_through_tc_arrives_whole() {
    let world = offloaded_world(&["--hook", "tc"]);
    for f in [&V4, &V6] {
        let before = [Node::Client, Node::Vm].map(|n| tcp_csum_errors(&world, n));
        let server = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, 7100));
        let took = echo_bulk(&world, server.addr(), BULK)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", family(f), world.diagnostics()));
        let after = [Node::Client, Node::Vm].map(|n| tcp_csum_errors(&world, n));
        let mb_s = 2.0 * BULK as f64 / took.as_secs_f64() / 1e6;
        println!(
            "figures: {}: {} MiB each way with offloads on through tc in {took:.2?} \
             ({mb_s:.0} MB/s both ways); checksum errors at the client {} and the VM {}",
            family(f),
            BULK >> 20,
            after[0] - before[0],
            after[1] - before[1]
        );
        assert_eq!(
            before,
            after,
            "{}: receivers counted checksum errors",
            family(f)
        );
    }
    world.assert_hook(Node::Gw, "tc");
}

/// The negative control: the same traffic through XDP, which takes a partial checksum for
/// a final one, gets checksum errors at the receiver and does not get through.
#[test]
fn offloaded_tcp_through_xdp_gets_checksum_errors() {
    let world = offloaded_world(&["--hook", "xdp"]);
    let before = tcp_csum_errors(&world, Node::Vm);
    let server = world.tcp_echo(Node::Vm, SocketAddr::new(V4.va, 7100));
    let r = echo_bulk(&world, server.addr(), 1 << 20);
    let errors = tcp_csum_errors(&world, Node::Vm) - before;
    println!("through XDP: {r:?}; checksum errors at the VM: {errors}");
    assert!(errors > 0, "no checksum error through XDP: {r:?}");
    assert!(r.is_err(), "the transfer got through XDP");
}

fn family(f: &Addrs) -> &'static str {
    if f.va.is_ipv4() { "IPv4" } else { "IPv6" }
}
