//! The packets whose per-packet cost is measured, and the mappings they need.
//!
//! BPF_PROG_TEST_RUN runs the program `repeat` times on the same buffer, so a translated
//! packet would be a miss from the second run on. The measured mapping is therefore made a
//! two-cycle in V2R (VA -> RA and RA -> VA): every run on the virtual side translates,
//! turning VA into RA and back, with every checksum updated each time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpage::{loader::Side, table::PageTable};
use netpage_common::counters::Counter;

use crate::{
    build::{V4Opts, ether, frame4, frame6, icmp4, ipv4, tcp, udp},
    datapath::{Datapath, LOOPBACK},
};

/// V2R entries per family that [`install`] uses.
pub const RESERVED: u32 = 2;

const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const VA4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const RA4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 5);
const VA6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const RA6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);

const PAYLOAD: &[u8] = b"network paging benchmark payload";

/// One measured kind of packet.
pub struct Variant {
    /// A short name for the report.
    pub name: &'static str,
    pub side: Side,
    pub frame: Vec<u8>,
    /// The outcome every run of the program must count.
    pub outcome: Counter,
}

/// Installs the measured mapping of each family as a two-cycle (see the module docs),
/// owned by the port test runs arrive on, so that the VM's own packets (the ICMP error)
/// pass the source check, whose lookup they pay.
pub fn install(dp: &mut Datapath) {
    for (va, ra) in [(IpAddr::V4(VA4), IpAddr::V4(RA4)), (VA6.into(), RA6.into())] {
        dp.map(va, ra);
        let table = dp.table();
        table.set_forward(ra, va).unwrap();
        table.create_stats(ra).unwrap();
        // Each run turns the source into the other address of the cycle.
        dp.own(va, LOOPBACK);
        dp.own(ra, LOOPBACK);
    }
}

/// The measured packets, all on the virtual side: a miss, and translations of IPv4 TCP,
/// IPv6 TCP, IPv4 UDP and an ICMP error (whose quoted header is translated too).
pub fn variants() -> Vec<Variant> {
    let id = |a| a;
    let (client, router, va) = (IpAddr::V4(CLIENT4), IpAddr::V4(ROUTER4), IpAddr::V4(VA4));
    // The VM's port unreachable to the client, quoting the client's datagram to the VM.
    let quoted = ipv4(
        client,
        va,
        17,
        &V4Opts::default(),
        &udp(client, va, PAYLOAD),
    );
    let icmp_error = ether(
        &[],
        0x0800,
        &ipv4(
            va,
            client,
            1,
            &V4Opts::default(),
            &icmp4(3, 3, [0; 4], &quoted[..28]),
        ),
    );
    let v = |name, frame, outcome| Variant {
        name,
        side: Side::Virtual,
        frame,
        outcome,
    };
    vec![
        v(
            "miss",
            frame4(&id, client, router, 6, |s, d| tcp(s, d, PAYLOAD)),
            Counter::PassMiss,
        ),
        v(
            "ipv4 tcp",
            frame4(&id, client, va, 6, |s, d| tcp(s, d, PAYLOAD)),
            Counter::V4ToReal,
        ),
        v(
            "ipv6 tcp",
            frame6(&id, CLIENT6.into(), VA6.into(), 6, |s, d| {
                tcp(s, d, PAYLOAD)
            }),
            Counter::V6ToReal,
        ),
        v(
            "ipv4 udp",
            frame4(&id, client, va, 17, |s, d| udp(s, d, PAYLOAD)),
            Counter::V4ToReal,
        ),
        v("ipv4 icmp error", icmp_error, Counter::V4ToReal),
    ]
}
