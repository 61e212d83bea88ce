//! The L2-stretch baseline, the industry's default way to move a VM between sites: the
//! guest's segment (198.19.0.0/24) spans both hosts over VXLAN, with no netpage anywhere,
//! and the guest's MAC moves when QEMU's announcement after an incoming migration (a
//! RARP, and the guest's gratuitous ARPs) floods the segment and the bridges learn where
//! the MAC is now.
//!
//! ```text
//!  client ── c0 ─ g0 ── gw ── ga ─ a0 ── hostA: br0 (198.19.0.1/24) ── tap0 ── QEMU (source)
//!          (198.19.0.0/24 via hostA)│           └── vx0 (VTEP 198.18.3.2)
//!                        └─── gb ─ b0 ── hostB: br0 ── tap0 ── QEMU (-incoming)
//!                                                └── vx0 (VTEP 198.18.4.2)
//!                       hostA ── ax ─ bx ── hostB   (migration link, tbf 200 Mbit/s)
//! ```
//!
//! Each host has a Linux bridge `br0` with the guest's tap and a VXLAN port `vx0` (VNI
//! [`VNI`], UDP [`VXLAN_PORT`], address learning on) whose one remote is the other host,
//! over the hosts' uplinks through the gateway (the migration stream crosses the host
//! link, as in the other worlds). The segment has one router, host A, the guest's first
//! site: its bridge holds the guest's default gateway 198.19.0.1, and the gateway routes
//! the segment's prefix to it. After a move the client's traffic goes on entering the
//! segment at host A and crosses the stretch to host B: the trombone of a stretched
//! segment whose first-hop router stays where it was.
//!
//! Why not the gateway as a third VTEP and the segment's router: tried and measured here,
//! after the move the gateway's VXLAN port learned the guest's new VTEP from the RARP
//! (`bridge fdb` showed it) yet went on sending the guest's frames out its link to host
//! A (the links' counters showed it), where they died. The kernel's source explains it:
//! VXLAN learning (`vxlan_snoop`) moves a learned entry to its new remote address but
//! keeps the route cached for the old one (its `dst_cache`), which only matters when the
//! remotes sit behind different interfaces. With two VTEPs every entry has the one
//! remote.
//!
//! MTU: VXLAN over IPv4 adds 50 bytes (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8). The
//! underlay (`a0`, `ga`, `gb`, `b0`) is raised to [`UNDERLAY_MTU`] so that the segment
//! (bridges, VXLAN ports, taps and the guest) keeps the usual 1500 bytes: a full-sized
//! frame crosses the stretch whole, not fragmented nor dropped.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
};

use super::{GATEWAY, TAP, TAP_QUEUE};
use crate::{
    netns::NetNs,
    world::{Host, Node, V4, World},
};

/// The bridge of the segment on every host.
pub const BRIDGE: &str = "br0";
/// The VXLAN port of the bridge on every host.
pub const VXLAN: &str = "vx0";
/// The segment's VXLAN network identifier.
pub const VNI: u32 = 100;
/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The segment's MTU: the usual Ethernet payload, as the guest has it.
pub const SEGMENT_MTU: u32 = 1500;
/// The underlay's MTU: the segment's and VXLAN's 50 bytes over IPv4.
pub const UNDERLAY_MTU: u32 = SEGMENT_MTU + 50;
/// The segment's prefix.
const SEGMENT: &str = "198.19.0.0/24";
/// The segment's prefix length on the router's bridge.
const SEGMENT_PREFIX: u8 = 24;
/// The host that routes the segment.
pub const ROUTER: Host = Host::A;
/// The links the VXLAN underlay crosses, by namespace.
const UNDERLAY: [(Node, &str); 4] = [
    (Node::HostA, "a0"),
    (Node::Gw, "ga"),
    (Node::Gw, "gb"),
    (Node::HostB, "b0"),
];

/// The VTEP address of `host`: its uplink's.
pub fn vtep(host: Host) -> Ipv4Addr {
    match host.uplink_addr(&V4) {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => unreachable!("V4 holds IPv4 addresses"),
    }
}

fn other(host: Host) -> Host {
    match host {
        Host::A => Host::B,
        Host::B => Host::A,
    }
}

/// Stretches the segment over `world`: the underlay's MTU, on each host the bridge and
/// its VXLAN port toward the other host, the router's address on its bridge, and the
/// gateway's route to the segment through the router.
pub(super) fn build(world: &World) {
    for (node, dev) in UNDERLAY {
        world
            .ns(node)
            .ip(&["link", "set", dev, "mtu", &UNDERLAY_MTU.to_string()]);
    }
    for host in [Host::A, Host::B] {
        let ns = world.ns(host.node());
        let mut lines = vec![
            format!("link add {BRIDGE} type bridge stp_state 0"),
            format!("link set {BRIDGE} mtu {SEGMENT_MTU}"),
            format!(
                "link add {VXLAN} mtu {SEGMENT_MTU} type vxlan id {VNI} local {} remote {} \
                 dstport {VXLAN_PORT} ttl 64",
                vtep(host),
                vtep(other(host))
            ),
            format!("link set {VXLAN} master {BRIDGE}"),
            format!("link set {VXLAN} up"),
            format!("link set {BRIDGE} up"),
        ];
        if host == ROUTER {
            lines.push(format!("addr add {GATEWAY}/{SEGMENT_PREFIX} dev {BRIDGE}"));
        }
        ns.ip_batch(&lines);
        ns.sysctls(&[(format!("net.ipv4.conf.{BRIDGE}.rp_filter"), "0")]);
    }
    let via = vtep(ROUTER).to_string();
    world
        .ns(Node::Gw)
        .ip(&["route", "add", SEGMENT, "via", &via]);
}

/// Makes the tap QEMU created at `host` a port of the host's bridge: the segment's MTU, a
/// queue as long as the routed worlds' (see [`TAP_QUEUE`]), up. The host routes nothing to
/// the guest: the router reaches it over L2.
pub(super) fn join(world: &World, host: Host) {
    world.ns(host.node()).ip_batch(&[
        format!("link set {TAP} mtu {SEGMENT_MTU}"),
        format!("link set {TAP} txqueuelen {TAP_QUEUE}"),
        format!("link set {TAP} master {BRIDGE}"),
        format!("link set {TAP} up"),
    ]);
}

/// Runs `bridge ARGS` in `ns`, panicking unless it succeeds; returns stdout.
fn bridge(ns: &NetNs, args: &[&str]) -> String {
    crate::netns::check(ns.command("bridge").args(args))
}

/// The entries for `mac` of `bridge -j fdb show ARGS` on `node`.
fn fdb_entries(world: &World, node: Node, args: &[&str], mac: &str) -> Vec<serde_json::Value> {
    let mut all = vec!["-j", "fdb", "show"];
    all.extend(args);
    let out = bridge(world.ns(node), &all);
    let entries: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("bridge {}: {e}: {out}", all.join(" ")));
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["mac"]
                .as_str()
                .is_some_and(|m| m.eq_ignore_ascii_case(mac))
        })
        .cloned()
        .collect()
}

/// The port of `node`'s bridge through which it last learned `mac` (`bridge fdb`), if it
/// has.
pub fn fdb_port(world: &World, node: Node, mac: &str) -> Option<String> {
    fdb_entries(world, node, &["br", BRIDGE], mac)
        .iter()
        .filter(|e| e["master"].as_str() == Some(BRIDGE))
        .find_map(|e| e["ifname"].as_str().map(str::to_owned))
}

/// The remote VTEP through which `node`'s VXLAN port last heard from `mac`, if it has.
pub fn fdb_vtep(world: &World, node: Node, mac: &str) -> Option<Ipv4Addr> {
    fdb_entries(world, node, &["dev", VXLAN], mac)
        .iter()
        .find_map(|e| e["dst"].as_str()?.parse().ok())
}

/// Each host's bridge forwarding table (learned entries only) and the counters of the
/// segment's interfaces and of the underlay, for a failing test's message.
pub fn diagnostics(world: &World) -> String {
    let mut runs: Vec<(Node, &str, Vec<&str>)> = Vec::new();
    for host in [Host::A, Host::B] {
        let n = host.node();
        runs.extend([
            (n, "bridge", vec!["fdb", "show", "br", BRIDGE]),
            (n, "bridge", vec!["fdb", "show", "dev", VXLAN]),
            (n, "ip", vec!["-s", "link", "show", "master", BRIDGE]),
            (n, "ip", vec!["-s", "link", "show", BRIDGE]),
        ]);
    }
    for (n, dev) in UNDERLAY {
        runs.push((n, "ip", vec!["-s", "link", "show", dev]));
    }
    let mut d = String::new();
    for (node, program, args) in runs {
        let out = world.exec(node, program, &args);
        let text = String::from_utf8_lossy(&out.stdout);
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("permanent")).collect();
        d += &format!(
            "== {}: {program} {}\n{}\n{}",
            node.name(),
            args.join(" "),
            kept.join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    d
}

/// Why this kernel cannot stretch a segment, if it cannot: a bridge and a VXLAN device
/// are tried in a namespace of their own.
pub fn missing_features() -> Option<String> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "netpage-l2probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    let ns = NetNs::create(&name);
    let vxlan =
        format!("link add {VXLAN} type vxlan id {VNI} dstport {VXLAN_PORT} local 127.0.0.1");
    [
        (format!("link add {BRIDGE} type bridge"), "no Linux bridge"),
        (vxlan, "no VXLAN"),
    ]
    .into_iter()
    .find_map(|(line, what)| {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = ns.exec("ip", &args);
        (!out.status.success()).then(|| {
            format!(
                "{what} in this kernel: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    })
}
