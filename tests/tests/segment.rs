//! In-kernel fixture tests of segmentation (mappings of method encap), through
//! BPF_PROG_TEST_RUN at the XDP hook and at the tc hook, which make the same frames of the
//! same input: encapsulation on the virtual side in every pairing of inner and outer
//! family, decapsulation on the physical side, the default locator, forwarding of a moved
//! VM's packets, and the "too big" answers; under tc also GSO packets, measured by their
//! segments.
//!
//! Every expected frame is built here from the RFCs (GUE variant 1 is an IP packet behind
//! a UDP header to port 6080): outer headers byte by byte, checksums by the tests' own
//! arithmetic (`verify`). The only fields taken from the program's output are those it
//! derives from its flow hash (the UDP source port, the IPv4 identification, the IPv6
//! flow label), which are checked for what they must be instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpage::{loader::Side, table::PageTable};
use netpage_common::{counters::Counter, segment::SegConfig};
use netpage_tests::{
    build::{V4Opts, ether, icmp4, icmp6, ipv4, ipv6, tcp, udp},
    datapath::{Datapath, Hook, LOOPBACK, gso_context},
    verify,
};

const GUE_PORT: u16 = 6080;

fn a4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn a6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

/// This node's locators, another node's, and the site gateway's (the default locator).
fn own(v6: bool) -> IpAddr {
    if v6 {
        a6("2001:db8:a::1")
    } else {
        a4([192, 0, 2, 1])
    }
}
fn remote(v6: bool) -> IpAddr {
    if v6 {
        a6("2001:db8:b::1")
    } else {
        a4([192, 0, 2, 2])
    }
}
const GATEWAY: [u8; 4] = [192, 0, 2, 254];

fn va(v6: bool) -> IpAddr {
    if v6 {
        a6("fd00::10")
    } else {
        a4([10, 0, 0, 10])
    }
}
fn client(v6: bool) -> IpAddr {
    if v6 {
        a6("2001:db8:c::5")
    } else {
        a4([203, 0, 113, 5])
    }
}

fn octets16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// The settings of a node with both locators and the gateway as default locator.
fn settings(mtu: u32) -> SegConfig {
    let mut c = SegConfig {
        flags: netpage_common::segment::SEG_ON,
        mtu,
        default_family: 4,
        default_addr: octets16(a4(GATEWAY)),
        ..SegConfig::default()
    };
    c.own4.copy_from_slice(&octets16(own(false))[..4]);
    c.own6 = octets16(own(true));
    c
}

fn node(mtu: u32) -> Datapath {
    let mut dp = Datapath::load(64);
    dp.set_segments(settings(mtu));
    dp
}

fn segment(dp: &mut Datapath, vm: IpAddr, locator: IpAddr) {
    dp.table().create_stats(vm).unwrap();
    dp.table().set_segment(vm, locator).unwrap();
}

/// Runs the program of `side` at `hook` once on `input`: the verdict and the frame out.
fn run(dp: &Datapath, hook: Hook, side: Side, input: &[u8]) -> (u32, Vec<u8>) {
    dp.run_at(hook, side, input, None)
}

/// [`run`], the packet arriving on the interface with index `ifindex`.
fn run_on(dp: &Datapath, hook: Hook, side: Side, input: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let ctx = hook.arriving_on(ifindex, input.len());
    dp.run_at(hook, side, input, Some(&ctx))
}

/// Runs the fixture `test` at every hook, each time on a node of its own.
fn at_every_hook(test: fn(Hook)) {
    for hook in Hook::ALL {
        eprintln!("at the {} hook", hook.name());
        test(hook);
    }
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp,
    Udp,
    Echo,
}
const L4S: [L4; 3] = [L4::Tcp, L4::Udp, L4::Echo];

/// An IP packet (no Ethernet header) of transport `l4` from `src` to `dst`, with
/// `payload`, every checksum computed.
fn packet(l4: L4, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let v6 = src.is_ipv6();
    let (proto, seg) = match l4 {
        L4::Tcp => (6, tcp(src, dst, payload)),
        L4::Udp => (17, udp(src, dst, payload)),
        L4::Echo if v6 => (58, icmp6(src, dst, 128, 0, [0, 7, 0, 1], payload)),
        L4::Echo => (1, icmp4(8, 0, [0, 7, 0, 1], payload)),
    };
    if v6 {
        ipv6(src, dst, proto, &[], &seg)
    } else {
        ipv4(src, dst, proto, &V4Opts::default(), &seg)
    }
}

fn ethertype(v6: bool) -> u16 {
    if v6 { 0x86DD } else { 0x0800 }
}

/// An Ethernet frame around the IP packet `p`.
fn frame(p: &[u8]) -> Vec<u8> {
    ether(&[], ethertype(p[0] >> 4 == 6), p)
}

/// The outer headers of the encapsulation around `inner` from `src` to `dst`, as RFC 791
/// / 8200 and 768 lay them out, with the fields the program derives from its flow hash
/// (`id` for IPv4, `flow` for IPv6, and the UDP source port) and the IPv4
/// don't-fragment bit (`df`) given.
fn outer(
    src: IpAddr,
    dst: IpAddr,
    inner: &[u8],
    df: bool,
    hashed: (u16, u32, u16),
    ttl: u8,
) -> Vec<u8> {
    let (id, flow, sport) = hashed;
    let tos = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    };
    let udp_len = (8 + inner.len()) as u16;
    let mut h = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend([0x45, tos]);
            h.extend((20 + udp_len).to_be_bytes());
            h.extend(id.to_be_bytes());
            h.extend([if df { 0x40 } else { 0 }, 0, ttl, 17, 0, 0]);
            h.extend(s.octets());
            h.extend(d.octets());
            let c = !verify::sum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let word = (6u32 << 28) | (u32::from(tos) << 20) | flow;
            h.extend(word.to_be_bytes());
            h.extend(udp_len.to_be_bytes());
            h.extend([17, ttl]);
            h.extend(s.octets());
            h.extend(d.octets());
        }
        _ => panic!("mixed outer addresses"),
    }
    h.extend(sport.to_be_bytes());
    h.extend(GUE_PORT.to_be_bytes());
    h.extend(udp_len.to_be_bytes());
    h.extend([0, 0]);
    h
}

/// The fields of an encapsulated frame derived from the flow hash: IPv4 identification,
/// IPv6 flow label, UDP source port.
fn hashed(f: &[u8]) -> (u16, u32, u16) {
    let ip = &f[14..];
    if ip[0] >> 4 == 4 {
        let id = u16::from_be_bytes([ip[4], ip[5]]);
        (id, 0, u16::from_be_bytes([ip[20], ip[21]]))
    } else {
        let flow = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]) & 0xF_FFFF;
        (0, flow, u16::from_be_bytes([ip[40], ip[41]]))
    }
}

/// The frame the program should make of `input` (the frame around `inner`), encapsulated
/// from `src` to `dst`; the hashed fields are taken from `out`, the program's output.
fn encapsulated(input: &[u8], src: IpAddr, dst: IpAddr, out: &[u8], df: bool) -> Vec<u8> {
    let inner = &input[14..];
    let mut f = input[..12].to_vec();
    f.extend(ethertype(src.is_ipv6()).to_be_bytes());
    f.extend(outer(src, dst, inner, df, hashed(out), 64));
    f.extend(inner);
    f
}

#[test]
fn encapsulation_in_every_pairing_of_families() {
    at_every_hook(encapsulation_in_every_pairing_of_families_at);
}

fn encapsulation_in_every_pairing_of_families_at(hook: Hook) {
    let mut dp = node(1500);
    for inner_v6 in [false, true] {
        for outer_v6 in [false, true] {
            let (vm, to) = (va(inner_v6), remote(outer_v6));
            dp.table().remove_segment(vm).unwrap();
            segment(&mut dp, vm, to);
            for l4 in L4S {
                let input = frame(&packet(l4, client(inner_v6), vm, b"segmented"));
                let (verdict, out) = run(&dp, hook, Side::Virtual, &input);
                assert_eq!(verdict, hook.pass(), "{l4:?} v6 {inner_v6}/{outer_v6}");
                let want = encapsulated(&input, own(outer_v6), to, &out, true);
                assert_eq!(out, want, "{l4:?} inner v6 {inner_v6}, outer v6 {outer_v6}");
                let (_, flow, sport) = hashed(&out);
                assert!(sport >= 0xC000, "entropy port {sport} in the dynamic range");
                if outer_v6 {
                    assert_ne!(flow, 0, "a flow label");
                } else {
                    verify::frame(&out).unwrap();
                }
                // The inner packet is the one sent, checksums and all.
                verify::frame(&input).unwrap();
            }
        }
    }
    let c = dp.counters();
    assert_eq!(c.get(Counter::Encapsulated), 12);
    // The IPv4 VM was mapped twice (to each outer family), with the same counters.
    assert_eq!(dp.stats(va(false)).packets, 6);
}

#[test]
fn flows_spread_over_entropy_ports_and_a_flow_keeps_its_own() {
    at_every_hook(flows_spread_over_entropy_ports_and_a_flow_keeps_its_own_at);
}

fn flows_spread_over_entropy_ports_and_a_flow_keeps_its_own_at(hook: Hook) {
    let mut dp = node(1500);
    segment(&mut dp, va(false), remote(false));
    let port = |c: u8| {
        let input = frame(&packet(L4::Udp, a4([203, 0, 113, c]), va(false), b"x"));
        hashed(&run(&dp, hook, Side::Virtual, &input).1).2
    };
    let ports: Vec<u16> = (1..=32).map(port).collect();
    assert_eq!(port(1), ports[0], "the same flow, the same port");
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 24,
        "32 flows on {} ports: {ports:?}",
        distinct.len()
    );
}

#[test]
fn decapsulation_for_a_vm_here_in_every_pairing_of_families() {
    at_every_hook(decapsulation_for_a_vm_here_in_every_pairing_of_families_at);
}

fn decapsulation_for_a_vm_here_in_every_pairing_of_families_at(hook: Hook) {
    let mut dp = node(1500);
    for inner_v6 in [false, true] {
        for outer_v6 in [false, true] {
            let vm = va(inner_v6);
            dp.table().remove_segment(vm).unwrap();
            segment(&mut dp, vm, own(outer_v6));
            for l4 in L4S {
                let inner_frame = frame(&packet(l4, client(inner_v6), vm, b"arrived"));
                let input = encapsulated(
                    &inner_frame,
                    remote(outer_v6),
                    own(outer_v6),
                    &[0; 64],
                    true,
                );
                let (verdict, out) = run(&dp, hook, Side::Physical, &input);
                assert_eq!(verdict, hook.pass());
                assert_eq!(
                    out, inner_frame,
                    "{l4:?} inner v6 {inner_v6}, outer v6 {outer_v6}"
                );
            }
        }
    }
    assert_eq!(dp.counters().get(Counter::Decapsulated), 12);
}

#[test]
fn a_node_decapsulates_what_vms_send_and_nothing_else() {
    at_every_hook(a_node_decapsulates_what_vms_send_and_nothing_else_at);
}

fn a_node_decapsulates_what_vms_send_and_nothing_else_at(hook: Hook) {
    let mut dp = node(1500);
    // The gateway's view: the VM is at the remote locator; its packet goes to a client.
    segment(&mut dp, va(false), remote(false));
    let inner = frame(&packet(L4::Tcp, va(false), client(false), b"reply"));
    let from_there = encapsulated(&inner, remote(false), own(false), &[0; 64], true);
    assert_eq!(
        run(&dp, hook, Side::Physical, &from_there),
        (hook.pass(), inner.clone())
    );
    // From another locator too: a moving VM sends from its new host before the switch.
    let elsewhere = encapsulated(&inner, a4([192, 0, 2, 3]), own(false), &[0; 64], true);
    assert_eq!(
        run(&dp, hook, Side::Physical, &elsewhere),
        (hook.pass(), inner.clone())
    );
    // A packet from a source that is no VM of the table is not the node's to open.
    let stranger = frame(&packet(L4::Tcp, client(false), a4([203, 0, 113, 9]), b"x"));
    let injected = encapsulated(&stranger, remote(false), own(false), &[0; 64], true);
    assert_eq!(
        run(&dp, hook, Side::Physical, &injected),
        (hook.pass(), injected.clone())
    );
    // Nor is one for an address the node does not hold, or to another port.
    let not_here = encapsulated(&inner, remote(false), a4([192, 0, 2, 9]), &[0; 64], true);
    assert_eq!(
        run(&dp, hook, Side::Physical, &not_here),
        (hook.pass(), not_here.clone())
    );
    let mut other_port = from_there.clone();
    other_port[14 + 22..14 + 24].copy_from_slice(&4789u16.to_be_bytes());
    assert_eq!(
        run(&dp, hook, Side::Physical, &other_port),
        (hook.pass(), other_port.clone())
    );
    assert_eq!(dp.counters().get(Counter::Decapsulated), 2);
}

#[test]
fn a_vms_packets_to_a_destination_that_is_no_vm_go_to_the_default_locator() {
    at_every_hook(a_vms_packets_to_a_destination_that_is_no_vm_go_to_the_default_locator_at);
}

fn a_vms_packets_to_a_destination_that_is_no_vm_go_to_the_default_locator_at(hook: Hook) {
    let mut dp = node(1500);
    segment(&mut dp, va(false), own(false));
    dp.own(va(false), LOOPBACK);
    let input = frame(&packet(L4::Udp, va(false), client(false), b"out"));
    let (verdict, out) = run_on(&dp, hook, Side::Virtual, &input, LOOPBACK);
    assert_eq!(verdict, hook.pass());
    assert_eq!(
        out,
        encapsulated(&input, own(false), a4(GATEWAY), &out, true)
    );
    // From a port that does not own the VM (here the VM is another port's) it is spoofed.
    dp.own(va(false), LOOPBACK + 1000);
    assert_eq!(
        run_on(&dp, hook, Side::Virtual, &input, LOOPBACK).0,
        hook.drop()
    );
    assert_eq!(dp.counters().get(Counter::Spoofed), 1);
    // Nor does what belongs to the VM's own link: neighbour discovery, multicast.
    dp.own(va(true), LOOPBACK);
    segment(&mut dp, va(true), own(true));
    let ns = frame(&packet(L4::Echo, va(true), a6("ff02::1:ff00:1"), b"ns"));
    assert_eq!(
        run_on(&dp, hook, Side::Virtual, &ns, LOOPBACK),
        (hook.pass(), ns.clone())
    );
    let mcast = frame(&packet(L4::Udp, va(false), a4([224, 0, 0, 251]), b"m"));
    dp.own(va(false), LOOPBACK);
    assert_eq!(
        run_on(&dp, hook, Side::Virtual, &mcast, LOOPBACK),
        (hook.pass(), mcast.clone())
    );
    // A packet between two VMs of this node is the kernel's to deliver.
    segment(&mut dp, a4([10, 0, 0, 11]), own(false));
    let local = frame(&packet(L4::Udp, client(false), a4([10, 0, 0, 11]), b"here"));
    assert_eq!(
        run(&dp, hook, Side::Virtual, &local),
        (hook.pass(), local.clone())
    );
}

/// A packet of the encapsulation for a VM that moved is sent on to the VM's locator with
/// the outer TTL 32, from its sender still (the forwarding node's kernel drops a packet
/// from its own address as a martian); one forwarded already is not forwarded again, but opened if the VM's
/// port is on this node.
#[test]
fn a_moved_vms_packets_are_forwarded_to_its_new_locator_once() {
    at_every_hook(a_moved_vms_packets_are_forwarded_to_its_new_locator_once_at);
}

fn a_moved_vms_packets_are_forwarded_to_its_new_locator_once_at(hook: Hook) {
    let mut dp = node(1500);
    for v6 in [false, true] {
        let vm = va(v6);
        segment(&mut dp, vm, remote(v6));
        let inner = frame(&packet(L4::Udp, client(v6), vm, b"in flight"));
        let sender = if v6 {
            a6("2001:db8:9::1")
        } else {
            a4([192, 0, 2, 99])
        };
        let mut input = encapsulated(&inner, sender, own(v6), &[0; 64], true);
        let (verdict, out) = run(&dp, hook, Side::Physical, &input);
        assert_eq!(verdict, hook.pass());
        // The hashed fields are the sender's, which the forward keeps.
        let (id, flow, sport) = hashed(&input);
        let want = {
            let mut w = inner[..12].to_vec();
            w.extend(ethertype(v6).to_be_bytes());
            w.extend(outer(
                sender,
                remote(v6),
                &inner[14..],
                true,
                (id, flow, sport),
                32,
            ));
            w.extend(&inner[14..]);
            w
        };
        assert_eq!(out, want, "v6 {v6}");
        // Once: a packet forwarded already (TTL 32) goes on untouched.
        let ttl_at = if v6 { 14 + 7 } else { 14 + 8 };
        input[ttl_at] = 32;
        if !v6 {
            input[14 + 10..14 + 12].fill(0);
            let c = !verify::sum(&[&input[14..34]]);
            input[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        }
        assert_eq!(
            run(&dp, hook, Side::Physical, &input),
            (hook.pass(), input.clone())
        );
        // Unless the VM's port is here (the new host, its table not switched yet): then
        // it is opened and delivered, once.
        dp.own(vm, VM_PORT);
        assert_eq!(
            run(&dp, hook, Side::Physical, &input),
            (hook.pass(), inner.clone()),
            "v6 {v6}"
        );
        dp.disown(vm);
    }
    assert_eq!(dp.counters().get(Counter::Forwarded), 2);
    assert_eq!(dp.counters().get(Counter::Decapsulated), 2);
}

/// The interface index the fixtures give the port that owns a VM.
const VM_PORT: u32 = 7;

/// The answer "fragmentation needed" (RFC 792, 1191) to the IPv4 frame `input`,
/// announcing `mtu`: from the node's locator to the packet's source, quoting its header
/// and 8 bytes, in a frame addressed as the packet was (for the kernel to route back).
fn frag_needed(input: &[u8], mtu: u16) -> Vec<u8> {
    let ip = &input[14..];
    let quote = &ip[..28];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend(mtu.to_be_bytes());
    icmp.extend(quote);
    let c = !verify::sum(&[&icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut h = vec![0x45, 0xC0];
    h.extend(((20 + icmp.len()) as u16).to_be_bytes());
    h.extend([0, 0, 0, 0, 64, 1, 0, 0]);
    h.extend(octets16(own(false))[..4].iter());
    h.extend(&ip[12..16]);
    let c = !verify::sum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = input[..12].to_vec();
    f.extend(0x0800u16.to_be_bytes());
    f.extend(h);
    f.extend(icmp);
    f
}

/// The answer "packet too big" (RFC 4443) to the IPv6 frame `input`, announcing `mtu`,
/// quoting its first 48 bytes, from the node's locator, addressed as `frag_needed`'s.
fn packet_too_big(input: &[u8], mtu: u32) -> Vec<u8> {
    let ip = &input[14..];
    let from = octets16(own(true));
    let (src, dst) = (&from[..], &ip[8..24]);
    let mut icmp = vec![2, 0, 0, 0];
    icmp.extend(mtu.to_be_bytes());
    icmp.extend(&ip[..48]);
    let len = icmp.len() as u32;
    let c = !verify::sum(&[src, dst, &len.to_be_bytes(), &[0, 0, 0, 58], &icmp]);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = input[..12].to_vec();
    f.extend(0x86DDu16.to_be_bytes());
    f.extend([0x60, 0, 0, 0]);
    f.extend((len as u16).to_be_bytes());
    f.extend([58, 64]);
    f.extend(src);
    f.extend(dst);
    f.extend(icmp);
    f
}

#[test]
fn what_would_not_fit_is_answered_and_never_dropped_silently() {
    at_every_hook(what_would_not_fit_is_answered_and_never_dropped_silently_at);
}

fn what_would_not_fit_is_answered_and_never_dropped_silently_at(hook: Hook) {
    let mut dp = node(1500);
    // IPv4 in IPv4: 1472 bytes fit behind 28 of outer headers; 1473 do not.
    segment(&mut dp, va(false), remote(false));
    let fits = frame(&packet(L4::Udp, client(false), va(false), &[7; 1472 - 28]));
    let (verdict, out) = run(&dp, hook, Side::Virtual, &fits);
    assert_eq!(verdict, hook.pass());
    assert_eq!(out.len(), fits.len() + 28);
    let big = frame(&packet(L4::Udp, client(false), va(false), &[7; 1473 - 28]));
    let (verdict, out) = run(&dp, hook, Side::Virtual, &big);
    assert_eq!(verdict, hook.pass());
    assert_eq!(out, frag_needed(&big, 1472));
    verify::frame(&out).unwrap();
    // Without don't-fragment it goes out in an outer header that may be fragmented too.
    let mut free = big.clone();
    free[14 + 6] = 0;
    free[14 + 10..14 + 12].fill(0);
    let c = !verify::sum(&[&free[14..34]]);
    free[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    let (verdict, out) = run(&dp, hook, Side::Virtual, &free);
    assert_eq!(verdict, hook.pass());
    assert_eq!(
        out,
        encapsulated(&free, own(false), remote(false), &out, false)
    );
    // IPv6 in IPv6: 48 bytes of outer headers; in IPv4: 28.
    for (outer_v6, room) in [(true, 1452u32), (false, 1472)] {
        dp.table().remove_segment(va(true)).unwrap();
        segment(&mut dp, va(true), remote(outer_v6));
        let big = frame(&packet(L4::Tcp, client(true), va(true), &[9; 1500]));
        let (verdict, out) = run(&dp, hook, Side::Virtual, &big);
        assert_eq!(verdict, hook.pass(), "outer v6 {outer_v6}");
        assert_eq!(out, packet_too_big(&big, room), "outer v6 {outer_v6}");
        verify::frame(&out).unwrap();
        let at_most = (room as usize) - 40 - 20;
        let fits = frame(&packet(L4::Tcp, client(true), va(true), &vec![9; at_most]));
        assert_eq!(run(&dp, hook, Side::Virtual, &fits).0, hook.pass());
    }
    assert_eq!(dp.counters().get(Counter::AnsweredTooBig), 3);
}

#[test]
fn a_node_without_a_locator_leaves_segment_mappings_alone() {
    at_every_hook(a_node_without_a_locator_leaves_segment_mappings_alone_at);
}

fn a_node_without_a_locator_leaves_segment_mappings_alone_at(hook: Hook) {
    let mut dp = Datapath::load(64);
    segment(&mut dp, va(false), remote(false));
    let input = frame(&packet(L4::Udp, client(false), va(false), b"x"));
    assert_eq!(
        run(&dp, hook, Side::Virtual, &input),
        (hook.pass(), input.clone())
    );
    let inner = frame(&packet(L4::Udp, client(false), va(false), b"x"));
    let arriving = encapsulated(&inner, remote(false), own(false), &[0; 64], true);
    assert_eq!(
        run(&dp, hook, Side::Physical, &arriving),
        (hook.pass(), arriving.clone())
    );
    assert_eq!(dp.counters().get(Counter::PassMiss), 2);
}

/// Runs the tc program of the virtual side on `input` as a GSO packet of segments of
/// `size` bytes of payload.
fn gso(dp: &Datapath, size: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let segs = (input.len() as u32).div_ceil(size);
    dp.run_at(
        Hook::Tc,
        Side::Virtual,
        input,
        Some(&gso_context(size, segs)),
    )
}

/// Under tc, a GSO packet is measured by its segments, as the kernel will cut it: network
/// and transport headers and `gso_size` bytes of payload. One whose segments do not fit
/// the tunnel is answered with the MTU they must fit; one whose segments fit is not
/// answered, however long the whole packet is.
#[test]
fn a_gso_packet_is_answered_by_the_size_of_its_segments() {
    let mut dp = node(1500);
    // IPv4 in IPv4: segments of 20 + 20 + 1433 bytes do not fit the 1472 there is room
    // for; of 20 + 20 + 1432 they do.
    segment(&mut dp, va(false), remote(false));
    let big = frame(&packet(L4::Tcp, client(false), va(false), &[5; 2866]));
    let (verdict, out) = gso(&dp, 1433, &big);
    assert_eq!(verdict, Hook::Tc.pass());
    assert_eq!(out, frag_needed(&big, 1472));
    verify::frame(&out).unwrap();
    // Segments that fit are for the tunnel. A test run cannot say which transport a GSO
    // packet segments (`struct __sk_buff` has no `gso_type`, and the kernel leaves it 0),
    // and the kernel makes room in front of a GSO packet of TCP or UDP only
    // (`bpf_skb_net_grow`: -ENOTSUPP): the packet goes on untouched, counted as a miss.
    // (The namespace world sends real ones through the tunnel: `segment_world`.)
    let misses = dp.counters().get(Counter::PassMiss);
    assert_eq!(gso(&dp, 1432, &big), (Hook::Tc.pass(), big.clone()));
    assert_eq!(dp.counters().get(Counter::PassMiss), misses + 1);
    assert_eq!(dp.counters().get(Counter::AnsweredTooBig), 1);
    // IPv6 in IPv6: 40 + 20 + 1393 do not fit the 1452 behind 48 bytes of outer headers.
    segment(&mut dp, va(true), remote(true));
    let big = frame(&packet(L4::Tcp, client(true), va(true), &[6; 2786]));
    let (verdict, out) = gso(&dp, 1393, &big);
    assert_eq!(verdict, Hook::Tc.pass());
    assert_eq!(out, packet_too_big(&big, 1452));
    verify::frame(&out).unwrap();
    assert_eq!(dp.counters().get(Counter::AnsweredTooBig), 2);
}
