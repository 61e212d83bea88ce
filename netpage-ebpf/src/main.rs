//! The netpage programs: translate between virtual and real addresses at a network edge.
//!
//! One program per side and hook. On the virtual side (clients, VMs) addresses found in
//! the page table V2R are rewritten to their real addresses; on the physical side addresses
//! found in the inverse table R2V are rewritten back. Every packet goes on, translated or
//! untouched, and is counted by outcome, but one: on the virtual side, a packet whose
//! source is a mapping's address (virtual or real) is dropped, as spoofed, unless it
//! arrived on the port that owns the VM (see `owner`).
//!
//! The XDP programs run before the kernel builds a socket buffer: the fastest hook, but
//! blind to checksum offload. On an interface attached with the fast path, a translated
//! packet whose route is a plain forward is sent out of its egress interface by the
//! program itself (`XDP_REDIRECT`). The tc programs run on the socket buffer, where a
//! checksum left to the device (CHECKSUM_PARTIAL) or a GSO packet is visible, and fix the
//! transport checksum through the kernel's helper: the hook for guests and senders with
//! offloads on. Both run the same translation.
#![no_std]
#![no_main]

mod fastpath;
mod icmp;
mod ipv4;
mod ipv6;
mod maps;
mod owner;
mod packet;
mod rewrite;
mod segment;
mod trace;

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT, TC_ACT_UNSPEC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use netpage_common::{
    counters::Counter,
    proto::{ETH_P_IP, ETH_P_IPV6},
    trace::{VERDICT_DROP, VERDICT_PASS, xdp_verdict},
};

use crate::packet::Packet;

/// Interfaces facing clients or VMs, which speak virtual addresses.
#[xdp]
pub fn netpage_virtual(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

/// Interfaces facing the network of real addresses.
#[xdp]
pub fn netpage_physical(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

/// Interfaces facing clients or VMs, under tc.
#[classifier]
pub fn netpage_tc_virtual(ctx: TcContext) -> i32 {
    run_tc::<false>(&ctx)
}

/// Interfaces facing the network of real addresses, under tc.
#[classifier]
pub fn netpage_tc_physical(ctx: TcContext) -> i32 {
    run_tc::<true>(&ctx)
}

#[inline(always)]
fn run_tc<const PHYSICAL: bool>(ctx: &TcContext) -> i32 {
    let trace = trace::config();
    let pkt = Packet::tc(ctx);
    // After the pull: the trace reads the headers where the translation reads them.
    if trace::armed(trace) {
        trace::before::<true, PHYSICAL>(ctx.skb.skb.cast());
    }
    let mut outcome = Counter::outcome(translate::<true, PHYSICAL>(&pkt));
    // What the page table missed may be the segment tables' (a node with a locator).
    if outcome == Counter::PassMiss
        && let Some(cfg) = segment::config()
    {
        outcome = segment::step::<true, PHYSICAL>(ctx.skb.skb.cast(), cfg);
    }
    maps::count(outcome);
    // The next program on the interface, if any, or the kernel: a transparent translator
    // drops nothing but spoofed sources.
    let (action, verdict) = if outcome.is_dropped() {
        (TC_ACT_SHOT, VERDICT_DROP)
    } else {
        (TC_ACT_UNSPEC, VERDICT_PASS)
    };
    if trace::armed(trace) {
        trace::after::<true>(ctx.skb.skb.cast(), outcome as u32, verdict);
    }
    action
}

#[inline(always)]
fn run<const PHYSICAL: bool>(ctx: &XdpContext) -> u32 {
    let trace = trace::config();
    if trace::armed(trace) {
        trace::before::<false, PHYSICAL>(ctx.ctx.cast());
    }
    let pkt = Packet::xdp(ctx);
    let mut outcome = Counter::outcome(translate::<false, PHYSICAL>(&pkt));
    // What the page table missed may be the segment tables' (a node with a locator).
    if outcome == Counter::PassMiss
        && let Some(cfg) = segment::config()
    {
        outcome = segment::step::<false, PHYSICAL>(ctx.ctx.cast(), cfg);
    }
    maps::count(outcome);
    let action = verdict(ctx, outcome);
    if trace::armed(trace) {
        trace::after::<false>(ctx.ctx.cast(), outcome as u32, xdp_verdict(action));
    }
    action
}

#[inline(always)]
fn verdict(ctx: &XdpContext, outcome: Counter) -> u32 {
    // Untouched packets go on as they were: the fast path is for translated, encapsulated
    // and decapsulated ones only.
    if outcome.takes_fast_path() && maps::fast_path_in_use() {
        return fastpath::forward(ctx.ctx);
    }
    if outcome.is_dropped() {
        return XDP_DROP;
    }
    // A transparent translator drops nothing else: whatever it does not understand goes on
    // as is.
    XDP_PASS
}

#[inline(always)]
fn translate<const TC: bool, const PHYSICAL: bool>(pkt: &Packet) -> Result<Counter, Counter> {
    let (l3, ethertype) = pkt.skip_l2()?;
    // One verifier path for every VLAN depth, rather than one per depth.
    let l3 = packet::settle(l3)?;
    match ethertype {
        // A miss on the physical side may still be an ICMP error whose quote is mapped; a
        // packet for a real address that drains is forwarded (the translation said so and
        // wrote nothing).
        ETH_P_IP => Ok(match ipv4::translate::<TC, PHYSICAL>(pkt, l3) {
            Counter::PassMiss if PHYSICAL => ipv4::quote_only(pkt, l3),
            Counter::Forwarded if PHYSICAL => ipv4::forward::<TC>(pkt, l3),
            c => c,
        }),
        ETH_P_IPV6 => Ok(match ipv6::translate::<TC, PHYSICAL>(pkt, l3) {
            Counter::PassMiss if PHYSICAL => ipv6::quote_only(pkt, l3),
            Counter::Forwarded if PHYSICAL => ipv6::forward::<TC>(pkt, l3),
            c => c,
        }),
        _ => Err(Counter::PassNotIp),
    }
}

// Only for the BPF target: host builds (clippy) link std, which has its own.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
