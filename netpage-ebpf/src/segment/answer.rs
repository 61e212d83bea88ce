//! The "too big" answers: "fragmentation needed" (RFC 792, 1191) and "packet too big"
//! (RFC 4443) to a packet that would not fit the tunnel, made of the packet itself.
//!
//! The answers go to the kernel (`XDP_PASS`, `TC_ACT_UNSPEC`), addressed as the packet was
//! to this interface, from the node's locator of the packet's family (the packet's
//! destination if it has none): the kernel routes them back to the sender as any packet it
//! forwards. A transmission from here (`XDP_TX`) would be quicker, but a veth whose peer
//! has neither XDP nor GRO drops what it is given that way, counting it in its driver
//! only. Under tc a GSO packet answered stops being one (the cut resets it).

use netpage_common::{
    counters::Counter,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    segment::{self, MAX_QUOTE4, QUOTE6, SegConfig},
};

use super::{
    Ctx,
    headers::{csum_at, joined, put, put_eth},
    room::{self, Room},
};
use crate::packet::Packet;

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
    let sum = csum_at::<MAX_QUOTE4>(&Packet::of_ctx::<TC>(ctx), ETH_HLEN, quote)?;
    room::cut::<TC>(ctx, ETH_HLEN + quote)?;
    let (pkt, macs) = room::open::<TC>(ctx, ROOM, Room::Plain)?;
    let old = ROOM + ETH_HLEN;
    let src = if cfg.own4 == [0; 4] {
        pkt.read::<4>(old + 16)?
    } else {
        cfg.own4
    };
    let dst = pkt.read::<4>(old + 12)?;
    put_eth(&pkt, 0, &macs, ETH_P_IP)?;
    let ip = segment::answer4_header(src, dst, quote);
    put::<28>(
        &pkt,
        ETH_HLEN,
        &joined(&ip, &segment::frag_needed(mtu, sum)),
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
    let sum = sum + from;
    room::cut::<TC>(ctx, ETH_HLEN + QUOTE6)?;
    let (pkt, macs) = room::open::<TC>(ctx, ROOM, Room::Plain)?;
    let old = ROOM + ETH_HLEN;
    let src = if own {
        cfg.own6
    } else {
        pkt.read::<16>(old + 24)?
    };
    let dst = pkt.read::<16>(old + 8)?;
    put_eth(&pkt, 0, &macs, ETH_P_IPV6)?;
    put(&pkt, ETH_HLEN, &segment::answer6_start())?;
    put(&pkt, ETH_HLEN + 8, &src)?;
    put(&pkt, ETH_HLEN + 24, &dst)?;
    put(&pkt, ETH_HLEN + 40, &segment::packet_too_big(mtu, sum))?;
    Ok(Counter::AnsweredTooBig)
}
