//! The "too big" answers: "fragmentation needed" (RFC 792, 1191) and "packet too big"
//! (RFC 4443) to a packet that would not fit the tunnel, made of the packet itself.
//!
//! The answers go to the kernel (`XDP_PASS`, `TC_ACT_UNSPEC`), addressed as the packet was
//! to this interface, from the node's locator of the packet's family (the packet's
//! destination if it has none): the kernel routes them back to the sender as any packet it
//! forwards. A transmission from here (`XDP_TX`) would be quicker, but a veth whose peer
//! has neither XDP nor GRO drops what it is given that way, counting it in its driver
//! only. Under tc a GSO packet answered stops being one (the cut resets it).
//!
//! Under tc the kernel will not cut a packet whose transport checksum is left to the
//! device (CHECKSUM_PARTIAL) before the end of that checksum field (`__bpf_skb_min_len`,
//! net/core/filter.c): a TCP packet's lies 16 bytes into its header, beyond the 8 bytes
//! the answers quote. When the cut to the usual quote is refused, the quote goes on
//! through the first 20 bytes of the TCP header ([`PARTIAL_EXTRA`] more), which holds the
//! field: RFC 1812 (4.3.2.3) and RFC 4443 (2.4) let an answer quote more. The answer stays
//! CHECKSUM_PARTIAL (no helper clears it), its checksum start and offset now on the quoted
//! TCP header: a device without checksum offload on the way completes it
//! (`skb_checksum_help`), writing the quoted checksum field, which the ICMP checksum
//! covers. The field is given the one value that completing leaves as it is
//! (`segment::fixed_point`): the sender's partial sum in it meant nothing to the sender.
//! A UDP packet's field lies inside the usual quote: the cut is not refused, and its
//! answer, if the checksum was partial, is correct only where nothing completes it.

use netpage_common::{
    counters::Counter,
    csum::fold,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP},
    segment::{self, MAX_QUOTE4, QUOTE6, SegConfig},
};

use super::{
    Ctx,
    headers::{csum_at, joined, put, put_eth},
    room::{self, Room},
};
use crate::packet::Packet;

/// Bytes a quote takes beyond the usual 8 of the transport header when the packet's
/// checksum is left to the device: through a TCP header's checksum field (20 bytes).
const PARTIAL_EXTRA: usize = 12;

/// Answers an IPv4 packet (header `ihl` bytes) with "fragmentation needed" for `mtu`,
/// quoting its header and 8 bytes.
#[inline(never)]
pub fn answer4<const TC: bool>(ctx: Ctx, cfg: &SegConfig, ihl: usize, mtu: u32) -> Counter {
    Counter::outcome(try_answer4::<TC>(ctx, cfg, ihl, mtu))
}

// The frame is cut and given room first; what the answer needs of it is read after, where
// it now lies (behind the room made for the new headers, at both hooks), so that nothing
// is held across the helper calls.
#[inline(always)]
fn try_answer4<const TC: bool>(
    ctx: Ctx,
    cfg: &SegConfig,
    ihl: usize,
    mtu: u32,
) -> Result<Counter, Counter> {
    const ROOM: usize = 28;
    let quote = ihl + 8;
    if quote > MAX_QUOTE4 {
        return Err(Counter::PassMalformed);
    }
    let pkt = Packet::of_ctx::<TC>(ctx);
    let sum = csum_at::<MAX_QUOTE4>(&pkt, ETH_HLEN, quote)?;
    let tcp = pkt.read::<1>(ETH_HLEN + 9)?[0] == IPPROTO_TCP;
    let q = cut_quote::<TC>(ctx, &pkt, quote, sum, ihl, tcp)?;
    let (pkt, macs) = room::open::<TC>(ctx, ROOM, Room::Plain)?;
    let old = ROOM + ETH_HLEN;
    let src = if cfg.own4 == [0; 4] {
        pkt.read::<4>(old + 16)?
    } else {
        cfg.own4
    };
    let dst = pkt.read::<4>(old + 12)?;
    put_eth(&pkt, 0, &macs, ETH_P_IP)?;
    if let Some(f) = q.field {
        put(&pkt, old + ihl + 16, &f)?;
    }
    let ip = segment::answer4_header(src, dst, q.len);
    put::<28>(
        &pkt,
        ETH_HLEN,
        &joined(&ip, &segment::frag_needed(mtu, q.sum)),
    )?;
    Ok(Counter::AnsweredTooBig)
}

/// Answers an IPv6 packet with "packet too big" for `mtu`, quoting its first 48 bytes.
#[inline(never)]
pub fn answer6<const TC: bool>(ctx: Ctx, cfg: &SegConfig, mtu: u32) -> Counter {
    Counter::outcome(try_answer6::<TC>(ctx, cfg, mtu))
}

// As `try_answer4`: cut and given room first.
#[inline(always)]
fn try_answer6<const TC: bool>(ctx: Ctx, cfg: &SegConfig, mtu: u32) -> Result<Counter, Counter> {
    const ROOM: usize = 48;
    let own = cfg.own6 != [0; 16];
    // The quote, and the pseudo-header's addresses: the packet's source, and the answer's
    // (the node's locator, or the packet's destination).
    let pkt = Packet::of_ctx::<TC>(ctx);
    let from = if own {
        let mut s = 0u64;
        for i in 0..4 {
            let w = &cfg.own6[4 * i..4 * i + 4];
            s += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        }
        s
    } else {
        csum_at::<16>(&pkt, ETH_HLEN + 24, 16)?
    };
    let sum = csum_at::<QUOTE6>(&pkt, ETH_HLEN, QUOTE6)? + csum_at::<16>(&pkt, ETH_HLEN + 8, 16)?;
    let tcp = pkt.read::<1>(ETH_HLEN + 6)?[0] == IPPROTO_TCP;
    let q = cut_quote::<TC>(ctx, &pkt, QUOTE6, sum + from, 40, tcp)?;
    let (pkt, macs) = room::open::<TC>(ctx, ROOM, Room::Plain)?;
    let old = ROOM + ETH_HLEN;
    let src = if own {
        cfg.own6
    } else {
        pkt.read::<16>(old + 24)?
    };
    let dst = pkt.read::<16>(old + 8)?;
    put_eth(&pkt, 0, &macs, ETH_P_IPV6)?;
    if let Some(f) = q.field {
        put(&pkt, old + 40 + 16, &f)?;
    }
    put(&pkt, ETH_HLEN, &segment::answer6_start(q.len))?;
    put(&pkt, ETH_HLEN + 8, &src)?;
    put(&pkt, ETH_HLEN + 24, &dst)?;
    put(
        &pkt,
        ETH_HLEN + 40,
        &segment::packet_too_big(mtu, q.len, q.sum),
    )?;
    Ok(Counter::AnsweredTooBig)
}

/// What an answer quotes: its length, the sum of its bytes (and of whatever else the
/// checksum covers), and, for a partial TCP checksum, the value its field takes in the
/// quote (see [`segment::fixed_point`]).
struct Quote {
    len: usize,
    sum: u64,
    field: Option<[u8; 2]>,
}

/// Cuts the packet (`pkt`, before the cut) behind the `quote` bytes its answer quotes,
/// whose sum (and whatever else the checksum covers) is `sum`; under tc, if the kernel
/// refuses and the transport (at `ETH_HLEN + l4`) is TCP, behind [`PARTIAL_EXTRA`] bytes
/// more, through the checksum field, which then takes its fixed point: the checksum is
/// partial, and the answer, still partial, may be completed on its way.
#[inline(always)]
fn cut_quote<const TC: bool>(
    ctx: Ctx,
    pkt: &Packet,
    quote: usize,
    sum: u64,
    l4: usize,
    tcp: bool,
) -> Result<Quote, Counter> {
    // Read before the cut: the TCP header's first 8 bytes, the 12 after, and its checksum.
    let partial = if TC && tcp {
        match (
            csum_at::<8>(pkt, ETH_HLEN + l4, 8),
            csum_at::<PARTIAL_EXTRA>(pkt, ETH_HLEN + l4 + 8, PARTIAL_EXTRA),
            pkt.read::<2>(ETH_HLEN + l4 + 16),
        ) {
            (Ok(head), Ok(more), Ok(old)) => Some((head, more, u16::from_be_bytes(old))),
            _ => None,
        }
    } else {
        None
    };
    match (room::cut::<TC>(ctx, ETH_HLEN + quote), partial) {
        (Ok(()), _) => Ok(Quote {
            len: quote,
            sum,
            field: None,
        }),
        (Err(_), Some((head, more, old))) => {
            room::cut::<TC>(ctx, ETH_HLEN + quote + PARTIAL_EXTRA)?;
            // The header's sum but the field; the quote's, the field replaced.
            let rest = u64::from(fold(head + more + u64::from(!old)));
            let f = segment::fixed_point(rest);
            Ok(Quote {
                len: quote + PARTIAL_EXTRA,
                sum: sum + more + u64::from(!old) + u64::from(f),
                field: Some(f.to_be_bytes()),
            })
        }
        (Err(e), None) => Err(e),
    }
}
