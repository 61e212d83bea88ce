//! IPv6: the bounded walk over extension headers, address translation, and the checksums
//! that cover the addresses.

use netpage_common::{
    counters::Counter,
    forward::FORWARD_TTL,
    ipv6_options::{self, DstOptions},
    proto::{
        ICMP_HLEN, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPV6_DST,
        IPV6_HLEN, IPV6_HOP_LIMIT, IPV6_SRC, L4, MAX_EXT_HEADERS, ipv6_ext_len,
        ipv6_first_fragment, is_icmp6_error, is_ipv6_ext, routing_hides_dst,
    },
};

use crate::{
    icmp,
    packet::{Field, Packet, settle, sub},
    rewrite::{AddrPair, check_field, fix_transport},
};

/// A checked pointer to an IPv6 header.
pub type Header = Field<[u8; IPV6_HLEN]>;

/// The fields of an IPv6 header that netpage reads.
pub struct Fields {
    pub version: u8,
    pub payload: usize,
    pub next: u8,
}

/// Reads the fields of the checked header `h`.
#[inline(always)]
pub fn fields(h: Header) -> Fields {
    // SAFETY: `h` was bounds-checked for all 40 bytes.
    let b = unsafe { &*h };
    Fields {
        version: b[0] >> 4,
        payload: usize::from(u16::from_be_bytes([b[4], b[5]])),
        next: b[6],
    }
}

// The pair is read as one: the destination follows the source.
const _: () = assert!(IPV6_DST == IPV6_SRC + 16);

/// Looks up the addresses of the checked header `h` on this side, checking the source of
/// a packet that arrived on port `from`, and deciding on forwarding one of TTL or hop
/// limit `hops` (see `AddrPair::lookup`).
#[inline(always)]
pub fn addrs<const PHYSICAL: bool>(
    h: Header,
    from: Option<u32>,
    hops: Option<u8>,
) -> Result<AddrPair<[u32; 4]>, Counter> {
    AddrPair::lookup::<PHYSICAL>(sub::<[[u32; 4]; 2], IPV6_HLEN, IPV6_SRC>(h), from, hops)
}

/// Where the transport header of an IPv6 packet is, and what the walk learned on the way.
pub struct Transport {
    /// Offset of the transport header.
    pub off: usize,
    /// Its protocol (the last Next Header).
    pub proto: u8,
    /// False for a non-first fragment, which carries no transport header.
    pub first: bool,
    /// True when a routing header with segments left keeps the header's destination out of
    /// the transport pseudo-header.
    pub dst_hidden: bool,
}

/// What the destination options header at `off` (its first 8 bytes checked) means for a
/// translation: a home address option keeps the header's source out of the transport
/// pseudo-header.
// A BPF-to-BPF call that returns a plain scalar, as `ipv4::options`, with the header
// length read afresh: the verifier goes on from its results rather than from every path
// of the scan. The options are read from the packet, with no buffer on the stack.
#[inline(never)]
fn dst_options(pkt: &Packet, off: usize) -> DstOptions {
    let Ok([_, hdr_ext_len]) = pkt.read::<2>(off) else {
        return DstOptions::Malformed;
    };
    let Some(len) = ipv6_options::header_len(hdr_ext_len) else {
        return DstOptions::TooLong;
    };
    ipv6_options::walk(len, |i| pkt.read::<2>(off + i).ok())
}

/// Walks at most `MAX` extension headers from `off` (Next Header `nh`), staying before
/// `end`.
///
/// The walk stops after the fragment header of a later fragment (a non-zero offset): what
/// follows is data, whatever the fragment header's Next Header says. The packet is then
/// translated at the IP layer alone, like a later IPv4 fragment; a protocol that must pass
/// (ESP, say: `L4::classify` finds it unknown) passes in every fragment when the fragment
/// header names it. When the fragment header names an extension header instead (commonly
/// a destination options header in front of TCP or UDP), the protocol is in the first
/// fragment alone and the later ones are translated at the IP layer. The cost: a
/// fragmented ESP datagram behind a destination options header has its later fragments
/// translated while its first passes untouched.
///
/// With `SCAN`, a destination options header with a home address option passes the
/// packet (`PassHomeAddress`): the transport pseudo-header holds the home address. One
/// longer than the 40 bytes or 8 options scanned passes too (`PassExtLimit`), and one whose
/// options run past it as malformed. The walk of the packet an ICMPv6 error quotes does
/// not scan (the verifier's limits leave no room for it there): such a quote's transport
/// checksum is adjusted as if its pseudo-header held the quoted source.
///
/// What the walk carries from header to header is taken from packet bytes (fragment
/// offset, segments left), not set as constants: the verifier then sees the same unknown
/// values on every path and prunes them, instead of exploring each flag combination.
#[inline(never)]
pub fn walk<const MAX: usize, const SCAN: bool>(
    pkt: &Packet,
    mut off: usize,
    mut nh: u8,
    end: usize,
) -> Result<Transport, Counter> {
    let mut frag_offset = 0u16;
    let mut segments_left = 0u8;
    let mut done = false;
    for _ in 0..MAX {
        if !is_ipv6_ext(nh) || frag_offset != 0 {
            done = true;
            break;
        }
        if off + 8 > end {
            return Err(Counter::PassMalformed);
        }
        let h = pkt.read::<4>(off)?;
        if nh == IPPROTO_FRAGMENT {
            frag_offset |= u16::from_be_bytes([h[2], h[3]]) & 0xFFF8;
        } else if nh == IPPROTO_ROUTING {
            segments_left |= h[3];
        } else if SCAN && nh == IPPROTO_DSTOPTS {
            // A header past the payload is malformed, whatever its length.
            if off + ipv6_ext_len(nh, h[1]) > end {
                return Err(Counter::PassMalformed);
            }
            match dst_options(pkt, off) {
                DstOptions::Translatable => {}
                DstOptions::HomeAddress => return Err(Counter::PassHomeAddress),
                DstOptions::TooLong => return Err(Counter::PassExtLimit),
                DstOptions::Malformed => return Err(Counter::PassMalformed),
            }
        }
        off = settle(off + ipv6_ext_len(nh, h[1]))?;
        nh = h[0];
    }
    if !done && frag_offset == 0 && is_ipv6_ext(nh) {
        return Err(Counter::PassExtLimit);
    }
    Ok(Transport {
        off,
        proto: nh,
        first: ipv6_first_fragment(frag_offset),
        dst_hidden: routing_hides_dst(segments_left),
    })
}

/// An IPv6 packet (at `l3`) whose addresses missed on the physical side: if it is an
/// ICMPv6 error right after the header, as `ipv4::quote_only`, with the ICMPv6 checksum's
/// pseudo-header unchanged. Errors behind extension headers are left alone: the walk would
/// cost every missed packet.
// A BPF-to-BPF call of its own, from the top: the translation's frame stays as it is.
#[inline(never)]
pub fn quote_only(pkt: &Packet, l3: usize) -> Counter {
    Counter::outcome(try_quote_only(pkt, l3))
}

#[inline(always)]
fn try_quote_only(pkt: &Packet, l3: usize) -> Result<Counter, Counter> {
    let f = fields(pkt.field::<[u8; IPV6_HLEN]>(l3)?);
    let (l4, end) = (l3 + IPV6_HLEN, l3 + IPV6_HLEN + f.payload);
    if f.next != IPPROTO_ICMPV6 {
        return Err(Counter::PassMiss);
    }
    icmp::quote_only(pkt, L4::Icmp6Error, l4, end, is_icmp6_error, |p, q, e| {
        icmp::quoted6::<true>(p, q, e)
    })
}

/// Translates the IPv6 packet whose header starts at `l3` (under tc if `TC`).
// A BPF-to-BPF call: its own stack frame, which keeps every frame under 512 bytes.
#[inline(never)]
pub fn translate<const TC: bool, const PHYSICAL: bool>(pkt: &Packet, l3: usize) -> Counter {
    Counter::outcome(try_translate::<TC, PHYSICAL, false>(pkt, l3))
}

/// Physical side: forwards the IPv6 packet at `l3`, for which [`translate`] returned
/// `Forwarded` without writing anything, to the current real address of its VM.
///
/// A copy of the translation of its own, rather than a branch inside it: the verifier
/// would otherwise explore the rest of the translation once for each, and the program
/// would no longer fit its limit. The decision is taken again here (a switch in between
/// makes it a miss: the packet then passes untouched, counted as `pass_miss`).
// A BPF-to-BPF call of its own, from the top, as `quote_only`.
#[inline(never)]
pub fn forward<const TC: bool>(pkt: &Packet, l3: usize) -> Counter {
    Counter::outcome(try_translate::<TC, true, true>(pkt, l3))
}

/// Translates the packet at `l3` (under tc if `TC`), or, with `FWD` (physical side),
/// forwards it.
#[inline(always)]
fn try_translate<const TC: bool, const PHYSICAL: bool, const FWD: bool>(
    pkt: &Packet,
    l3: usize,
) -> Result<Counter, Counter> {
    let h = pkt.field::<[u8; IPV6_HLEN]>(l3)?;
    let f = fields(h);
    if f.version != 6 {
        return Err(Counter::PassMalformed);
    }
    let end = l3 + IPV6_HLEN + f.payload;
    if !pkt.holds::<TC>(end) {
        return Err(Counter::PassTruncated);
    }
    // A packet for a real address that drains goes on, once (see `ipv4::translate`).
    let hops_at = sub::<u8, IPV6_HLEN, IPV6_HOP_LIMIT>(h);
    // SAFETY: inside the checked header.
    let hops = unsafe { *hops_at };
    // Only a packet without extension headers is forwarded: the forwarding copy of the
    // translation walks none, which keeps it within the verifier's limits; one with
    // extension headers is translated as before.
    let fwd_hops =
        (PHYSICAL && !FWD && !is_ipv6_ext(f.next) && pkt.at_ingress::<TC>()).then_some(hops);
    // The virtual side accepts a mapping's address as source only from its VM's port.
    let mut addrs = addrs::<PHYSICAL>(h, (!PHYSICAL).then(|| pkt.ingress::<TC>()), fwd_hops)?;
    if !addrs.is_hit() {
        return Err(Counter::PassMiss);
    }
    if FWD && !addrs.forward(hops) {
        return Err(Counter::PassMiss);
    }
    if !FWD && addrs.forwards() {
        return Err(Counter::Forwarded);
    }
    let t = if FWD {
        walk::<0, false>(pkt, l3 + IPV6_HLEN, f.next, end)?
    } else {
        walk::<MAX_EXT_HEADERS, true>(pkt, l3 + IPV6_HLEN, f.next, end)?
    };
    // Type and code are read together (see `ipv4::translate`).
    let icmp_type = if t.proto == IPPROTO_ICMPV6 && t.first && t.off + ICMP_HLEN <= end {
        pkt.read::<2>(t.off)?[0]
    } else {
        0
    };
    let kind = L4::classify(t.proto, true, t.first, icmp_type);
    if kind == L4::Unknown {
        return Err(Counter::PassUnknownProto);
    }
    if kind == L4::NeighborDiscovery {
        return Err(Counter::PassNeighborDiscovery);
    }
    if t.off + kind.min_len() > end {
        return Err(Counter::PassMalformed);
    }
    let l4_check = check_field(pkt, kind, t.off, end)?;
    let pseudo = if t.dst_hidden {
        addrs.src_delta()
    } else {
        addrs.delta()
    };
    addrs.record(end as u64);
    addrs.write();
    if FWD {
        // No checksum covers the hop limit. SAFETY: inside the checked header.
        unsafe { *hops_at = FORWARD_TTL };
    }
    // From here on nothing fails: the quote is rewritten (a forwarded error keeps its
    // own, as in `ipv4::translate`), then the ICMPv6 checksum.
    let body = if kind.is_error() && !FWD {
        icmp::quoted6::<PHYSICAL>(pkt, t.off + ICMP_HLEN, end).body()
    } else {
        netpage_common::csum::Delta::ZERO
    };
    if let Some(p) = l4_check {
        fix_transport::<TC>(pkt, p, kind, pseudo, body);
    }
    if FWD {
        return Ok(Counter::Forwarded);
    }
    Ok(Counter::translated(true, PHYSICAL))
}
