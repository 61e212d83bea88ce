//! The fuzzer's page table: a few mappings in each family, reverse entries that drain
//! (one whose VM moved on, one whose VM has no mapping) and one that does not (a VM's
//! second reverse entry, as at a switch), installed in the loaded program, and the pools of addresses the generator draws from (mapped on this side, on
//! the other side, or not at all).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpage::{
    loader::Side,
    table::{Drain, PageTable},
};

use crate::datapath::Datapath;

/// Where an address stands for a packet on one side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// In this side's table (a VA on the virtual side, an RA on the physical side).
    Here,
    /// In the other side's table only.
    There,
    /// In neither.
    Unmapped,
}

/// Mappings VA -> RA of both families, draining reverse entries, and unmapped addresses.
pub struct Table {
    pub maps: Vec<(IpAddr, IpAddr)>,
    /// Reverse entries RA -> VA besides the mappings', recorded as draining: a real
    /// address a VM left (its VA maps to another, so a packet for it is forwarded), and
    /// one whose VA is not mapped.
    pub drains: Vec<(IpAddr, IpAddr)>,
    /// A reverse entry RA -> VA besides the mapping's that does not drain: translated,
    /// never forwarded.
    pub undrained: Vec<(IpAddr, IpAddr)>,
    unmapped4: Vec<IpAddr>,
    unmapped6: Vec<IpAddr>,
}

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("an IPv6 literal"))
}

impl Table {
    /// Four mappings per family; unmapped addresses include clients, routers, a VA-like
    /// and an RA-like address without mapping, and IPv6 link-local and multicast.
    pub fn standard() -> Self {
        let maps = vec![
            (v4([10, 0, 0, 10]), v4([192, 0, 2, 10])),
            (v4([10, 0, 0, 20]), v4([192, 0, 2, 20])),
            (v4([10, 0, 0, 30]), v4([198, 51, 100, 30])),
            (v4([10, 0, 1, 40]), v4([198, 51, 100, 40])),
            (v6("fd00::10"), v6("2001:db8:a::10")),
            (v6("fd00::20"), v6("2001:db8:a::20")),
            (v6("fd00::30"), v6("2001:db8:b::30")),
            (v6("fd00:1::40"), v6("2001:db8:b::40")),
        ];
        let drains = vec![
            (v4([192, 0, 2, 110]), v4([10, 0, 0, 10])),
            (v4([198, 51, 100, 190]), v4([10, 0, 0, 190])),
            (v6("2001:db8:a::110"), v6("fd00::10")),
            (v6("2001:db8:b::190"), v6("fd00::190")),
        ];
        let undrained = vec![
            (v4([192, 0, 2, 177]), v4([10, 0, 0, 20])),
            (v6("2001:db8:a::177"), v6("fd00::20")),
        ];
        let unmapped4 = vec![
            v4([203, 0, 113, 5]),
            v4([203, 0, 113, 77]),
            v4([192, 0, 2, 1]),
            v4([10, 0, 0, 99]),
            v4([198, 51, 100, 99]),
            v4([0, 0, 0, 0]),
            v4([255, 255, 255, 255]),
        ];
        let unmapped6 = vec![
            v6("2001:db8:c::5"),
            v6("2001:db8:c::77"),
            v6("2001:db8:a::1"),
            v6("fd00::99"),
            v6("2001:db8:b::99"),
            v6("fe80::1"),
            v6("ff02::1"),
            v6("::"),
        ];
        Self {
            maps,
            drains,
            undrained,
            unmapped4,
            unmapped6,
        }
    }

    /// Installs every mapping in both directions in `dp`.
    pub fn install(&self, dp: &mut Datapath) {
        for &(va, ra) in &self.maps {
            dp.map(va, ra);
        }
        for &(ra, va) in self.drains.iter().chain(&self.undrained) {
            dp.table()
                .set_reverse(ra, va)
                .expect("a reverse entry besides the mappings'");
        }
        for &(real, virt) in &self.drains {
            let drain = Drain {
                real,
                virt,
                deadline_ms: u64::MAX,
            };
            dp.table().set_drain(drain).expect("a drain");
        }
    }

    /// What `a` becomes on `side`, if it is in that side's table (on the physical side,
    /// R2V: the mappings' reverse entries and the draining ones).
    pub fn lookup(&self, side: Side, a: IpAddr) -> Option<IpAddr> {
        let mapped = self.maps.iter().find_map(|&(va, ra)| match side {
            Side::Virtual if va == a => Some(ra),
            Side::Physical if ra == a => Some(va),
            _ => None,
        });
        let reverse = || {
            self.drains
                .iter()
                .chain(&self.undrained)
                .find_map(|&(ra, va)| (side == Side::Physical && ra == a).then_some(va))
        };
        mapped.or_else(reverse)
    }

    /// Whether the real address `ra` is recorded as draining.
    pub fn draining(&self, ra: IpAddr) -> bool {
        self.drains.iter().any(|&(r, _)| r == ra)
    }

    /// The current real address of the VM of `va` (V2R), if it is mapped.
    pub fn current(&self, va: IpAddr) -> Option<IpAddr> {
        self.maps
            .iter()
            .find_map(|&(v, ra)| (v == va).then_some(ra))
    }

    /// An address of family `v6` in class `class` for `side`.
    pub fn draw(&self, rng: &mut super::rng::Rng, side: Side, class: Class, v6: bool) -> IpAddr {
        let fam: Vec<(IpAddr, IpAddr)> = self
            .maps
            .iter()
            .copied()
            .filter(|(va, _)| va.is_ipv6() == v6)
            .collect();
        let (va, ra) = fam[rng.below(fam.len())];
        // Now and then a real address in R2V that is no mapping's (draining or not).
        if (class, side) == (Class::Here, Side::Physical) && rng.chance(20) {
            let drains: Vec<IpAddr> = self
                .drains
                .iter()
                .chain(&self.undrained)
                .filter(|(ra, _)| ra.is_ipv6() == v6)
                .map(|&(ra, _)| ra)
                .collect();
            return drains[rng.below(drains.len())];
        }
        match (class, side) {
            (Class::Here, Side::Virtual) | (Class::There, Side::Physical) => va,
            (Class::Here, Side::Physical) | (Class::There, Side::Virtual) => ra,
            (Class::Unmapped, _) => {
                let pool = if v6 { &self.unmapped6 } else { &self.unmapped4 };
                pool[rng.below(pool.len())]
            }
        }
    }
}
