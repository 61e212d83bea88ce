//! Filling a page table with mappings that no measured packet uses, so that a measurement
//! runs against a table of a given size.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use crate::{bench::note, datapath::Datapath};

/// Filler mapping `i` of one family: VAs in 11.0.0.0/8 and fd00:1::/96, RAs in
/// 100.0.0.0/8 and 2001:db8:1::/96, away from every measured address.
pub fn filler(i: u32, v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        let va = Ipv6Addr::from(0xfd00_0001_0000_0000_0000_0000_0000_0000u128 | u128::from(i));
        let ra = Ipv6Addr::from(0x2001_0db8_0001_0000_0000_0000_0000_0000u128 | u128::from(i));
        (va.into(), ra.into())
    } else {
        assert!(i < 1 << 24, "filler {i} beyond a /8");
        (
            Ipv4Addr::from(0x0B00_0000 | i).into(),
            Ipv4Addr::from(0x6400_0000 | i).into(),
        )
    }
}

/// Adds `count` mappings to each family: V2R, R2V and traffic counters, as a mapping made
/// by netpage has.
pub fn fill(dp: &mut Datapath, count: u32) {
    if count == 0 {
        return;
    }
    let start = Instant::now();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        let mut quarter = 0;
        for i in 0..count {
            let (va, ra) = filler(i, v6);
            dp.map(va, ra);
            let done = (u64::from(i) + 1) * 4 / u64::from(count);
            if count >= 100_000 && done != quarter {
                quarter = done;
                note(format_args!("filling: {family} {}% of {count}", done * 25));
            }
        }
    }
    if count >= 100_000 {
        note(format_args!(
            "filled {count} mappings per family in {:.1} s",
            start.elapsed().as_secs_f64()
        ));
    }
}
