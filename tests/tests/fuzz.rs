//! A smoke run of the differential fuzzer (`cargo xtask fuzz` runs it long): a fixed seed,
//! some thousand frames at both hooks, every result judged by the oracle; fails on any
//! counterexample, on counters that disagree with the outputs, or on coverage lost.

use netpage_tests::{
    datapath::Datapath,
    fuzz::{report, run, table::Table},
};

#[test]
fn fuzz_smoke() {
    let table = Table::standard();
    let mut dp = Datapath::load(1024);
    table.install(&mut dp);
    let cfg = run::Config::new(8000, 0x5EED);
    let s = run::run(&dp, &table, &cfg, |_| {});
    let text = report::text(&s, cfg.seed, &cfg.hooks);
    println!("{text}");
    for c in &s.counterexamples {
        println!("{}", report::fixture(c));
    }
    assert!(s.clean(), "the fuzzer found counterexamples:\n{text}");
    assert_eq!(s.runs + s.refused, 2 * s.packets);
    assert!(
        s.translated > s.packets / 4,
        "too few translations:\n{text}"
    );
    assert!(s.quote_only > 0 && s.expected_translate > 0 && s.expected_pass > 0);
    for kind in [
        "IPv4 options: source route, hops left",
        "IPv6 routing header, segments left",
        "IPv6 later fragment",
        "ICMP redirect",
        "ICMPv6 packet too big",
        "UDP checksum computing to 0 once translated",
        "two VLAN tags",
        "mutated: truncated",
    ] {
        assert!(s.kinds.contains_key(kind), "{kind} not covered:\n{text}");
    }
}
