//! Part of the per-packet cost: paging against segmentation, at XDP, one run per test-run
//! call.
//!
//! BPF_PROG_TEST_RUN repeats a program on the same buffer, so the many-run method of
//! `per_packet` cannot measure encapsulation: from the second run on, the program would see
//! its own output, a packet to a locator, and push another outer header in front of it
//! until the headroom ran out. Here every call runs the program once, on a fresh copy of
//! the packet, and the value is the mean of the kernel's own time for that run (the run
//! alone, without the system call or the copies). That time includes the test-run loop's
//! clock reads, tens of nanoseconds, which is why every row is read against the bare
//! `XDP_PASS` program measured the same way, in the same rotation.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
};

use netpage::{loader::Side, table::PageTable};
use netpage_common::{
    counters::Counter,
    segment::{SEG_ON, SegConfig},
};
use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, stats::Sorted, sys},
    build::{frame4, frame6, udp},
    datapath::{Datapath, Hook, XDP_PASS},
};

/// The floor's variant name in these rows.
pub const FLOOR: &str = "xdp_pass floor, one run per call";

const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 5);
/// A VM mapped by paging (VA -> RA).
const PAGED_VA: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const PAGED_RA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// VMs mapped by segmentation: one hosted elsewhere (its packets are encapsulated here),
/// one hosted here (its packets are decapsulated here), in each family.
const AWAY4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
/// Hosted elsewhere, behind that node's IPv6 locator.
const AWAY4_OVER6: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);
const AWAY6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20);
const HERE4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
/// This node's locators, and the other node's.
const OWN4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

const PAYLOAD: &[u8] = b"network paging benchmark payload";

/// One measured packet: which program of the node runs on it, and what it must count.
struct Case {
    name: &'static str,
    /// The paging row this one is read against (none: the floor).
    against: Option<&'static str>,
    side: Side,
    frame: Vec<u8>,
    outcome: Counter,
}

/// Measures the floor, paging and segmentation packets, one run per call.
pub fn run(cfg: &Config) -> Vec<Row> {
    note("per-packet: paging against segmentation, one run per call");
    let floor = sys::load_xdp_pass().expect("load the bare XDP_PASS program");
    let mut dp = node(OWN4, OWN6);
    let cases = cases(&mut dp);
    for c in &cases {
        check(&dp, c);
    }
    let mut progs: Vec<(BorrowedFd, &[u8])> = vec![(floor.as_fd(), &cases[0].frame)];
    progs.extend(
        cases
            .iter()
            .map(|c| (dp.program_fd(Hook::Xdp, c.side), c.frame.as_slice())),
    );
    let mut samples = vec![Vec::with_capacity(cfg.repeats); progs.len()];
    for r in 0..cfg.repeats {
        for j in 0..progs.len() {
            let k = (j + r) % progs.len();
            let (prog, frame) = progs[k];
            samples[k].push(mean_kernel_ns(prog, frame, cfg.single_runs));
        }
    }
    let medians: Vec<f64> = samples
        .into_iter()
        .map(|s| Sorted::new(s).median())
        .collect();
    let params = |side: Option<Side>| {
        let mut p = json!({
            "hook": "xdp",
            "method": "one run per BPF_PROG_TEST_RUN call, the kernel's time of the run",
            "calls": cfg.single_runs,
        });
        if let Some(side) = side {
            p["side"] = side_name(side).into();
        }
        p
    };
    let mut rows =
        vec![Row::new("per_packet", FLOOR, params(None), medians[0], "ns").repeats(cfg.repeats)];
    for (c, &ns) in cases.iter().zip(&medians[1..]) {
        let (base, base_ns) = match c.against {
            Some(name) => {
                let i = cases.iter().position(|o| o.name == name).expect("a row");
                (name, medians[i + 1])
            }
            None => (FLOOR, medians[0]),
        };
        rows.push(
            Row::new("per_packet", c.name, params(Some(c.side)), ns, "ns")
                .against(base, base_ns)
                .repeats(cfg.repeats),
        );
    }
    rows
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Virtual => "virtual",
        Side::Physical => "physical",
    }
}

/// A node with locators `own4`, `own6` and no default locator.
fn node(own4: Ipv4Addr, own6: Ipv6Addr) -> Datapath {
    let mut dp = Datapath::load(64);
    dp.set_segments(SegConfig {
        flags: SEG_ON,
        mtu: 1500,
        own4: own4.octets(),
        own6: own6.octets(),
        ..SegConfig::default()
    });
    dp
}

/// Maps the VMs on `dp` (this node) and returns the measured packets.
fn cases(dp: &mut Datapath) -> Vec<Case> {
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);
    let v6 = |a: Ipv6Addr| IpAddr::V6(a);
    dp.map(v4(PAGED_VA), v4(PAGED_RA));
    for (vm, at) in [
        (v4(AWAY4), v4(PEER4)),
        (v4(AWAY4_OVER6), v6(PEER6)),
        (v6(AWAY6), v4(PEER4)),
        (v4(HERE4), v4(OWN4)),
    ] {
        dp.table().create_stats(vm).unwrap();
        dp.table().set_segment(vm, at).unwrap();
    }
    let id = |a| a;
    let udp4 = |dst| frame4(&id, v4(CLIENT4), dst, 17, |s, d| udp(s, d, PAYLOAD));
    let paged_in = "paging ipv4 udp, virtual side, one run per call";
    let paged_out = "paging ipv4 udp, physical side, one run per call";
    vec![
        Case {
            name: paged_in,
            against: None,
            side: Side::Virtual,
            frame: udp4(v4(PAGED_VA)),
            outcome: Counter::V4ToReal,
        },
        Case {
            name: paged_out,
            against: None,
            side: Side::Physical,
            frame: udp4(v4(PAGED_RA)),
            outcome: Counter::V4ToVirtual,
        },
        Case {
            name: "segmentation ipv4 udp in ipv4, encapsulated, one run per call",
            against: Some(paged_in),
            side: Side::Virtual,
            frame: udp4(v4(AWAY4)),
            outcome: Counter::Encapsulated,
        },
        Case {
            name: "segmentation ipv4 udp in ipv6, encapsulated, one run per call",
            against: Some(paged_in),
            side: Side::Virtual,
            frame: udp4(v4(AWAY4_OVER6)),
            outcome: Counter::Encapsulated,
        },
        Case {
            name: "segmentation ipv6 udp in ipv4, encapsulated, one run per call",
            against: Some(paged_in),
            side: Side::Virtual,
            frame: frame6(&id, v6(CLIENT6), v6(AWAY6), 17, |s, d| udp(s, d, PAYLOAD)),
            outcome: Counter::Encapsulated,
        },
        Case {
            name: "segmentation ipv4 udp in ipv4, decapsulated, one run per call",
            against: Some(paged_out),
            side: Side::Physical,
            frame: arriving(udp4(v4(HERE4))),
            outcome: Counter::Decapsulated,
        },
    ]
}

/// `frame` (to a VM hosted here) as it arrives from the peer node: encapsulated by the
/// peer's own program, whose table says the VM is at this node's locator.
fn arriving(frame: Vec<u8>) -> Vec<u8> {
    let mut peer = node(PEER4, PEER6);
    let vm = IpAddr::V4(HERE4);
    peer.table().create_stats(vm).unwrap();
    peer.table().set_segment(vm, IpAddr::V4(OWN4)).unwrap();
    let (verdict, out) = peer.run(Side::Virtual, &frame);
    assert_eq!(verdict, XDP_PASS, "the peer's encapsulation");
    assert_eq!(
        out.len(),
        frame.len() + 28,
        "the peer encapsulates in IPv4 and UDP"
    );
    out
}

/// The mean of the kernel's time per run over `calls` calls of one run each.
fn mean_kernel_ns(prog: BorrowedFd, frame: &[u8], calls: u32) -> f64 {
    let total: u64 = (0..calls)
        .map(|_| {
            let run = sys::test_run(prog, frame, 1).expect("BPF_PROG_TEST_RUN");
            assert_eq!(run.verdict, XDP_PASS, "verdict");
            u64::from(run.kernel_ns)
        })
        .sum();
    total as f64 / f64::from(calls)
}

/// Checks that a run of `c` has the outcome it is meant to measure, and only that one.
fn check(dp: &Datapath, c: &Case) {
    let before = dp.counters();
    let (verdict, _) = dp.run(c.side, &c.frame);
    let counted = dp.counters().since(&before);
    let all: u64 = Counter::ALL.iter().map(|&c| counted.get(c)).sum();
    assert_eq!(
        (verdict, counted.get(c.outcome), all),
        (XDP_PASS, 1, 1),
        "{}: a run must count {:?}",
        c.name,
        c.outcome
    );
}
