//! The netpage XDP program: translates between virtual and real addresses at a network edge.
//!
//! One program per side. On the virtual side (clients, VMs) addresses found in the page
//! table V2R are rewritten to their real addresses; on the physical side addresses found in
//! the inverse table R2V are rewritten back. Every packet is passed to the kernel
//! (`XDP_PASS`), translated or untouched, and counted by outcome; on an interface attached
//! with the fast path, a translated packet whose route is a plain forward is sent out of
//! its egress interface by the program instead (`XDP_REDIRECT`).
#![no_std]
#![no_main]

mod fastpath;
mod icmp;
mod ipv4;
mod ipv6;
mod maps;
mod packet;
mod rewrite;

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use netpage_common::{
    counters::Counter,
    proto::{ETH_P_IP, ETH_P_IPV6},
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

#[inline(always)]
fn run<const PHYSICAL: bool>(ctx: &XdpContext) -> u32 {
    let pkt = Packet::new(ctx);
    let outcome = Counter::outcome(translate::<PHYSICAL>(&pkt));
    maps::count(outcome);
    // Untranslated packets go on as they were: the fast path is for translated ones only.
    if outcome.is_translated() && maps::fast_path_in_use() {
        return fastpath::forward(ctx.ctx);
    }
    // A transparent translator never drops: whatever it does not understand goes on as is.
    XDP_PASS
}

#[inline(always)]
fn translate<const PHYSICAL: bool>(pkt: &Packet) -> Result<Counter, Counter> {
    let (l3, ethertype) = pkt.skip_l2()?;
    // One verifier path for every VLAN depth, rather than one per depth.
    let l3 = packet::settle(l3)?;
    match ethertype {
        ETH_P_IP => Ok(ipv4::translate::<PHYSICAL>(pkt, l3)),
        ETH_P_IPV6 => Ok(ipv6::translate::<PHYSICAL>(pkt, l3)),
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
