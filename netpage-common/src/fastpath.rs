//! Decisions of the optional fast path: whether the program forwards a translated packet
//! itself (a FIB lookup, new Ethernet addresses, TTL or hop limit decremented,
//! `XDP_REDIRECT`) or leaves it to the kernel (`XDP_PASS`), and why.
//!
//! Falling back is always correct: the kernel then routes the translated packet as it
//! would without the fast path. So every test here errs towards falling back for whatever
//! the kernel's forwarding path treats specially (ip_forward(), ip6_forward()).
//!
//! What the fast path does not do that the kernel's forwarding path does: netfilter
//! (FORWARD and POSTROUTING, connection tracking), xfrm policies, ICMP redirects, egress
//! qdiscs in native mode. Enable it only where forwarding has no such policy.

use crate::{counters::Counter, csum::Delta};

/// `AF_INET`, for `bpf_fib_lookup.family`.
pub const AF_INET: u8 = 2;
/// `AF_INET6`, for `bpf_fib_lookup.family`.
pub const AF_INET6: u8 = 10;

// Return codes of bpf_fib_lookup (`BPF_FIB_LKUP_RET_*`, include/uapi/linux/bpf.h).
/// Lookup successful: a unicast route with a resolved neighbour.
pub const FIB_SUCCESS: i64 = 0;
/// Destination is a blackhole route.
pub const FIB_BLACKHOLE: i64 = 1;
/// Destination is unreachable.
pub const FIB_UNREACHABLE: i64 = 2;
/// Destination is prohibited.
pub const FIB_PROHIBIT: i64 = 3;
/// Packet is not forwarded (local delivery, broadcast, multicast).
pub const FIB_NOT_FWDED: i64 = 4;
/// Forwarding is disabled on the ingress interface.
pub const FIB_FWD_DISABLED: i64 = 5;
/// A route with lightweight-tunnel encapsulation.
pub const FIB_UNSUPP_LWT: i64 = 6;
/// No resolved neighbour entry for the next hop.
pub const FIB_NO_NEIGH: i64 = 7;
/// The packet is larger than the egress MTU.
pub const FIB_FRAG_NEEDED: i64 = 8;
/// No source address could be chosen (only with `BPF_FIB_LOOKUP_SRC`).
pub const FIB_NO_SRC_ADDR: i64 = 9;

/// The fast-path counter of a FIB lookup's return code: [`Counter::FastRedirected`] for a
/// plain forward, else the reason to fall back. Negative codes are errors.
pub const fn fib_outcome(rc: i64) -> Counter {
    match rc {
        FIB_SUCCESS => Counter::FastRedirected,
        FIB_NO_NEIGH => Counter::FastNoNeigh,
        FIB_FRAG_NEEDED => Counter::FastFragNeeded,
        FIB_BLACKHOLE | FIB_UNREACHABLE | FIB_PROHIBIT | FIB_NOT_FWDED | FIB_FWD_DISABLED => {
            Counter::FastNotForwarded
        }
        _ => Counter::FastError,
    }
}

/// Whether a packet with this TTL or hop limit may be forwarded: at 1 or 0 the kernel
/// drops it and answers with ICMP time exceeded, which the fast path leaves to it.
pub const fn hops_left(ttl: u8) -> bool {
    ttl > 1
}

/// The change of the IPv4 header checksum when the TTL goes from `ttl` to `ttl - 1`: TTL
/// and protocol are one 16-bit word of the header (RFC 1624, as `ip_decrease_ttl()`).
pub const fn ttl_delta(ttl: u8, proto: u8) -> Delta {
    Delta::ZERO.word(
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl.wrapping_sub(1), proto]),
    )
}

/// The IPv4 header's version/IHL byte of a header the fast path forwards: version 4
/// without options (the kernel processes options such as record route while forwarding).
pub const IPV4_PLAIN_VIHL: u8 = 0x45;

/// Whether an IPv4 packet between these addresses (given by their first octet) is one the
/// kernel forwards as any other: neither is in 0/8 or 127/8, and neither is multicast,
/// broadcast or reserved (224/3). The kernel drops such sources as martians and does not
/// forward such destinations; the fast path leaves both to it.
pub const fn ipv4_forwardable(src_first: u8, dst_first: u8) -> bool {
    ipv4_ordinary(src_first) && ipv4_ordinary(dst_first)
}

const fn ipv4_ordinary(first: u8) -> bool {
    first != 0 && first != 127 && first < 224
}

/// Whether an IPv6 packet between these addresses (given by their first 32 bits, as a
/// big-endian value) is one the kernel forwards as any other: neither is link-local
/// (fe80::/10, never forwarded), multicast (ff00::/8), or in ::/32 (unspecified,
/// loopback, IPv4-mapped and -compatible addresses).
pub const fn ipv6_forwardable(src_word: u32, dst_word: u32) -> bool {
    ipv6_ordinary(src_word) && ipv6_ordinary(dst_word)
}

const fn ipv6_ordinary(w: u32) -> bool {
    w != 0 && w >> 22 != 0xFE80 >> 6 && w >> 24 != 0xFF
}

/// An IPv6 header's Next Header value that keeps the packet off the fast path: hop-by-hop
/// options, which every router on the path must process.
pub const IPV6_HOP_BY_HOP: u8 = 0;

/// The `flowinfo` of a FIB lookup (traffic class and flow label, in network order) from
/// the first four bytes of an IPv6 header.
pub const fn ipv6_flowinfo(first: [u8; 4]) -> [u8; 4] {
    [first[0] & 0x0F, first[1], first[2], first[3]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::apply;

    #[test]
    fn fib_codes_map_to_counters() {
        assert_eq!(fib_outcome(FIB_SUCCESS), Counter::FastRedirected);
        assert_eq!(fib_outcome(FIB_NO_NEIGH), Counter::FastNoNeigh);
        assert_eq!(fib_outcome(FIB_FRAG_NEEDED), Counter::FastFragNeeded);
        for rc in [
            FIB_BLACKHOLE,
            FIB_UNREACHABLE,
            FIB_PROHIBIT,
            FIB_NOT_FWDED,
            FIB_FWD_DISABLED,
        ] {
            assert_eq!(fib_outcome(rc), Counter::FastNotForwarded, "{rc}");
        }
        for rc in [FIB_UNSUPP_LWT, FIB_NO_SRC_ADDR, 10, -22, -19] {
            assert_eq!(fib_outcome(rc), Counter::FastError, "{rc}");
        }
        for rc in -30..30 {
            assert!(fib_outcome(rc).is_fast_path());
        }
    }

    #[test]
    fn ttl() {
        assert!(!hops_left(0) && !hops_left(1));
        assert!(hops_left(2) && hops_left(64) && hops_left(255));
    }

    use crate::csum::reference::ipv4_header as full;

    #[test]
    fn ttl_decrement_matches_full_recomputation() {
        let mut h = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 192, 0, 2, 10, 203, 0, 113, 5,
        ];
        let mut n = 0;
        for ttl in 2..=255u8 {
            for proto in [1u8, 6, 17, 0, 255] {
                for id in [0u16, 0x1234, 0xFFFF, 0xFEFF] {
                    h[8] = ttl;
                    h[9] = proto;
                    h[4..6].copy_from_slice(&id.to_be_bytes());
                    let c = full(&h);
                    h[10..12].copy_from_slice(&c.to_be_bytes());
                    let got = apply(c, ttl_delta(ttl, proto));
                    h[8] = ttl - 1;
                    let want = full(&h);
                    assert!(
                        got == want || (got | want == 0xFFFF && got & want == 0),
                        "ttl {ttl} proto {proto}: {got:#06x} vs {want:#06x}"
                    );
                    n += 1;
                }
            }
        }
        assert!(n > 5000);
    }

    #[test]
    fn ipv4_addresses() {
        assert!(ipv4_forwardable(198, 203));
        assert!(ipv4_forwardable(10, 223));
        for bad in [0u8, 127, 224, 239, 240, 255] {
            assert!(!ipv4_forwardable(bad, 10), "src {bad}");
            assert!(!ipv4_forwardable(10, bad), "dst {bad}");
        }
    }

    #[test]
    fn ipv6_addresses() {
        let global = 0x2001_0db8;
        assert!(ipv6_forwardable(global, 0xfd00_0000));
        assert!(ipv6_forwardable(global, 0xfec0_0000)); // beyond fe80::/10
        for bad in [0u32, 0xfe80_0000, 0xfebf_ffff, 0xff02_0000, 0xff00_0000] {
            assert!(!ipv6_forwardable(bad, global), "src {bad:#x}");
            assert!(!ipv6_forwardable(global, bad), "dst {bad:#x}");
        }
    }

    #[test]
    fn flowinfo_drops_the_version() {
        assert_eq!(
            ipv6_flowinfo([0x6A, 0xBC, 0xDE, 0xF0]),
            [0x0A, 0xBC, 0xDE, 0xF0]
        );
    }
}
