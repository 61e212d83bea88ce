//! Network-namespace tests: a client reaching VMs by their virtual addresses across the
//! world's gateway and hosts, first by plain routing (the plumbing), then through netpage,
//! including a VM moving between hosts mid-connection.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use netpage_tests::world::{Addrs, Host, Node, Options, ProbeReport, Prober, V4, V6, Vm, World};

const TIMEOUT: Duration = Duration::from_secs(2);
const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The wildcard address of `ip`'s family, port 0.
fn any(ip: IpAddr) -> SocketAddr {
    let unspecified = match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    sa(unspecified, 0)
}

/// Sends a datagram from `from` (bound to `src`) to `dst` until one is echoed; returns the
/// echo's source, or `None` if three tries went unanswered.
fn udp_echoed_by(world: &World, from: Node, src: SocketAddr, dst: SocketAddr) -> Option<IpAddr> {
    let socket = world.udp_socket(from, src);
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        socket.send_to(b"hello", dst).ok()?;
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"hello", "echo from {peer}");
            return Some(peer.ip());
        }
    }
    None
}

/// Writes `line` and reads back exactly as many bytes, which must be the same.
fn echo_line(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).unwrap();
    let mut back = vec![0u8; line.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("echo of {line:?}: {e}"));
    assert_eq!(String::from_utf8_lossy(&back), line);
}

fn tcp_client(world: &World, dst: SocketAddr) -> TcpStream {
    let s = world
        .tcp_connect(Node::Client, dst, TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {dst}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// The reply of the line server: the line and the peer address the VM saw.
fn whoami(line: &str, peer: SocketAddr) -> String {
    format!("{line} from {}", peer.ip())
}

/// ICMP, UDP and TCP from the client reach the first VM, which sees the client's own
/// address, and the answers come from the VA.
fn client_reaches_vm(world: &World, f: &Addrs) {
    assert!(world.ping(Node::Client, f.va), "ping {}", f.va);
    let udp = world.udp_echo(Node::Vm, sa(f.va, UDP_PORT));
    let echoed_by = udp_echoed_by(world, Node::Client, any(f.va), udp.addr());
    assert_eq!(echoed_by, Some(f.va), "UDP echo source");
    assert_eq!(
        udp.peer_ips(),
        vec![f.client],
        "source seen by the VM over UDP"
    );

    let lines = world.tcp_lines(Node::Vm, sa(f.va, TCP_PORT), whoami);
    let mut stream = tcp_client(world, lines.addr());
    assert_eq!(stream.peer_addr().unwrap().ip(), f.va);
    stream.write_all(b"who\n").unwrap();
    let mut reply = String::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        reply.push(byte[0] as char);
    }
    assert_eq!(
        reply,
        format!("who from {}", f.client),
        "TCP peer seen by the VM"
    );
}

/// The client gets no answer from the first VM at all.
fn client_cannot_reach_vm(world: &World, f: &Addrs) {
    assert!(!world.ping(Node::Client, f.va), "ping {} answered", f.va);
    let udp = world.udp_echo(Node::Vm, sa(f.va, UDP_PORT));
    let echoed_by = udp_echoed_by(world, Node::Client, any(f.va), udp.addr());
    assert_eq!(echoed_by, None, "UDP echo answered");
}

/// A world with netpage on every edge, each VM mapped to the real address of its host.
fn netpage_world(options: Options) -> World {
    let world = World::with(options);
    world.attach_all();
    for f in [V4, V6] {
        world.map_all(f.va, f.ra_a);
        if options.second_vm {
            world.map_all(f.va2, f.ra2);
        }
    }
    world
}

fn plain_routing_reaches_vm(f: &Addrs) {
    let world = World::new();
    world.route_plain(Vm::One, Host::A);
    client_reaches_vm(&world, f);
}

#[test]
fn plain_routing_reaches_vm_v4() {
    plain_routing_reaches_vm(&V4);
}

#[test]
fn plain_routing_reaches_vm_v6() {
    plain_routing_reaches_vm(&V6);
}

/// Moving the VM's port keeps the VM's sockets and its addressing: once the gateway routes
/// to host B, the same echo server answers from there.
#[test]
fn plain_routing_follows_a_moved_vm() {
    let world = World::new();
    world.route_plain(Vm::One, Host::A);
    let servers: Vec<_> = [V4, V6]
        .iter()
        .map(|f| world.udp_echo(Node::Vm, sa(f.va, UDP_PORT)))
        .collect();
    world.move_vm(Host::B);
    assert_eq!(world.vm_host(Vm::One), Host::B);
    for f in [V4, V6] {
        assert!(!world.ping(Node::Client, f.va), "{} still reached", f.va);
    }
    world.route_plain(Vm::One, Host::B);
    for (f, server) in [V4, V6].iter().zip(&servers) {
        assert!(world.ping(Node::Client, f.va), "ping {} at host B", f.va);
        let by = udp_echoed_by(&world, Node::Client, any(f.va), server.addr());
        assert_eq!(by, Some(f.va));
    }
}

/// The prober sees a short outage, and none after, when the VM moves and the gateway's
/// route follows it mid-stream.
#[test]
fn plain_routing_prober_across_a_move() {
    let world = World::new();
    world.route_plain(Vm::One, Host::A);
    let server = world.udp_echo(Node::Vm, sa(V4.va, UDP_PORT));
    let socket = world.udp_socket(Node::Client, any(V4.va));
    let interval = Duration::from_millis(10);
    let probes = Prober::spawn(socket, server.addr(), interval, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    world.move_vm(Host::B);
    world.route_plain(Vm::One, Host::B);
    std::thread::sleep(Duration::from_millis(500));
    let report = probes.stop();
    println!("{report}");
    assert!(report.received > report.sent / 2, "{report}");
    assert_eq!(report.strangers, 0, "{report}");
    assert!(!lost_at_end(&report), "{report}");
}

/// Whether any of the last 20 probes went unanswered.
fn lost_at_end(report: &ProbeReport) -> bool {
    report.lost_seqs.iter().any(|&s| s + 20 >= report.sent)
}

#[test]
fn plain_routing_vm_to_vm() {
    let world = World::with(Options {
        second_vm: true,
        host_link: false,
        ..Options::default()
    });
    world.route_plain(Vm::One, Host::A);
    world.route_plain(Vm::Two, Host::B);
    for f in [V4, V6] {
        let server = world.udp_echo(Node::Vm2, sa(f.va2, UDP_PORT));
        let by = udp_echoed_by(&world, Node::Vm, sa(f.va, 0), server.addr());
        assert_eq!(by, Some(f.va2));
        assert_eq!(server.peer_ips(), vec![f.va]);
    }
}

#[test]
fn netpage_reaches_vm_v4() {
    client_reaches_vm(&netpage_world(Options::default()), &V4);
}

#[test]
fn netpage_reaches_vm_v6() {
    client_reaches_vm(&netpage_world(Options::default()), &V6);
}

/// The negative control: after the VM moves without a switch, the page tables still send
/// its traffic to host A, and nothing answers.
fn unswitched_move_loses_vm(f: &Addrs) {
    let world = netpage_world(Options::default());
    client_reaches_vm(&world, f);
    world.migrate(Vm::One, Host::B);
    client_cannot_reach_vm(&world, f);
}

#[test]
fn netpage_unswitched_move_loses_vm_v4() {
    unswitched_move_loses_vm(&V4);
}

#[test]
fn netpage_unswitched_move_loses_vm_v6() {
    unswitched_move_loses_vm(&V6);
}

/// An established TCP connection survives the VM's move and switch to host B, new
/// connections work, and the traffic now crosses host B and not host A.
fn switch_keeps_tcp(f: &Addrs) {
    let world = netpage_world(Options::default());
    let server = world.tcp_echo(Node::Vm, sa(f.va, TCP_PORT));
    let mut stream = tcp_client(&world, server.addr());
    for i in 0..5 {
        echo_line(&mut stream, &format!("before the move, line {i}\n"));
    }
    world.migrate(Vm::One, Host::B);
    world.switch_all(f.va, f.ra_b);
    let (a, b) = counts(&world, f.va);
    for i in 0..5 {
        echo_line(&mut stream, &format!("after the move, line {i}\n"));
    }
    echo_line(&mut tcp_client(&world, server.addr()), "a new connection\n");
    let (a2, b2) = counts(&world, f.va);
    assert_eq!(a2, a, "host A still translates {}", f.va);
    assert!(
        b2 > b,
        "host B translated nothing for {} ({b} -> {b2})",
        f.va
    );
    assert_eq!(server.peer_ips(), vec![f.client]);
}

/// Packets translated for `va` at host A and at host B.
fn counts(world: &World, va: IpAddr) -> (u64, u64) {
    (
        world.mapped_packets(Node::HostA, va),
        world.mapped_packets(Node::HostB, va),
    )
}

#[test]
fn netpage_switch_keeps_tcp_v4() {
    switch_keeps_tcp(&V4);
}

#[test]
fn netpage_switch_keeps_tcp_v6() {
    switch_keeps_tcp(&V6);
}

/// A probe stream loses at most a few probes while the VM moves and switches mid-stream,
/// and none once the switch is done.
fn switch_mid_stream(f: &Addrs) {
    let world = netpage_world(Options::default());
    let server = world.udp_echo(Node::Vm, sa(f.va, UDP_PORT));
    let socket = world.udp_socket(Node::Client, any(f.va));
    let interval = Duration::from_millis(10);
    let probes = Prober::spawn(socket, server.addr(), interval, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    world.migrate(Vm::One, Host::B);
    world.switch_all(f.va, f.ra_b);
    std::thread::sleep(Duration::from_millis(500));
    let report = probes.stop();
    println!("{}: {report}", f.va);
    let diagnose = || format!("{report}\n{}", world.diagnostics());
    assert!(report.received > report.sent / 2, "{}", diagnose());
    assert_eq!(report.strangers, 0, "{}", diagnose());
    assert!(
        !lost_at_end(&report),
        "lost after the switch: {}",
        diagnose()
    );
}

#[test]
fn netpage_switch_mid_stream_v4() {
    switch_mid_stream(&V4);
}

#[test]
fn netpage_switch_mid_stream_v6() {
    switch_mid_stream(&V6);
}

/// Two VMs at different hosts talk by their VAs and each sees the other's VA as source.
fn vm_to_vm(f: &Addrs) {
    let world = netpage_world(Options {
        second_vm: true,
        host_link: true,
        ..Options::default()
    });
    let server = world.udp_echo(Node::Vm2, sa(f.va2, UDP_PORT));
    let by = udp_echoed_by(&world, Node::Vm, sa(f.va, 0), server.addr());
    assert_eq!(by, Some(f.va2), "echo source seen by VM 1");
    assert_eq!(server.peer_ips(), vec![f.va], "source seen by VM 2");
    let tcp = world.tcp_echo(Node::Vm, sa(f.va, TCP_PORT));
    let mut stream = world
        .in_ns(Node::Vm2, || {
            TcpStream::connect_timeout(&tcp.addr(), TIMEOUT)
        })
        .expect("VM 2 connects to VM 1");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    echo_line(&mut stream, "from VM 2\n");
    assert_eq!(tcp.peer_ips(), vec![f.va2], "source seen by VM 1");
}

#[test]
fn netpage_vm_to_vm_v4() {
    vm_to_vm(&V4);
}

#[test]
fn netpage_vm_to_vm_v6() {
    vm_to_vm(&V6);
}

/// Host A routes the real address of each VM it hosts (given with its VA) to the VM, by
/// way of its VA, as a host does so that what it sends to a VM's real address, or routes
/// back from another of its VMs, reaches the VM (translated back on the port's way out).
fn route_local_ras(world: &World, vms: &[(Vm, IpAddr, IpAddr)]) {
    for (vm, va, ra) in vms {
        let len = if ra.is_ipv4() { 32 } else { 128 };
        world.ns(Node::HostA).ip(&[
            "route",
            "replace",
            &format!("{ra}/{len}"),
            "via",
            &va.to_string(),
            "dev",
            vm.port(),
        ]);
    }
}

/// Two VMs on one host talk by their VAs: what one sends is translated to real addresses
/// on its port, routed back by the host to the other's port, and translated back on the
/// way out of that port; each sees the other's VA.
fn vm_to_vm_on_one_host(f: &Addrs) {
    let world = netpage_world(Options {
        second_vm: true,
        host_link: false,
        ..Options::default()
    });
    world.move_vm_with(
        Vm::Two,
        Host::A,
        |host, port| world.detach(host.node(), port),
        |host, port| world.attach(host.node(), port, true),
    );
    route_local_ras(&world, &[(Vm::One, f.va, f.ra_a), (Vm::Two, f.va2, f.ra2)]);
    let tcp = world.tcp_echo(Node::Vm, sa(f.va, TCP_PORT));
    let mut stream = world
        .in_ns(Node::Vm2, || {
            TcpStream::connect_timeout(&tcp.addr(), TIMEOUT)
        })
        .unwrap_or_else(|e| {
            panic!(
                "VM 2 connects to VM 1 on its host: {e}\n{}",
                world.diagnostics()
            )
        });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    echo_line(&mut stream, "from VM 2, next door\n");
    assert_eq!(tcp.peer_ips(), vec![f.va2], "source seen by VM 1");
    assert_eq!(
        stream.peer_addr().unwrap().ip(),
        f.va,
        "VM 2 talks to VM 1's VA"
    );
}

#[test]
fn netpage_vm_to_vm_on_one_host_v4() {
    vm_to_vm_on_one_host(&V4);
}

#[test]
fn netpage_vm_to_vm_on_one_host_v6() {
    vm_to_vm_on_one_host(&V6);
}

/// `ping -t 1` from `from` to `dst` prints the ICMP error of the first hop: only if the
/// error's quote names `dst`, the address the probe was sent to.
fn expired_probe_gets_its_error(world: &World, from: Node, dst: IpAddr) {
    let target = dst.to_string();
    let out = world.exec(from, "ping", &["-c", "1", "-W", "2", "-t", "1", &target]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let expired = if dst.is_ipv4() {
        "Time to live exceeded"
    } else {
        "Time exceeded: Hop limit"
    };
    assert!(
        text.contains(expired),
        "{from:?} got no ICMP error for its expired probe to {dst}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM's probe whose TTL (hop limit) runs out at its host gets the host's ICMP error
/// back: the host addresses it to the VM's real address, which it routes to the VM's
/// port, and the error (its quote too) is translated back on the way out of the port.
fn vm_probe_expires_at_its_host(f: &Addrs) {
    let world = netpage_world(Options::default());
    route_local_ras(&world, &[(Vm::One, f.va, f.ra_a)]);
    expired_probe_gets_its_error(&world, Node::Vm, f.client);
}

/// A client's datagram to a VM whose TTL (hop limit) runs out at the gateway gets the
/// gateway's error back, about the VM's VA: the gateway's stack saw it already translated
/// to the real address, and the error's quote is translated back on the way out of the
/// client port. The client's kernel finds the socket by the quote: an error quoting the
/// real address would reach no socket.
fn client_probe_expires_at_the_gateway(f: &Addrs) {
    let world = netpage_world(Options::default());
    let err = world.in_ns(Node::Client, || {
        let sock = UdpSocket::bind(any(f.va)).unwrap();
        let fd = sock.as_raw_fd();
        let (level, hops, recverr) = if f.va.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_TTL, libc::IP_RECVERR)
        } else {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                libc::IPV6_RECVERR,
            )
        };
        for (name, value) in [(hops, 1), (recverr, 1)] {
            let v: libc::c_int = value;
            // SAFETY: `fd` is an open socket; the option value is a c_int as the kernel expects.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    name,
                    (&raw const v).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
        }
        sock.connect(sa(f.va, UDP_PORT)).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.send(b"expires at the gateway").unwrap();
        sock.recv(&mut [0; 64])
            .expect_err("the probe cannot be answered")
    });
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "the client's socket got no ICMP error about its datagram to {} ({err}):\n{}",
        f.va,
        world.diagnostics()
    );
}

#[test]
fn netpage_expired_probe_from_a_client_gets_the_gateways_error_v4() {
    client_probe_expires_at_the_gateway(&V4);
}

#[test]
fn netpage_expired_probe_from_a_client_gets_the_gateways_error_v6() {
    client_probe_expires_at_the_gateway(&V6);
}

#[test]
fn netpage_expired_probe_from_a_vm_gets_its_error_v4() {
    vm_probe_expires_at_its_host(&V4);
}

#[test]
fn netpage_expired_probe_from_a_vm_gets_its_error_v6() {
    vm_probe_expires_at_its_host(&V6);
}

/// The packets counted as `dropped_spoofed` on `node` so far.
fn spoofed(world: &World, node: Node) -> u64 {
    let stats = world.netpage_json(node, &["stats"]);
    stats["counters"]["dropped_spoofed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dropped_spoofed counter: {stats}"))
}

/// Sends `n` datagrams from `node`, bound to `src` (an address the node was given for the
/// purpose), to `dst`.
fn send_from(world: &World, node: Node, src: IpAddr, dst: SocketAddr, n: usize) {
    let socket = world.udp_socket(node, sa(src, 0));
    for _ in 0..n {
        socket.send_to(b"spoofed", dst).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Nobody but a VM's own port sends from its addresses: the client poses as VM 2 toward VM
/// 1, by VM 2's VA and by its RA, and is dropped at the gateway's client port (which owns
/// no VM); VM 1 poses as VM 2 toward the client the same two ways, and is dropped at its
/// own port on host A (VM 2's port is at host B). Each drop is counted where it happens,
/// nothing spoofed reaches its target, and the VMs' own traffic still flows.
fn spoofed_sources_are_dropped(f: &Addrs) {
    let world = netpage_world(Options {
        second_vm: true,
        host_link: false,
        ..Options::default()
    });
    let len = if f.va.is_ipv4() { 32 } else { 128 };
    for node in [Node::Client, Node::Vm] {
        for a in [f.va2, f.ra2] {
            world
                .ns(node)
                .ip(&["addr", "add", &format!("{a}/{len}"), "dev", "lo"]);
        }
    }
    let at_vm = world.udp_echo(Node::Vm, sa(f.va, UDP_PORT));
    let at_client = world.udp_echo(Node::Client, sa(f.client, UDP_PORT));
    let legit = |what: &str| {
        let by = udp_echoed_by(&world, Node::Client, sa(f.client, 0), at_vm.addr());
        assert_eq!(by, Some(f.va), "{what}: the client's echo from VM 1");
        let by = udp_echoed_by(&world, Node::Vm, sa(f.va, 0), at_client.addr());
        assert_eq!(by, Some(f.client), "{what}: VM 1's echo from the client");
    };
    // Every neighbour on the way is resolved before the spoofed datagrams go.
    legit("before");
    let (gw, host_a) = (spoofed(&world, Node::Gw), spoofed(&world, Node::HostA));
    const N: usize = 5;
    for src in [f.va2, f.ra2] {
        send_from(&world, Node::Client, src, at_vm.addr(), N);
        send_from(&world, Node::Vm, src, at_client.addr(), N);
    }
    legit("after");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(at_vm.peer_ips(), vec![f.client], "peers seen by VM 1");
    assert_eq!(at_client.peer_ips(), vec![f.va], "peers seen by the client");
    assert_eq!(
        spoofed(&world, Node::Gw) - gw,
        2 * N as u64,
        "spoofed datagrams counted at the gateway"
    );
    assert_eq!(
        spoofed(&world, Node::HostA) - host_a,
        2 * N as u64,
        "spoofed datagrams counted at host A"
    );
    assert_eq!(spoofed(&world, Node::HostB), 0, "spoofed counted at host B");
}

#[test]
fn netpage_spoofed_sources_are_dropped_v4() {
    spoofed_sources_are_dropped(&V4);
}

#[test]
fn netpage_spoofed_sources_are_dropped_v6() {
    spoofed_sources_are_dropped(&V6);
}

/// The drain of the forwarding tests: long enough to outlast them.
const DRAIN_SECONDS: u32 = 60;

/// A world with a host link (host A reaches host B's site directly, not across the
/// gateway's physical side, which would translate a forwarded packet to the VA), the VM
/// moved to host B, and `switched` nodes switched to host B's real address.
fn moved_world(f: &Addrs, switched: &[Node]) -> (World, netpage_tests::world::Server) {
    let world = netpage_world(Options {
        second_vm: false,
        host_link: true,
        ..Options::default()
    });
    let server = world.udp_echo(Node::Vm, sa(f.va, UDP_PORT));
    let by = udp_echoed_by(&world, Node::Client, any(f.va), server.addr());
    assert_eq!(by, Some(f.va), "echo before the move");
    world.migrate(Vm::One, Host::B);
    world.switch_on(switched, f.va, f.ra_b, DRAIN_SECONDS);
    (world, server)
}

/// After the VM moved to host B and every node switched, a packet still in flight to its
/// old real address (sent to it directly, as the gateway sent it before the switch)
/// reaches host A, which forwards it to host B's real address, where the VM gets it: the
/// VM answers from its VA, and host A counts it as `forwarded`.
fn in_flight_packets_follow_the_vm(f: &Addrs) {
    let (world, server) = moved_world(f, &Node::EDGES);
    let before = world.counter(Node::HostA, "forwarded");
    let by = udp_echoed_by(&world, Node::Client, any(f.va), sa(f.ra_a, UDP_PORT));
    let diagnose = || world.diagnostics();
    assert_eq!(
        by,
        Some(f.va),
        "echo of a packet for the old RA\n{}",
        diagnose()
    );
    assert!(
        world.counter(Node::HostA, "forwarded") > before,
        "host A forwarded nothing\n{}",
        diagnose()
    );
    assert_eq!(world.counter(Node::HostB, "forwarded"), 0);
    assert_eq!(server.peer_ips(), vec![f.client], "source seen by the VM");
    // `netpage stats` shows it.
    let stats = world.netpage_ok(Node::HostA, &["stats"]);
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().next() == Some("forwarded")),
        "{stats}"
    );
}

#[test]
fn netpage_forwards_in_flight_packets_v4() {
    in_flight_packets_follow_the_vm(&V4);
}

#[test]
fn netpage_forwards_in_flight_packets_v6() {
    in_flight_packets_follow_the_vm(&V6);
}

/// The negative control: host A left behind (still mapping the VA to its old real
/// address, so nothing says where the VM went) translates the packet for the old RA to
/// the VA as before, forwards nothing, and the packet is lost with the VM gone.
fn left_behind_host_forwards_nothing(f: &Addrs) {
    let (world, _server) = moved_world(f, &[Node::Gw, Node::HostB]);
    let translated = if f.va.is_ipv4() {
        "translated_v4_to_virtual"
    } else {
        "translated_v6_to_virtual"
    };
    let before = world.counter(Node::HostA, translated);
    let by = udp_echoed_by(&world, Node::Client, any(f.va), sa(f.ra_a, UDP_PORT));
    assert_eq!(by, None, "echo without forwarding\n{}", world.diagnostics());
    assert_eq!(world.counter(Node::HostA, "forwarded"), 0);
    assert!(world.counter(Node::HostA, translated) > before);
}

#[test]
fn netpage_without_forwarding_loses_in_flight_packets_v4() {
    left_behind_host_forwards_nothing(&V4);
}

#[test]
fn netpage_without_forwarding_loses_in_flight_packets_v6() {
    left_behind_host_forwards_nothing(&V6);
}
