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

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use netpage_tests::world::{Addrs, Node, Options, V4, V6, World};

/// Bytes sent each way per family.
const BULK: usize = 64 << 20;
/// How long one transfer may take before it counts as stalled.
const STALL: Duration = Duration::from_secs(60);

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
        let side = if virtual_side { "virtual" } else { "physical" };
        world.netpage_json(node, &[&["attach", ifname, "--side", side], how].concat());
    }
    for f in [&V4, &V6] {
        world.map_all(f.va, f.ra_a);
    }
    world
}

/// The TCP checksum errors `node`'s stack has counted (`InCsumErrors` of /proc/net/snmp,
/// which IPv4 and IPv6 share).
fn tcp_csum_errors(world: &World, node: Node) -> u64 {
    let snmp = world.in_ns(node, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read /proc/net/snmp")
    });
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .expect("InCsumErrors in /proc/net/snmp");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Byte `i` of the stream: a pattern in which a lost, repeated or corrupted byte shows.
fn pattern(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 12) as u8
}

/// Sends `BULK` bytes to the VM's echo server at `va` from the client and reads them
/// back, checking every byte; the time it took, or what went wrong.
fn echo_bulk(world: &World, va: IpAddr, bytes: usize) -> Result<Duration, String> {
    let server = world.tcp_echo(Node::Vm, SocketAddr::new(va, 7100));
    let mut stream = world
        .in_ns(Node::Client, || {
            TcpStream::connect_timeout(&server.addr(), Duration::from_secs(3))
        })
        .map_err(|e| format!("connect to {va}: {e}"))?;
    stream.set_read_timeout(Some(STALL)).unwrap();
    stream.set_write_timeout(Some(STALL)).unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || -> Result<(), String> {
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent < bytes {
            let n = buf.len().min(bytes - sent);
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("sending at byte {sent}: {e}"))?;
            sent += n;
        }
        Ok(())
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    let result = loop {
        if got == bytes {
            break Ok(started.elapsed());
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => break Err(format!("the connection closed after {got} bytes")),
            Ok(n) => n.min(bytes - got),
            Err(e) => break Err(format!("receiving after {got} of {bytes} bytes: {e}")),
        };
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(got + k)) {
            break Err(format!("byte {} came back corrupted", got + k));
        }
        got += n;
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    match sender.join().expect("the sender") {
        Err(e) if result.is_ok() => Err(e),
        _ => result,
    }
}

/// With tc at every edge, 64 MiB each way per family arrive whole, and neither the client
/// nor the VM counts a single checksum error.
#[test]
fn offloaded_bulk_tcp_through_tc_arrives_whole() {
    let world = offloaded_world(&["--hook", "tc"]);
    for f in [&V4, &V6] {
        let before = [Node::Client, Node::Vm].map(|n| tcp_csum_errors(&world, n));
        let took = echo_bulk(&world, f.va, BULK)
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
    let status = world.netpage_json(Node::Gw, &["status"]);
    assert!(
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["hook"] == "tc"),
        "{status}"
    );
}

/// The negative control: the same traffic through XDP, which takes a partial checksum for
/// a final one, gets checksum errors at the receiver and does not get through.
#[test]
fn offloaded_tcp_through_xdp_gets_checksum_errors() {
    let world = offloaded_world(&["--hook", "xdp"]);
    let before = tcp_csum_errors(&world, Node::Vm);
    let r = echo_bulk(&world, V4.va, 1 << 20);
    let errors = tcp_csum_errors(&world, Node::Vm) - before;
    println!("through XDP: {r:?}; checksum errors at the VM: {errors}");
    assert!(errors > 0, "no checksum error through XDP: {r:?}");
    assert!(r.is_err(), "the transfer got through XDP");
}

fn family(f: &Addrs) -> &'static str {
    if f.va.is_ipv4() { "IPv4" } else { "IPv6" }
}
