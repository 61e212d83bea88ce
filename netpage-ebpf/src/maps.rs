//! The page tables, their inverse, and the counters, as the program sees them.
//!
//! Capacities here are defaults; user space sets the real table size at load time.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::map,
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
};
use netpage_common::{
    counters::Counter,
    csum::Delta,
    maps::{
        Addr4, Addr6, DEFAULT_CAPACITY, DrainEntry, DrainKey, Entry4, Entry6, IfaceName,
        IfaceRecord, MAX_IFACES, MappingStats, PortRecord,
    },
};

// Addresses are held as 32-bit words in memory order (the bytes as on the wire), so the
// program moves them with word loads and stores. The layout is that of `Addr4`/`Addr6`
// and of the entries `Entry4`/`Entry6`, which user space writes.
const _: () = assert!(core::mem::size_of::<[u32; 1]>() == core::mem::size_of::<Addr4>());
const _: () = assert!(core::mem::size_of::<[u32; 4]>() == core::mem::size_of::<Addr6>());
const _: () = assert!(core::mem::size_of::<Entry<[u32; 1]>>() == core::mem::size_of::<Entry4>());
const _: () = assert!(core::mem::size_of::<Entry<[u32; 4]>>() == core::mem::size_of::<Entry6>());

/// A page table's value: the translated address and the mapping's counter slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Entry<A> {
    pub addr: A,
    pub slot: u32,
}

/// IPv4 page table: virtual address -> real address and counter slot.
#[map(name = "NP_V2R4")]
static V2R4: HashMap<[u32; 1], Entry<[u32; 1]>> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// IPv4 inverse page table: real address -> virtual address and counter slot.
#[map(name = "NP_R2V4")]
static R2V4: HashMap<[u32; 1], Entry<[u32; 1]>> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// IPv6 page table: virtual address -> real address and counter slot.
#[map(name = "NP_V2R6")]
static V2R6: HashMap<[u32; 4], Entry<[u32; 4]>> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// IPv6 inverse page table: real address -> virtual address and counter slot.
#[map(name = "NP_R2V6")]
static R2V6: HashMap<[u32; 4], Entry<[u32; 4]>> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// Per-mapping traffic of IPv4 mappings, indexed by the slot their table entries carry
/// (an array lookup, which the verifier inlines). User space zeroes a slot when it gives
/// it to a mapping.
#[map(name = "NP_SLOTSTATS4")]
static STATS4: PerCpuArray<MappingStats> = PerCpuArray::with_max_entries(DEFAULT_CAPACITY, 0);

/// Per-mapping traffic of IPv6 mappings, indexed by slot.
#[map(name = "NP_SLOTSTATS6")]
static STATS6: PerCpuArray<MappingStats> = PerCpuArray::with_max_entries(DEFAULT_CAPACITY, 0);

/// Outcome counters, one slot per [`Counter`] (and free slots for counters to come).
#[map(name = "NP_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::SLOTS, 0);

/// The node's attached interfaces, with side and mode. Only user space reads it; it lives
/// here so that it is pinned with the tables.
#[map(name = "NP_IFACES")]
static IFACES: HashMap<IfaceName, IfaceRecord> = HashMap::with_max_entries(MAX_IFACES, 0);

/// The node's attached interfaces by index: whether translated packets arriving there take
/// the fast path, their MAC address and XDP mode. User space fills it at attach.
#[map(name = "NP_PORTS")]
static PORTS: HashMap<u32, PortRecord> = HashMap::with_max_entries(MAX_IFACES, 0);

/// How many attached interfaces have the fast path on (one slot; user space keeps it).
#[map(name = "NP_FAST")]
static FAST: Array<u32> = Array::with_max_entries(1, 0);

/// Whether any interface of the node has the fast path on. An array lookup of a constant
/// key, which the verifier turns into a direct load: the price a node without the fast
/// path pays per translated packet, instead of a hash lookup of the port.
#[inline(always)]
pub fn fast_path_in_use() -> bool {
    FAST.get(0).is_some_and(|n| *n != 0)
}

/// The port record of the interface with index `ifindex`, if netpage is attached there.
#[inline(always)]
pub fn port(ifindex: u32) -> Option<PortRecord> {
    // SAFETY: the value is copied out at once (RCU keeps it readable meanwhile).
    unsafe { PORTS.get(ifindex).copied() }
}

/// The interfaces that take frames redirected from native XDP, keyed by interface index:
/// the attached interfaces whose driver transmits XDP frames. User space keeps it at every
/// attach and detach.
#[map(name = "NP_DEVMAP")]
static DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_IFACES, 0);

/// Redirects the frame to the interface with index `ifindex` if the device map has it;
/// false (and nothing set) if not, and the frame is the kernel's to forward.
#[inline(always)]
pub fn redirect(ifindex: u32) -> bool {
    // A miss returns the action in the flags' lower bits: XDP_PASS, never XDP_REDIRECT.
    DEVMAP.redirect(ifindex, u64::from(XDP_PASS)).is_ok()
}

/// Real addresses draining after a switch, with their deadline: the program forwards
/// packets for the real addresses it holds (see `netpage_common::forward`).
#[map(name = "NP_DRAINS")]
static DRAINS: HashMap<DrainKey, DrainEntry> = HashMap::with_max_entries(DEFAULT_CAPACITY, 0);

/// Counts one packet's outcome.
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *p += 1 };
    }
}

/// An address of one family, as 32-bit words: its page tables and per-mapping counters.
pub trait Addr: Copy + PartialEq + 'static {
    /// The translation of `addr` on the given side, with its mapping's counter slot, if
    /// the table has one.
    fn translate<const PHYSICAL: bool>(addr: &Self) -> Option<&'static Entry<Self>>;
    /// The checksum change of rewriting `old` to `new`.
    fn delta(old: &Self, new: &Self) -> Delta;
    /// Adds a packet of `bytes` to the mapping whose counter slot is `slot`.
    fn record(slot: u32, bytes: u64);
    /// Whether the node records the real address `ra` as draining.
    fn draining(ra: &Self) -> bool;
}

#[inline(always)]
fn bump(s: Option<*mut MappingStats>, bytes: u64) {
    if let Some(s) = s {
        // SAFETY: per-CPU value, no concurrent writer.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}

/// Implements [`Addr`] for one family's words, tables and stats.
macro_rules! impl_addr {
    ($words:literal, $family:literal, $v2r:ident, $r2v:ident, $stats:ident) => {
        impl Addr for [u32; $words] {
            #[inline(always)]
            fn translate<const PHYSICAL: bool>(addr: &Self) -> Option<&'static Entry<Self>> {
                let table = if PHYSICAL { &$r2v } else { &$v2r };
                // SAFETY: a hash map value stays readable for the rest of this program run
                // (RCU); a concurrent update replaces the element rather than writing into it.
                unsafe { table.get(addr) }
            }

            #[inline(always)]
            fn delta(old: &Self, new: &Self) -> Delta {
                let mut d = Delta::ZERO;
                for i in 0..$words {
                    d = d.word32(u32::from_be(old[i]), u32::from_be(new[i]));
                }
                d
            }

            #[inline(always)]
            fn record(slot: u32, bytes: u64) {
                bump($stats.get_ptr_mut(slot), bytes);
            }

            // A BPF-to-BPF call that returns a plain scalar: the verifier goes on from
            // its two results rather than from every path of the key's making, inside
            // the lookup's frame (which the translation's limit has no room for).
            #[inline(never)]
            fn draining(ra: &Self) -> bool {
                // The key's address is laid out as `DrainKey::real`: the address's bytes
                // as on the wire, then zeros.
                let mut words = [0u32; 4];
                words[..$words].copy_from_slice(ra);
                // SAFETY: integers to bytes of the same size, no padding either way.
                let real = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) };
                let key = DrainKey {
                    family: $family,
                    real,
                };
                // SAFETY: only whether there is a value is read.
                unsafe { DRAINS.get(&key) }.is_some()
            }
        }
    };
}

impl_addr!(1, 4, V2R4, R2V4, STATS4);
impl_addr!(4, 6, V2R6, R2V6, STATS6);
