//! Map names, key/value layouts and sizes shared by the XDP program and user space.
//!
//! Every type is `#[repr(C)]` with no implicit padding; compile-time size checks keep the
//! kernel and user layouts in step.

/// An IPv4 address in network byte order: the key of the IPv4 page tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr4 {
    pub octets: [u8; 4],
}

/// An IPv6 address in network byte order: the key of the IPv6 page tables.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr6 {
    pub octets: [u8; 16],
}

/// The value of the IPv4 page tables: the address the key translates to, and the counter
/// slot of the mapping (the index of its [`MappingStats`] in [`SLOT_STATS4`]). V2R and R2V
/// entries of one mapping carry the same slot, so that the program counts a packet without
/// another lookup by address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry4 {
    pub addr: Addr4,
    pub slot: u32,
}

/// The value of the IPv6 page tables: the address and the mapping's counter slot (in
/// [`SLOT_STATS6`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry6 {
    pub addr: Addr6,
    pub slot: u32,
}

/// Traffic translated for one mapping, kept per CPU in the slot its table entries name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingStats {
    /// Packets in which this mapping's address was rewritten (source or destination).
    pub packets: u64,
    /// Bytes of those packets, from the Ethernet header to the end of the IP packet.
    pub bytes: u64,
}

/// An interface name, NUL-padded as in `IFNAMSIZ`: the key of the interface registry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceName {
    pub bytes: [u8; 16],
}

/// How an interface of the node is attached: the value of the interface registry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceRecord {
    /// [`SIDE_VIRTUAL`] or [`SIDE_PHYSICAL`].
    pub side: u32,
    /// [`MODE_NATIVE`], [`MODE_SKB`] or [`MODE_TC`].
    pub mode: u32,
    /// [`PORT_FAST_PATH`] if translated packets are forwarded by the program itself.
    pub flags: u32,
    /// The interface index when it was attached: the key of its [`PortRecord`].
    pub ifindex: u32,
}

/// What the program does on an attached interface: the value of the port map, keyed by
/// interface index, the only name of an interface the program knows.
///
/// Every attached interface has one. The fast path reads the record of the interface a
/// packet arrived on; where it may send the packet out is the device map's business
/// ([`DEVMAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRecord {
    /// [`PORT_FAST_PATH`] or 0.
    pub flags: u32,
    /// The interface's MAC address when it was attached: the fast path forwards only frames
    /// addressed to it, as the kernel forwards only frames for the host.
    pub mac: [u8; 6],
    /// Zero; makes the size a multiple of the alignment without implicit padding.
    pub reserved: [u8; 2],
}

/// Flag of [`PortRecord::flags`] and [`IfaceRecord::flags`]: after translating a packet,
/// look up its route and, for a plain forward, rewrite the Ethernet header and redirect it
/// to the egress interface instead of passing it to the kernel.
pub const PORT_FAST_PATH: u32 = 1;

/// Flag of [`IfaceRecord::flags`] (user space only): the hook was asked for, not chosen by
/// `attach --hook auto`.
pub const IFACE_HOOK_ASKED: u32 = 2;

/// Flag of [`PortRecord::flags`]: the interface's XDP program runs in skb (generic) mode.
/// A frame redirected from there leaves through the kernel's generic transmit path, which
/// every interface takes, so the fast path redirects it to any attached interface rather
/// than only to those of the device map.
pub const PORT_SKB: u32 = 4;

impl PortRecord {
    /// Whether the fast path is on for this port.
    pub const fn fast_path(&self) -> bool {
        self.flags & PORT_FAST_PATH != 0
    }
}

/// The value of [`FAST_PORTS`] for a node's ports: how many have the fast path on.
pub fn fast_port_count(ports: impl IntoIterator<Item = PortRecord>) -> u32 {
    ports.into_iter().filter(PortRecord::fast_path).count() as u32
}

/// [`IfaceRecord::side`] of an interface facing clients or VMs.
pub const SIDE_VIRTUAL: u32 = 0;
/// [`IfaceRecord::side`] of an interface facing the network of real addresses.
pub const SIDE_PHYSICAL: u32 = 1;
/// [`IfaceRecord::mode`] of a program run by the driver.
pub const MODE_NATIVE: u32 = 1;
/// [`IfaceRecord::mode`] of a program run by the generic (skb) path.
pub const MODE_SKB: u32 = 2;
/// [`IfaceRecord::mode`] of a tc program (a tcx link on ingress).
pub const MODE_TC: u32 = 3;

/// A real address that left the page table and is kept in R2V for a grace period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DrainKey {
    /// 4 or 6.
    pub family: u32,
    /// The real address; an IPv4 address fills the first 4 bytes, the rest are zero.
    pub real: [u8; 16],
}

/// Until when a draining real address keeps translating to its virtual address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainEntry {
    /// The virtual address, laid out like [`DrainKey::real`].
    pub virt: [u8; 16],
    /// Milliseconds since the Unix epoch after which the reverse entry may be removed.
    pub deadline_ms: u64,
}

/// The value of the device map as this build writes it (`struct bpf_devmap_val`): the
/// interface index, and the file descriptor of a program to run at egress (none: 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevmapValue {
    pub ifindex: u32,
    pub prog_fd: u32,
}

/// Whether an interface with these xdp-features (`NETDEV_XDP_ACT_*`, as the kernel reports
/// them through the netdev generic netlink family) takes frames redirected from native
/// XDP: it needs `NETDEV_XDP_ACT_NDO_XMIT`, else the kernel drops them.
pub const fn takes_xdp_frames(xdp_features: u64) -> bool {
    xdp_features & NETDEV_XDP_ACT_NDO_XMIT != 0
}

/// `NETDEV_XDP_ACT_NDO_XMIT` (include/uapi/linux/netdev.h): the driver implements
/// `ndo_xdp_xmit`, so frames can be redirected to it.
pub const NETDEV_XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const _: () = assert!(core::mem::size_of::<IfaceName>() == 16);
const _: () = assert!(core::mem::size_of::<DevmapValue>() == 8);
const _: () = assert!(core::mem::size_of::<IfaceRecord>() == 16);
const _: () = assert!(core::mem::size_of::<PortRecord>() == 12);
const _: () = assert!(core::mem::size_of::<DrainKey>() == 20);
const _: () = assert!(core::mem::size_of::<DrainEntry>() == 24);
const _: () = assert!(core::mem::size_of::<Addr4>() == 4);
const _: () = assert!(core::mem::size_of::<Addr6>() == 16);
const _: () = assert!(core::mem::size_of::<MappingStats>() == 16);
const _: () = assert!(core::mem::size_of::<Entry4>() == 8);
const _: () = assert!(core::mem::size_of::<Entry6>() == 20);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain byte arrays and integers, `repr(C)`, no padding (checked above).
    unsafe impl aya::Pod for super::Addr4 {}
    unsafe impl aya::Pod for super::Addr6 {}
    unsafe impl aya::Pod for super::Entry4 {}
    unsafe impl aya::Pod for super::Entry6 {}
    unsafe impl aya::Pod for super::MappingStats {}
    unsafe impl aya::Pod for super::IfaceName {}
    unsafe impl aya::Pod for super::IfaceRecord {}
    unsafe impl aya::Pod for super::PortRecord {}
    unsafe impl aya::Pod for super::DrainKey {}
    unsafe impl aya::Pod for super::DrainEntry {}
    unsafe impl aya::Pod for super::DevmapValue {}
    unsafe impl aya::Pod for crate::segment::Locator {}
    unsafe impl aya::Pod for crate::segment::SegConfig {}
}

/// IPv4 page table: virtual address -> real address.
pub const V2R4: &str = "NP_V2R4";
/// IPv4 inverse page table: real address -> virtual address.
pub const R2V4: &str = "NP_R2V4";
/// IPv6 page table: virtual address -> real address.
pub const V2R6: &str = "NP_V2R6";
/// IPv6 inverse page table: real address -> virtual address.
pub const R2V6: &str = "NP_R2V6";
/// Per-mapping traffic of IPv4 mappings, per CPU, indexed by the slot of the mapping's
/// table entries.
pub const SLOT_STATS4: &str = "NP_SLOTSTATS4";
/// Per-mapping traffic of IPv6 mappings, per CPU, indexed by slot.
pub const SLOT_STATS6: &str = "NP_SLOTSTATS6";
/// The per-mapping counters of older builds, hash maps keyed by virtual address: a node
/// that has them is upgraded at its next attach, which removes them.
pub const OLD_STATS: [&str; 2] = ["NP_STATS4", "NP_STATS6"];
/// The page tables of a node, whose values older builds laid out without a slot.
pub const TABLES: [&str; 4] = [V2R4, R2V4, V2R6, R2V6];
/// Per-CPU outcome counters, indexed by [`crate::counters::Counter`].
pub const COUNTERS: &str = "NP_COUNTERS";

/// The node's attached interfaces and how each is attached (user space only).
pub const IFACES: &str = "NP_IFACES";
/// The node's attached interfaces by index, with what the program does there.
pub const PORTS: &str = "NP_PORTS";
/// Real addresses kept in R2V after a switch until their drain deadline (user space only).
pub const DRAINS: &str = "NP_DRAINS";
/// One slot: how many attached interfaces have the fast path on. The program looks a port
/// up only when it is not 0, so a node without the fast path does not pay for it.
pub const FAST_PORTS: &str = "NP_FAST";
/// The interfaces the fast path may redirect frames to from native XDP, keyed by interface
/// index (a `BPF_MAP_TYPE_DEVMAP_HASH`): the attached interfaces that take XDP frames. A
/// miss leaves the packet to the kernel.
pub const DEVMAP: &str = "NP_DEVMAP";

/// IPv4 owners: virtual address -> index of the port of this node that owns the VM (its
/// tap), the only port its addresses are accepted from as a source.
pub const OWNER4: &str = "NP_OWNER4";
/// IPv6 owners: virtual address -> index of the port that owns the VM.
pub const OWNER6: &str = "NP_OWNER6";

/// The trace's configuration (one slot, a [`crate::trace::TraceConfig`]): the one thing
/// the programs read per packet for tracing while it is off.
pub const TRACE: &str = "NP_TRACE";
/// What the trace selects: VMs by virtual address, interfaces by index
/// ([`crate::trace::TraceKey`]).
pub const TRACE_SEL: &str = "NP_TRACE_SEL";
/// The trace's state per CPU: rate window, events sent and lost, the event in the making.
pub const TRACE_CPU: &str = "NP_TRACE_CPU";
/// The ring buffer that carries trace events to `netpage trace`.
pub const TRACE_EVENTS: &str = "NP_TRACE_EVENTS";

/// IPv4 segment table: virtual address of an `encap` mapping -> the locator of the node
/// that hosts its VM, with the mapping's counter slot ([`crate::segment::Locator`]).
pub const SEG4: &str = "NP_SEG4";
/// IPv6 segment table: virtual address -> locator.
pub const SEG6: &str = "NP_SEG6";
/// The node's segmentation settings (one slot, a [`crate::segment::SegConfig`]): its own
/// locators, the default locator, the tunnel MTU.
pub const SEG_CONFIG: &str = "NP_SEGCFG";

/// Every map of the object: all are pinned, so the node's state outlives the process.
pub const ALL_MAPS: [&str; 21] = [
    V2R4,
    R2V4,
    V2R6,
    R2V6,
    SLOT_STATS4,
    SLOT_STATS6,
    COUNTERS,
    IFACES,
    PORTS,
    DRAINS,
    FAST_PORTS,
    DEVMAP,
    OWNER4,
    OWNER6,
    TRACE,
    TRACE_SEL,
    TRACE_CPU,
    TRACE_EVENTS,
    SEG4,
    SEG6,
    SEG_CONFIG,
];

/// Maps that an older build's node lacks and without which its programs would let
/// through what this build stops: `attach` creates them and keeps the table; until then
/// other commands refuse the node.
pub const NEWER_MAPS: [&str; 2] = [OWNER4, OWNER6];

/// Maps that older builds did not have: a node without them gets them, empty, at its next
/// attach (which loads this build's programs over them); until then its older programs
/// run without them.
pub const ADDED_MAPS: [&str; 8] = [
    DEVMAP,
    TRACE,
    TRACE_SEL,
    TRACE_CPU,
    TRACE_EVENTS,
    SEG4,
    SEG6,
    SEG_CONFIG,
];

/// The maps of `netpage trace`: a node that lacks them must be attached again to trace.
pub const TRACE_MAPS: [&str; 4] = [TRACE, TRACE_SEL, TRACE_CPU, TRACE_EVENTS];

/// How this build lays out one map: key and value sizes and, for maps whose size does not
/// follow the table's capacity, the number of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: Option<u32>,
}

const fn layout<K, V>(name: &'static str, max_entries: Option<u32>) -> Layout {
    Layout {
        name,
        key_size: core::mem::size_of::<K>() as u32,
        value_size: core::mem::size_of::<V>() as u32,
        max_entries,
    }
}

/// The layout of every map in [`ALL_MAPS`] order. A pinned map that differs was made by
/// another build of netpage, whose program must not be mixed with this one's.
pub const LAYOUTS: [Layout; 21] = [
    layout::<Addr4, Entry4>(V2R4, None),
    layout::<Addr4, Entry4>(R2V4, None),
    layout::<Addr6, Entry6>(V2R6, None),
    layout::<Addr6, Entry6>(R2V6, None),
    layout::<u32, MappingStats>(SLOT_STATS4, None),
    layout::<u32, MappingStats>(SLOT_STATS6, None),
    layout::<u32, u64>(COUNTERS, Some(crate::counters::Counter::SLOTS)),
    layout::<IfaceName, IfaceRecord>(IFACES, Some(MAX_IFACES)),
    layout::<u32, PortRecord>(PORTS, Some(MAX_IFACES)),
    layout::<DrainKey, DrainEntry>(DRAINS, None),
    layout::<u32, u32>(FAST_PORTS, Some(1)),
    layout::<u32, DevmapValue>(DEVMAP, Some(MAX_IFACES)),
    layout::<Addr4, u32>(OWNER4, None),
    layout::<Addr6, u32>(OWNER6, None),
    layout::<u32, crate::trace::TraceConfig>(TRACE, Some(1)),
    layout::<crate::trace::TraceKey, u32>(TRACE_SEL, Some(MAX_TRACE_SEL)),
    layout::<u32, crate::trace::TraceCpu>(TRACE_CPU, Some(1)),
    layout::<(), ()>(TRACE_EVENTS, Some(crate::trace::RING_BYTES)),
    layout::<Addr4, crate::segment::Locator>(SEG4, None),
    layout::<Addr6, crate::segment::Locator>(SEG6, None),
    layout::<u32, crate::segment::SegConfig>(SEG_CONFIG, Some(1)),
];

/// Capacity of the trace's selection (VMs and interfaces together).
pub const MAX_TRACE_SEL: u32 = 1024;

/// Maps whose capacity is the table size chosen at load time.
pub const SIZED_MAPS: [&str; 11] = [
    V2R4,
    R2V4,
    V2R6,
    R2V6,
    SLOT_STATS4,
    SLOT_STATS6,
    DRAINS,
    OWNER4,
    OWNER6,
    SEG4,
    SEG6,
];

/// The value size of an older build's page table of `map` (the address alone, no slot).
pub const fn old_table_value_size(map: &str) -> u32 {
    match map.as_bytes() {
        b"NP_V2R4" | b"NP_R2V4" => core::mem::size_of::<Addr4>() as u32,
        _ => core::mem::size_of::<Addr6>() as u32,
    }
}

/// Capacity of the interface registry.
pub const MAX_IFACES: u32 = 256;

/// Default capacity of each page table (entries per family and direction).
pub const DEFAULT_CAPACITY: u32 = 65_536;

/// The XDP program for interfaces on the virtual side (clients, VMs): VA -> RA.
pub const PROG_VIRTUAL: &str = "netpage_virtual";
/// The XDP program for interfaces on the physical side (the real network): RA -> VA.
pub const PROG_PHYSICAL: &str = "netpage_physical";
/// The tc program for interfaces on the virtual side.
pub const PROG_TC_VIRTUAL: &str = "netpage_tc_virtual";
/// The tc program for interfaces on the physical side.
pub const PROG_TC_PHYSICAL: &str = "netpage_tc_physical";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_its_layout() {
        for (l, name) in LAYOUTS.iter().zip(ALL_MAPS) {
            assert_eq!(l.name, name);
        }
        for name in ADDED_MAPS {
            assert!(ALL_MAPS.contains(&name));
        }
        assert!(takes_xdp_frames(0x7F) && takes_xdp_frames(NETDEV_XDP_ACT_NDO_XMIT));
        // BASIC, REDIRECT and RX_SG: a veth whose peer has neither XDP nor GRO.
        assert!(!takes_xdp_frames(0x23));
        for name in SIZED_MAPS {
            let l = LAYOUTS.iter().find(|l| l.name == name).unwrap();
            assert_eq!(l.max_entries, None, "{name} follows the table's capacity");
        }
    }
}
