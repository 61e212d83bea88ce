//! The world's WAN variant: a delay line between the sites that holds every frame for its
//! one-way delay, keeps order under jitter, counts what it carries and drops, and is
//! transparent to netpage's translation, to TCP, and to offloaded (GSO) frames.
//!
//! Timing is checked only from below (a delay is a floor); upper bounds are loose, since a
//! busy machine adds latency. The delay line's accuracy is measured by `cargo xtask bench
//! wan`, not asserted here.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use netpage_tests::{
    wan::{
        Flow, Wan,
        packet::{PacketSocket, VNET_HDR},
    },
    world::{Addrs, BOTH, Host, Node, Options, ProbeReport, Prober, V4, V6, Vm, World},
};

const MS: Duration = Duration::from_millis(1);
const PORT: u16 = 7000;

/// A world whose links between sites run through `wan`, netpage on every edge and the VM
/// mapped at host A.
fn wan_world(wan: Wan) -> World {
    let world = World::with(Options {
        wan: Some(wan),
        ..Options::default()
    });
    world.attach_all();
    for f in BOTH {
        world.map_all(f.va, f.ra_a);
    }
    world
}

/// The minimum and average round-trip times `ping -c COUNT` reports from `node` to `dst`, in ms.
fn ping_rtt(world: &World, node: Node, dst: IpAddr, count: u32) -> (f64, f64) {
    let out = world.exec_ok(
        node,
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            &dst.to_string(),
        ],
    );
    // "rtt min/avg/max/mdev = 40.123/40.456/41.002/0.301 ms"
    let stats = out
        .lines()
        .find_map(|l| l.split_once(" = ").filter(|(k, _)| k.contains("min/avg")))
        .unwrap_or_else(|| panic!("no round-trip times in ping's output:\n{out}"))
        .1;
    let v: Vec<f64> = stats
        .split(['/', ' '])
        .take(2)
        .map(|x| x.parse().unwrap_or_else(|e| panic!("{x:?} in {out}: {e}")))
        .collect();
    (v[0], v[1])
}

/// The counts of `after` beyond `before`.
fn delta(before: Flow, after: Flow) -> Flow {
    let d = |a: u64, b: u64| a - b;
    let mut f = after;
    f.carried.frames = d(after.carried.frames, before.carried.frames);
    f.carried.bytes = d(after.carried.bytes, before.carried.bytes);
    f.carried.udp = d(after.carried.udp, before.carried.udp);
    f.carried.tcp = d(after.carried.tcp, before.carried.tcp);
    f.dropped.frames = d(after.dropped.frames, before.dropped.frames);
    f.dropped.bytes = d(after.dropped.bytes, before.dropped.bytes);
    f.dropped.udp = d(after.dropped.udp, before.dropped.udp);
    f.dropped.tcp = d(after.dropped.tcp, before.dropped.tcp);
    f.unread = d(after.unread, before.unread);
    f
}

/// Sends `count` datagrams numbered from 0 from the client to the VM, `gap` apart (none:
/// as fast as the socket takes them), and returns the numbers the VM received, in the
/// order it received them, once nothing more came for a second.
fn numbered_burst(world: &World, count: u32, gap: Duration) -> Vec<u32> {
    let dst = SocketAddr::new(V4.va, PORT);
    let rx = world.udp_socket(Node::Vm, dst);
    rx.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let tx = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    let receiver = thread::spawn(move || {
        let (mut got, mut buf) = (Vec::new(), [0u8; 64]);
        while let Ok(n) = rx.recv(&mut buf) {
            got.push(u32::from_be_bytes(buf[..n].try_into().expect("4 bytes")));
        }
        got
    });
    let start = Instant::now();
    for i in 0..count {
        tx.send_to(&i.to_be_bytes(), dst)
            .expect("send a numbered datagram");
        if !gap.is_zero() {
            thread::sleep((gap * (i + 1)).saturating_sub(start.elapsed()));
        }
    }
    receiver.join().expect("the receiver")
}

/// With 20 ms each way between the gateway and host A, a ping from the client to the VM's
/// VA (translated by netpage at the gateway and at the host) takes at least 40 ms.
#[test]
fn ping_through_translation_takes_twice_the_delay() {
    let world = wan_world(Wan::delay(20 * MS));
    for f in BOTH {
        let before = world.mapped_packets(Node::HostA, f.va);
        let (min, avg) = ping_rtt(&world, Node::Client, f.va, 5);
        assert!(
            min >= 40.0,
            "{}: min RTT {min} ms below twice the delay",
            f.va
        );
        assert!(avg < 40.0 + 200.0, "{}: average RTT {avg} ms", f.va);
        let translated = world.mapped_packets(Node::HostA, f.va) - before;
        assert!(
            translated >= 10,
            "{}: {translated} packets translated at host A",
            f.va
        );
    }
    let to_a = world.wan_flow(Node::Gw, Node::HostA);
    let from_a = world.wan_flow(Node::HostA, Node::Gw);
    assert!(
        to_a.carried.frames >= 10 && from_a.carried.frames >= 10,
        "{to_a:?} {from_a:?}"
    );
    assert_eq!(to_a.dropped.frames + from_a.dropped.frames, 0);
}

/// The plain world's round trip is far below the delay: what the test above measures is
/// the delay line's.
#[test]
fn plain_world_has_no_delay() {
    let world = World::new();
    world.attach_all();
    world.map_all(V4.va, V4.ra_a);
    let (min, _) = ping_rtt(&world, Node::Client, V4.va, 3);
    assert!(min < 20.0, "plain world: min RTT {min} ms");
}

/// Datagrams 0.1 ms apart under 5 ms + up to 10 ms of jitter would overtake each other if
/// each kept its own draw: they arrive complete and in order, and the counters say exactly
/// how many crossed each way.
#[test]
fn jitter_keeps_order_and_counts_match() {
    const N: u32 = 500;
    let world = wan_world(Wan::delay(5 * MS).jitter(10 * MS));
    assert!(world.ping(Node::Client, V4.va), "warm-up ping");
    let (to_a, from_a) = (
        world.wan_flow(Node::Gw, Node::HostA),
        world.wan_flow(Node::HostA, Node::Gw),
    );
    let got = numbered_burst(&world, N, MS / 10);
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "datagrams lost or reordered"
    );
    let to_a = delta(to_a, world.wan_flow(Node::Gw, Node::HostA));
    let from_a = delta(from_a, world.wan_flow(Node::HostA, Node::Gw));
    assert_eq!(to_a.carried.udp, u64::from(N), "{to_a:?}");
    assert_eq!((to_a.dropped.frames, to_a.unread), (0, 0), "{to_a:?}");
    assert_eq!(from_a.carried.udp, 0, "{from_a:?}");
    // Host B's link carried none of it.
    assert_eq!(world.wan_flow(Node::Gw, Node::HostB).carried.udp, 0);
}

/// A queue of 16 frames under a burst of 200 datagrams: what it cannot hold is dropped and
/// counted, and what it carried is exactly what the VM received.
#[test]
fn a_full_queue_drops_and_counts() {
    const N: u32 = 200;
    let world = wan_world(Wan::delay(20 * MS).limit(16));
    assert!(world.ping(Node::Client, V4.va), "warm-up ping");
    let before = world.wan_flow(Node::Gw, Node::HostA);
    let got = numbered_burst(&world, N, Duration::ZERO);
    let flow = delta(before, world.wan_flow(Node::Gw, Node::HostA));
    assert_eq!(flow.unread, 0, "{flow:?}");
    assert_eq!(
        flow.carried.udp + flow.dropped.udp,
        u64::from(N),
        "{flow:?}"
    );
    assert!(
        flow.dropped.udp > 0,
        "a burst of {N} fit 16 frames: {flow:?}"
    );
    assert_eq!(got.len() as u64, flow.carried.udp, "{flow:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "reordered: {got:?}");
}

/// Writes `len` bytes of a pattern on `stream` from a thread while reading the echo, and
/// says whether every byte came back as sent.
fn echo_intact(mut stream: TcpStream, len: usize) -> bool {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = stream.try_clone().expect("clone the stream");
    let sent = data.clone();
    let w = thread::spawn(move || writer.write_all(&sent));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut back = vec![0u8; len];
    let read = stream.read_exact(&mut back);
    w.join().expect("writer").expect("write the stream");
    read.expect("read the echo");
    back == data
}

/// A TCP stream from the client to the VM through the delay line and netpage's translation
/// arrives intact, both ways.
#[test]
fn tcp_stream_crosses_intact() {
    const LEN: usize = 2 << 20;
    let world = wan_world(Wan::delay(20 * MS));
    let _echo = world.tcp_echo(Node::Vm, SocketAddr::new(V4.va, PORT));
    let stream = world
        .tcp_connect(
            Node::Client,
            SocketAddr::new(V4.va, PORT),
            Duration::from_secs(2),
        )
        .expect("connect to the VM");
    assert!(echo_intact(stream, LEN), "the echo differs from the stream");
    let to_a = world.wan_flow(Node::Gw, Node::HostA);
    let from_a = world.wan_flow(Node::HostA, Node::Gw);
    assert!(to_a.carried.tcp as usize > LEN / 1500, "{to_a:?}");
    assert!(from_a.carried.tcp as usize > LEN / 1500, "{from_a:?}");
}

/// With segmentation offload on at the gateway and host A, TCP between them leaves as GSO
/// frames larger than the MTU: the delay line carries them whole (their virtio-net header
/// with them) and the stream arrives intact.
#[test]
fn offloaded_tcp_crosses_whole() {
    const LEN: usize = 4 << 20;
    let world = World::with(Options {
        wan: Some(Wan::delay(2 * MS)),
        ..Options::default()
    });
    for (node, ifname) in [(Node::Gw, "ga"), (Node::HostA, "a0")] {
        world.exec_ok(
            node,
            "ethtool",
            &["-K", ifname, "tx", "on", "tso", "on", "gso", "on"],
        );
    }
    let server = SocketAddr::new("198.18.3.2".parse().unwrap(), PORT);
    let _echo = world.tcp_echo(Node::HostA, server);
    let stream = world
        .tcp_connect(Node::Gw, server, Duration::from_secs(2))
        .expect("connect to host A");
    assert!(echo_intact(stream, LEN), "the echo differs from the stream");
    let flow = world.wan_flow(Node::Gw, Node::HostA);
    assert_eq!(flow.dropped.tcp, 0, "{flow:?}");
    assert!(
        flow.carried.largest > 1514,
        "no frame beyond the MTU crossed: {flow:?}"
    );
}

/// Every link between sites is delayed, the hosts' direct link too; the client's is not.
#[test]
fn every_link_between_sites_is_delayed() {
    let world = World::with(Options {
        host_link: true,
        wan: Some(Wan::delay(10 * MS)),
        ..Options::default()
    });
    for (from, to, dst) in [
        (Node::Gw, Node::HostA, "198.18.3.2"),
        (Node::Gw, Node::HostB, "198.18.4.2"),
        (Node::HostA, Node::HostB, "198.18.5.2"),
    ] {
        let (min, _) = ping_rtt(&world, from, dst.parse().unwrap(), 3);
        assert!(min >= 20.0, "{dst}: min RTT {min} ms");
        let (there, back) = (world.wan_flow(from, to), world.wan_flow(to, from));
        assert!(
            there.carried.frames >= 3 && back.carried.frames >= 3,
            "{there:?} {back:?}"
        );
    }
    let (min, _) = ping_rtt(&world, Node::Client, V4.gw, 3);
    assert!(min < 10.0, "the client's link: min RTT {min} ms");
}

/// A VLAN-tagged frame crosses with its tag: the receiving veth takes the tag out of the
/// frame into metadata, and the delay line puts it back before sending on.
#[test]
fn vlan_tags_cross() {
    const PAYLOAD: &[u8] = b"netpage delay line vlan";
    let world = World::with(Options {
        wan: Some(Wan::delay(MS)),
        ..Options::default()
    });
    let open = |node, ifname| {
        world
            .in_ns(node, || PacketSocket::open(ifname))
            .unwrap_or_else(|e| panic!("packet socket on {ifname}: {e}"))
    };
    let (tx, rx) = (open(Node::Gw, "ga"), open(Node::HostA, "a0"));
    let mut frame = vec![0u8; VNET_HDR];
    frame.extend([0xff; 6]); // broadcast
    frame.extend([0x02, 0, 0, 0, 0, 0x01]);
    frame.extend([0x81, 0x00, 0x00, 0x64]); // 802.1Q, VLAN 100
    frame.extend([0x88, 0xb5]); // local experimental EtherType
    frame.extend(PAYLOAD);
    tx.send(&frame).expect("send a tagged frame");
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 2048];
    let got = loop {
        assert!(Instant::now() < deadline, "the tagged frame never arrived");
        match rx.recv(&mut buf).expect("receive on a0") {
            Some(r) if buf[..r.len].ends_with(PAYLOAD) => break r,
            _ => thread::sleep(MS),
        }
    };
    assert_eq!(got.vlan, Some((0x8100, 100)), "the tag");
    assert_eq!(
        &buf[VNET_HDR + 12..VNET_HDR + 14],
        &[0x88, 0xb5],
        "the EtherType"
    );
}

/// The namespaces `ip netns list` shows.
fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A test that panics with a WAN world drops it on the way out: the relay stops and the
/// delay line's namespace is gone with the world's.
#[test]
fn a_panic_removes_the_delay_line() {
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let world = World::with(Options {
            wan: Some(Wan::delay(MS)),
            ..Options::default()
        });
        *name.lock().unwrap() = world.delay_line().ns().name().to_owned();
        assert!(namespaces().contains(&*name.lock().unwrap()));
        panic!("a failing test");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(
        !namespaces().contains(&name),
        "{name} outlived its world:\n{}",
        namespaces()
    );
}

/// What a move over the WAN did (see [`move_over_the_wan`]).
struct Moved {
    probes: ProbeReport,
    /// Packets host A forwarded from its old real address to host B's.
    forwarded: u64,
    /// Whether the TCP stream that crossed during the move came back as sent.
    tcp_intact: bool,
}

/// The one-way delay between the sites for the moves.
const MOVE_WAN: Duration = Duration::from_millis(20);

/// Moves the VM from host A to host B over a WAN of [`MOVE_WAN`] one way (the host link
/// too), while the client probes its VA every millisecond and a TCP stream crosses:
/// make-before-break (plugged into both hosts, see `World::replug_vm`), every edge
/// switched with one `netpage switch --drain DRAIN`, then the old port unplugged at once.
/// The probes the gateway sent toward host A in the one-way delay before its switch reach
/// host A after it; so do the VM's replies toward the gateway.
fn move_over_the_wan(f: &Addrs, drain: u32) -> Moved {
    let world = World::with(Options {
        host_link: true,
        wan: Some(Wan::delay(MOVE_WAN)),
        ..Options::default()
    });
    world.attach_all();
    world.map_all(f.va, f.ra_a);
    let server = world.udp_echo(Node::Vm, SocketAddr::new(f.va, PORT));
    let _echo = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, PORT + 1));
    let stream = world
        .tcp_connect(
            Node::Client,
            SocketAddr::new(f.va, PORT + 1),
            Duration::from_secs(2),
        )
        .expect("connect to the VM");
    let tcp = thread::spawn(move || echo_intact(stream, 1 << 20));
    let socket = world.udp_socket(Node::Client, SocketAddr::new(f.client, 0));
    let probes = Prober::spawn(socket, server.addr(), MS, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(300));
    let before = world.counter(Node::HostA, "forwarded");
    world.replug_vm(Vm::One, Host::B, || {
        world.switch_on(&Node::EDGES, f.va, f.ra_b, drain);
    });
    // Several round trips: whatever was in flight has arrived or is lost.
    thread::sleep(Duration::from_millis(400));
    let probes = probes.stop();
    let tcp_intact = tcp.join().expect("the TCP stream");
    let forwarded = world.counter(Node::HostA, "forwarded") - before;
    println!(
        "{} over a WAN of {} ms, drain {drain} s: {probes}; host A forwarded {forwarded}; \
         TCP intact: {tcp_intact}",
        f.va,
        MOVE_WAN.as_millis()
    );
    Moved {
        probes,
        forwarded,
        tcp_intact,
    }
}

/// With the old real address draining, host A forwards what was in flight to it to host
/// B's: no probe is lost, and the TCP stream arrives intact.
fn a_move_over_the_wan_loses_nothing(f: &Addrs) {
    let m = move_over_the_wan(f, 60);
    assert_eq!(m.probes.lost, 0, "{}", m.probes);
    assert_eq!(m.probes.strangers, 0, "{}", m.probes);
    assert!(m.forwarded > 0, "host A forwarded nothing: {}", m.probes);
    assert!(m.tcp_intact, "the TCP stream arrived damaged");
}

#[test]
fn a_move_over_the_wan_loses_nothing_with_forwarding_v4() {
    a_move_over_the_wan_loses_nothing(&V4);
}

#[test]
fn a_move_over_the_wan_loses_nothing_with_forwarding_v6() {
    a_move_over_the_wan_loses_nothing(&V6);
}

/// The negative control: the same move with no drain, so no node keeps the old real
/// address and host A has nothing to forward with. What was in flight to host A (probes,
/// and the VM's replies to the gateway) is lost: at least one, at most what two one-way
/// delays carry, all in one run.
#[test]
fn a_move_over_the_wan_without_forwarding_loses_what_was_in_flight() {
    let m = move_over_the_wan(&V4, 0);
    let in_flight = 2 * MOVE_WAN.as_millis() as u64;
    assert_eq!(m.forwarded, 0, "forwarded without a drain");
    assert!(m.probes.lost > 0, "nothing lost: {}", m.probes);
    let (first, last) = (m.probes.lost_seqs[0], *m.probes.lost_seqs.last().unwrap());
    assert!(
        last - first < in_flight + 20,
        "probes lost outside the move ({first} to {last}): {}",
        m.probes
    );
    assert!(m.tcp_intact, "TCP did not recover the loss");
}
