//! Moving the packet's bytes, the one thing the two hooks do differently: room for new
//! headers, outer headers taken off, a packet cut short. Under XDP the head of the frame
//! moves (`bpf_xdp_adjust_head`), so the old bytes keep their place relative to the new
//! start; under tc the kernel inserts or removes bytes behind the Ethernet header
//! (`bpf_skb_adjust_room` with `BPF_ADJ_ROOM_MAC`), which stays at the start.
//!
//! Every packet pointer is invalid after a helper here: each returns the packet afresh.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_DECAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4,
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::{
        bpf_skb_adjust_room, bpf_skb_change_tail, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
};
use netpage_common::{counters::Counter, proto::ETH_P_IPV6};

use super::{Ctx, headers::put_eth};
use crate::packet::Packet;

/// What is asked of the kernel when room is made (under tc).
#[derive(Clone, Copy)]
pub enum Room {
    /// Outer headers of the encapsulation, of IPv6 if `v6`, then UDP.
    Tunnel { v6: bool },
    /// Headers of an answer, with nothing more to tell.
    Plain,
}

/// Makes `len` bytes of room behind the Ethernet header (whose MAC addresses it returns,
/// the EtherType being the new headers' to write). Under tc, for a tunnel, the kernel
/// records the inner headers where they were and marks the packet as encapsulated in UDP
/// (`skb->encapsulation`, `SKB_GSO_UDP_TUNNEL`), and switches `skb->protocol` to the outer
/// family (net/core/filter.c, `bpf_skb_net_grow`). A GSO packet keeps its segment size
/// (`BPF_F_ADJ_ROOM_FIXED_GSO`): the sender's segments are tunnelled as they are, the
/// caller having checked that they fit, as it checks a packet that is not GSO; without the
/// flag the kernel would shrink them by `len`, so that the inner packets are cut smaller
/// than their sender made them, out of its sight (and a UDP GSO packet, whose segment size
/// delimits its datagrams, would be refused).
#[inline(always)]
pub fn open<const TC: bool>(
    ctx: Ctx,
    len: usize,
    room: Room,
) -> Result<(Packet, [u8; 12]), Counter> {
    if TC {
        let flags = match room {
            Room::Tunnel { v6 } => {
                let l3 = if v6 {
                    BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
                } else {
                    BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
                };
                l3 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_FIXED_GSO
            }
            Room::Plain => 0,
        };
        // SAFETY: `ctx` is this tc invocation's socket buffer.
        let r = unsafe {
            bpf_skb_adjust_room(ctx.cast(), len as i32, BPF_ADJ_ROOM_MAC, u64::from(flags))
        };
        // A GSO packet of another transport than TCP or UDP, or one encapsulated already
        // (-ENOTSUPP, -EALREADY), goes on untouched.
        if r != 0 {
            return Err(Counter::PassMiss);
        }
        let pkt = Packet::of_ctx::<true>(ctx);
        let macs = pkt.read::<12>(0)?;
        Ok((pkt, macs))
    } else {
        // SAFETY: `ctx` is this XDP invocation's context.
        if unsafe { bpf_xdp_adjust_head(ctx.cast(), -(len as i32)) } != 0 {
            return Err(Counter::PassMiss);
        }
        let pkt = Packet::of_ctx::<false>(ctx);
        let macs = pkt.read::<12>(len)?;
        Ok((pkt, macs))
    }
}

/// Takes off the `len` bytes of outer headers behind the Ethernet header, whose EtherType
/// becomes `ethertype` (the inner packet's). Under tc the kernel keeps a GSO packet's
/// segment size (the sender's, as [`open`] kept it), and is told when the inner family is
/// not the outer one (`BPF_F_ADJ_ROOM_DECAP_L3_*`), to switch `skb->protocol` and check
/// the remaining length against the inner header's.
#[inline(always)]
pub fn close<const TC: bool>(
    ctx: Ctx,
    len: usize,
    ethertype: u16,
    family_changes: bool,
) -> Result<(), Counter> {
    let pkt = Packet::of_ctx::<TC>(ctx);
    let macs = pkt.read::<12>(0)?;
    if TC {
        let decap = match (family_changes, ethertype) {
            (false, _) => 0,
            (true, ETH_P_IPV6) => BPF_F_ADJ_ROOM_DECAP_L3_IPV6,
            (true, _) => BPF_F_ADJ_ROOM_DECAP_L3_IPV4,
        };
        let flags = u64::from(decap | BPF_F_ADJ_ROOM_FIXED_GSO);
        // SAFETY: `ctx` is this tc invocation's socket buffer.
        if unsafe { bpf_skb_adjust_room(ctx.cast(), -(len as i32), BPF_ADJ_ROOM_MAC, flags) } != 0 {
            return Err(Counter::PassMiss);
        }
        put_eth(&Packet::of_ctx::<true>(ctx), 0, &macs, ethertype)
    } else {
        put_eth(&pkt, len, &macs, ethertype)?;
        // SAFETY: `ctx` is this XDP invocation's context.
        if unsafe { bpf_xdp_adjust_head(ctx.cast(), len as i32) } != 0 {
            return Err(Counter::PassMiss);
        }
        Ok(())
    }
}

/// Cuts the packet to `len` bytes (from the Ethernet header on). Under tc the kernel also
/// makes it a packet of its own (no longer GSO, `skb_gso_reset`) and linear.
#[inline(always)]
pub fn cut<const TC: bool>(ctx: Ctx, len: usize) -> Result<(), Counter> {
    let pkt = Packet::of_ctx::<TC>(ctx);
    if !pkt.holds::<TC>(len) {
        return Err(Counter::PassTruncated);
    }
    let r = if TC {
        // SAFETY: `ctx` is this tc invocation's socket buffer.
        unsafe { bpf_skb_change_tail(ctx.cast(), len as u32, 0) }
    } else {
        let have = pkt.len();
        // SAFETY: `ctx` is this XDP invocation's context.
        unsafe { bpf_xdp_adjust_tail(ctx.cast(), -((have - len) as i32)) }
    };
    if r != 0 {
        return Err(Counter::PassMiss);
    }
    Ok(())
}
