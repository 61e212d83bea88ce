//! Segmentation at the XDP hook (see `netpage_common::segment`): on the virtual side a
//! packet for the VA of an `encap` mapping is put inside outer headers to its VM's locator,
//! or answered "too big" when it would not fit; on the physical side an encapsulated packet
//! for one of the node's locators loses its outer headers, or, if its VM moved, is sent on
//! to the new locator, once.
//!
//! It runs only for packets the page table missed, and only on a node that has a locator:
//! a paging-only node pays one array load per missed packet.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::map,
    maps::{Array, HashMap},
    programs::XdpContext,
};
use netpage_common::{
    counters::Counter,
    csum::fold,
    forward::FORWARD_TTL,
    maps::DEFAULT_CAPACITY,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, ipv4_header_len},
    segment::{
        self, Arrival, Fit, GUE_PORT, Locator, MAX_QUOTE4, QUOTE6, SegConfig, UDP_HLEN,
        entropy_port, mix,
    },
    source::Source,
};

use crate::{maps::Addr, owner::Owned, packet::Packet};

/// IPv4 segment table: VA of an `encap` mapping -> its VM's locator and counter slot.
#[map(name = "NP_SEG4")]
static SEG4: HashMap<[u32; 1], Locator> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// IPv6 segment table: VA -> locator and counter slot.
#[map(name = "NP_SEG6")]
static SEG6: HashMap<[u32; 4], Locator> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// The node's segmentation settings (one slot; user space keeps it).
#[map(name = "NP_SEGCFG")]
static SEGCFG: Array<SegConfig> = Array::with_max_entries(1, 0);

/// The node's settings if it takes part in segmentation: an array lookup of a constant
/// key, a direct load.
#[inline(always)]
pub fn config() -> Option<&'static SegConfig> {
    SEGCFG.get(0).filter(|c| c.on())
}

/// An address family's segment table.
trait Segmented: Owned {
    fn locator(va: &Self) -> Option<&'static Locator>;
    /// Whether a VM's packet to this destination may go to the default locator.
    fn routable(dst: &Self) -> bool;
}

impl Segmented for [u32; 1] {
    #[inline(always)]
    fn locator(va: &Self) -> Option<&'static Locator> {
        // SAFETY: the value stays readable for this run (RCU); updates replace it whole.
        unsafe { SEG4.get(va) }
    }

    #[inline(always)]
    fn routable(dst: &Self) -> bool {
        segment::routable4(dst[0].to_ne_bytes())
    }
}

impl Segmented for [u32; 4] {
    #[inline(always)]
    fn locator(va: &Self) -> Option<&'static Locator> {
        // SAFETY: as above.
        unsafe { SEG6.get(va) }
    }

    #[inline(always)]
    fn routable(dst: &Self) -> bool {
        let b = dst[0].to_ne_bytes();
        segment::routable6([b[0], b[1]])
    }
}

/// A locator as the programs compare it: family and address, without the slot.
#[derive(Clone, Copy, PartialEq)]
struct Loc {
    family: u32,
    addr: [u8; 16],
}

impl Loc {
    #[inline(always)]
    fn of(l: &Locator) -> Self {
        Self {
            family: l.family,
            addr: l.addr,
        }
    }

    /// One of the node's own locators.
    #[inline(always)]
    fn is_own(&self, cfg: &SegConfig) -> bool {
        match self.family {
            4 => cfg.own4 != [0; 4] && self.addr[..4] == cfg.own4,
            6 => cfg.own6 != [0; 16] && self.addr == cfg.own6,
            _ => false,
        }
    }
}

/// What the segment step did with a packet the page table missed, on this side.
// A BPF-to-BPF call of its own, from the top, which takes the context only: the packet
// moves (its head is adjusted), so every pointer is derived here afresh.
#[inline(never)]
pub fn xdp<const PHYSICAL: bool>(ctx: *mut xdp_md, cfg: &SegConfig) -> Counter {
    if PHYSICAL {
        return arrive(ctx, cfg);
    }
    let pkt = Packet::xdp(&XdpContext::new(ctx));
    match pkt.be16(ETH_HLEN - 2) {
        Ok(ETH_P_IP) => depart4(ctx, cfg),
        Ok(ETH_P_IPV6) => depart6(ctx, cfg),
        _ => Counter::PassMiss,
    }
}

/// The MAC addresses of the frame at the start of `pkt`.
#[inline(always)]
fn macs(pkt: &Packet) -> Result<[u8; 12], Counter> {
    pkt.read::<12>(0)
}

/// Writes `bytes` at `off`.
#[inline(always)]
fn put<const N: usize>(pkt: &Packet, off: usize, bytes: &[u8; N]) -> Result<(), Counter> {
    let p = pkt.field::<[u8; N]>(off)?;
    // SAFETY: checked by `field`; a whole array is written through the pointer.
    unsafe { p.write(*bytes) };
    Ok(())
}

/// Writes an Ethernet header (`macs` as read, then the EtherType) at `off`.
#[inline(always)]
fn put_eth(pkt: &Packet, off: usize, macs: &[u8; 12], ethertype: u16) -> Result<(), Counter> {
    let mut h = [0u8; ETH_HLEN];
    h[..12].copy_from_slice(macs);
    h[12..].copy_from_slice(&ethertype.to_be_bytes());
    put(pkt, off, &h)
}

/// The concatenation of an IP header and the 8-byte header (UDP, ICMP) after it.
#[inline(always)]
fn joined<const N: usize, const M: usize>(ip: &[u8; N], next: &[u8; 8]) -> [u8; M] {
    const { assert!(N + 8 == M) };
    let mut h = [0u8; M];
    h[..N].copy_from_slice(ip);
    h[N..].copy_from_slice(next);
    h
}

/// Moves the start of the packet by `delta` bytes (negative: room in front).
#[inline(always)]
fn adjust_head(ctx: *mut xdp_md, delta: i32) -> Result<Packet, Counter> {
    // SAFETY: `ctx` is the program's context.
    if unsafe { bpf_xdp_adjust_head(ctx, delta) } != 0 {
        return Err(Counter::PassMiss);
    }
    Ok(Packet::xdp(&XdpContext::new(ctx)))
}

/// The inner packet's addresses, TOS or traffic class, length, whether it may be
/// fragmented, and its flow hash.
struct Inner<A> {
    src: A,
    dst: A,
    tos: u8,
    len: usize,
    df: bool,
    hash: u32,
}

/// Reads the IPv4 packet at `ETH_HLEN`.
#[inline(always)]
fn inner4(pkt: &Packet) -> Result<(Inner<[u32; 1]>, usize), Counter> {
    // SAFETY: checked by `field`.
    let h = unsafe { *pkt.field::<[u8; 20]>(ETH_HLEN)? };
    let ihl = ipv4_header_len(h[0]).ok_or(Counter::PassMalformed)?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if len < ihl {
        return Err(Counter::PassMalformed);
    }
    if !pkt.holds::<false>(ETH_HLEN + len) {
        return Err(Counter::PassTruncated);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]])];
    let dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]])];
    let ports = if (h[9] == IPPROTO_TCP || h[9] == IPPROTO_UDP) && frag & 0x1FFF == 0 {
        pkt.read::<4>(ETH_HLEN + ihl).map_or(0, u32::from_ne_bytes)
    } else {
        0
    };
    let hash = mix(mix(mix(u32::from(h[9]), src[0]), dst[0]), ports);
    let inner = Inner {
        src,
        dst,
        tos: h[1],
        len,
        df: frag & 0x4000 != 0,
        hash,
    };
    Ok((inner, ihl))
}

/// Reads the IPv6 packet at `ETH_HLEN`.
#[inline(always)]
fn inner6(pkt: &Packet) -> Result<Inner<[u32; 4]>, Counter> {
    // SAFETY: checked by `field`.
    let h = unsafe { *pkt.field::<[u8; 40]>(ETH_HLEN)? };
    let len = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if !pkt.holds::<false>(ETH_HLEN + len) {
        return Err(Counter::PassTruncated);
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let src = [word(8), word(12), word(16), word(20)];
    let dst = [word(24), word(28), word(32), word(36)];
    // The flow label, as the sender set it, stands in for the ports (RFC 6438).
    let mut hash = mix(
        u32::from(h[6]),
        word(0) & u32::from_ne_bytes([0, 0x0F, 0xFF, 0xFF]),
    );
    for i in 0..4 {
        hash = mix(mix(hash, src[i]), dst[i]);
    }
    let tclass = (h[0] << 4) | (h[1] >> 4);
    let inner = Inner {
        src,
        dst,
        tos: tclass,
        len,
        df: true,
        hash,
    };
    Ok(inner)
}

/// Virtual side: encapsulates (or answers) an IPv4 packet whose destination is the VA of
/// an `encap` mapping, or whose source is and whose destination is not a VM of the table.
// BPF-to-BPF calls from here on, each with its own frame: inlined, the steps' headers
// would not fit one frame.
#[inline(never)]
fn depart4(ctx: *mut xdp_md, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_depart4(ctx, cfg))
}

#[inline(always)]
fn try_depart4(ctx: *mut xdp_md, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::xdp(&XdpContext::new(ctx));
    let (inner, ihl) = inner4(&pkt)?;
    let to = target(&inner, cfg, ingress(ctx))?;
    Ok(
        match segment::fit(inner.len, inner.df, to.family == 6, cfg.mtu) {
            Fit::Encap { df } => encap(ctx, cfg, &inner, &to, df),
            Fit::Answer { mtu } => answer4(ctx, cfg, ihl, mtu),
        },
    )
}

/// Virtual side, IPv6: as [`depart4`].
#[inline(never)]
fn depart6(ctx: *mut xdp_md, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_depart6(ctx, cfg))
}

#[inline(always)]
fn try_depart6(ctx: *mut xdp_md, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::xdp(&XdpContext::new(ctx));
    let inner = inner6(&pkt)?;
    let to = target(&inner, cfg, ingress(ctx))?;
    Ok(
        match segment::fit(inner.len, true, to.family == 6, cfg.mtu) {
            Fit::Encap { df } => encap(ctx, cfg, &inner, &to, df),
            Fit::Answer { mtu } => answer6(ctx, cfg, mtu),
        },
    )
}

/// The index of the interface the packet arrived on.
#[inline(always)]
fn ingress(ctx: *mut xdp_md) -> u32 {
    // SAFETY: `ctx` is the program's context.
    unsafe { (*ctx).ingress_ifindex }
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
    let to = match (A::locator(&inner.dst), src) {
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
    if let Some(d) = A::locator(&inner.dst) {
        A::record(d.slot, bytes);
    }
    Ok(to)
}

/// Puts the inner packet inside outer headers to `to` (`df`: the outer IPv4 header's
/// don't-fragment bit).
#[inline(never)]
fn encap<A>(ctx: *mut xdp_md, cfg: &SegConfig, inner: &Inner<A>, to: &Loc, df: bool) -> Counter {
    Counter::outcome(try_encap(ctx, cfg, inner, to, df))
}

#[inline(always)]
fn try_encap<A>(
    ctx: *mut xdp_md,
    cfg: &SegConfig,
    inner: &Inner<A>,
    to: &Loc,
    df: bool,
) -> Result<Counter, Counter> {
    // The head moves first, and what the new headers need of the old frame is read after,
    // where it now lies: nothing is held across the helper call.
    let sport = entropy_port(inner.hash);
    let udp = segment::udp(sport, inner.len);
    if to.family == 4 {
        if cfg.own4 == [0; 4] {
            return Err(Counter::PassMiss);
        }
        let ovh = segment::overhead(false);
        let pkt = adjust_head(ctx, -(ovh as i32))?;
        let macs = pkt.read::<12>(ovh)?;
        put_eth(&pkt, 0, &macs, ETH_P_IP)?;
        let dst = [to.addr[0], to.addr[1], to.addr[2], to.addr[3]];
        let ip = segment::outer4(cfg.own4, dst, inner.tos, df, inner.hash as u16, inner.len);
        put::<28>(&pkt, ETH_HLEN, &joined(&ip, &udp))?;
    } else {
        if cfg.own6 == [0; 16] {
            return Err(Counter::PassMiss);
        }
        let ovh = segment::overhead(true);
        let pkt = adjust_head(ctx, -(ovh as i32))?;
        let macs = pkt.read::<12>(ovh)?;
        put_eth(&pkt, 0, &macs, ETH_P_IPV6)?;
        let ip = segment::outer6(cfg.own6, to.addr, inner.tos, inner.hash, inner.len);
        put::<48>(&pkt, ETH_HLEN, &joined(&ip, &udp))?;
    }
    Ok(Counter::Encapsulated)
}

/// Cuts the packet to `len` bytes.
#[inline(always)]
fn truncate(ctx: *mut xdp_md, len: usize) -> Result<Packet, Counter> {
    let pkt = Packet::xdp(&XdpContext::new(ctx));
    let have = pkt.len();
    if have < len {
        return Err(Counter::PassTruncated);
    }
    // SAFETY: `ctx` is the program's context.
    if unsafe { bpf_xdp_adjust_tail(ctx, -((have - len) as i32)) } != 0 {
        return Err(Counter::PassMiss);
    }
    Ok(Packet::xdp(&XdpContext::new(ctx)))
}

// The answers go to the kernel (`XDP_PASS`), addressed as the packet was to this
// interface, from the node's locator of the packet's family (the packet's destination if
// it has none): the kernel routes them back to the sender as any packet it forwards. A
// transmission from here (`XDP_TX`) would be quicker, but a veth whose peer has neither
// XDP nor GRO drops what it is given that way, counting it in its driver only.

/// Answers an IPv4 packet (header `ihl` bytes) with "fragmentation needed" for `mtu`,
/// quoting its header and 8 bytes.
#[inline(never)]
fn answer4(ctx: *mut xdp_md, cfg: &SegConfig, ihl: usize, mtu: u32) -> Counter {
    Counter::outcome(try_answer4(ctx, cfg, ihl, mtu))
}

// The frame is cut and moved first; what the answer needs of it is read after, where it
// now lies (behind the room made for the new headers), so that nothing is held across the
// helper calls.
#[inline(always)]
fn try_answer4(
    ctx: *mut xdp_md,
    cfg: &SegConfig,
    ihl: usize,
    mtu: u32,
) -> Result<Counter, Counter> {
    const ROOM: usize = 28;
    let quote = ihl + 8;
    if quote > MAX_QUOTE4 {
        return Err(Counter::PassMalformed);
    }
    let sum = csum_at::<MAX_QUOTE4>(&Packet::xdp(&XdpContext::new(ctx)), ETH_HLEN, quote)?;
    truncate(ctx, ETH_HLEN + quote)?;
    let pkt = adjust_head(ctx, -(ROOM as i32))?;
    let old = ROOM + ETH_HLEN;
    let macs = pkt.read::<12>(ROOM)?;
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
fn answer6(ctx: *mut xdp_md, cfg: &SegConfig, mtu: u32) -> Counter {
    Counter::outcome(try_answer6(ctx, cfg, mtu))
}

// As `try_answer4`: cut and moved first.
#[inline(always)]
fn try_answer6(ctx: *mut xdp_md, cfg: &SegConfig, mtu: u32) -> Result<Counter, Counter> {
    const ROOM: usize = 48;
    let own = cfg.own6 != [0; 16];
    // The quote, and the pseudo-header's addresses: the packet's source, and the answer's
    // (the node's locator, or the packet's destination).
    let pkt = Packet::xdp(&XdpContext::new(ctx));
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
    truncate(ctx, ETH_HLEN + QUOTE6)?;
    let pkt = adjust_head(ctx, -(ROOM as i32))?;
    let old = ROOM + ETH_HLEN;
    let macs = pkt.read::<12>(ROOM)?;
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

/// The one's-complement sum of the first `len` bytes (a multiple of 4, at most `N`) at
/// `off`, as big-endian words, by the kernel (`bpf_csum_diff`): a loop over the packet
/// here would be unrolled into more stack than a frame has.
#[inline(always)]
fn csum_at<const N: usize>(pkt: &Packet, off: usize, len: usize) -> Result<u64, Counter> {
    let p = pkt.field::<[u8; N]>(off)?;
    let len = if len > N { N } else { len & !3 };
    // SAFETY: the helper reads `len` bytes, inside the `N` that `field` checked.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), len as u32, 0) };
    if r < 0 {
        return Err(Counter::PassMiss);
    }
    // The kernel sums words as they lie in memory, read in the CPU's order.
    let f = fold(r as u64);
    Ok(u64::from(u16::from_be_bytes(f.to_ne_bytes())))
}

/// The outer headers of an arriving packet of the encapsulation: their length, their
/// family (4 or 6), the TTL or hop limit, and the UDP length.
struct Outer {
    len: usize,
    family: u32,
    ttl: u8,
    udp_len: usize,
}

/// Reads the outer headers, if the packet is one of the encapsulation addressed to one of
/// the node's locators: IPv4 without options or fragmentation, or IPv6 with UDP next.
#[inline(always)]
fn outer(pkt: &Packet, cfg: &SegConfig) -> Result<Outer, Counter> {
    let (len, family, ttl) = match pkt.be16(ETH_HLEN - 2)? {
        ETH_P_IP => {
            // SAFETY: checked by `field`.
            let h = unsafe { *pkt.field::<[u8; 20]>(ETH_HLEN)? };
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[0] != 0x45 || frag & 0x3FFF != 0 || h[9] != IPPROTO_UDP {
                return Err(Counter::PassMiss);
            }
            if cfg.own4 == [0; 4] || h[16..20] != cfg.own4 {
                return Err(Counter::PassMiss);
            }
            (20, 4, h[8])
        }
        ETH_P_IPV6 => {
            // SAFETY: checked by `field`.
            let h = unsafe { *pkt.field::<[u8; 40]>(ETH_HLEN)? };
            if h[6] != IPPROTO_UDP || cfg.own6 == [0; 16] || h[24..40] != cfg.own6 {
                return Err(Counter::PassMiss);
            }
            (40, 6, h[7])
        }
        _ => return Err(Counter::PassMiss),
    };
    let udp = pkt.read::<8>(ETH_HLEN + len)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != GUE_PORT {
        return Err(Counter::PassMiss);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HLEN + 20 || !pkt.holds::<false>(ETH_HLEN + len + udp_len) {
        return Err(Counter::PassMalformed);
    }
    Ok(Outer {
        len,
        family,
        ttl,
        udp_len,
    })
}

/// Physical side: decapsulates, forwards or passes an arriving packet.
#[inline(never)]
fn arrive(ctx: *mut xdp_md, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_arrive(ctx, cfg))
}

#[inline(always)]
fn try_arrive(ctx: *mut xdp_md, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::xdp(&XdpContext::new(ctx));
    let o = outer(&pkt, cfg)?;
    let at = ETH_HLEN + o.len + UDP_HLEN;
    let first = pkt.read::<1>(at)?[0];
    // The locators of the inner destination and source, if they are VAs of encap mappings.
    let (d, s, inner_type, v6) = match first >> 4 {
        4 => {
            // SAFETY: checked by `field`.
            let h = unsafe { *pkt.field::<[u8; 20]>(at)? };
            if usize::from(u16::from_be_bytes([h[2], h[3]])) + UDP_HLEN > o.udp_len {
                return Err(Counter::PassMalformed);
            }
            let src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]])];
            let dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]])];
            let (d, s) = (<[u32; 1]>::locator(&dst), <[u32; 1]>::locator(&src));
            (d, s, ETH_P_IP, false)
        }
        6 => {
            // SAFETY: checked by `field`.
            let h = unsafe { *pkt.field::<[u8; 40]>(at)? };
            if 40 + usize::from(u16::from_be_bytes([h[4], h[5]])) + UDP_HLEN > o.udp_len {
                return Err(Counter::PassMalformed);
            }
            let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let src = [word(8), word(12), word(16), word(20)];
            let dst = [word(24), word(28), word(32), word(36)];
            let (d, s) = (<[u32; 4]>::locator(&dst), <[u32; 4]>::locator(&src));
            (d, s, ETH_P_IPV6, true)
        }
        _ => return Err(Counter::PassMalformed),
    };
    let dl = d.map(Loc::of);
    match segment::arrival(dl.as_ref(), s.is_some(), |l| l.is_own(cfg)) {
        Arrival::Pass => Err(Counter::PassMiss),
        Arrival::Decap => {
            // Counted for the destination's mapping, else the source's.
            let m = d.or(s).ok_or(Counter::PassMiss)?;
            record(v6, m.slot, &o);
            let macs = macs(&pkt)?;
            put_eth(&pkt, o.len + UDP_HLEN, &macs, inner_type)?;
            adjust_head(ctx, (o.len + UDP_HLEN) as i32)?;
            Ok(Counter::Decapsulated)
        }
        Arrival::Forward => {
            let to = d.ok_or(Counter::PassMiss)?;
            Ok(forward(&pkt, cfg, &o, to, v6))
        }
    }
}

/// Counts an arriving packet (outer headers `o`) for the mapping whose counter slot is
/// `slot`, of the inner packet's family, by its inner bytes.
#[inline(always)]
fn record(v6: bool, slot: u32, o: &Outer) {
    let bytes = (o.udp_len - UDP_HLEN + ETH_HLEN) as u64;
    if v6 {
        <[u32; 4]>::record(slot, bytes);
    } else {
        <[u32; 1]>::record(slot, bytes);
    }
}

/// Sends an encapsulated packet whose VM moved on to the VM's current locator `to` (its
/// segment entry, as the decision found it), from this node's, once: it leaves with the
/// outer TTL [`FORWARD_TTL`], and one that arrives with that much or less is passed
/// untouched. An outer header of another family than the new locator's cannot be
/// rewritten in place: the packet is passed.
#[inline(never)]
fn forward(pkt: &Packet, cfg: &SegConfig, o: &Outer, to: &Locator, v6: bool) -> Counter {
    Counter::outcome(try_forward(pkt, cfg, o, to, v6))
}

#[inline(always)]
fn try_forward(
    pkt: &Packet,
    cfg: &SegConfig,
    o: &Outer,
    to: &Locator,
    v6: bool,
) -> Result<Counter, Counter> {
    if !segment::forwards(o.ttl) {
        return Err(Counter::PassMiss);
    }
    let slot = to.slot;
    let to = Loc::of(to);
    if to.family != o.family {
        return Err(Counter::PassMiss);
    }
    record(v6, slot, o);
    if to.family == 4 {
        let mut h = pkt.read::<28>(ETH_HLEN)?;
        h[8] = FORWARD_TTL;
        h[10..12].fill(0);
        h[12..16].copy_from_slice(&cfg.own4);
        h[16..20].copy_from_slice(&to.addr[..4]);
        let c = (!fold(segment::sum(&h[..20]))).to_be_bytes();
        h[10..12].copy_from_slice(&c);
        // The UDP checksum, if the sender gave one, covered the old addresses.
        h[26..28].fill(0);
        put(pkt, ETH_HLEN, &h)?;
    } else {
        let mut h = pkt.read::<48>(ETH_HLEN)?;
        h[7] = FORWARD_TTL;
        h[8..24].copy_from_slice(&cfg.own6);
        h[24..40].copy_from_slice(&to.addr);
        h[46..48].fill(0);
        put(pkt, ETH_HLEN, &h)?;
    }
    Ok(Counter::Forwarded)
}
