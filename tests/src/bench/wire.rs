//! What each method costs on the wire: bytes on the link per byte of TCP payload, and the
//! largest TCP payload that passes without fragmentation, for plain routing, paging and
//! segmentation (in each outer family), in the namespace world.
//!
//! The client sends a bulk TCP stream to the VM at host A. Every link has an MTU of 1,500
//! bytes, so under segmentation the gateway answers the client's first full-size segments
//! with "fragmentation needed" or "packet too big" for the tunnel's smaller inner MTU, and
//! the client's path MTU discovery settles on a smaller segment. The figures are read
//! afterwards:
//! - bytes the gateway sent on its link to host A (the stream's direction, counted by
//!   nftables at the link's egress; Ethernet headers included, the acknowledgements coming
//!   back left out, as their number varies with the receiver's timing) over the payload
//!   bytes the VM received;
//!   and the bytes beyond the payload per packet sent (headers, Ethernet on), which tells
//!   the encapsulation's overhead from a difference in how the stream was cut;
//! - the client's TCP segment size (`tcpi_snd_mss`) and path MTU at the end of the stream;
//! - fragments created anywhere in the world (`FragCreates` of every namespace, both
//!   families), which must stay 0 for the segment size to be the largest that passes whole.

use std::{
    io::{Read, Write},
    net::SocketAddr,
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row},
    world::{Addrs, Host, Node, V4, V6, Vm, World},
};

/// The port of the VM's sink.
const PORT: u16 = 7300;

/// How the world carries the VM's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// The VA routed to host A by the gateway, no netpage.
    Routing,
    /// The VA mapped to host A's RA on every edge.
    Paging,
    /// The VA mapped by segmentation to host A's locator of the given family.
    Segmentation { outer_v6: bool },
}

impl Method {
    const ALL: [Method; 4] = [
        Method::Routing,
        Method::Paging,
        Method::Segmentation { outer_v6: false },
        Method::Segmentation { outer_v6: true },
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Routing => "plain routing",
            Method::Paging => "paging",
            Method::Segmentation { outer_v6: false } => "segmentation in ipv4",
            Method::Segmentation { outer_v6: true } => "segmentation in ipv6",
        }
    }

    /// Sets the world up to carry the VM's VAs (both families) this way.
    fn set_up(self, world: &World) {
        match self {
            Method::Routing => world.route_plain(Vm::One, Host::A),
            Method::Paging => {
                world.attach_all();
                for f in [&V4, &V6] {
                    world.map_all(f.va, f.ra_a);
                }
            }
            Method::Segmentation { outer_v6 } => {
                world.set_locators();
                world.attach_all();
                let at = Node::HostA.locator(if outer_v6 { &V6 } else { &V4 });
                for f in [&V4, &V6] {
                    world.segment_all(f.va, at);
                }
            }
        }
    }
}

/// What one stream showed.
struct Sample {
    bytes_per_payload_byte: f64,
    /// Packets the gateway sent toward the VM's host.
    packets: u64,
    /// Bytes of headers (Ethernet on) per packet: the bytes sent beyond the payload, over
    /// the packets (a retransmitted segment's payload counts here too).
    header_bytes: f64,
    /// Segments the client sent again (`tcpi_total_retrans`).
    retransmitted: u32,
    mss: u32,
    pmtu: u32,
    fragments: u64,
}

/// Measures every method in both VA families, `cfg.wire_bytes` of payload each; one world
/// per method.
pub fn run(cfg: &Config) -> Vec<Row> {
    const FAMILIES: [(&str, &Addrs); 2] = [("ipv4", &V4), ("ipv6", &V6)];
    let mut samples = Vec::new();
    for m in Method::ALL {
        note(format_args!("wire: {}", m.name()));
        let world = World::new();
        m.set_up(&world);
        // Without GRO on the gateway's ingress, every packet on the link toward host A is
        // one the wire would carry; merged ones would each count their headers once.
        count_link(&world);
        for (_, f) in FAMILIES {
            samples.push(measure(&world, m, f, cfg.wire_bytes));
        }
    }
    let mut rows = Vec::new();
    for (i, (family, _)) in FAMILIES.iter().enumerate() {
        let base_name = format!("{}, {family} va", Method::Routing.name());
        let base = &samples[i];
        for (k, m) in Method::ALL.iter().enumerate() {
            let s = &samples[k * FAMILIES.len() + i];
            let name = format!("{}, {family} va", m.name());
            let params = json!({
                "payload_bytes": cfg.wire_bytes,
                "link_mtu": 1500,
                "path_mtu": s.pmtu,
                "fragments_created": s.fragments,
                "packets": s.packets,
                "header_bytes_per_packet": (s.header_bytes * 10.0).round() / 10.0,
                "retransmitted_segments": s.retransmitted,
            });
            let mut bytes = Row::new(
                "wire_bytes_per_payload_byte",
                &name,
                params.clone(),
                s.bytes_per_payload_byte,
                "bytes",
            );
            let mut mss = Row::new("largest_tcp_payload", &name, params, s.mss.into(), "bytes");
            if k > 0 {
                bytes = bytes.against(base_name.clone(), base.bytes_per_payload_byte);
                mss = mss.against(base_name.clone(), base.mss.into());
            }
            rows.extend([bytes, mss]);
        }
    }
    rows
}

/// One stream of `len` payload bytes from the client to the VM's VA of family `f`, in
/// `world`, which carries it by `m`.
fn measure(world: &World, m: Method, f: &Addrs, len: usize) -> Sample {
    let addr = SocketAddr::new(f.va, PORT);
    let listener = world.tcp_listener(Node::Vm, addr);
    let sink = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept the client");
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            match conn.read(&mut buf).expect("read the stream") {
                0 => break got,
                n => got += n,
            }
        }
    });
    let before = link_bytes(world);
    let frags_before = fragments(world);
    let mut stream = world
        .tcp_connect(Node::Client, addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}: connect to {addr}: {e}", m.name()));
    let chunk = vec![0x5au8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("send the stream");
        left -= n;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("end the stream");
    let got = sink.join().expect("the VM's sink");
    assert_eq!(got, len, "{}: the VM got the whole stream", m.name());
    let (mss, pmtu, retransmitted) = tcp_info(&stream);
    let (bytes, packets) = link_bytes(world);
    let (bytes, packets) = (bytes - before.0, packets - before.1);
    Sample {
        bytes_per_payload_byte: bytes as f64 / len as f64,
        packets,
        header_bytes: bytes.saturating_sub(len as u64) as f64 / packets.max(1) as f64,
        mss,
        pmtu,
        retransmitted,
        fragments: fragments(world) - frags_before,
    }
}

/// Counts every frame the gateway sends on its link to host A (`ga`), Ethernet header
/// included, with an nftables counter at the device's egress hook: one count per packet
/// on the wire whatever path the kernel took to send it (the veth's own counters leave
/// the Ethernet header out when the peer receives in NAPI).
fn count_link(world: &World) {
    for args in [
        &["add", "table", "netdev", "npwire"][..],
        &[
            "add",
            "chain",
            "netdev",
            "npwire",
            "out",
            "{ type filter hook egress device ga priority 0; policy accept; }",
        ],
        &["add", "rule", "netdev", "npwire", "out", "counter"],
    ] {
        world.exec_ok(Node::Gw, "nft", args);
    }
}

/// Bytes and packets the gateway sent on its link to host A so far (see [`count_link`]).
fn link_bytes(world: &World) -> (u64, u64) {
    let json = world.exec_ok(
        Node::Gw,
        "nft",
        &["-j", "list", "chain", "netdev", "npwire", "out"],
    );
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft -j output");
    let counter = v["nftables"]
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .find_map(|i| i["rule"]["expr"][0].get("counter"))
        })
        .unwrap_or_else(|| panic!("no counter in {json}"));
    let get = |what: &str| {
        counter[what]
            .as_u64()
            .unwrap_or_else(|| panic!("no {what} in {json}"))
    };
    (get("bytes"), get("packets"))
}

/// Fragments created in every namespace of the world, IPv4 and IPv6.
fn fragments(world: &World) -> u64 {
    [Node::Client, Node::Gw, Node::HostA, Node::HostB, Node::Vm]
        .into_iter()
        .map(|node| {
            world.in_ns(node, || {
                let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
                    .expect("read /proc/net/snmp");
                let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6")
                    .expect("read /proc/net/snmp6");
                ip_counter(&snmp, "FragCreates") + ip6_counter(&snmp6, "Ip6FragCreates")
            })
        })
        .sum()
}

/// Field `name` of the `Ip:` lines of /proc/net/snmp (a line of names, then one of values).
fn ip_counter(snmp: &str, name: &str) -> u64 {
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let (names, values) = (ip.next().expect("Ip names"), ip.next().expect("Ip values"));
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp"));
    values
        .split_whitespace()
        .nth(i)
        .expect("a value")
        .parse()
        .expect("a number")
}

/// Counter `name` of /proc/net/snmp6 (a name and a value per line).
fn ip6_counter(snmp6: &str, name: &str) -> u64 {
    snmp6
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(name)).then(|| f.next().expect("a value").parse().expect("a number"))
        })
        .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp6"))
}

/// The connection's segment size, path MTU and segments sent again (`TCP_INFO`).
fn tcp_info(stream: &std::net::TcpStream) -> (u32, u32, u32) {
    // SAFETY: an all-zero tcp_info is valid, and the kernel writes at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a tcp_info of the size passed in `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    (info.tcpi_snd_mss, info.tcpi_pmtu, info.tcpi_total_retrans)
}
