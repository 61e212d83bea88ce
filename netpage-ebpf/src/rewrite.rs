//! Planned rewrites: an IP header's address pair and the checksums that cover it.
//!
//! Each translation first checks and looks up everything it needs, then writes. Nothing
//! between the first write and the verdict can fail, so a packet is either translated
//! whole or left untouched.

use netpage_common::{
    counters::Counter,
    csum::{Delta, apply, apply_udp},
    forward::{self, Forward},
    proto::L4,
};

use crate::{
    maps::Addr,
    owner::{self, Owned},
    packet::{Packet, Word, get16, put16},
};

/// The source and destination of an IP header, with what each becomes.
///
/// The addresses are moved as 32-bit words, but the packet does not align them (behind a
/// 14-byte Ethernet header they lie 2 bytes off): they are read with `read_unaligned` and
/// written with `write_unaligned`, never through a reference or a plain deref. An
/// unaligned access is assembled from bytes, so each address is read once, at the lookup,
/// where the checksum changes are computed and kept folded (which also leaves the verifier
/// less state to carry through the rest of the translation). The counters need no address:
/// each translation carries its mapping's counter slot.
///
/// An address without a translation "becomes" itself, so the checksum deltas and writes
/// below are branch-free: the verifier then explores one path instead of one per hit/miss
/// combination, and the translations live as copied values rather than map pointers.
pub struct AddrPair<A: Addr> {
    /// The source address, which the destination follows directly (as in both IP
    /// headers): one pointer kept instead of two, 8 bytes less in the frames that hold a
    /// pair (those of an IPv6 translation and of its quote are near the stack limit).
    src: *mut A,
    new_src: A,
    new_dst: A,
    /// The checksum changes of rewriting the source and the destination, folded.
    src_delta: u16,
    dst_delta: u16,
    /// Which addresses hit: [`SRC`] and [`DST`] bits.
    hits: u32,
    /// 1 if the lookup found the packet to be forwarded (see [`AddrPair::forwards`]).
    forwards: u32,
    /// The counter slots of the mappings that translate each address (0 for a miss).
    src_slot: u32,
    dst_slot: u32,
}

/// The source address has a translation.
const SRC: u32 = 1;
/// The destination address has a translation.
const DST: u32 = 2;

impl<A: Owned> AddrPair<A> {
    /// Looks up the source address at `addrs` and the destination right after it (inside
    /// a checked header) on this side.
    ///
    /// With `from`, the index of the port the packet arrived on (the virtual side's own
    /// packets, not a quote), the source is checked first (see [`owner::check`]): a
    /// mapping's address from a port that does not own its VM is `Err(Spoofed)`.
    ///
    /// With `hops`, the TTL or hop limit of a packet that arrived on the physical side
    /// (not a quote), a destination found in R2V is also looked up in V2R by its VA, to
    /// decide whether the packet is to be forwarded ([`AddrPair::forwards`]): one more
    /// lookup per packet whose destination is in R2V. The decision is taken here, in the
    /// branch of the hit, so that the rest of the translation sees one path.
    #[inline(always)]
    pub fn lookup<const PHYSICAL: bool>(
        addrs: *mut [A; 2],
        from: Option<u32>,
        hops: Option<u8>,
    ) -> Result<Self, Counter> {
        let src = addrs.cast::<A>();
        // SAFETY: both addresses lie inside a header checked by `Packet::field`.
        let (old_src, old_dst) = unsafe { (src.read_unaligned(), src.add(1).read_unaligned()) };
        let mut hits = 0;
        let (mut src_slot, mut dst_slot) = (0, 0);
        let new_src = match A::translate::<PHYSICAL>(&old_src) {
            Some(e) => {
                hits |= SRC;
                src_slot = e.slot;
                e.addr
            }
            None => old_src,
        };
        if let Some(ingress) = from {
            owner::check(&old_src, hits & SRC != 0, ingress)?;
        }
        let mut forwards = 0;
        let new_dst = match A::translate::<PHYSICAL>(&old_dst) {
            Some(e) => {
                hits |= DST;
                dst_slot = e.slot;
                if let Some(ttl) = hops
                    && forward_to::<A, true>(&old_dst, &e.addr, ttl).is_some()
                {
                    forwards = 1;
                }
                e.addr
            }
            None => old_dst,
        };
        // Otherwise LLVM may test `hits` as the OR of the two lookup results: arithmetic
        // on pointers, which the verifier refuses.
        // SAFETY: reads a local.
        let hits = unsafe { core::ptr::read_volatile(&hits) };
        Ok(Self {
            src,
            src_delta: A::delta(&old_src, &new_src).folded(),
            dst_delta: A::delta(&old_dst, &new_dst).folded(),
            new_src,
            new_dst,
            hits,
            forwards,
            src_slot,
            dst_slot,
        })
    }

    /// Whether either address is in the table.
    #[inline(always)]
    pub fn is_hit(&self) -> bool {
        self.hits != 0
    }

    /// Whether the lookup found the packet to be forwarded: its destination is a real
    /// address that drains (in the drain map; R2V maps it to a VA that V2R maps to
    /// another real address) and `forward::decide` says so for its TTL.
    #[inline(always)]
    pub fn forwards(&self) -> bool {
        self.forwards != 0
    }

    /// Turns the pair into a forward if the packet of TTL or hop limit `ttl` is to be
    /// forwarded (`forward_to`, V2R looked up afresh): the destination becomes the current
    /// real address, the source stays as it is (the packet stays in the network of real
    /// addresses), and only the destination's mapping counts it. Returns whether it did;
    /// the caller then sets the TTL to `forward::FORWARD_TTL`.
    #[inline(always)]
    pub fn forward(&mut self, ttl: u8) -> bool {
        if self.hits & DST == 0 {
            return false;
        }
        // SAFETY: both addresses lie inside a checked header, not yet written.
        let (old_src, old_dst) =
            unsafe { (self.src.read_unaligned(), self.src.add(1).read_unaligned()) };
        // `new_dst` is the destination's VA. The drain was found by the lookup: a drain
        // that ends in between (a microsecond) forwards this one packet still.
        let Some(current) = forward_to::<A, false>(&old_dst, &self.new_dst, ttl) else {
            return false;
        };
        self.new_src = old_src;
        self.src_delta = 0;
        self.dst_delta = A::delta(&old_dst, &current).folded();
        self.new_dst = current;
        self.hits = DST;
        true
    }

    /// The checksum change of rewriting the source.
    #[inline(always)]
    pub fn src_delta(&self) -> Delta {
        Delta::from_folded(self.src_delta)
    }

    /// The checksum change of rewriting both addresses.
    #[inline(always)]
    pub fn delta(&self) -> Delta {
        self.src_delta().add(Delta::from_folded(self.dst_delta))
    }

    /// Counts a packet of `bytes` for each mapping that translates it, in the counter slot
    /// its table entry carries.
    #[inline(always)]
    pub fn record(&self, bytes: u64) {
        if self.hits & SRC != 0 {
            A::record(self.src_slot, bytes);
        }
        if self.hits & DST != 0 {
            A::record(self.dst_slot, bytes);
        }
    }

    /// Rewrites both addresses (an address without translation is rewritten to itself).
    #[inline(always)]
    pub fn write(&self) {
        // SAFETY: both pointers lie inside a checked header.
        unsafe {
            self.src.write_unaligned(self.new_src);
            self.src.add(1).write_unaligned(self.new_dst);
        }
    }
}

/// The current real address of `va` if a packet of TTL or hop limit `ttl` for `dst`, a
/// real address that R2V maps to `va`, is to be forwarded there (`forward::decide`): one
/// lookup of V2R, and, with `DRAIN`, of the drain map when V2R names another address.
#[inline(always)]
fn forward_to<A: Addr, const DRAIN: bool>(dst: &A, va: &A, ttl: u8) -> Option<A> {
    let current = A::translate::<false>(va)?.addr;
    let draining = || !DRAIN || A::draining(dst);
    (forward::decide(dst, Some(&current), ttl, draining) == Forward::Forward).then_some(current)
}

/// The checksum field of a transport header of kind `kind` at `l4`, if netpage keeps it
/// valid and it lies before `end`.
#[inline(always)]
pub fn check_field(pkt: &Packet, kind: L4, l4: usize, end: usize) -> Result<Option<Word>, Counter> {
    // One arm per constant offset: a pointer whose offset is chosen at run time would be
    // computed in a way the verifier cannot bound (see `L4::check_offset`).
    match kind {
        L4::Tcp => word_at::<16>(pkt, l4, end),
        L4::Udp => word_at::<6>(pkt, l4, end),
        L4::Icmp4Error | L4::Icmp6 | L4::Icmp6Error => word_at::<2>(pkt, l4, end),
        L4::Unknown | L4::Opaque | L4::NeighborDiscovery => Ok(None),
    }
}

/// The 16-bit word at `l4 + OFF`, if it lies before `end`.
#[inline(always)]
fn word_at<const OFF: usize>(pkt: &Packet, l4: usize, end: usize) -> Result<Option<Word>, Counter> {
    if l4 + OFF + 2 > end {
        return Ok(None);
    }
    pkt.field::<[u8; 2]>(l4 + OFF).map(Some)
}

/// Applies the change of the addresses (`pseudo`, where the checksum covers a
/// pseudo-header) and of an ICMP error's quote (`body`) to the transport checksum at `p`.
///
/// Under tc the pseudo-header's part goes through the kernel ([`Packet::replace_pseudo`]),
/// so that a packet whose checksum is left to the device (CHECKSUM_PARTIAL, GSO) comes
/// out right. A quote's change is applied here: ICMP errors are never offloaded, and the
/// change nets to zero in the packet's sum. This is the last write of a translation.
#[inline(always)]
pub fn fix_transport<const TC: bool>(pkt: &Packet, p: Word, kind: L4, pseudo: Delta, body: Delta) {
    if TC && kind.has_pseudo_header() {
        if !body.is_zero() {
            fix_check(p, kind, body);
        }
        pkt.replace_pseudo(p, pseudo, kind == L4::Udp);
    } else {
        fix_check(p, kind, kind.transport_delta(pseudo, body));
    }
}

/// Applies `d` to the checksum at `p` by the rules of `kind`, and returns the change of
/// the checksum word itself (for a checksum that covers this one).
#[inline(always)]
pub fn fix_check(p: Word, kind: L4, d: Delta) -> Delta {
    let old = get16(p);
    let new = if kind == L4::Udp {
        apply_udp(old, d)
    } else {
        apply(old, d)
    };
    put16(p, new);
    Delta::ZERO.word(old, new)
}
