//! The optional fast path: a translated (or encapsulated, or decapsulated) packet whose
//! route is a plain forward leaves through its egress interface from here
//! (`XDP_REDIRECT`), without the kernel's stack.
//!
//! An interface takes the fast path when its port record has [`PORT_FAST_PATH`]; user space sets that
//! at attach time. Why a map and not a program per choice: both programs carry this code
//! and the verifier checks it once per program, whereas two more programs would double
//! the verifier time of a node's first attach, and turning the fast path on or off is then
//! one map update, atomic on its own, with no program to swap.
//!
//! From native XDP the frame goes through the device map, which holds the attached
//! interfaces that take XDP frames: a miss (an egress without `ndo_xdp_xmit`, such as a
//! veth whose peer has neither XDP nor GRO, where a redirect would be dropped) leaves the
//! packet to the kernel, counted. From skb mode the kernel transmits a redirected frame
//! through its generic path, which any interface takes: there any attached egress will do.
//!
//! Anything but a plain forward goes to the kernel as before (`XDP_PASS`), so correctness
//! never depends on this path (see `netpage_common::fastpath` for the rules).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup,
        xdp_action::{XDP_PASS, XDP_REDIRECT},
        xdp_md,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use netpage_common::{
    counters::Counter,
    csum::apply,
    fastpath::{
        AF_INET, AF_INET6, IPV4_PLAIN_VIHL, IPV6_HOP_BY_HOP, fib_outcome, hops_left,
        ipv4_forwardable, ipv6_flowinfo, ipv6_forwardable, ttl_delta,
    },
    maps::{PORT_FAST_PATH, PORT_SKB},
    proto::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_CHECK, IPV4_MIN_HLEN, IPV4_TTL, IPV6_HLEN,
        IPV6_HOP_LIMIT,
    },
};

use crate::{
    maps,
    packet::{Packet, Word, get16, put16, sub},
};

/// Forwards the translated packet itself if the interface it arrived on has the fast path
/// and its route is a plain forward; returns the verdict.
// A BPF-to-BPF call: its own stack frame for the 64-byte lookup parameters. It takes the
// context only and reads the packet bounds afresh: the caller's packet pointers carry the
// ranges that each translation path proved, and if they were used here the verifier would
// explore this function once per such range instead of pruning equal states at the call.
#[inline(never)]
pub fn forward(ctx: *mut xdp_md) -> u32 {
    let pkt = &Packet::xdp(&XdpContext::new(ctx));
    // SAFETY: `ctx` is the program's context.
    let ingress = unsafe { (*ctx).ingress_ifindex };
    let Some(port) = maps::port(ingress) else {
        return XDP_PASS;
    };
    if port.flags & PORT_FAST_PATH == 0 {
        return XDP_PASS;
    }
    match try_forward(ctx, pkt, ingress, &port.mac, port.flags & PORT_SKB != 0) {
        Ok(()) => {
            maps::count(Counter::FastRedirected);
            XDP_REDIRECT
        }
        Err(c) => {
            maps::count(c);
            XDP_PASS
        }
    }
}

/// Looks up the route and, for a plain forward to an egress that takes the frame, sets the
/// redirect and rewrites the Ethernet addresses and the TTL or hop limit (`skb`: the
/// program runs in skb mode). Returns why the packet stays with the kernel otherwise;
/// nothing is written unless every check passed.
#[inline(always)]
fn try_forward(
    ctx: *mut xdp_md,
    pkt: &Packet,
    ingress: u32,
    mac: &[u8; 6],
    skb: bool,
) -> Result<(), Counter> {
    let eth = pkt
        .field::<[u8; ETH_HLEN]>(0)
        .map_err(|_| Counter::FastError)?;
    // SAFETY: `eth` was bounds-checked for the whole Ethernet header.
    let e = unsafe { &mut *eth };
    // The kernel forwards only frames addressed to the interface (PACKET_HOST).
    if e[0..6] != mac[..] {
        return Err(Counter::FastIneligible);
    }
    // SAFETY: all-zero bytes are a valid lookup request (and a zero `mark`).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.ifindex = ingress;
    // The IP header right after the Ethernet header: a VLAN tag's EtherType is neither.
    let ethertype = u16::from_be_bytes([e[12], e[13]]);
    // Where the TTL or hop limit is, and the IPv4 header checksum that covers it.
    let (ttl_at, check, proto): (*mut u8, Option<Word>, u8) = if ethertype == ETH_P_IP {
        let h = pkt
            .field::<[u8; IPV4_MIN_HLEN]>(ETH_HLEN)
            .map_err(|_| Counter::FastError)?;
        // SAFETY: `h` was bounds-checked for 20 bytes.
        let b = unsafe { &*h };
        if b[0] != IPV4_PLAIN_VIHL || !ipv4_forwardable(b[12], b[16]) {
            return Err(Counter::FastIneligible);
        }
        p.family = AF_INET;
        p.l4_protocol = b[9];
        p.__bindgen_anon_1.tot_len = u16::from_be_bytes([b[2], b[3]]);
        p.__bindgen_anon_2.tos = b[1];
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
        (
            sub::<u8, IPV4_MIN_HLEN, IPV4_TTL>(h),
            Some(sub::<[u8; 2], IPV4_MIN_HLEN, IPV4_CHECK>(h)),
            b[9],
        )
    } else if ethertype == ETH_P_IPV6 {
        let h = pkt
            .field::<[u8; IPV6_HLEN]>(ETH_HLEN)
            .map_err(|_| Counter::FastError)?;
        // SAFETY: `h` was bounds-checked for 40 bytes.
        let b = unsafe { &*h };
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if b[6] == IPV6_HOP_BY_HOP
            || !ipv6_forwardable(u32::from_be_bytes(word(8)), u32::from_be_bytes(word(24)))
        {
            return Err(Counter::FastIneligible);
        }
        p.family = AF_INET6;
        p.l4_protocol = b[6];
        p.__bindgen_anon_1.tot_len =
            (IPV6_HLEN as u16).wrapping_add(u16::from_be_bytes([b[4], b[5]]));
        p.__bindgen_anon_2.flowinfo = u32::from_ne_bytes(ipv6_flowinfo(word(0)));
        let mut src = [0u32; 4];
        let mut dst = [0u32; 4];
        for i in 0..4 {
            src[i] = u32::from_ne_bytes(word(8 + 4 * i));
            dst[i] = u32::from_ne_bytes(word(24 + 4 * i));
        }
        p.__bindgen_anon_3.ipv6_src = src;
        p.__bindgen_anon_4.ipv6_dst = dst;
        (sub::<u8, IPV6_HLEN, IPV6_HOP_LIMIT>(h), None, 0)
    } else {
        return Err(Counter::FastIneligible);
    };
    // SAFETY: `ttl_at` lies inside a checked header.
    let ttl = unsafe { *ttl_at };
    if !hops_left(ttl) {
        return Err(Counter::FastTtl);
    }
    // SAFETY: `ctx` is the program's context and `p` a lookup request of the size given.
    let rc = unsafe {
        fib_lookup(
            ctx.cast(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    let outcome = fib_outcome(rc);
    if outcome != Counter::FastRedirected {
        return Err(outcome);
    }
    // Back out of the ingress interface: the kernel would also send an ICMP redirect.
    if p.ifindex == ingress {
        return Err(Counter::FastIneligible);
    }
    if skb {
        if maps::port(p.ifindex).is_none() {
            return Err(Counter::FastEgress);
        }
        // SAFETY: a helper call with plain values; it returns XDP_REDIRECT.
        unsafe { bpf_redirect(p.ifindex, 0) };
    } else if !maps::redirect(p.ifindex) {
        // Only a packet that falls back pays for telling why.
        return Err(if maps::port(p.ifindex).is_some() {
            Counter::FastNoXdpXmit
        } else {
            Counter::FastEgress
        });
    }

    // Every check passed: from here on nothing fails. (Neither the lookup nor the redirect
    // helper changes the packet, so the checked pointers stay valid; the redirect happens
    // once the program returns.)
    e[0..6].copy_from_slice(&p.dmac);
    e[6..12].copy_from_slice(&p.smac);
    let next = ttl.wrapping_sub(1);
    // SAFETY: `ttl_at` lies inside a checked header.
    unsafe { *ttl_at = next };
    if let Some(check) = check {
        put16(check, apply(get16(check), ttl_delta(ttl, proto)));
    }
    Ok(())
}
