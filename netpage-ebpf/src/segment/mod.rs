//! Segmentation (see `netpage_common::segment`), at the XDP hook and at the tc hook alike:
//! on the virtual side a packet for the VA of an `encap` mapping is put inside outer
//! headers to its VM's locator, or answered "too big" when it would not fit; on the
//! physical side an encapsulated packet for one of the node's locators loses its outer
//! headers, or, if its VM moved, is sent on to the new locator, once.
//!
//! It runs only for packets the page table missed, and only on a node that has a locator:
//! a paging-only node pays one array load per missed packet.
//!
//! The decisions and the headers written are the same at both hooks; only the moving of
//! the packet's bytes differs (`room`). Under tc the packet may be a GSO packet or carry a
//! checksum left to the device (CHECKSUM_PARTIAL): the kernel's helper that makes room for
//! the outer headers also marks the socket buffer as a UDP tunnel, so that the inner
//! packet's checksum and segmentation are still done right behind the outer headers.

mod answer;
mod arrive;
mod depart;
mod headers;
mod room;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use netpage_common::{
    counters::Counter,
    maps::DEFAULT_CAPACITY,
    proto::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
    segment::{self, Locator, SegConfig},
};

use crate::{owner::Owned, packet::Packet};

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

/// The invocation's context: a socket buffer if `TC`, else an `xdp_md`.
type Ctx = *mut core::ffi::c_void;

/// What the segment step did with a packet the page table missed, on this side, at the
/// tc hook if `TC`, else at XDP.
// A BPF-to-BPF call of its own, from the top, which takes the context only: the packet
// moves (room is made or taken), so every pointer is derived here afresh.
#[inline(never)]
pub fn step<const TC: bool, const PHYSICAL: bool>(ctx: Ctx, cfg: &SegConfig) -> Counter {
    if PHYSICAL {
        return arrive::arrive::<TC>(ctx, cfg);
    }
    match Packet::of_ctx::<TC>(ctx).be16(ETH_HLEN - 2) {
        Ok(ETH_P_IP) => depart::depart4::<TC>(ctx, cfg),
        Ok(ETH_P_IPV6) => depart::depart6::<TC>(ctx, cfg),
        _ => Counter::PassMiss,
    }
}
