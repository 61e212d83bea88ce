//! ICMP and ICMPv6 errors: the quoted header of the offending packet is translated too.
//!
//! The quoted packet travelled the other way, so its source is the error's destination and
//! vice versa; looking both up in this side's table translates it consistently. The quote
//! is usually cut short: its transport checksum is fixed only where the quote reaches it.
//!
//! Both functions cannot fail: a quote they cannot parse is left as it is (the outer
//! translation and the ICMP checksum stay valid). They run after the outer header is
//! rewritten, or alone when only the quote is mapped, and return whether they translated
//! the quote and the change of the quoted bytes, which the ICMP checksum covers.

use netpage_common::{
    counters::Counter,
    csum::{Delta, Quoted, apply},
    proto::{
        ICMP_CHECK, ICMP_HLEN, IPV4_MIN_HLEN, IPV6_HLEN, L4, MAX_QUOTED_EXT_HEADERS,
        ipv4_header_len,
    },
};

use crate::{
    ipv4, ipv6,
    packet::{Packet, get16, put16},
    rewrite::{check_field, fix_check},
};

/// Translates the IPv4 header quoted at `q` (the quote ends at `end`).
// A BPF-to-BPF call: its own stack frame, which keeps every frame under 512 bytes.
#[inline(never)]
pub fn quoted4<const PHYSICAL: bool>(pkt: &Packet, q: usize, end: usize) -> Quoted {
    try_quoted4::<PHYSICAL>(pkt, q, end).map_or(Quoted::NONE, Quoted::translated)
}

#[inline(always)]
fn try_quoted4<const PHYSICAL: bool>(pkt: &Packet, q: usize, end: usize) -> Result<Delta, Counter> {
    let h = pkt.field::<[u8; IPV4_MIN_HLEN]>(q)?;
    let f = ipv4::fields(h);
    let ihl = ipv4_header_len(f.vihl).ok_or(Counter::PassMalformed)?;
    let addrs = ipv4::addrs::<PHYSICAL>(h, None, None)?;
    if !addrs.is_hit() {
        return Err(Counter::PassMiss);
    }
    let kind = L4::classify(f.proto, false, f.first_fragment, 0);
    let l4_check = check_field(pkt, kind, q + ihl, end)?;

    let d = addrs.delta();
    addrs.write();
    let old = get16(f.check);
    let new = apply(old, d);
    put16(f.check, new);
    let mut body = d.word(old, new);
    if let Some(p) = l4_check {
        body = body.add(fix_check(p, kind, kind.transport_delta(d, Delta::ZERO)));
    }
    Ok(body)
}

/// Translates the IPv6 header quoted at `q` (the quote ends at `end`).
// A BPF-to-BPF call: its own stack frame, which keeps every frame under 512 bytes.
#[inline(never)]
pub fn quoted6<const PHYSICAL: bool>(pkt: &Packet, q: usize, end: usize) -> Quoted {
    try_quoted6::<PHYSICAL>(pkt, q, end).map_or(Quoted::NONE, Quoted::translated)
}

#[inline(always)]
fn try_quoted6<const PHYSICAL: bool>(pkt: &Packet, q: usize, end: usize) -> Result<Delta, Counter> {
    let h = pkt.field::<[u8; IPV6_HLEN]>(q)?;
    let f = ipv6::fields(h);
    if f.version != 6 {
        return Err(Counter::PassMalformed);
    }
    let addrs = ipv6::addrs::<PHYSICAL>(h, None, None)?;
    if !addrs.is_hit() {
        return Err(Counter::PassMiss);
    }
    // A quote cut inside its extension headers has no transport checksum to fix.
    let (l4_check, kind, pseudo) =
        match ipv6::walk::<MAX_QUOTED_EXT_HEADERS, false>(pkt, q + IPV6_HLEN, f.next, end) {
            Ok(t) => {
                let kind = L4::classify(t.proto, true, t.first, 0);
                let pseudo = if t.dst_hidden {
                    addrs.src_delta()
                } else {
                    addrs.delta()
                };
                (check_field(pkt, kind, t.off, end)?, kind, pseudo)
            }
            Err(_) => (None, L4::Opaque, Delta::ZERO),
        };

    let mut body = addrs.delta();
    addrs.write();
    if let Some(p) = l4_check {
        body = body.add(fix_check(
            p,
            kind,
            kind.transport_delta(pseudo, Delta::ZERO),
        ));
    }
    Ok(body)
}

/// The error message of `kind` at `l4` (ending at `end`), whose own addresses missed: if
/// its type is an error's (`is_error`) and `quoted` translates its quote, the checksum
/// over the quote follows; otherwise it is a miss. Nothing else changes.
#[inline(always)]
pub fn quote_only(
    pkt: &Packet,
    kind: L4,
    l4: usize,
    end: usize,
    is_error: impl Fn(u8) -> bool,
    quoted: impl Fn(&Packet, usize, usize) -> Quoted,
) -> Result<Counter, Counter> {
    if l4 + kind.min_len() > end {
        return Err(Counter::PassMiss);
    }
    // Type and code are read together (see `ipv4::translate`).
    if !is_error(pkt.read::<2>(l4)?[0]) {
        return Err(Counter::PassMiss);
    }
    let check = pkt.field::<[u8; 2]>(l4 + ICMP_CHECK)?;
    let q = quoted(pkt, l4 + ICMP_HLEN, end);
    if !q.hit() {
        return Err(Counter::PassMiss);
    }
    fix_check(check, kind, q.body());
    Ok(Counter::QuoteOnly)
}
