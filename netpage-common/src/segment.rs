//! Segmentation, the paper's second method: a mapping whose method is `encap` maps a
//! virtual address (VA) to the *locator* of the node that hosts its VM, and a packet for
//! the VA keeps its addresses and travels inside an outer header addressed to that locator.
//!
//! The encapsulation is GUE variant 1, "direct IP over UDP" (draft-ietf-intarea-gue): an
//! outer IPv4 or IPv6 header, a UDP header to [`GUE_PORT`] whose source port carries a
//! hash of the inner flow (the entropy that ECMP hashes on, as RFC 8086 does for GRE),
//! then the inner IP packet as it was. The outer family need not be the inner one. The
//! UDP checksum is 0, over IPv6 too, as RFC 6935 allows a tunnel protocol (the inner
//! packet carries its own checksums; the outer IPv4 header's is computed in full).
//!
//! This module holds the layouts shared with user space and the decisions and headers the
//! programs build, as pure functions the host tests exercise.

use crate::csum::fold;

/// The UDP port of the encapsulation, at both ends (GUE's, as Katran uses it).
pub const GUE_PORT: u16 = 6080;
/// Length of the UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of the outer headers (IP and UDP) in front of the inner packet.
pub const fn overhead(outer_v6: bool) -> usize {
    if outer_v6 {
        40 + UDP_HLEN
    } else {
        20 + UDP_HLEN
    }
}
/// The smallest tunnel MTU a node may have: an IPv6 packet of the minimum MTU (1280) must
/// fit behind IPv6 outer headers, so that an ICMP error always fits and is never answered.
pub const MIN_TUNNEL_MTU: u32 = 1280 + overhead(true) as u32;
/// Default tunnel MTU: the outer packet's largest size on the physical network.
pub const DEFAULT_TUNNEL_MTU: u32 = 1500;
/// TTL (hop limit) of an outer header.
pub const OUTER_TTL: u8 = 64;

/// The value of the segment tables ([`crate::maps::SEG4`], [`crate::maps::SEG6`]), keyed by
/// virtual address: where the VM is, and the mapping's counter slot (as in the page tables).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locator {
    /// 4 or 6: the outer header's family.
    pub family: u32,
    /// The locator; an IPv4 address fills the first 4 bytes, the rest are zero.
    pub addr: [u8; 16],
    /// The mapping's counter slot in the stats array of the VA's family.
    pub slot: u32,
}

/// The node's segmentation settings: one slot of [`crate::maps::SEG_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegConfig {
    /// [`SEG_ON`] once the node has a locator: until then the programs do not look at the
    /// segment tables, and a paging-only node does not pay for them.
    pub flags: u32,
    /// The largest outer packet (IP header on) the physical network carries.
    pub mtu: u32,
    /// The node's IPv4 locator (all zero: none): outer source, and where it decapsulates.
    pub own4: [u8; 4],
    /// The node's IPv6 locator (all zero: none).
    pub own6: [u8; 16],
    /// 0, or the family of `default_addr`: the locator of destinations that are not VMs of
    /// the table (the site's gateway), as a LISP proxy router is.
    pub default_family: u32,
    pub default_addr: [u8; 16],
}

/// [`SegConfig::flags`]: the node takes part in segmentation.
pub const SEG_ON: u32 = 1;

const _: () = assert!(core::mem::size_of::<Locator>() == 24);
const _: () = assert!(core::mem::size_of::<SegConfig>() == 48);

impl SegConfig {
    /// Whether the programs look at the segment tables.
    pub const fn on(&self) -> bool {
        self.flags & SEG_ON != 0
    }
}

/// What becomes of a packet to encapsulate whose inner packet is `inner_len` bytes long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Encapsulate it; `df` is the outer IPv4 header's don't-fragment bit.
    Encap { df: bool },
    /// It does not fit: answer the sender with "fragmentation needed" (ICMP) or "packet
    /// too big" (ICMPv6) announcing `mtu`, the largest inner packet that fits.
    Answer { mtu: u32 },
}

/// Decides for an inner packet of `inner_len` bytes, IPv4 with don't-fragment bit `df`
/// (an IPv6 packet is never fragmented on its way: `df` true), behind outer headers of the
/// given family, on a network of MTU `mtu`.
///
/// An IPv4 packet that may be fragmented goes out in an outer IPv4 header that may be too
/// (the kernel fragments it on its way out), as a tunnel of the kernel does. Over IPv6
/// there is no such way: its sender is told, as every sender that forbade fragmentation.
pub const fn fit(inner_len: usize, df: bool, outer_v6: bool, mtu: u32) -> Fit {
    let room = mtu as usize - overhead(outer_v6);
    if inner_len <= room {
        Fit::Encap { df }
    } else if !df && !outer_v6 {
        Fit::Encap { df: false }
    } else {
        Fit::Answer { mtu: room as u32 }
    }
}

/// Mixes one word into a flow hash.
#[inline(always)]
pub const fn mix(h: u32, w: u32) -> u32 {
    (h ^ w).wrapping_mul(0x9E37_79B1).rotate_left(13)
}

/// The UDP source port of a flow whose hash is `h`: in the dynamic range (RFC 6335), as
/// RFC 8086 asks of an entropy port.
#[inline(always)]
pub const fn entropy_port(h: u32) -> u16 {
    let h = h ^ (h >> 16);
    0xC000 | (h as u16 & 0x3FFF)
}

/// The outer IPv4 header of an inner packet of `inner_len` bytes, with its checksum.
/// `tos` is the inner packet's (DSCP and ECN carried out, RFC 6040's normal mode), `id`
/// the identification (a flow hash: a fragmented outer packet needs one).
#[inline(always)]
pub fn outer4(
    src: [u8; 4],
    dst: [u8; 4],
    tos: u8,
    df: bool,
    id: u16,
    inner_len: usize,
) -> [u8; 20] {
    let len = (inner_len + overhead(false)) as u16;
    let [l0, l1] = len.to_be_bytes();
    let [i0, i1] = id.to_be_bytes();
    let mut h = [
        0x45,
        tos,
        l0,
        l1,
        i0,
        i1,
        if df { 0x40 } else { 0 },
        0,
        OUTER_TTL,
        crate::proto::IPPROTO_UDP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let [c0, c1] = (!fold(sum(&h))).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// The outer IPv6 header of an inner packet of `inner_len` bytes: traffic class `tclass`
/// (the inner packet's), flow label from the flow hash `flow` (RFC 6438).
#[inline(always)]
pub fn outer6(src: [u8; 16], dst: [u8; 16], tclass: u8, flow: u32, inner_len: usize) -> [u8; 40] {
    let plen = ((inner_len + UDP_HLEN) as u16).to_be_bytes();
    let flow = flow & 0xF_FFFF;
    let mut h = [0u8; 40];
    h[0] = 0x60 | tclass >> 4;
    h[1] = tclass << 4 | (flow >> 16) as u8;
    h[2] = (flow >> 8) as u8;
    h[3] = flow as u8;
    h[4] = plen[0];
    h[5] = plen[1];
    h[6] = crate::proto::IPPROTO_UDP;
    h[7] = OUTER_TTL;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// The UDP header in front of an inner packet of `inner_len` bytes, from the entropy port
/// `sport` (checksum 0, see the module's documentation).
#[inline(always)]
pub const fn udp(sport: u16, inner_len: usize) -> [u8; 8] {
    let [s0, s1] = sport.to_be_bytes();
    let [d0, d1] = GUE_PORT.to_be_bytes();
    let [l0, l1] = ((inner_len + UDP_HLEN) as u16).to_be_bytes();
    [s0, s1, d0, d1, l0, l1, 0, 0]
}

/// The one's-complement sum (unfolded) of `data` as big-endian 16-bit words; an odd last
/// byte counts as a word padded with zero.
#[inline(always)]
pub fn sum(data: &[u8]) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i + 1 < data.len() {
        s += u64::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    if i < data.len() {
        s += u64::from(data[i]) << 8;
    }
    s
}

/// ICMP type "destination unreachable" and its code "fragmentation needed".
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 type "packet too big".
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
/// Bytes of the offending IPv6 packet a "packet too big" answer quotes: its header and the
/// first 8 bytes after it, enough for the sender to find the flow.
pub const QUOTE6: usize = 48;
/// The most bytes an IPv4 answer quotes: the longest header and 8 bytes after it.
pub const MAX_QUOTE4: usize = 68;

/// The IPv4 header of an answer of `quote` quoted bytes from `src` to `dst`, with its
/// checksum (precedence "internetwork control", as a router's ICMP).
#[inline(always)]
pub fn answer4_header(src: [u8; 4], dst: [u8; 4], quote: usize) -> [u8; 20] {
    let mut h = outer4(src, dst, 0xC0, false, 0, 0);
    let len = (20 + 8 + quote) as u16;
    h[2..4].copy_from_slice(&len.to_be_bytes());
    h[9] = crate::proto::IPPROTO_ICMP;
    h[10] = 0;
    h[11] = 0;
    let [c0, c1] = (!fold(sum(&h))).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// The ICMP "fragmentation needed" header announcing `mtu`, given the sum of the quoted
/// bytes (`quote_sum`, see [`sum`]).
#[inline(always)]
pub const fn frag_needed(mtu: u32, quote_sum: u64) -> [u8; 8] {
    let [m0, m1] = (mtu as u16).to_be_bytes();
    let s = ((ICMP_DEST_UNREACH as u64) << 8 | ICMP_FRAG_NEEDED as u64) + mtu as u64 % 0x1_0000;
    let [c0, c1] = (!fold(s + quote_sum)).to_be_bytes();
    [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, c0, c1, 0, 0, m0, m1]
}

/// The first 8 bytes of the IPv6 header of a "packet too big" answer of `quote` quoted
/// bytes; the addresses follow.
#[inline(always)]
pub const fn answer6_start(quote: usize) -> [u8; 8] {
    let [l0, l1] = ((8 + quote) as u16).to_be_bytes();
    [
        0x60,
        0,
        0,
        0,
        l0,
        l1,
        crate::proto::IPPROTO_ICMPV6,
        OUTER_TTL,
    ]
}

/// The ICMPv6 "packet too big" header announcing `mtu`, given the sum of the answer's
/// addresses and of the `quote` quoted bytes (`sum_rest`): the pseudo-header's length and
/// next header are added here.
#[inline(always)]
pub const fn packet_too_big(mtu: u32, quote: usize, sum_rest: u64) -> [u8; 8] {
    let m = mtu.to_be_bytes();
    let pseudo = (8 + quote) as u64 + crate::proto::IPPROTO_ICMPV6 as u64;
    let s = ((ICMPV6_PKT_TOOBIG as u64) << 8) + (mtu >> 16) as u64 + (mtu & 0xFFFF) as u64;
    let [c0, c1] = (!fold(s + pseudo + sum_rest)).to_be_bytes();
    [ICMPV6_PKT_TOOBIG, 0, c0, c1, m[0], m[1], m[2], m[3]]
}

/// The value of a checksum field that completing it leaves as it is: for a quoted
/// transport header whose checksum was left to the device (CHECKSUM_PARTIAL), which the
/// answer still is. Completing it (`skb_checksum_help`) writes `~fold(S + F)` (0 as
/// 0xFFFF) over the field, `S` being the sum of the bytes it covers but the field
/// (`rest`) and `F` the field; with `F` the solution of `2F = -S` in one's-complement
/// arithmetic (mod 0xFFFF, where doubling is a rotation left by one bit), it writes `F`
/// again, and the answer's own checksum, computed with `F`, stays right.
#[inline(always)]
pub const fn fixed_point(rest: u64) -> u16 {
    let f = (!fold(rest)).rotate_right(1);
    if f == 0 { 0xFFFF } else { f }
}

/// Whether a VM's packet to the IPv4 address `dst` (not a VM of the table) may go to the
/// default locator: not for multicast, broadcast or link-local destinations, which are
/// the VM's own link's business.
pub const fn routable4(dst: [u8; 4]) -> bool {
    !(dst[0] >= 224 || (dst[0] == 169 && dst[1] == 254) || dst[0] == 127 || dst[0] == 0)
}

/// The same for the IPv6 address whose first two bytes are `dst`: not multicast (neighbour
/// discovery's among them) nor link-local.
pub const fn routable6(dst: [u8; 2]) -> bool {
    !(dst[0] == 0xFF || (dst[0] == 0xFE && dst[1] & 0xC0 == 0x80))
}

/// What the physical side does with a packet of the encapsulation addressed to one of the
/// node's locators, from what the segment tables say of its inner addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Strip the outer headers: the inner destination is a VM this node hosts, or the inner
    /// source is a VM of an `encap` mapping (this node is a default locator).
    Decap,
    /// The inner destination's VM is elsewhere now: send the packet on to its locator, in
    /// an outer header of the same family (see [`forwards`]).
    Forward,
    /// Not the table's: the packet goes on untouched, to the kernel.
    Pass,
}

/// What an arriving packet of the encapsulation says of its inner addresses and of itself.
#[derive(Clone, Copy, Debug)]
pub struct Arriving<'a, L> {
    /// Where the inner destination's VM is, if the inner destination is a VA of an `encap`
    /// mapping.
    pub dst_at: Option<&'a L>,
    /// Whether the inner source is a VA of an `encap` mapping.
    pub from_vm: bool,
    /// Whether the packet was forwarded already (see [`forwards`]).
    pub forwarded: bool,
    /// Whether a port of this node owns the inner destination's VM (`attach --vm`).
    pub port_here: bool,
}

/// Decides for an encapsulated packet that arrived at one of the node's locators; `here`
/// says whether a locator is one of the node's.
///
/// A node decapsulates for its own VMs, and for what VMs send to destinations that are
/// not VMs; nothing else, so that it is no open decapsulator. It does not require the
/// outer source to be where its table has the sending VM: in a move, a VM sends from its
/// new host before every node has switched (the physical network is trusted with the
/// outer headers as it is with real addresses under paging).
///
/// A packet whose VM is elsewhere by this node's table is forwarded there once. One that
/// was forwarded already is decapsulated if the VM's port is on this node, else passed:
/// while a switch reaches the nodes one by one, a switched old host forwards to the new
/// host, whose table may still name the old one; the new host then delivers to the VM's
/// port, where the packet waits for the VM as under paging.
pub fn arrival<L>(a: Arriving<'_, L>, here: impl Fn(&L) -> bool) -> Arrival {
    match a.dst_at {
        Some(d) if here(d) => Arrival::Decap,
        Some(_) if !a.forwarded => Arrival::Forward,
        Some(_) if a.port_here => Arrival::Decap,
        Some(_) => Arrival::Pass,
        None if a.from_vm => Arrival::Decap,
        None => Arrival::Pass,
    }
}

/// Whether an encapsulated packet whose outer TTL or hop limit is `ttl` may be forwarded:
/// at most once, as the page table's forwarding (`crate::forward`), since a forwarded
/// packet leaves with [`crate::forward::FORWARD_TTL`].
pub const fn forwards(ttl: u8) -> bool {
    ttl > crate::forward::FORWARD_TTL
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::csum::reference::{checksum, ipv4_header};

    #[test]
    fn the_outer_ipv4_header_is_well_formed() {
        let h = outer4([10, 0, 0, 1], [10, 0, 0, 2], 0xB8, true, 0x1234, 100);
        assert_eq!(h[0], 0x45);
        assert_eq!(h[1], 0xB8);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 128);
        assert_eq!(&h[4..6], &[0x12, 0x34]);
        assert_eq!(h[6], 0x40);
        assert_eq!((h[8], h[9]), (OUTER_TTL, 17));
        assert_eq!(u16::from_be_bytes([h[10], h[11]]), ipv4_header(&h));
        assert_eq!(outer4([1; 4], [2; 4], 0, false, 0, 1)[6], 0);
    }

    #[test]
    fn the_outer_ipv6_header_carries_class_flow_and_length() {
        let h = outer6([1; 16], [2; 16], 0xB9, 0xABCDE_u32 | 0xF00000, 1000);
        assert_eq!(h[0] >> 4, 6);
        let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        assert_eq!((word >> 20) & 0xFF, 0xB9);
        assert_eq!(word & 0xF_FFFF, 0xABCDE);
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 1008);
        assert_eq!((h[6], h[7]), (17, OUTER_TTL));
        assert_eq!(&h[8..24], &[1; 16]);
        assert_eq!(&h[24..40], &[2; 16]);
    }

    #[test]
    fn udp_header_and_entropy_port() {
        let u = udp(0xC123, 100);
        assert_eq!(u, [0xC1, 0x23, 0x17, 0xC0, 0, 108, 0, 0]);
        for h in [0, 1, 0xFFFF_FFFF, 0x1234_5678] {
            assert!(entropy_port(h) >= 0xC000);
        }
        // Flows that differ in one port spread over ports.
        let ports: Vec<u16> = (0..64u32)
            .map(|p| entropy_port(mix(mix(mix(0, 0x0A00_0001), 0x0A00_0002), p)))
            .collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 56, "{ports:?}");
    }

    #[test]
    fn fit_follows_the_mtu_and_the_dont_fragment_bit() {
        assert_eq!(fit(1472, true, false, 1500), Fit::Encap { df: true });
        assert_eq!(fit(1473, true, false, 1500), Fit::Answer { mtu: 1472 });
        assert_eq!(fit(1473, false, false, 1500), Fit::Encap { df: false });
        assert_eq!(fit(1452, true, true, 1500), Fit::Encap { df: true });
        assert_eq!(fit(1453, false, true, 1500), Fit::Answer { mtu: 1452 });
        assert_eq!(
            fit(1280, true, true, MIN_TUNNEL_MTU),
            Fit::Encap { df: true }
        );
    }

    #[test]
    fn answers_carry_correct_checksums() {
        let quote: Vec<u8> = (0..28u8).map(|b| b.wrapping_mul(37)).collect();
        let icmp = frag_needed(1472, sum(&quote));
        let mut msg = icmp.to_vec();
        msg.extend_from_slice(&quote);
        assert_eq!(checksum(&msg), 0, "ICMP checksum over the message");
        assert_eq!(&icmp[6..8], &1472u16.to_be_bytes());
        let h = answer4_header([198, 19, 0, 10], [10, 1, 0, 2], quote.len());
        assert_eq!(u16::from_be_bytes([h[10], h[11]]), ipv4_header(&h));
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 56);
        assert_eq!(h[9], 1);

        // The usual quote, and one taken through a TCP header's checksum field.
        for len in [QUOTE6, QUOTE6 + 12] {
            let quote6: Vec<u8> = (0..len as u8).map(|b| b ^ 0x5A).collect();
            let (src, dst) = ([0xFD; 16], [0x20; 16]);
            let rest = sum(&src) + sum(&dst) + sum(&quote6);
            let icmp6 = packet_too_big(1452, len, rest);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&((8 + len) as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp6);
            pseudo.extend_from_slice(&quote6);
            assert_eq!(
                checksum(&pseudo),
                0,
                "ICMPv6 checksum over pseudo-header and message, quote {len}"
            );
            assert_eq!(&icmp6[4..8], &1452u32.to_be_bytes());
            let h6 = answer6_start(len);
            assert_eq!(h6[0] >> 4, 6);
            assert_eq!(usize::from(u16::from_be_bytes([h6[4], h6[5]])), 8 + len);
            assert_eq!(h6[6], 58);
        }
    }

    /// `skb_checksum_help`'s completion of a partial checksum at `at` over `region`.
    fn complete(region: &mut [u8], at: usize) {
        let c = match !fold(sum(region)) {
            0 => 0xFFFF,
            c => c,
        };
        region[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn completing_a_fixed_point_changes_nothing() {
        let mut seed = 0x2545_F491u32;
        for n in 0..2000u32 {
            let mut tcp = [0u8; 20];
            for b in &mut tcp {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *b = seed as u8;
            }
            // Regions summing to every class, zero included.
            if n % 7 == 0 {
                tcp[..16].fill(0);
                tcp[18..].fill(0);
            }
            tcp[16..18].fill(0);
            let f = fixed_point(sum(&tcp));
            tcp[16..18].copy_from_slice(&f.to_be_bytes());
            let before = tcp;
            complete(&mut tcp, 16);
            assert_eq!(tcp, before, "field {f:#06x}");
        }
    }

    #[test]
    fn only_routable_destinations_go_to_the_default_locator() {
        assert!(routable4([203, 0, 113, 5]) && routable4([10, 1, 2, 3]));
        for d in [
            [224, 0, 0, 1],
            [255, 255, 255, 255],
            [169, 254, 1, 1],
            [127, 0, 0, 1],
        ] {
            assert!(!routable4(d), "{d:?}");
        }
        assert!(routable6([0x20, 0x01]) && routable6([0xFD, 0x00]));
        for d in [[0xFF, 0x02], [0xFE, 0x80], [0xFE, 0xBF]] {
            assert!(!routable6(d), "{d:?}");
        }
        assert!(routable6([0xFE, 0xC0]));
    }

    #[test]
    fn a_node_decapsulates_only_for_its_vms_and_from_vms() {
        let here = |l: &u8| *l == 1;
        let a = |dst_at: Option<&'static u8>, from_vm, forwarded, port_here| {
            arrival(
                Arriving {
                    dst_at,
                    from_vm,
                    forwarded,
                    port_here,
                },
                here,
            )
        };
        for (from_vm, forwarded, port_here) in [(false, false, false), (true, true, true)] {
            assert_eq!(a(Some(&1), from_vm, forwarded, port_here), Arrival::Decap);
        }
        assert_eq!(a(Some(&2), false, false, false), Arrival::Forward);
        assert_eq!(a(Some(&2), true, false, false), Arrival::Forward);
        // A fresh packet for a VM the table puts elsewhere goes there, even from the
        // host that still has its port (the old host, after its switch).
        assert_eq!(a(Some(&2), false, false, true), Arrival::Forward);
        // Forwarded once: delivered to the VM's port here, else passed; never again.
        assert_eq!(a(Some(&2), false, true, true), Arrival::Decap);
        assert_eq!(a(Some(&2), false, true, false), Arrival::Pass);
        assert_eq!(a(None, true, false, false), Arrival::Decap);
        assert_eq!(a(None, false, false, false), Arrival::Pass);
        assert_eq!(a(None, false, true, true), Arrival::Pass);
        assert!(forwards(64) && !forwards(crate::forward::FORWARD_TTL));
    }
}
