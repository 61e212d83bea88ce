//! Path MTU discovery through translating edges, both ways.
//!
//! Host B is made a plain router inside the network (netpage off there) on the way between
//! the gateway and host A, with a smaller MTU (1280) on its routes both ways. A client's
//! large packet to the VM crosses the gateway with the VM's real address, so host B's
//! "fragmentation needed" / "packet too big" goes to the client quoting that real address:
//! the gateway's physical side translates the quote back to the VA (the error's own
//! addresses are not mapped), or the client's TCP never learns the path MTU and the
//! transfer stalls. The VM's large packets leave host A with its real address as source,
//! so host B's error to them is addressed to that real address and host A translates it
//! whole.

use std::net::SocketAddr;

use netpage_tests::{
    bulk::echo_bulk,
    world::{Addrs, Node, Options, V4, V6, World},
};

/// The smaller MTU inside the network.
const INNER_MTU: &str = "1280";
/// Bytes sent each way: many full-sized segments.
const BULK: usize = 4 << 20;

/// The world with the host link, netpage on every edge but host B, the VM mapped at host
/// A, and the traffic between the clients and site A routed through host B both ways.
fn pmtu_world() -> World {
    let world = World::with(Options {
        second_vm: false,
        host_link: true,
        ..Options::default()
    });
    world.attach_all();
    for iface in ["b0", "bx"] {
        world.detach(Node::HostB, iface);
    }
    for f in [&V4, &V6] {
        world.map_all(f.va, f.ra_a);
    }
    let gw = world.ns(Node::Gw);
    gw.ip(&["route", "replace", "198.18.10.0/24", "via", "198.18.4.2"]);
    gw.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:10::/64",
        "via",
        "2001:db8:4::2",
    ]);
    let host_a = world.ns(Node::HostA);
    host_a.ip(&["route", "replace", "198.18.1.0/24", "via", "198.18.5.2"]);
    host_a.ip(&[
        "-6",
        "route",
        "replace",
        "2001:db8:1::/64",
        "via",
        "2001:db8:5::2",
    ]);
    // Host B's routes both ways, with the smaller MTU: it forwards nothing larger and
    // says so (its links keep their MTU, so that it still receives full-sized frames).
    let host_b = world.ns(Node::HostB);
    for (family, prefix, via) in [
        ("-4", "198.18.10.0/24", "198.18.5.1"),
        ("-6", "2001:db8:10::/64", "2001:db8:5::1"),
        ("-4", "198.18.1.0/24", "198.18.4.1"),
        ("-6", "2001:db8:1::/64", "2001:db8:4::1"),
    ] {
        host_b.ip(&[
            family, "route", "replace", prefix, "via", via, "mtu", "lock", INNER_MTU,
        ]);
    }
    world
}

/// The gateway's count of errors whose quote alone was translated.
fn quotes_translated(world: &World) -> u64 {
    let stats = world.netpage_json(Node::Gw, &["stats"]);
    stats["counters"]["translated_icmp_quote_only"]
        .as_u64()
        .unwrap_or_else(|| panic!("no quote counter in {stats}"))
}

/// The path MTU `node`'s stack has learned towards `dst` (from `ip route get`).
fn learned_mtu(world: &World, node: Node, dst: std::net::IpAddr) -> Option<String> {
    let out = world.exec_ok(node, "ip", &["route", "get", &dst.to_string()]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .map(|w| w[1].to_owned())
}

#[test]
fn path_mtu_discovery_works_through_the_edges_both_ways() {
    let world = pmtu_world();
    for f in [&V4, &V6] {
        let server = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, 7200));
        let before = quotes_translated(&world);
        let took = echo_bulk(&world, server.addr(), BULK)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", family(f), world.diagnostics()));
        let quotes = quotes_translated(&world) - before;
        let client_mtu = learned_mtu(&world, Node::Client, f.va);
        let vm_mtu = learned_mtu(&world, Node::Vm, f.client);
        println!(
            "figures: {}: {} MiB each way across a {INNER_MTU}-byte MTU in {took:.2?}; \
             errors with their quote translated at the gateway: {quotes}; \
             path MTU learned by the client {client_mtu:?}, by the VM {vm_mtu:?}",
            family(f),
            BULK >> 20
        );
        assert!(quotes > 0, "{}: no quote translated", family(f));
        assert_eq!(client_mtu.as_deref(), Some(INNER_MTU), "{}", family(f));
        assert_eq!(vm_mtu.as_deref(), Some(INNER_MTU), "{}", family(f));
    }
}

fn family(f: &Addrs) -> &'static str {
    if f.va.is_ipv4() { "IPv4" } else { "IPv6" }
}
