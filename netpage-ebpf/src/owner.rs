//! Which port of the node owns each VM: the source check of the virtual side.
//!
//! User space records, at `attach --vm`, the index of the VM's port (its tap) under the
//! VM's virtual address. The virtual side accepts a mapping's address as a source only
//! from that port; the decision itself is `netpage_common::source`.

use aya_ebpf::{macros::map, maps::HashMap};
use netpage_common::{counters::Counter, maps::DEFAULT_CAPACITY, source::Source};

use crate::maps::Addr;

/// IPv4 owners: virtual address -> index of the port of this node that owns the VM.
#[map(name = "NP_OWNER4")]
static OWNER4: HashMap<[u32; 1], u32> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// IPv6 owners: virtual address -> index of the port of this node that owns the VM.
#[map(name = "NP_OWNER6")]
static OWNER6: HashMap<[u32; 4], u32> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// An address of one family with its owner map.
pub trait Owned: Addr {
    /// The index of the port that owns the VM of virtual address `va`, if one does.
    fn owner(va: &Self) -> Option<u32>;
}

impl Owned for [u32; 1] {
    #[inline(always)]
    fn owner(va: &Self) -> Option<u32> {
        // SAFETY: the value is copied out at once (RCU keeps it readable meanwhile).
        unsafe { OWNER4.get(va).copied() }
    }
}

impl Owned for [u32; 4] {
    #[inline(always)]
    fn owner(va: &Self) -> Option<u32> {
        // SAFETY: as above.
        unsafe { OWNER6.get(va).copied() }
    }
}

/// Checks the source `src` of a packet that arrived on port `ingress` of the virtual side;
/// `is_va` says whether it is in V2R (already looked up). Costs one lookup of the owner
/// for a virtual address, one of R2V for any other source, and one more of the owner for
/// a real address.
#[inline(always)]
pub fn check<A: Owned>(src: &A, is_va: bool, ingress: u32) -> Result<(), Counter> {
    let va = if is_va {
        Some(src)
    } else {
        A::translate::<true>(src).map(|e| &e.addr)
    };
    let source = match va {
        Some(va) => Source::Mapped {
            owner: A::owner(va),
        },
        None => Source::Foreign,
    };
    source.verdict(ingress)
}
