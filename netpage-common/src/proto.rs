//! Protocol numbers, header sizes and the per-header decisions of the datapath.
//!
//! The XDP program reads raw wire fields and asks these functions what they mean, so the
//! decisions are unit-tested on the host.

use crate::csum::Delta;

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// A VLAN tag (TCI + inner EtherType).
pub const VLAN_HLEN: usize = 4;
/// The most VLAN tags walked (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Minimum IPv4 header (IHL 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up (and passing the packet).
pub const MAX_EXT_HEADERS: usize = 6;
/// Extension headers walked in the packet an ICMPv6 error quotes, to fix its transport
/// checksum; a quote with more keeps that checksum as it is (its addresses are still
/// translated). A second walk as long as the first would multiply the verifier's work.
pub const MAX_QUOTED_EXT_HEADERS: usize = 6;
/// ICMP and ICMPv6 header before the body (type, code, checksum, 4 bytes).
pub const ICMP_HLEN: usize = 8;
/// Offset of the checksum in the ICMP and ICMPv6 header.
pub const ICMP_CHECK: usize = 2;
/// Offsets of the source and destination addresses in the IPv4 and IPv6 headers.
pub const IPV4_SRC: usize = 12;
pub const IPV4_DST: usize = 16;
pub const IPV4_CHECK: usize = 10;
/// Offsets of the IPv4 TTL and the IPv6 hop limit.
pub const IPV4_TTL: usize = 8;
pub const IPV6_HOP_LIMIT: usize = 7;
pub const IPV6_SRC: usize = 8;
pub const IPV6_DST: usize = 24;

/// The checksum of a transport header that netpage keeps valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A protocol netpage does not know: it may carry a checksum over the addresses
    /// (DCCP, UDP-Lite, ESP, ...) that a rewrite would break, so the packet is passed
    /// untouched.
    Unknown,
    /// No checksum covers the addresses (ICMP echo, tunnels, SCTP, a non-first fragment of
    /// a known protocol): only the IP layer changes.
    Opaque,
    /// TCP: pseudo-header checksum at offset 16.
    Tcp,
    /// UDP: pseudo-header checksum at offset 6; 0 means none over IPv4.
    Udp,
    /// ICMP error: the quoted header is translated too; checksum at offset 2, no
    /// pseudo-header.
    Icmp4Error,
    /// ICMPv6 informational: pseudo-header checksum at offset 2.
    Icmp6,
    /// ICMPv6 error: pseudo-header checksum, plus the quoted header.
    Icmp6Error,
    /// ICMPv6 neighbour discovery (RFC 4861): scoped to one link, about the addresses of
    /// the interfaces on it, so never translated. A VM resolving its gateway sends these
    /// from its virtual address.
    NeighborDiscovery,
}

impl L4 {
    /// Classifies a transport header. `first_fragment` is false for a non-first fragment,
    /// which carries no transport header. `icmp_type` is the first byte of the transport
    /// header (only read for ICMP).
    ///
    /// The fragment header of a later IPv6 fragment may name an extension header (a
    /// destination options header, say, in front of TCP): the transport protocol is then
    /// in the first fragment alone, and the later one is translated at the IP layer, like
    /// a later fragment of TCP or UDP. (So a fragmented ESP datagram behind such a header
    /// has its later fragments translated but its first passed; ESP named by the fragment
    /// header itself passes in every fragment.)
    pub const fn classify(proto: u8, v6: bool, first_fragment: bool, icmp_type: u8) -> L4 {
        let kind = match proto {
            IPPROTO_TCP => L4::Tcp,
            IPPROTO_UDP => L4::Udp,
            IPPROTO_ICMP if !v6 && is_icmp4_error(icmp_type) => L4::Icmp4Error,
            IPPROTO_ICMP if !v6 => L4::Opaque,
            IPPROTO_ICMPV6 if v6 && is_icmp6_error(icmp_type) => L4::Icmp6Error,
            IPPROTO_ICMPV6 if v6 && is_icmp6_nd(icmp_type) => L4::NeighborDiscovery,
            IPPROTO_ICMPV6 if v6 => L4::Icmp6,
            p if is_opaque_proto(p) => L4::Opaque,
            p if v6 && !first_fragment && is_ipv6_ext(p) => L4::Opaque,
            _ => L4::Unknown,
        };
        match kind {
            L4::Unknown | L4::NeighborDiscovery => kind,
            _ if !first_fragment => L4::Opaque,
            kind => kind,
        }
    }

    /// Offset of the checksum in the transport header, if netpage must fix it. (The XDP
    /// program matches on the kind with these offsets as constants.)
    pub const fn check_offset(self) -> Option<usize> {
        match self {
            L4::Unknown | L4::Opaque | L4::NeighborDiscovery => None,
            L4::Tcp => Some(16),
            L4::Udp => Some(6),
            L4::Icmp4Error | L4::Icmp6 | L4::Icmp6Error => Some(2),
        }
    }

    /// Bytes of transport header that must be present for netpage to fix it. A packet
    /// whose IP payload is shorter is malformed and passed untouched.
    pub const fn min_len(self) -> usize {
        match self {
            L4::Unknown | L4::Opaque | L4::NeighborDiscovery => 0,
            L4::Tcp => 20,
            L4::Udp | L4::Icmp6 => 8,
            // The ICMP header and at least a minimal quoted IP header.
            L4::Icmp4Error => ICMP_HLEN + IPV4_MIN_HLEN,
            L4::Icmp6Error => ICMP_HLEN + IPV6_HLEN,
        }
    }

    /// Whether the checksum covers the IP addresses through a pseudo-header.
    pub const fn has_pseudo_header(self) -> bool {
        matches!(self, L4::Tcp | L4::Udp | L4::Icmp6 | L4::Icmp6Error)
    }

    /// The change to this header's checksum, given the change `pseudo` of the addresses in
    /// its pseudo-header and the change `body` of the data it covers (a quoted header).
    pub const fn transport_delta(self, pseudo: Delta, body: Delta) -> Delta {
        if self.has_pseudo_header() {
            pseudo.add(body)
        } else {
            body
        }
    }

    /// Whether the message quotes the header of the packet that caused it.
    pub const fn is_error(self) -> bool {
        matches!(self, L4::Icmp4Error | L4::Icmp6Error)
    }
}

/// Protocols whose integrity checks do not cover the IP addresses, so that translating
/// the IP layer alone keeps them valid: IP-in-IP, IPv6-in-IP, GRE, No Next Header, SCTP.
///
/// Not ESP (50): in transport mode it encrypts the transport header, whose checksum covers
/// the original addresses and cannot be fixed from outside (RFC 3715 2.2). Nor AH (51),
/// whose integrity check covers the addresses.
pub const fn is_opaque_proto(p: u8) -> bool {
    matches!(p, 4 | 41 | 47 | 59 | 132)
}

/// ICMP messages that quote the offending packet's header (RFC 792): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem. (A redirect's
/// gateway address, in bytes 4 to 8, is a router on the sender's link and stays as it is.)
pub const fn is_icmp4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter problem.
pub const fn is_icmp6_error(t: u8) -> bool {
    matches!(t, 1..=4)
}

/// Whether an ICMPv6 type is neighbour discovery: router solicitation and advertisement,
/// neighbour solicitation and advertisement, redirect (RFC 4861, types 133 to 137).
pub const fn is_icmp6_nd(t: u8) -> bool {
    matches!(t, 133..=137)
}

/// Whether `nh` is an IPv6 extension header that the walk steps over.
pub const fn is_ipv6_ext(nh: u8) -> bool {
    matches!(
        nh,
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT | IPPROTO_DSTOPTS
    )
}

/// Length of an IPv6 extension header from its Hdr Ext Len byte (RFC 8200 4.3-4.6):
/// the fragment header is always 8 bytes, the others are 8-byte units not counting the first.
pub const fn ipv6_ext_len(nh: u8, hdr_ext_len: u8) -> usize {
    if nh == IPPROTO_FRAGMENT {
        8
    } else {
        (hdr_ext_len as usize + 1) * 8
    }
}

/// Whether an IPv4 packet with this flags/fragment-offset field carries the transport header
/// (it is unfragmented or the first fragment).
pub const fn ipv4_first_fragment(frags: u16) -> bool {
    frags & 0x1FFF == 0
}

/// Whether an IPv6 fragment header's offset/flags field marks the first fragment.
pub const fn ipv6_first_fragment(offlg: u16) -> bool {
    offlg & 0xFFF8 == 0
}

/// Whether a routing header with this Segments Left keeps the header's destination out of
/// the transport pseudo-header: the pseudo-header uses the final destination, which is the
/// last segment, not the header's destination, while segments are left (RFC 8200 8.1).
pub const fn routing_hides_dst(segments_left: u8) -> bool {
    segments_left != 0
}

/// Whether an IPv4 header's version/IHL byte is well-formed, and its length in bytes.
pub const fn ipv4_header_len(vihl: u8) -> Option<usize> {
    let ihl = (vihl & 0x0F) as usize * 4;
    if vihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        None
    } else {
        Some(ihl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_transport() {
        assert_eq!(L4::classify(IPPROTO_TCP, false, true, 0), L4::Tcp);
        assert_eq!(L4::classify(IPPROTO_TCP, true, false, 0), L4::Opaque);
        assert_eq!(L4::classify(IPPROTO_UDP, true, true, 0), L4::Udp);
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 8), L4::Opaque);
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 3), L4::Icmp4Error);
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 11), L4::Icmp4Error);
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 12), L4::Icmp4Error);
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 4), L4::Icmp4Error); // source quench
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 5), L4::Icmp4Error); // redirect
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 0), L4::Opaque); // echo reply
        assert_eq!(L4::classify(IPPROTO_ICMP, false, true, 13), L4::Opaque); // timestamp
        assert_eq!(L4::classify(IPPROTO_ICMP, true, true, 3), L4::Unknown);
        assert_eq!(L4::classify(IPPROTO_ICMPV6, true, true, 128), L4::Icmp6);
        assert_eq!(L4::classify(IPPROTO_ICMPV6, true, true, 2), L4::Icmp6Error);
        assert_eq!(L4::classify(IPPROTO_ICMPV6, false, true, 2), L4::Unknown);
        for nd in 133..=137 {
            assert_eq!(
                L4::classify(IPPROTO_ICMPV6, true, true, nd),
                L4::NeighborDiscovery
            );
        }
        assert_eq!(L4::classify(IPPROTO_ICMPV6, true, true, 132), L4::Icmp6);
        assert_eq!(L4::classify(IPPROTO_ICMPV6, true, true, 138), L4::Icmp6);
        assert_eq!(L4::classify(132, false, true, 0), L4::Opaque);
        assert_eq!(L4::classify(47, true, true, 0), L4::Opaque); // GRE
        assert_eq!(L4::classify(50, false, true, 0), L4::Unknown); // ESP
        assert_eq!(L4::classify(50, true, false, 0), L4::Unknown); // ESP fragment
        assert_eq!(L4::classify(51, true, true, 0), L4::Unknown); // AH
        assert_eq!(L4::classify(33, false, true, 0), L4::Unknown); // DCCP
        assert_eq!(L4::classify(136, true, false, 0), L4::Unknown); // UDP-Lite fragment
        assert_eq!(L4::classify(IPPROTO_UDP, false, false, 0), L4::Opaque);
        // A later IPv6 fragment whose fragment header names an extension header.
        for ext in [
            IPPROTO_HOPOPTS,
            IPPROTO_ROUTING,
            IPPROTO_FRAGMENT,
            IPPROTO_DSTOPTS,
        ] {
            assert_eq!(L4::classify(ext, true, false, 0), L4::Opaque);
            assert_eq!(L4::classify(ext, true, true, 0), L4::Unknown);
            assert_eq!(L4::classify(ext, false, false, 0), L4::Unknown);
        }
        assert!(L4::Icmp6.has_pseudo_header() && !L4::Icmp4Error.has_pseudo_header());
    }

    #[test]
    fn extension_headers() {
        assert!(is_ipv6_ext(0) && is_ipv6_ext(43) && is_ipv6_ext(44) && is_ipv6_ext(60));
        assert!(!is_ipv6_ext(6) && !is_ipv6_ext(51) && !is_ipv6_ext(59));
        assert_eq!(ipv6_ext_len(IPPROTO_FRAGMENT, 77), 8);
        assert_eq!(ipv6_ext_len(IPPROTO_HOPOPTS, 0), 8);
        assert_eq!(ipv6_ext_len(IPPROTO_ROUTING, 2), 24);
    }

    #[test]
    fn fragments_and_lengths() {
        assert!(ipv4_first_fragment(0x4000)); // DF
        assert!(ipv4_first_fragment(0x2000)); // MF, offset 0
        assert!(!ipv4_first_fragment(0x2001));
        assert!(!ipv4_first_fragment(0x0010));
        assert!(ipv6_first_fragment(0x0001)); // M flag
        assert!(!ipv6_first_fragment(0x0008));
        assert_eq!(ipv4_header_len(0x45), Some(20));
        assert_eq!(ipv4_header_len(0x4F), Some(60));
        assert_eq!(ipv4_header_len(0x44), None);
        assert_eq!(ipv4_header_len(0x65), None);
        assert!(routing_hides_dst(1) && !routing_hides_dst(0));
    }
}
