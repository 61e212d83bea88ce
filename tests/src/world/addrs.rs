//! The addresses of the world, one set per family, so that tests can be written once for both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address a test talks to or about, in one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    /// The client, on `c0`.
    pub client: IpAddr,
    /// The gateway's client-facing address, on `g0`.
    pub gw: IpAddr,
    /// The first VM's virtual address.
    pub va: IpAddr,
    /// A real address at host A's site.
    pub ra_a: IpAddr,
    /// A real address at host B's site.
    pub ra_b: IpAddr,
    /// The second VM's virtual address.
    pub va2: IpAddr,
    /// The second VM's real address, at host B's site.
    pub ra2: IpAddr,
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(net: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host))
}

/// The IPv4 addresses.
pub const V4: Addrs = Addrs {
    client: v4(198, 18, 1, 2),
    gw: v4(198, 18, 1, 1),
    va: v4(198, 19, 0, 10),
    ra_a: v4(198, 18, 10, 100),
    ra_b: v4(198, 18, 20, 100),
    va2: v4(198, 19, 0, 20),
    ra2: v4(198, 18, 20, 200),
};

/// The IPv6 addresses.
pub const V6: Addrs = Addrs {
    client: v6(1, 2),
    gw: v6(1, 1),
    va: v6(0x100, 0x10),
    ra_a: v6(0x10, 0x100),
    ra_b: v6(0x20, 0x100),
    va2: v6(0x100, 0x20),
    ra2: v6(0x20, 0x200),
};

/// Both families, IPv4 first.
pub const BOTH: [Addrs; 2] = [V4, V6];
