//! Outcome counters of the datapath: every packet the program sees is counted exactly once.

/// Why a packet was translated or passed untouched. The value is the index in the per-CPU
/// counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IPv4, virtual side: a virtual address was rewritten to its real address.
    V4ToReal = 0,
    /// IPv4, physical side: a real address was rewritten to its virtual address.
    V4ToVirtual = 1,
    /// IPv6, virtual side.
    V6ToReal = 2,
    /// IPv6, physical side.
    V6ToVirtual = 3,
    /// Neither address is in the table.
    PassMiss = 4,
    /// Not IP: ARP, LLDP, an unknown EtherType.
    PassNotIp = 5,
    /// More VLAN tags than the two (802.1ad + 802.1Q) the program walks.
    PassVlanDepth = 6,
    /// The packet ends before its headers or its IP length say it should.
    PassTruncated = 7,
    /// Inconsistent headers: IPv4 IHL below 5, a wrong version, lengths that do not add up,
    /// an L4 or ICMP error header that does not fit in the IP payload.
    PassMalformed = 8,
    /// More IPv6 extension headers than the bounded walk allows.
    PassExtLimit = 9,
    /// A transport protocol netpage does not know, which may checksum the addresses.
    PassUnknownProto = 10,
    /// ICMPv6 neighbour discovery, which belongs to one link and is never translated.
    PassNeighborDiscovery = 11,
}

impl Counter {
    /// Number of counters (the size of the counter array).
    pub const COUNT: u32 = 12;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::V4ToReal,
        Counter::V4ToVirtual,
        Counter::V6ToReal,
        Counter::V6ToVirtual,
        Counter::PassMiss,
        Counter::PassNotIp,
        Counter::PassVlanDepth,
        Counter::PassTruncated,
        Counter::PassMalformed,
        Counter::PassExtLimit,
        Counter::PassUnknownProto,
        Counter::PassNeighborDiscovery,
    ];

    /// A stable name for reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::V4ToReal => "translated_v4_to_real",
            Counter::V4ToVirtual => "translated_v4_to_virtual",
            Counter::V6ToReal => "translated_v6_to_real",
            Counter::V6ToVirtual => "translated_v6_to_virtual",
            Counter::PassMiss => "pass_miss",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassVlanDepth => "pass_vlan_depth",
            Counter::PassTruncated => "pass_truncated",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassExtLimit => "pass_ext_limit",
            Counter::PassUnknownProto => "pass_unknown_proto",
            Counter::PassNeighborDiscovery => "pass_neighbor_discovery",
        }
    }

    /// The counter for a translated packet of the given family and side.
    pub const fn translated(v6: bool, physical: bool) -> Counter {
        match (v6, physical) {
            (false, false) => Counter::V4ToReal,
            (false, true) => Counter::V4ToVirtual,
            (true, false) => Counter::V6ToReal,
            (true, true) => Counter::V6ToVirtual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            for d in &Counter::ALL[..i] {
                assert_ne!(c.name(), d.name());
            }
        }
    }
}
