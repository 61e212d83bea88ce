//! The fast path across namespaces: a sender reaches a VA through a gateway whose two
//! interfaces run netpage with `--fast-path`, and the receiver at the RA answers.
//!
//! ```text
//!  snd ── s0 ─ g0 ── gw ── g1 ─ r0 ── rcv
//!  198.18.1.2   (virtual) (physical)   198.18.3.2, RA 198.18.10.100 (and IPv6 alike)
//! ```
//!
//! The gateway maps VA 198.19.0.10 -> RA 198.18.10.100 (2001:db8:100::10 ->
//! 2001:db8:10::100). Translated packets are redirected g0 -> g1 and back by the program;
//! the first packet of each direction finds no neighbour entry and goes through the kernel,
//! which resolves it. A VA whose RA is the gateway's own address is delivered locally
//! through the fallback, and a TTL of 1 is left to the kernel's ICMP time exceeded.
//!
//! In native mode a frame redirected into a veth is delivered only when the veth's peer
//! can take it (an XDP program, or GRO, which gives it NAPI): the receiving ends s0 and r0
//! get GRO before the gateway's attach, which reads whether each interface takes XDP
//! frames. Where one does not, the program leaves packets routed out of it to the kernel.
//! Skb mode needs nothing.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use netpage_tests::{
    netns::{NetNs, assert_ok, check, output},
    world::netpage_bin,
};

const PORT: u16 = 7100;
const DATAGRAMS: u64 = 20;

struct Family {
    client: &'static str,
    va: &'static str,
    ra: &'static str,
    /// A VA mapped to the gateway's own address on g1.
    va_local: &'static str,
    gw_g1: &'static str,
}

const V4: Family = Family {
    client: "198.18.1.2",
    va: "198.19.0.10",
    ra: "198.18.10.100",
    va_local: "198.19.0.30",
    gw_g1: "198.18.3.1",
};

const V6: Family = Family {
    client: "2001:db8:1::2",
    va: "2001:db8:100::10",
    ra: "2001:db8:10::100",
    va_local: "2001:db8:100::30",
    gw_g1: "2001:db8:3::1",
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Three namespaces and the gateway's pin directory, removed on drop.
struct Topology {
    snd: NetNs,
    gw: NetNs,
    rcv: NetNs,
    pin_dir: PathBuf,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = output(Command::new("umount").arg("-l").arg(&self.pin_dir));
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn sysctls(ns: &NetNs, forward: bool) {
    let mut s = vec![
        ("net.ipv6.conf.all.accept_dad".to_owned(), "0"),
        ("net.ipv6.conf.default.accept_dad".to_owned(), "0"),
        ("net.ipv4.conf.all.rp_filter".to_owned(), "0"),
        ("net.ipv4.conf.default.rp_filter".to_owned(), "0"),
    ];
    if forward {
        s.push(("net.ipv4.ip_forward".to_owned(), "1"));
        s.push(("net.ipv6.conf.all.forwarding".to_owned(), "1"));
    }
    ns.sysctls(&s);
}

fn ethtool(ns: &NetNs, args: &[&str]) {
    ns.run(|| check(Command::new("ethtool").args(args)));
}

impl Topology {
    fn new(what: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("npfp{}x{n}-{what}", std::process::id());
        let snd = NetNs::create(&format!("{prefix}-snd"));
        let gw = NetNs::create(&format!("{prefix}-gw"));
        let rcv = NetNs::create(&format!("{prefix}-rcv"));
        sysctls(&snd, false);
        sysctls(&gw, true);
        sysctls(&rcv, false);
        gw.veth("g0", "s0", Some(&snd));
        gw.veth("g1", "r0", Some(&rcv));
        let up = |ifname: &str, v4: &str, v6: &str| {
            vec![
                format!("addr add {v4} dev {ifname}"),
                format!("addr add {v6} dev {ifname} nodad"),
                format!("link set {ifname} up"),
            ]
        };
        snd.ip_batch(
            &[
                up("s0", "198.18.1.2/24", "2001:db8:1::2/64"),
                vec![
                    "route add default via 198.18.1.1".into(),
                    "route add ::/0 via 2001:db8:1::1".into(),
                ],
            ]
            .concat(),
        );
        gw.ip_batch(
            &[
                up("g0", "198.18.1.1/24", "2001:db8:1::1/64"),
                up("g1", "198.18.3.1/24", "2001:db8:3::1/64"),
                vec![
                    "route add 198.18.10.0/24 via 198.18.3.2".into(),
                    "route add 2001:db8:10::/64 via 2001:db8:3::2".into(),
                ],
            ]
            .concat(),
        );
        rcv.ip_batch(
            &[
                up("r0", "198.18.3.2/24", "2001:db8:3::2/64"),
                vec![
                    format!("addr add {}/32 dev lo", V4.ra),
                    format!("addr add {}/128 dev lo", V6.ra),
                    "route add default via 198.18.3.1".into(),
                    "route add ::/0 via 2001:db8:3::1".into(),
                ],
            ]
            .concat(),
        );
        // Full checksums on the wire, so that receivers verify what the program rewrote.
        ethtool(&snd, &["-K", "s0", "tx", "off"]);
        ethtool(&rcv, &["-K", "r0", "tx", "off"]);
        ethtool(&gw, &["-K", "g0", "tx", "off"]);
        ethtool(&gw, &["-K", "g1", "tx", "off"]);
        for ns in [&snd, &gw, &rcv] {
            ns.wait_up();
        }
        let pin_dir = PathBuf::from(format!("/tmp/netpage-{prefix}"));
        std::fs::create_dir_all(&pin_dir).unwrap();
        check(
            Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&pin_dir),
        );
        Self {
            snd,
            gw,
            rcv,
            pin_dir,
        }
    }

    /// Runs `netpage --pin-dir <gw's dir> ARGS` on the gateway, which must succeed.
    fn netpage(&self, args: &[&str]) -> String {
        let out = output(
            self.gw
                .command(netpage_bin())
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .args(args),
        );
        assert_ok(&out, &format!("netpage {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let all: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
        let out = self.netpage(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{all:?}: {e}:\n{out}"))
    }

    fn counter(&self, name: &str) -> u64 {
        self.json(&["stats"])["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn counters(&self) -> serde_json::Value {
        self.json(&["stats"])["counters"].clone()
    }
}

/// A UDP echo server in `ns`, on its own thread, until `deadline`.
fn echo_server(ns: &NetNs, addr: SocketAddr, deadline: Instant) -> thread::JoinHandle<Vec<IpAddr>> {
    let socket = ns.run(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    thread::spawn(move || {
        let mut peers = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                if !peers.contains(&peer.ip()) {
                    peers.push(peer.ip());
                }
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
        peers
    })
}

/// Sends `count` datagrams from `ns` to `dst`, each waiting for its echo; returns how many
/// were echoed, and checks that every echo came from `dst`.
fn exchange(ns: &NetNs, dst: SocketAddr, count: u64) -> u64 {
    let any: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = ns.run(|| UdpSocket::bind(any).unwrap());
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut echoed = 0;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let msg = format!("datagram {i} to {dst}");
        socket.send_to(msg.as_bytes(), dst).unwrap();
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            assert_eq!(peer, dst, "echo source");
            assert_eq!(&buf[..n], msg.as_bytes());
            echoed += 1;
        }
    }
    echoed
}

/// Sends one datagram from `ns` to `dst` and gives up on an answer.
fn send_one(ns: &NetNs, dst: SocketAddr, msg: &[u8]) {
    let any: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    ns.run(|| UdpSocket::bind(any).unwrap().send_to(msg, dst).unwrap());
}

fn fast_path_forwards(mode: &str) {
    let t = Topology::new(mode);
    if mode == "native" {
        // The receiving ends of the veths that frames are redirected into.
        ethtool(&t.snd, &["-K", "s0", "gro", "on"]);
        ethtool(&t.rcv, &["-K", "r0", "gro", "on"]);
    }
    for (iface, side) in [("g0", "virtual"), ("g1", "physical")] {
        let out = t.netpage(&[
            "attach",
            iface,
            "--side",
            side,
            "--mode",
            mode,
            "--fast-path",
        ]);
        assert!(out.contains("fast path"), "{out}");
    }
    let status = t.json(&["status"]);
    for i in status["interfaces"].as_array().unwrap() {
        assert_eq!(i["fast_path"], true, "{status}");
        assert_eq!(i["mode"], mode, "{status}");
        if mode == "native" {
            assert_eq!(i["redirect_target"], true, "{status}");
        }
    }
    assert!(t.netpage(&["status"]).contains("fast-path"));
    for f in [&V4, &V6] {
        t.netpage(&["map", "add", "--vm", f.va, "--real", f.ra]);
        t.netpage(&["map", "add", "--vm", f.va_local, "--real", f.gw_g1]);
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    for f in [&V4, &V6] {
        let server = echo_server(
            &t.rcv,
            SocketAddr::new(ip(f.ra), PORT),
            Instant::now() + Duration::from_secs(15),
        );
        let dst = SocketAddr::new(ip(f.va), PORT);
        let before = t.counters();
        // The first exchange resolves the neighbours through the kernel.
        assert_eq!(
            exchange(&t.snd, dst, 1),
            1,
            "first datagram to {dst} ({mode})"
        );
        let warm = t.counters();
        let echoed = exchange(&t.snd, dst, DATAGRAMS);
        let after = t.counters();
        let peers = server.join().unwrap();
        assert!(Instant::now() < deadline);
        let diff = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
            a[k].as_u64().unwrap() - b[k].as_u64().unwrap()
        };
        let family = if f.va.contains(':') { "v6" } else { "v4" };
        println!(
            "{mode} {family}: {echoed}/{DATAGRAMS} echoed; fast_redirected +{}, fast_fallback_no_neigh +{} (first exchange +{})",
            diff(&after, &warm, "fast_redirected"),
            diff(&after, &warm, "fast_fallback_no_neigh"),
            diff(&warm, &before, "fast_fallback_no_neigh"),
        );
        assert_eq!(echoed, DATAGRAMS, "{mode} {family}: every datagram echoed");
        assert_eq!(peers, vec![ip(f.client)], "the receiver saw the client");
        // Each datagram and its echo crossed the gateway translated and redirected.
        assert!(
            diff(&after, &warm, "fast_redirected") >= 2 * DATAGRAMS,
            "{mode} {family}: {after}"
        );
        assert_eq!(
            diff(&after, &warm, &format!("translated_{family}_to_real")),
            DATAGRAMS
        );
        assert_eq!(
            diff(&after, &warm, &format!("translated_{family}_to_virtual")),
            DATAGRAMS
        );
        assert!(
            diff(&warm, &before, "fast_fallback_no_neigh") >= 1,
            "{mode} {family}: the first packet had no neighbour: {warm}"
        );

        // A VA whose RA is the gateway's own address: local delivery, through the kernel.
        let local = SocketAddr::new(ip(f.gw_g1), PORT + 1);
        let sink = t.gw.run(|| UdpSocket::bind(local).unwrap());
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let before = t.counter("fast_fallback_not_forwarded");
        send_one(
            &t.snd,
            SocketAddr::new(ip(f.va_local), PORT + 1),
            b"for the gateway",
        );
        let mut buf = [0u8; 64];
        let (n, peer) = sink
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{mode} {family}: local delivery: {e}"));
        assert_eq!(&buf[..n], b"for the gateway");
        assert_eq!(peer.ip(), ip(f.client));
        assert_eq!(t.counter("fast_fallback_not_forwarded"), before + 1);

        // TTL 1: the kernel answers with time exceeded.
        let before = t.counter("fast_fallback_ttl");
        let ping = t.snd.exec(
            "ping",
            &[
                "-c1",
                "-W1",
                "-n",
                if family == "v6" { "-6" } else { "-4" },
                "-t",
                "1",
                f.va,
            ],
        );
        assert!(!ping.status.success());
        assert_eq!(t.counter("fast_fallback_ttl"), before + 1);
    }
    let c = t.counters();
    println!("{mode}: {c}");
}

#[test]
fn fast_path_forwards_translated_traffic_in_native_mode() {
    fast_path_forwards("native");
}

#[test]
fn fast_path_forwards_translated_traffic_in_skb_mode() {
    fast_path_forwards("skb");
}

/// Re-attaching keeps the setting unless told otherwise, and turning it off stops the
/// redirects while traffic keeps flowing (the program stays attached throughout).
#[test]
fn fast_path_setting_survives_reattach_and_turns_off() {
    let t = Topology::new("reattach");
    t.netpage(&[
        "attach",
        "g0",
        "--side",
        "virtual",
        "--mode",
        "skb",
        "--fast-path",
    ]);
    t.netpage(&[
        "attach",
        "g1",
        "--side",
        "physical",
        "--mode",
        "skb",
        "--fast-path",
    ]);
    t.netpage(&["map", "add", "--vm", V4.va, "--real", V4.ra]);
    let fast = |iface: &str| {
        t.json(&["status"])["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["iface"] == iface)
            .unwrap()["fast_path"]
            .as_bool()
            .unwrap()
    };
    let out = t.json(&["attach", "g0", "--side", "virtual"]);
    assert_eq!(out["replaced"], true);
    assert_eq!(
        out["fast_path"], true,
        "a plain re-attach keeps the fast path"
    );
    assert!(fast("g0"));

    let server = echo_server(
        &t.rcv,
        SocketAddr::new(ip(V4.ra), PORT),
        Instant::now() + Duration::from_secs(10),
    );
    let dst = SocketAddr::new(ip(V4.va), PORT);
    assert_eq!(exchange(&t.snd, dst, 2), 2);
    let on = t.counter("fast_redirected");
    assert!(on >= 2, "redirected with the fast path on: {on}");

    for iface in ["g0", "g1"] {
        let side = if iface == "g0" { "virtual" } else { "physical" };
        let out = t.json(&["attach", iface, "--side", side, "--no-fast-path"]);
        assert_eq!(out["fast_path"], false);
        assert_eq!(out["replaced"], true);
        assert!(!fast(iface));
    }
    let translated = t.counter("translated_v4_to_real");
    assert_eq!(exchange(&t.snd, dst, 5), 5);
    assert_eq!(
        t.counter("fast_redirected"),
        on,
        "no redirect with the fast path off"
    );
    assert_eq!(t.counter("translated_v4_to_real"), translated + 5);
    drop(server);

    // Detaching removes the interface's port entry with it.
    t.netpage(&["detach", "g0"]);
    t.netpage(&["attach", "g0", "--side", "virtual"]);
    assert!(!fast("g0"), "a new attachment starts without the fast path");
}

/// Whether `iface` is in the gateway's device map, as `status` says.
fn redirect_target(t: &Topology, iface: &str) -> bool {
    t.json(&["status"])["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == iface)
        .unwrap()["redirect_target"]
        .as_bool()
        .unwrap()
}

/// In native mode, an egress that takes no XDP frames (g1, a veth whose peer r0 has
/// neither an XDP program nor GRO) is left out of the device map: packets routed out of it
/// go through the kernel, counted, instead of being redirected and dropped; the other
/// direction is still redirected. Once r0 gets GRO, attaching again reads it and g1 takes
/// redirects. A node of an older build, without the device map, gets one at its next
/// attach and keeps its table.
#[test]
fn fast_path_falls_back_where_the_egress_takes_no_xdp_frames() {
    let t = Topology::new("noxmit");
    ethtool(&t.snd, &["-K", "s0", "gro", "on"]);
    ethtool(&t.rcv, &["-K", "r0", "gro", "off"]);
    let attach = |iface: &str, side: &str| {
        t.json(&[
            "attach",
            iface,
            "--side",
            side,
            "--mode",
            "native",
            "--fast-path",
        ])
    };
    attach("g0", "virtual");
    let out = attach("g1", "physical");
    assert_eq!(out["redirect_target"], false, "{out}");
    assert!(redirect_target(&t, "g0"));
    assert!(!redirect_target(&t, "g1"));
    t.netpage(&["map", "add", "--vm", V4.va, "--real", V4.ra]);

    let server = echo_server(
        &t.rcv,
        SocketAddr::new(ip(V4.ra), PORT),
        Instant::now() + Duration::from_secs(20),
    );
    let dst = SocketAddr::new(ip(V4.va), PORT);
    assert_eq!(exchange(&t.snd, dst, 1), 1, "first datagram");
    let warm = t.counters();
    let diff = |a: &serde_json::Value, b: &serde_json::Value, k: &str| {
        a[k].as_u64().unwrap() - b[k].as_u64().unwrap()
    };
    assert_eq!(
        exchange(&t.snd, dst, DATAGRAMS),
        DATAGRAMS,
        "every datagram echoed through the fallback"
    );
    let after = t.counters();
    println!(
        "g1 out of the device map: fast_fallback_no_xdp_xmit +{}, fast_redirected +{}",
        diff(&after, &warm, "fast_fallback_no_xdp_xmit"),
        diff(&after, &warm, "fast_redirected")
    );
    // Client -> VA leaves through g1: the kernel's; the echo leaves through g0: redirected.
    assert_eq!(diff(&after, &warm, "fast_fallback_no_xdp_xmit"), DATAGRAMS);
    assert_eq!(diff(&after, &warm, "fast_redirected"), DATAGRAMS);

    // r0 takes XDP frames now; attaching again reads it.
    ethtool(&t.rcv, &["-K", "r0", "gro", "on"]);
    assert!(!redirect_target(&t, "g1"), "read again only by an attach");
    attach("g0", "virtual");
    assert!(redirect_target(&t, "g1"));
    let before = t.counters();
    assert_eq!(exchange(&t.snd, dst, DATAGRAMS), DATAGRAMS);
    let after = t.counters();
    assert_eq!(diff(&after, &before, "fast_fallback_no_xdp_xmit"), 0);
    assert_eq!(diff(&after, &before, "fast_redirected"), 2 * DATAGRAMS);

    // An older build's node: no device map pinned. Commands still work, and the next
    // attach makes one (loading this build's programs over it) and keeps the table.
    let list = t.json(&["map", "list"]);
    std::fs::remove_file(t.pin_dir.join("maps").join("NP_DEVMAP")).unwrap();
    assert_eq!(t.json(&["map", "list"]), list);
    assert!(!redirect_target(&t, "g0"));
    attach("g0", "virtual");
    attach("g1", "physical");
    assert!(t.pin_dir.join("maps").join("NP_DEVMAP").exists());
    assert!(redirect_target(&t, "g0") && redirect_target(&t, "g1"));
    assert_eq!(t.json(&["map", "list"]), list);
    let before = t.counters();
    assert_eq!(exchange(&t.snd, dst, DATAGRAMS), DATAGRAMS);
    let after = t.counters();
    assert_eq!(
        diff(&after, &before, "fast_redirected"),
        2 * DATAGRAMS,
        "before {before}\nafter {after}"
    );
    drop(server);
}

/// Under segmentation the fast path takes the packets the program has just encapsulated:
/// the gateway (locator 198.18.3.1) maps the VAs to the receiver's address as their
/// locator, and the receiver takes the tunnel's datagrams on a plain UDP socket on the
/// GUE port, whose payload is the inner packet, checked field by field.
#[test]
fn fast_path_forwards_encapsulated_packets() {
    const GUE_PORT: u16 = 6080;
    let t = Topology::new("encap");
    ethtool(&t.rcv, &["-K", "r0", "gro", "on"]);
    t.netpage(&["locator", "--own", "198.18.3.1"]);
    for (iface, side) in [("g0", "virtual"), ("g1", "physical")] {
        let args = ["attach", iface, "--side", side, "--mode", "native"];
        t.netpage(&[&args[..], &["--fast-path"]].concat());
    }
    let tunnel = t
        .rcv
        .run(|| UdpSocket::bind(("198.18.3.2", GUE_PORT)).unwrap());
    tunnel
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for f in [&V4, &V6] {
        t.netpage(&["map", "add", "--vm", f.va, "--locator", "198.18.3.2"]);
        let dst = SocketAddr::new(ip(f.va), PORT);
        let family = if f.va.contains(':') { "v6" } else { "v4" };
        // The first datagram resolves the receiver's neighbour entry through the kernel.
        let mut buf = [0u8; 2048];
        send_one(&t.snd, dst, b"first");
        tunnel
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{family}: the first datagram: {e}"));
        let before = t.counters();
        for i in 0..DATAGRAMS {
            let msg = format!("datagram {i} to {dst}");
            send_one(&t.snd, dst, msg.as_bytes());
            let (n, from) = tunnel
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("{family}: datagram {i}: {e}"));
            assert_eq!(from.ip(), ip("198.18.3.1"), "the gateway's locator");
            assert!(from.port() >= 0xC000, "an entropy port: {from}");
            let (src, to, port, payload) = inner_udp(&buf[..n]);
            assert_eq!(
                (src, to),
                (ip(f.client), ip(f.va)),
                "{family}: inner addresses"
            );
            assert_eq!(port, PORT);
            assert_eq!(payload, msg.as_bytes());
        }
        let after = t.counters();
        let diff = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        assert_eq!(diff("encapsulated"), DATAGRAMS, "{family}: {after}");
        assert_eq!(diff("fast_redirected"), DATAGRAMS, "{family}: {after}");
    }
    let out = t.json(&["locator"]);
    assert_eq!(out["locators"][0], "198.18.3.1", "{out}");
}

/// The source and destination, UDP destination port and payload of the IP packet `p`,
/// every checksum in it verified.
fn inner_udp(p: &[u8]) -> (IpAddr, IpAddr, u16, &[u8]) {
    let ethertype: u16 = if p[0] >> 4 == 6 { 0x86DD } else { 0x0800 };
    let mut frame = vec![0u8; 12];
    frame.extend(ethertype.to_be_bytes());
    frame.extend(p);
    netpage_tests::verify::frame(&frame).unwrap_or_else(|e| panic!("inner packet: {e}"));
    let (src, dst, l4) = match p[0] >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0xF) * 4;
            assert_eq!(p[9], 17, "inner protocol UDP");
            let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&p[o..o + 4]).unwrap());
            (a(12), a(16), &p[ihl..])
        }
        6 => {
            assert_eq!(p[6], 17, "inner next header UDP");
            let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&p[o..o + 16]).unwrap());
            (a(8), a(24), &p[40..])
        }
        v => panic!("inner IP version {v}"),
    };
    let port = u16::from_be_bytes([l4[2], l4[3]]);
    (src, dst, port, &l4[8..])
}
