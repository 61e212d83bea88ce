//! IPv4: header checks, address translation, and the checksums that cover the addresses.

use netpage_common::{
    counters::Counter,
    csum::{Delta, apply},
    forward::{self, FORWARD_TTL},
    ipv4_options::{self, MAX_OPTIONS_LEN, OPTIONS_BUF, Options},
    proto::{
        ICMP_HLEN, IPPROTO_ICMP, IPV4_CHECK, IPV4_DST, IPV4_MIN_HLEN, IPV4_SRC, IPV4_TTL, L4,
        ipv4_first_fragment, ipv4_header_len, is_icmp4_error,
    },
};

use crate::{
    icmp,
    packet::{Field, Packet, Word, get16, put16, sub},
    rewrite::{AddrPair, check_field, fix_transport},
};

/// A checked pointer to the fixed part of an IPv4 header.
pub type Header = Field<[u8; 20]>;

/// The fields of an IPv4 header that netpage reads, all derived from one checked pointer.
pub struct Fields {
    pub vihl: u8,
    pub total: usize,
    pub first_fragment: bool,
    pub proto: u8,
    pub check: Word,
}

/// Reads the fields of the checked header `h`.
#[inline(always)]
pub fn fields(h: Header) -> Fields {
    // SAFETY: `h` was bounds-checked for all 20 bytes.
    let b = unsafe { &*h };
    Fields {
        vihl: b[0],
        total: usize::from(u16::from_be_bytes([b[2], b[3]])),
        first_fragment: ipv4_first_fragment(u16::from_be_bytes([b[6], b[7]])),
        proto: b[9],
        check: sub::<[u8; 2], 20, IPV4_CHECK>(h),
    }
}

// The pair is read as one: the destination follows the source.
const _: () = assert!(IPV4_DST == IPV4_SRC + 4);

/// Looks up the addresses of the checked header `h` on this side, checking the source of
/// a packet that arrived on port `from`, and deciding on forwarding one of TTL or hop
/// limit `hops` (see `AddrPair::lookup`).
#[inline(always)]
pub fn addrs<const PHYSICAL: bool>(
    h: Header,
    from: Option<u32>,
    hops: Option<u8>,
) -> Result<AddrPair<[u32; 1]>, Counter> {
    AddrPair::lookup::<PHYSICAL>(sub::<[[u32; 1]; 2], 20, IPV4_SRC>(h), from, hops)
}

/// What the options of the header at `l3` (checked and inside the packet) mean for a
/// translation.
// A BPF-to-BPF call that returns a plain scalar: the verifier goes on from its three
// results rather than carrying each path of the walk through the rest of the translation.
// The header length is read afresh rather than passed: the walk's comparisons would make
// the verifier track the caller's `ihl` exactly, and prune less after the call.
#[inline(never)]
fn options(pkt: &Packet, l3: usize) -> Options {
    let Ok([vihl, _]) = pkt.read::<2>(l3) else {
        return Options::Malformed;
    };
    let len = ipv4_header_len(vihl).map_or(0, |ihl| ihl - IPV4_MIN_HLEN);
    if len == 0 {
        return Options::Translatable;
    }
    // The options are copied word by word at constant offsets (a read cannot fail, as the
    // packet holds the header); the walk ignores the bytes after them.
    let mut buf = [0u8; OPTIONS_BUF];
    for k in 0..MAX_OPTIONS_LEN / 4 {
        if 4 * k >= len {
            break;
        }
        let Ok(w) = pkt.read::<4>(l3 + IPV4_MIN_HLEN + 4 * k) else {
            return Options::Malformed;
        };
        buf[4 * k..4 * k + 4].copy_from_slice(&w);
    }
    ipv4_options::walk(&buf, len)
}

/// An IPv4 packet (at `l3`) whose addresses missed on the physical side: if it is an ICMP
/// error, translates its quote if the quoted packet's addresses are in the table, and the
/// ICMP checksum over it. That is a router inside the network telling a client about its
/// packet to a real address (the client knows the packet by the virtual address); errors
/// about a VM's own packets are addressed to its real address and translated whole. The
/// header is not rewritten, so no other checksum changes, and an ICMP error is never left
/// to checksum offload: the arithmetic holds under tc too.
///
/// The outer header's options are judged as [`translate`] judges them: malformed ones, or
/// a source route with hops left, pass the error untouched. (ICMP has no pseudo-header,
/// and the outer header is not rewritten, but the walk stops at the first source route:
/// it cannot tell a well-formed header with one from a malformed one.)
// A BPF-to-BPF call of its own, from the top: the translation's frame stays as it is.
#[inline(never)]
pub fn quote_only(pkt: &Packet, l3: usize) -> Counter {
    Counter::outcome(try_quote_only(pkt, l3))
}

#[inline(always)]
fn try_quote_only(pkt: &Packet, l3: usize) -> Result<Counter, Counter> {
    let f = fields(pkt.field::<[u8; 20]>(l3)?);
    let ihl = ipv4_header_len(f.vihl).ok_or(Counter::PassMalformed)?;
    if f.total < ihl {
        return Err(Counter::PassMalformed);
    }
    let (l4, end) = (l3 + ihl, l3 + f.total);
    if f.proto != IPPROTO_ICMP || !f.first_fragment {
        return Err(Counter::PassMiss);
    }
    match options(pkt, l3) {
        Options::Translatable => {}
        Options::SourceRoute => return Err(Counter::PassSourceRoute),
        Options::Malformed => return Err(Counter::PassMalformed),
    }
    icmp::quote_only(pkt, L4::Icmp4Error, l4, end, is_icmp4_error, |p, q, e| {
        icmp::quoted4::<true>(p, q, e)
    })
}

/// Translates the IPv4 packet whose header starts at `l3` (under tc if `TC`).
// A BPF-to-BPF call: its own stack frame, which keeps every frame under 512 bytes.
#[inline(never)]
pub fn translate<const TC: bool, const PHYSICAL: bool>(pkt: &Packet, l3: usize) -> Counter {
    Counter::outcome(try_translate::<TC, PHYSICAL, false>(pkt, l3))
}

/// Physical side: forwards the IPv4 packet at `l3`, for which [`translate`] returned
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
    let h = pkt.field::<[u8; 20]>(l3)?;
    let f = fields(h);
    let ihl = ipv4_header_len(f.vihl).ok_or(Counter::PassMalformed)?;
    if f.total < ihl {
        return Err(Counter::PassMalformed);
    }
    let end = l3 + f.total;
    if !pkt.holds::<TC>(end) {
        return Err(Counter::PassTruncated);
    }
    // The physical side sends a packet for a real address that drains on to the VM's
    // current one, at most once (see `netpage_common::forward`): where it arrived, not at
    // a tap's egress.
    let ttl_at = sub::<u8, 20, IPV4_TTL>(h);
    // SAFETY: inside the checked header.
    let ttl = unsafe { *ttl_at };
    let hops = (PHYSICAL && !FWD && pkt.at_ingress::<TC>()).then_some(ttl);
    // The virtual side accepts a mapping's address as source only from its VM's port.
    let mut addrs = addrs::<PHYSICAL>(h, (!PHYSICAL).then(|| pkt.ingress::<TC>()), hops)?;
    if !addrs.is_hit() {
        return Err(Counter::PassMiss);
    }
    if FWD && !addrs.forward(ttl) {
        return Err(Counter::PassMiss);
    }
    if !FWD && addrs.forwards() {
        return Err(Counter::Forwarded);
    }
    // A source route with hops left: the pseudo-header holds the final destination.
    match options(pkt, l3) {
        Options::Translatable => {}
        Options::SourceRoute => return Err(Counter::PassSourceRoute),
        Options::Malformed => return Err(Counter::PassMalformed),
    }
    let l4 = l3 + ihl;
    // Type and code are read together: the verifier cannot bound a 1-byte read checked as
    // `at < end`, which is what LLVM turns `at + 1 <= end` into.
    let icmp_type = if f.proto == IPPROTO_ICMP && f.first_fragment && l4 + ICMP_HLEN <= end {
        pkt.read::<2>(l4)?[0]
    } else {
        0
    };
    let kind = L4::classify(f.proto, false, f.first_fragment, icmp_type);
    if kind == L4::Unknown {
        return Err(Counter::PassUnknownProto);
    }
    if l4 + kind.min_len() > end {
        return Err(Counter::PassMalformed);
    }
    let l4_check = check_field(pkt, kind, l4, end)?;
    let d = addrs.delta();
    addrs.record(end as u64);
    addrs.write();
    let ip = if FWD {
        // SAFETY: inside the checked header.
        unsafe { *ttl_at = FORWARD_TTL };
        d.add(forward::ttl_delta(ttl, f.proto))
    } else {
        d
    };
    put16(f.check, apply(get16(f.check), ip));
    // From here on nothing fails: the quote is rewritten, then the ICMP checksum. A
    // forwarded error keeps its quote: the node that delivers it translates the quote as
    // every quote, with its own R2V, which keeps the old real address for the drain too.
    let body = if kind.is_error() && !FWD {
        icmp::quoted4::<PHYSICAL>(pkt, l4 + ICMP_HLEN, end).body()
    } else {
        Delta::ZERO
    };
    if let Some(p) = l4_check {
        fix_transport::<TC>(pkt, p, kind, d, body);
    }
    if FWD {
        return Ok(Counter::Forwarded);
    }
    Ok(Counter::translated(false, PHYSICAL))
}
