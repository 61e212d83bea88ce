//! Outcome counters of the datapath: every packet the program sees is counted exactly once
//! by outcome (`translated_*`, `forwarded`, `pass_*`, or `dropped_spoofed`, the one outcome
//! whose packet is dropped).
//!
//! The fast-path counters (`fast_*`) are a second dimension: on an interface attached with
//! the fast path, every translated packet is counted once more, as redirected or as fallen
//! back to the kernel (by reason). A redirected packet is still counted as translated.

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
    /// More IPv6 extension headers than the bounded walk allows, or a destination options
    /// header longer than the walk scans for a home address option (40 bytes, 8 options).
    PassExtLimit = 9,
    /// A transport protocol netpage does not know, which may checksum the addresses.
    PassUnknownProto = 10,
    /// ICMPv6 neighbour discovery, which belongs to one link and is never translated.
    PassNeighborDiscovery = 11,
    /// An IPv4 loose or strict source route with hops left: the transport pseudo-header
    /// holds the final destination from the option, not the header's destination.
    PassSourceRoute = 12,
    /// An ICMP or ICMPv6 error whose own addresses are not in the table but whose quoted
    /// packet's are (a router inside the network tells a client about its packet to a real
    /// address): the quote and the checksum over it were translated.
    QuoteOnly = 13,
    /// Fast path: forwarded by the program itself (`XDP_REDIRECT` to the FIB's egress).
    FastRedirected = 14,
    /// Fast path, left to the kernel: the next hop's neighbour entry is not resolved.
    FastNoNeigh = 15,
    /// Fast path, left to the kernel: not a forward (local delivery, broadcast, blackhole,
    /// unreachable, prohibited, forwarding disabled on the ingress interface).
    FastNotForwarded = 16,
    /// Fast path, left to the kernel: larger than the egress MTU.
    FastFragNeeded = 17,
    /// Fast path, left to the kernel: TTL or hop limit at most 1 (the kernel answers with
    /// ICMP time exceeded).
    FastTtl = 18,
    /// Fast path, left to the kernel: a frame the kernel's forwarding path has more to do
    /// for (VLAN tags, IPv4 options, an IPv6 hop-by-hop header, a frame not addressed to
    /// the interface, special addresses, a route back out of the ingress interface).
    FastIneligible = 19,
    /// Fast path, left to the kernel: netpage is not attached to the egress interface.
    FastEgress = 20,
    /// Fast path, left to the kernel: the lookup failed otherwise (an error, an unsupported
    /// route type).
    FastError = 21,
    /// Virtual side: the source is a mapping's address (its virtual or its real address)
    /// and the packet did not arrive on the port that owns the VM (see
    /// [`crate::source`]). The one packet the program drops.
    Spoofed = 22,
    /// Fast path, left to the kernel: netpage is attached to the egress interface, but it
    /// cannot take frames redirected from native XDP (its driver has no `ndo_xdp_xmit`, or
    /// it is a veth whose peer has neither an XDP program nor GRO on), so it is not in the
    /// device map. Redirected anyway, the frame would be dropped.
    FastNoXdpXmit = 23,
    /// An IPv6 destination options header with a Mobile IPv6 home address option (RFC 6275
    /// 6.3): the transport pseudo-header holds the home address, not the header's source.
    PassHomeAddress = 24,
    /// Physical side: the destination is a real address that drains (R2V still has it,
    /// V2R maps its VA to another), and the packet was rewritten to the current real
    /// address and routed on (see [`crate::forward`]); or an encapsulated packet's VM
    /// moved, and its outer destination was rewritten to the new locator (see
    /// [`crate::segment`]). Counted instead of a translation.
    Forwarded = 25,
    /// Virtual side: the destination is the VA of an `encap` mapping (or the source is, and
    /// the destination is not a VM: its default locator), and the packet was put inside
    /// outer headers to the VM's locator (see [`crate::segment`]).
    Encapsulated = 26,
    /// Physical side: an encapsulated packet for one of the node's locators whose inner
    /// packet is for a VM here (or from a VM where the table says it is) lost its outer
    /// headers.
    Decapsulated = 27,
    /// Virtual side: a packet to encapsulate did not fit the tunnel MTU and could not be
    /// fragmented; the program turned it into the answer "fragmentation needed" or "packet
    /// too big" to its sender, which the kernel routes back.
    AnsweredTooBig = 28,
}

const _: () = assert!(Counter::COUNT <= Counter::SLOTS);

impl Counter {
    /// Number of counters.
    pub const COUNT: u32 = 29;

    /// Slots of the counter array: room for counters added later, which take the next
    /// free indices, so that a node's pinned array keeps its layout across upgrades.
    pub const SLOTS: u32 = 64;

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
        Counter::PassSourceRoute,
        Counter::QuoteOnly,
        Counter::FastRedirected,
        Counter::FastNoNeigh,
        Counter::FastNotForwarded,
        Counter::FastFragNeeded,
        Counter::FastTtl,
        Counter::FastIneligible,
        Counter::FastEgress,
        Counter::FastError,
        Counter::Spoofed,
        Counter::FastNoXdpXmit,
        Counter::PassHomeAddress,
        Counter::Forwarded,
        Counter::Encapsulated,
        Counter::Decapsulated,
        Counter::AnsweredTooBig,
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
            Counter::PassSourceRoute => "pass_source_route",
            Counter::QuoteOnly => "translated_icmp_quote_only",
            Counter::FastRedirected => "fast_redirected",
            Counter::FastNoNeigh => "fast_fallback_no_neigh",
            Counter::FastNotForwarded => "fast_fallback_not_forwarded",
            Counter::FastFragNeeded => "fast_fallback_frag_needed",
            Counter::FastTtl => "fast_fallback_ttl",
            Counter::FastIneligible => "fast_fallback_ineligible",
            Counter::FastEgress => "fast_fallback_egress",
            Counter::FastError => "fast_fallback_error",
            Counter::Spoofed => "dropped_spoofed",
            Counter::FastNoXdpXmit => "fast_fallback_no_xdp_xmit",
            Counter::PassHomeAddress => "pass_home_address",
            Counter::Forwarded => "forwarded",
            Counter::Encapsulated => "encapsulated",
            Counter::Decapsulated => "decapsulated",
            Counter::AnsweredTooBig => "answered_too_big",
        }
    }

    /// Whether this is an outcome of a translated packet: one whose addresses were
    /// rewritten, a forwarded one included.
    pub const fn is_translated(self) -> bool {
        matches!(
            self,
            Counter::V4ToReal
                | Counter::V4ToVirtual
                | Counter::V6ToReal
                | Counter::V6ToVirtual
                | Counter::QuoteOnly
                | Counter::Forwarded
        )
    }

    /// Whether a packet with this outcome may leave by the fast path: a translated one, or
    /// one just encapsulated or decapsulated, which is a plain IP packet to route as well.
    pub const fn takes_fast_path(self) -> bool {
        self.is_translated() || matches!(self, Counter::Encapsulated | Counter::Decapsulated)
    }

    /// Whether this counter belongs to the fast-path dimension rather than to the outcome
    /// that counts every packet once.
    pub const fn is_fast_path(self) -> bool {
        let i = self as u32;
        (i >= Counter::FastRedirected as u32 && i <= Counter::FastError as u32)
            || matches!(self, Counter::FastNoXdpXmit)
    }

    /// Whether the packet of this outcome is dropped rather than passed on.
    pub const fn is_dropped(self) -> bool {
        matches!(self, Counter::Spoofed)
    }

    /// The outcome of a step that stops early with a pass reason. A BPF-to-BPF call
    /// returns this one scalar rather than a `Result`, which would come back through the
    /// caller's stack: the verifier rejects a subprogram that leaves a stack pointer in r0.
    pub const fn outcome(r: Result<Counter, Counter>) -> Counter {
        match r {
            Ok(c) | Err(c) => c,
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

    #[test]
    fn dimensions() {
        let outcomes = Counter::ALL.iter().filter(|c| !c.is_fast_path()).count();
        assert_eq!(outcomes, 20);
        for c in Counter::ALL {
            assert_eq!(c.is_fast_path(), c.name().starts_with("fast_"), "{c:?}");
            assert_eq!(c.is_dropped(), c.name().starts_with("dropped_"), "{c:?}");
            assert_eq!(
                c.is_translated(),
                c.name().starts_with("translated_") || c == Counter::Forwarded,
                "{c:?}"
            );
        }
        for (v6, physical) in [(false, false), (false, true), (true, false), (true, true)] {
            assert!(Counter::translated(v6, physical).is_translated());
        }
        // The fast path takes what leaves as a plain IP packet to route, and nothing else:
        // not an answer to the sender, nor a packet left untouched.
        for c in Counter::ALL {
            let untouched = c.name().starts_with("pass_") || c.is_fast_path();
            if untouched || c.is_dropped() || c == Counter::AnsweredTooBig {
                assert!(!c.takes_fast_path(), "{c:?}");
            }
        }
        assert!(Counter::Encapsulated.takes_fast_path());
        assert!(Counter::Decapsulated.takes_fast_path());
    }
}
