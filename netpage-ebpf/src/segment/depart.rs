//! The virtual side: a packet for the VA of an `encap` mapping, or from one to a
//! destination that is no VM, departs inside outer headers to a locator, or is answered
//! "too big" when it would not fit the tunnel.

use netpage_common::{
    counters::Counter,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    segment::{self, Fit, SegConfig, entropy_port},
    source::Source,
};

use super::{
    Ctx, Loc, Segmented, answer,
    headers::{Inner, inner4, inner6, joined, put, put_eth, seg_len},
    room::{self, Room},
};
use crate::packet::Packet;

/// Encapsulates (or answers) an IPv4 packet whose destination is the VA of an `encap`
/// mapping, or whose source is and whose destination is not a VM of the table.
// BPF-to-BPF calls from here on, each with its own frame: inlined, the steps' headers
// would not fit one frame.
#[inline(never)]
pub fn depart4<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_depart4::<TC>(ctx, cfg))
}

#[inline(always)]
fn try_depart4<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::of_ctx::<TC>(ctx);
    let (inner, ihl) = inner4::<TC>(&pkt)?;
    let seg_len = seg_len::<TC>(ctx, inner.len, ihl, inner.proto)?;
    let to = target(&inner, cfg, pkt.ingress::<TC>())?;
    Ok(
        match segment::fit(seg_len, inner.df, to.family == 6, cfg.mtu) {
            Fit::Encap { df } => encap::<TC, _>(ctx, cfg, &inner, &to, df),
            Fit::Answer { mtu } => answer::answer4::<TC>(ctx, cfg, ihl, mtu),
        },
    )
}

/// IPv6: as [`depart4`].
#[inline(never)]
pub fn depart6<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_depart6::<TC>(ctx, cfg))
}

#[inline(always)]
fn try_depart6<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::of_ctx::<TC>(ctx);
    let inner = inner6::<TC>(&pkt)?;
    let seg_len = seg_len::<TC>(ctx, inner.len, 40, inner.proto)?;
    let to = target(&inner, cfg, pkt.ingress::<TC>())?;
    Ok(match segment::fit(seg_len, true, to.family == 6, cfg.mtu) {
        Fit::Encap { df } => encap::<TC, _>(ctx, cfg, &inner, &to, df),
        Fit::Answer { mtu } => answer::answer6::<TC>(ctx, cfg, mtu),
    })
}

/// Where a departing packet goes: its destination's locator, or, from a VM of an `encap`
/// mapping to a destination that is not one, the default locator. Counts it for the
/// mappings. A packet whose locator is this node's goes to the kernel (`PassMiss`), as
/// does one no `encap` mapping concerns; one with an `encap` VA for source that did not
/// come from its VM's port is spoofed.
#[inline(always)]
fn target<A: Segmented>(inner: &Inner<A>, cfg: &SegConfig, ingress: u32) -> Result<Loc, Counter> {
    let src = A::locator(&inner.src);
    if src.is_some() {
        Source::Mapped {
            owner: A::owner(&inner.src),
        }
        .verdict(ingress)?;
    }
    let dst = A::locator(&inner.dst);
    let to = match (dst, src) {
        (Some(d), _) => Loc::of(d),
        (None, Some(_)) if cfg.default_family != 0 && A::routable(&inner.dst) => Loc {
            family: cfg.default_family,
            addr: cfg.default_addr,
        },
        _ => return Err(Counter::PassMiss),
    };
    if to.is_own(cfg) {
        return Err(Counter::PassMiss);
    }
    let bytes = (ETH_HLEN + inner.len) as u64;
    if let Some(s) = src {
        A::record(s.slot, bytes);
    }
    if let Some(d) = dst {
        A::record(d.slot, bytes);
    }
    Ok(to)
}

/// Puts the inner packet inside outer headers to `to` (`df`: the outer IPv4 header's
/// don't-fragment bit).
#[inline(never)]
fn encap<const TC: bool, A>(
    ctx: Ctx,
    cfg: &SegConfig,
    inner: &Inner<A>,
    to: &Loc,
    df: bool,
) -> Counter {
    Counter::outcome(try_encap::<TC, A>(ctx, cfg, inner, to, df))
}

#[inline(always)]
fn try_encap<const TC: bool, A>(
    ctx: Ctx,
    cfg: &SegConfig,
    inner: &Inner<A>,
    to: &Loc,
    df: bool,
) -> Result<Counter, Counter> {
    // The room is made first, and what the new headers need of the old frame is read
    // after, where it now lies: nothing is held across the helper call.
    let v6 = to.family == 6;
    let ovh = segment::overhead(v6);
    // The outer lengths are 16-bit: a GSO packet near 64 KiB may not take them.
    if inner.len + ovh > usize::from(u16::MAX) {
        return Err(Counter::PassMiss);
    }
    let sport = entropy_port(inner.hash);
    let udp = segment::udp(sport, inner.len);
    if !v6 {
        if cfg.own4 == [0; 4] {
            return Err(Counter::PassMiss);
        }
        let (pkt, macs) = room::open::<TC>(ctx, ovh, Room::Tunnel { v6 })?;
        put_eth(&pkt, 0, &macs, ETH_P_IP)?;
        let dst = [to.addr[0], to.addr[1], to.addr[2], to.addr[3]];
        let ip = segment::outer4(cfg.own4, dst, inner.tos, df, inner.hash as u16, inner.len);
        put::<28>(&pkt, ETH_HLEN, &joined(&ip, &udp))?;
    } else {
        if cfg.own6 == [0; 16] {
            return Err(Counter::PassMiss);
        }
        let (pkt, macs) = room::open::<TC>(ctx, ovh, Room::Tunnel { v6 })?;
        put_eth(&pkt, 0, &macs, ETH_P_IPV6)?;
        let ip = segment::outer6(cfg.own6, to.addr, inner.tos, inner.hash, inner.len);
        put::<48>(&pkt, ETH_HLEN, &joined(&ip, &udp))?;
    }
    Ok(Counter::Encapsulated)
}
