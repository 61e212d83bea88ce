//! Forwarding of packets in flight to a real address that drains: the decision, and the
//! mark that keeps a packet from being forwarded twice.
//!
//! After a switch the old site's node keeps the old real address (RA) in R2V for the drain
//! period, and its V2R already names the new one. A packet that arrives on its physical
//! side for the old RA was sent before the sender learnt of the move: rather than
//! translate it to the virtual address (VA) of a VM that is gone, the node rewrites its
//! destination to the VA's current RA and routes it on, the source left as it is. Every
//! checksum over the destination follows, as for any translation.
//!
//! Only an RA that the node records as draining (its drain map, written by the switch) is
//! forwarded from. R2V and V2R alone cannot tell a drain from the moment of a switch when
//! the new RA's reverse entry is in and V2R still names the old one: the new site would
//! then send the VM's packets back to where it was.
//!
//! **At most once.** A check of the node's own tables cannot stop a loop: two nodes whose
//! V2R point at each other's RA each see a perfectly ordinary drain, and would hand a
//! packet back and forth. So a forwarded packet is marked on the wire, in the one field
//! that every router already changes: its TTL (IPv4) or hop limit (IPv6). A packet is
//! forwarded only if it arrives with more than [`FORWARD_TTL`], and leaves with exactly
//! [`FORWARD_TTL`] (the kernel or the fast path then takes one more off). Routers and
//! netpage itself only ever lower the field, so every node the packet reaches afterwards
//! sees at most [`FORWARD_TTL`] and translates it as usual instead: whatever the tables
//! say, on however many nodes, a packet is forwarded at most once.
//!
//! The cost: a packet that arrives at the old site with a TTL of [`FORWARD_TTL`] or less
//! (a sender that starts low, or a path of more hops than `255 - FORWARD_TTL`) is not
//! forwarded, but translated as it was before forwarding existed; a forwarded packet
//! reaches the VM with a TTL of at most [`FORWARD_TTL`] minus the hops from the old site
//! to the new one (which a TTL security check, RFC 5082, would refuse); and the guarantee
//! assumes that nothing on the physical network raises a TTL.

use crate::csum::Delta;

/// The TTL (IPv4) or hop limit (IPv6) a forwarded packet leaves the forwarding node's
/// program with: enough for any data center's diameter; a packet that arrives with this
/// much or less is never forwarded.
pub const FORWARD_TTL: u8 = 32;

/// What becomes of a packet whose destination the physical side found in R2V.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// Translate it to the virtual address, as usual: its VM is here (V2R maps the VA to
    /// this destination), the VA is not mapped, or the packet was forwarded already.
    Translate,
    /// Rewrite the destination to the VA's current real address and route it on.
    Forward,
}

/// Decides for a packet arriving on the physical side, with TTL or hop limit `ttl`, for
/// `dst`, a real address that R2V maps to a VA whose current real address in V2R is
/// `current` (`None`: the VA is not mapped); `draining` says whether the node records
/// `dst` as draining, and is asked last (a lookup the common case does not pay).
#[inline(always)]
pub fn decide<A: PartialEq>(
    dst: &A,
    current: Option<&A>,
    ttl: u8,
    draining: impl FnOnce() -> bool,
) -> Forward {
    match current {
        Some(c) if c != dst && ttl > FORWARD_TTL && draining() => Forward::Forward,
        _ => Forward::Translate,
    }
}

/// The change of the IPv4 header checksum when the TTL goes from `ttl` to
/// [`FORWARD_TTL`]: TTL and protocol are one 16-bit word of the header.
pub const fn ttl_delta(ttl: u8, proto: u8) -> Delta {
    Delta::ZERO.word(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([FORWARD_TTL, proto]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::apply;

    const OLD: [u8; 4] = [192, 0, 2, 10];
    const NEW: [u8; 4] = [198, 51, 100, 20];

    const DRAINING: fn() -> bool = || true;

    #[test]
    fn forwards_only_a_moved_vm_with_hops_to_spare() {
        assert_eq!(decide(&OLD, Some(&NEW), 64, DRAINING), Forward::Forward);
        let just = decide(&OLD, Some(&NEW), FORWARD_TTL + 1, DRAINING);
        assert_eq!(just, Forward::Forward);
        assert_eq!(decide(&OLD, Some(&NEW), 255, DRAINING), Forward::Forward);
        // The VM is here: the destination is its current address.
        assert_eq!(decide(&OLD, Some(&OLD), 64, DRAINING), Forward::Translate);
        // The VA is not mapped: nowhere to forward to.
        assert_eq!(decide(&OLD, None, 64, DRAINING), Forward::Translate);
        // Forwarded once already (or sent with few hops): never again.
        for ttl in 0..=FORWARD_TTL {
            let d = decide(&OLD, Some(&NEW), ttl, DRAINING);
            assert_eq!(d, Forward::Translate, "{ttl}");
        }
        // Not draining: the new site between its reverse entry and its V2R update.
        assert_eq!(decide(&OLD, Some(&NEW), 64, || false), Forward::Translate);
    }

    /// The drain map is asked only when everything else says forward.
    #[test]
    fn the_drain_is_looked_up_last() {
        let asked = core::cell::Cell::new(0);
        let ask = || {
            asked.set(asked.get() + 1);
            true
        };
        let _ = decide(&OLD, Some(&OLD), 64, ask);
        let _ = decide(&OLD, None, 64, ask);
        let _ = decide(&OLD, Some(&NEW), 1, ask);
        assert_eq!(asked.get(), 0);
        let _ = decide(&OLD, Some(&NEW), 64, ask);
        assert_eq!(asked.get(), 1);
    }

    /// Two nodes whose V2R point at each other's real address: the packet is forwarded by
    /// the first, whatever its TTL, and by no node after it, however many hops apart.
    #[test]
    fn a_ping_pong_table_forwards_once() {
        for start in 0..=255u8 {
            for hops in 0..4u8 {
                let (mut dst, mut ttl, mut forwards) = (OLD, start, 0);
                for _ in 0..64 {
                    let current = if dst == OLD { NEW } else { OLD };
                    if decide(&dst, Some(&current), ttl, DRAINING) == Forward::Forward {
                        forwards += 1;
                        dst = current;
                        ttl = FORWARD_TTL;
                    }
                    // The routers on the way, the last one of which may be the node itself.
                    ttl = ttl.saturating_sub(hops);
                }
                assert!(forwards <= 1, "start {start}, hops {hops}: {forwards}");
                assert_eq!(forwards == 1, start > FORWARD_TTL, "start {start}");
            }
        }
    }

    use crate::csum::reference::ipv4_header as full;

    #[test]
    fn ttl_change_matches_full_recomputation() {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5,
        ];
        for ttl in FORWARD_TTL + 1..=255 {
            for proto in [1u8, 6, 17, 0, 255] {
                h[8] = ttl;
                h[9] = proto;
                let c = full(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                let got = apply(c, ttl_delta(ttl, proto));
                h[8] = FORWARD_TTL;
                let want = full(&h);
                assert!(
                    got == want || (got | want == 0xFFFF && got & want == 0),
                    "ttl {ttl} proto {proto}: {got:#06x} vs {want:#06x}"
                );
            }
        }
    }
}
