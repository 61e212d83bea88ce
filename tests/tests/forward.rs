//! In-kernel fixture tests of forwarding, through BPF_PROG_TEST_RUN: a packet that
//! arrives on the physical side for a real address that drains goes on to the VM's
//! current real address, at most once.
//!
//! Each expected output is built from scratch for the forwarded addresses (the transport
//! checksums computed anew over them), its TTL or hop limit set to 32 and its IPv4 header
//! checksum recomputed here, then compared byte for byte and re-verified by the tests'
//! independent checksum walk.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpage::{
    loader::Side,
    table::{Drain, PageTable},
};
use netpage_common::counters::Counter;
use netpage_tests::{
    build::{V4Opts, ether, icmp4, icmp6, ipv4, ipv6, tcp, udp},
    datapath::{Datapath, Hook, LOOPBACK},
    verify,
};

const PAYLOAD: &[u8] = b"in flight when the VM moved";

/// The addresses of one family: a client, a VM's VA with its old and new real addresses,
/// a draining real address whose VA has no mapping, and a reverse entry of the VM that
/// does not drain (as the new site's between its reverse entry and its V2R update).
#[derive(Clone, Copy)]
struct Addrs {
    client: IpAddr,
    va: IpAddr,
    old: IpAddr,
    new: IpAddr,
    orphan_va: IpAddr,
    orphan_ra: IpAddr,
    undrained: IpAddr,
    v6: bool,
}

fn a4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn a6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

const FAMILIES: [fn() -> Addrs; 2] = [
    || Addrs {
        client: a4([203, 0, 113, 5]),
        va: a4([10, 0, 0, 10]),
        old: a4([192, 0, 2, 10]),
        new: a4([198, 51, 100, 10]),
        orphan_va: a4([10, 0, 0, 90]),
        orphan_ra: a4([192, 0, 2, 90]),
        undrained: a4([192, 0, 2, 77]),
        v6: false,
    },
    || Addrs {
        client: a6("2001:db8:c::5"),
        va: a6("fd00::10"),
        old: a6("2001:db8:a::10"),
        new: a6("2001:db8:b::10"),
        orphan_va: a6("fd00::90"),
        orphan_ra: a6("2001:db8:a::90"),
        undrained: a6("2001:db8:a::77"),
        v6: true,
    },
];

#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp,
    Udp,
    Echo,
}

/// A frame of transport `l4` from `src` to `dst` with TTL or hop limit `ttl`, every
/// checksum computed for these addresses.
fn frame(l4: L4, src: IpAddr, dst: IpAddr, ttl: u8) -> Vec<u8> {
    let v6 = src.is_ipv6();
    let (proto, seg) = match (l4, v6) {
        (L4::Tcp, _) => (6, tcp(src, dst, PAYLOAD)),
        (L4::Udp, _) => (17, udp(src, dst, PAYLOAD)),
        (L4::Echo, false) => (1, icmp4(8, 0, [0x12, 0x34, 0, 1], PAYLOAD)),
        (L4::Echo, true) => (58, icmp6(src, dst, 128, 0, [0x12, 0x34, 0, 1], PAYLOAD)),
    };
    let mut f = if v6 {
        ether(&[], 0x86DD, &ipv6(src, dst, proto, &[], &seg))
    } else {
        ether(
            &[],
            0x0800,
            &ipv4(src, dst, proto, &V4Opts::default(), &seg),
        )
    };
    set_ttl(&mut f, ttl);
    f
}

/// Sets the TTL (recomputing the IPv4 header checksum in full) or the hop limit of an
/// untagged frame.
fn set_ttl(f: &mut [u8], ttl: u8) {
    if f[12..14] == [0x86, 0xDD] {
        f[14 + 7] = ttl;
        return;
    }
    let h = &mut f[14..34];
    h[8] = ttl;
    h[10..12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// A test run's context for a packet that arrived on the loopback: under tc both the
/// device and the ingress device (`struct __sk_buff` ingress_ifindex at 36, ifindex at
/// 40); `egress` leaves the ingress device unset, as at a tap's egress for a packet the
/// host sent.
fn context(hook: Hook, len: usize, egress: bool) -> Vec<u8> {
    let mut ctx = hook.arriving_on(LOOPBACK, len);
    if hook == Hook::Tc && !egress {
        ctx[36..40].copy_from_slice(&LOOPBACK.to_ne_bytes());
    }
    ctx
}

/// Records `real` (in R2V for `virt`) as draining, as a switch does.
fn drain(dp: &mut Datapath, real: IpAddr, virt: IpAddr) {
    dp.table().set_reverse(real, virt).unwrap();
    dp.table()
        .set_drain(Drain {
            real,
            virt,
            deadline_ms: u64::MAX,
        })
        .unwrap();
}

/// A node after the VM of `a` moved from `old` to `new`: V2R at the new address, R2V at
/// both (the old one draining), a draining R2V entry whose VA has no mapping, and one of
/// the VM that does not drain.
fn moved_node() -> Datapath {
    let mut dp = Datapath::load(64);
    for a in FAMILIES.map(|f| f()) {
        dp.map(a.va, a.new);
        drain(&mut dp, a.old, a.va);
        drain(&mut dp, a.orphan_ra, a.orphan_va);
        dp.table().set_reverse(a.undrained, a.va).unwrap();
    }
    dp
}

/// Runs `input` on the physical side at `hook` and checks verdict, bytes and that exactly
/// the `outcome` counter moved.
fn expect(
    dp: &Datapath,
    hook: Hook,
    egress: bool,
    name: &str,
    input: &[u8],
    expected: &[u8],
    outcome: Counter,
) {
    let before = dp.counters();
    let ctx = context(hook, input.len(), egress);
    let (verdict, out) = dp.run_at(hook, Side::Physical, input, Some(&ctx));
    let delta = dp.counters().since(&before);
    assert_eq!(verdict, hook.pass(), "{name}: verdict");
    assert_eq!(
        out, expected,
        "{name}: output\n in  {input:02x?}\n out {out:02x?}\n exp {expected:02x?}"
    );
    for c in Counter::ALL {
        let want = u64::from(c == outcome);
        assert_eq!(delta.get(c), want, "{name}: counter {}", c.name());
    }
    if out != input {
        verify::frame(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn packets_for_a_draining_address_go_on_to_the_current_one() {
    let dp = moved_node();
    let mut forwarded = 0;
    for a in FAMILIES.map(|f| f()) {
        let back = Counter::translated(a.v6, true);
        for l4 in [L4::Tcp, L4::Udp, L4::Echo] {
            for hook in Hook::ALL {
                let name = |what: &str| format!("{l4:?} v6={} {hook:?}: {what}", a.v6);
                let fwd = Counter::Forwarded;
                let cases = [
                    // Forwarded: the destination is the current address, the source and
                    // everything else but the TTL as it was.
                    (
                        "forwarded",
                        (a.client, a.old, 64),
                        (a.client, a.new, 32),
                        fwd,
                    ),
                    // A mapped source stays a real address: the packet stays in the network.
                    (
                        "mapped source",
                        (a.new, a.old, 200),
                        (a.new, a.new, 32),
                        fwd,
                    ),
                    // Already forwarded (TTL at most 32): translated as before.
                    (
                        "forwarded once",
                        (a.client, a.old, 32),
                        (a.client, a.va, 32),
                        back,
                    ),
                    // The current address: the VM is here.
                    ("current", (a.client, a.new, 64), (a.client, a.va, 64), back),
                    // A draining address whose VA is not mapped: nowhere to go.
                    (
                        "unmapped VA",
                        (a.client, a.orphan_ra, 64),
                        (a.client, a.orphan_va, 64),
                        back,
                    ),
                    // A reverse entry that does not drain: translated, whatever V2R says.
                    (
                        "not draining",
                        (a.client, a.undrained, 64),
                        (a.client, a.va, 64),
                        back,
                    ),
                ];
                for (what, (src, dst, ttl), (want_src, want_dst, want_ttl), outcome) in cases {
                    let input = frame(l4, src, dst, ttl);
                    let want = frame(l4, want_src, want_dst, want_ttl);
                    expect(&dp, hook, false, &name(what), &input, &want, outcome);
                    forwarded += u64::from(outcome == fwd);
                }
            }
            // At a tap's egress the kernel has routed the packet: it is translated there.
            let input = frame(l4, a.client, a.old, 64);
            let want = frame(l4, a.client, a.va, 64);
            expect(&dp, Hook::Tc, true, "tc egress", &input, &want, back);
        }
    }
    assert_eq!(dp.counters().get(Counter::Forwarded), forwarded);
    // Each forwarded packet counts for the VM's mapping, as a packet rewritten for it.
    let stats = dp.stats(FAMILIES[0]().va);
    assert!(stats.packets >= forwarded / 2, "{stats:?}");
}

/// An ICMP error for the old real address (a router tells the VM, by the address its
/// packet came from, that it was too big) is forwarded too; its quote is left as it is,
/// for the node that delivers it to translate as any quote (its R2V keeps the old address
/// for the drain too). The ICMP checksum has no pseudo-header: it stays; the ICMPv6 one
/// covers the new destination.
#[test]
fn an_icmp_error_for_a_draining_address_is_forwarded_with_its_quote() {
    let dp = moved_node();
    let router = [a4([192, 0, 2, 254]), a6("2001:db8:a::fe")];
    for (a, router) in FAMILIES.map(|f| f()).into_iter().zip(router) {
        // The VM's packet, sent from the old address, as the error quotes it.
        let quoted = |src: IpAddr, dst: IpAddr| {
            let seg = udp(src, dst, PAYLOAD);
            if a.v6 {
                ipv6(src, dst, 17, &[], &seg)
            } else {
                ipv4(src, dst, 17, &V4Opts::default(), &seg)
            }
        };
        let quote = quoted(a.old, a.client);
        let error = |dst: IpAddr, ttl: u8| {
            let mut f = if a.v6 {
                let m = icmp6(router, dst, 2, 0, [0, 0, 5, 0x78], &quote);
                ether(&[], 0x86DD, &ipv6(router, dst, 58, &[], &m))
            } else {
                let m = icmp4(3, 4, [0, 0, 5, 0x78], &quote);
                ether(&[], 0x0800, &ipv4(router, dst, 1, &V4Opts::default(), &m))
            };
            set_ttl(&mut f, ttl);
            f
        };
        for hook in Hook::ALL {
            let name = format!("v6={} {hook:?} ICMP error", a.v6);
            expect(
                &dp,
                hook,
                false,
                &name,
                &error(a.old, 64),
                &error(a.new, 32),
                Counter::Forwarded,
            );
        }
    }
}

/// Two nodes whose V2R point at each other's real address, each with R2V at both and its
/// own address draining: a packet bounced between them is forwarded by the first and by
/// no node after it.
#[test]
fn an_inconsistent_pair_of_tables_forwards_a_packet_at_most_once() {
    let mut nodes = [Datapath::load(64), Datapath::load(64)];
    for a in FAMILIES.map(|f| f()) {
        for (i, dp) in nodes.iter_mut().enumerate() {
            let (here, there) = if i == 0 {
                (a.old, a.new)
            } else {
                (a.new, a.old)
            };
            drain(dp, here, a.va);
            dp.table().set_reverse(there, a.va).unwrap();
            dp.table().set_forward(a.va, there).unwrap();
            dp.table().create_stats(a.va).unwrap();
        }
        for hook in Hook::ALL {
            for l4 in [L4::Tcp, L4::Udp, L4::Echo] {
                let name = format!("{l4:?} v6={} {hook:?}", a.v6);
                let mut pkt = frame(l4, a.client, a.old, 255);
                let mut forwards = 0;
                // Node 0 holds `old`, node 1 `new`; each hop between them is one router.
                for hop in 0..8 {
                    let dp = &nodes[usize::from(pkt_dst_is(&pkt, a.new))];
                    let before = dp.counters();
                    let ctx = context(hook, pkt.len(), false);
                    let (_, out) = dp.run_at(hook, Side::Physical, &pkt, Some(&ctx));
                    let delta = dp.counters().since(&before);
                    if delta.get(Counter::Forwarded) == 1 {
                        forwards += 1;
                        verify::frame(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
                        pkt = out;
                        let ttl = ttl_of(&pkt) - 1;
                        set_ttl(&mut pkt, ttl);
                    } else {
                        // Translated to the VA: delivered (to nothing) where it is.
                        assert_eq!(
                            delta.get(Counter::translated(a.v6, true)),
                            1,
                            "{name}: hop {hop}"
                        );
                        break;
                    }
                }
                assert_eq!(forwards, 1, "{name}: forwarded {forwards} times");
            }
        }
    }
}

fn ttl_of(f: &[u8]) -> u8 {
    if f[12..14] == [0x86, 0xDD] {
        f[21]
    } else {
        f[22]
    }
}

fn pkt_dst_is(f: &[u8], a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => f[30..34] == a.octets(),
        IpAddr::V6(a) => f[38..54] == a.octets(),
    }
}
