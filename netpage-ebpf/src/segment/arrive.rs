//! The physical side: an encapsulated packet for one of the node's locators loses its
//! outer headers if it is for (or from) a VM of the segment tables, or, if its VM moved,
//! is sent on to the new locator, once; forwarded already, it is opened where the VM's
//! port is.

use netpage_common::{
    counters::Counter,
    csum::fold,
    forward::FORWARD_TTL,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP},
    segment::{self, Arrival, Arriving, GUE_PORT, Locator, SegConfig, UDP_HLEN},
};

use super::{Ctx, Loc, Segmented, headers::put, room};
use crate::{maps::Addr, owner::Owned, packet::Packet};

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
fn outer<const TC: bool>(pkt: &Packet, cfg: &SegConfig) -> Result<Outer, Counter> {
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
    if udp_len < UDP_HLEN + 20 || !pkt.holds::<TC>(ETH_HLEN + len + udp_len) {
        return Err(Counter::PassMalformed);
    }
    Ok(Outer {
        len,
        family,
        ttl,
        udp_len,
    })
}

/// Decapsulates, forwards or passes an arriving packet.
#[inline(never)]
pub fn arrive<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Counter {
    Counter::outcome(try_arrive::<TC>(ctx, cfg))
}

#[inline(always)]
fn try_arrive<const TC: bool>(ctx: Ctx, cfg: &SegConfig) -> Result<Counter, Counter> {
    let pkt = Packet::of_ctx::<TC>(ctx);
    let o = outer::<TC>(&pkt, cfg)?;
    let forwarded = !segment::forwards(o.ttl);
    let at = ETH_HLEN + o.len + UDP_HLEN;
    let first = pkt.read::<1>(at)?[0];
    // The locators of the inner destination and source, if they are VAs of encap mappings,
    // and, for a packet forwarded already, whether a port here owns the destination's VM
    // (looked up only then).
    let (d, s, port_here, inner_type, v6) = match first >> 4 {
        4 => {
            // SAFETY: checked by `field`.
            let h = unsafe { *pkt.field::<[u8; 20]>(at)? };
            if usize::from(u16::from_be_bytes([h[2], h[3]])) + UDP_HLEN > o.udp_len {
                return Err(Counter::PassMalformed);
            }
            let src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]])];
            let dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]])];
            let (d, s) = (<[u32; 1]>::locator(&dst), <[u32; 1]>::locator(&src));
            let port_here = forwarded && <[u32; 1]>::owner(&dst).is_some();
            (d, s, port_here, ETH_P_IP, false)
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
            let port_here = forwarded && <[u32; 4]>::owner(&dst).is_some();
            (d, s, port_here, ETH_P_IPV6, true)
        }
        _ => return Err(Counter::PassMalformed),
    };
    let dl = d.map(Loc::of);
    let arriving = Arriving {
        dst_at: dl.as_ref(),
        from_vm: s.is_some(),
        forwarded,
        port_here,
    };
    match segment::arrival(arriving, |l| l.is_own(cfg)) {
        Arrival::Pass => Err(Counter::PassMiss),
        Arrival::Decap => {
            // Counted for the destination's mapping, else the source's.
            let m = d.or(s).ok_or(Counter::PassMiss)?;
            record(v6, m.slot, &o);
            let family_changes = v6 != (o.family == 6);
            room::close::<TC>(ctx, o.len + UDP_HLEN, inner_type, family_changes)?;
            Ok(Counter::Decapsulated)
        }
        Arrival::Forward => {
            let to = d.ok_or(Counter::PassMiss)?;
            Ok(forward(&pkt, &o, to, v6))
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
/// segment entry, as the decision found it), once: it leaves with the outer TTL
/// [`FORWARD_TTL`], and the decision never forwards one that arrives with that much or
/// less. Only the outer destination changes: the outer source stays the sender's, since
/// the kernel, routing the packet on, drops one whose source is an address of its own
/// node as a martian. An outer header of another family than the new locator's cannot be
/// rewritten in place: the packet is passed. The outer headers are rewritten where they
/// lie, at either hook.
#[inline(never)]
fn forward(pkt: &Packet, o: &Outer, to: &Locator, v6: bool) -> Counter {
    Counter::outcome(try_forward(pkt, o, to, v6))
}

#[inline(always)]
fn try_forward(pkt: &Packet, o: &Outer, to: &Locator, v6: bool) -> Result<Counter, Counter> {
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
        h[16..20].copy_from_slice(&to.addr[..4]);
        let c = (!fold(segment::sum(&h[..20]))).to_be_bytes();
        h[10..12].copy_from_slice(&c);
        // The UDP checksum, if the sender gave one, covered the old addresses.
        h[26..28].fill(0);
        put(pkt, ETH_HLEN, &h)?;
    } else {
        let mut h = pkt.read::<48>(ETH_HLEN)?;
        h[7] = FORWARD_TTL;
        h[24..40].copy_from_slice(&to.addr);
        h[46..48].fill(0);
        put(pkt, ETH_HLEN, &h)?;
    }
    Ok(Counter::Forwarded)
}
