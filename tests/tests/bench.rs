//! The benchmark's measurements, run in the smoke configuration: every part produces rows
//! with sane values and the report renders. No timing is asserted.

use netpage_tests::bench::{
    Config, about, command, directory, forward, gap, per_packet, report, switch, targets, wan, wire,
};

/// Finite, non-negative values (positive unless `counts` allows a zero, as for probes
/// lost), ratios only with a named baseline.
fn assert_sane(rows: &[report::Row], counts: bool) {
    assert!(!rows.is_empty(), "no rows");
    for r in rows {
        let ok = r.value.is_finite() && (r.value > 0.0 || (counts && r.value == 0.0));
        assert!(ok, "{} {}: value {}", r.measure, r.variant, r.value);
        if let Some(ratio) = r.ratio {
            assert!(
                ratio.is_finite() && ratio >= 0.0,
                "{} {}: ratio {ratio}",
                r.measure,
                r.variant
            );
            assert!(r.baseline.is_some(), "a ratio names its baseline");
        }
        assert!(r.repeats > 0);
    }
}

#[test]
fn per_packet_smoke() {
    let cfg = Config::smoke();
    let rows = per_packet::run(&cfg);
    assert_sane(&rows, false);
    // At each hook (XDP and tc): the floor, five packets at each size, the growth of
    // each beyond the first size, and the trace's three states; at XDP, paging against
    // segmentation one run per call: the floor, two paging and four segmentation rows.
    let sizes = cfg.packet_sizes.len();
    assert_eq!(rows.len(), 2 * (1 + 5 * sizes + 5 * (sizes - 1) + 3) + 7);
    let single: Vec<_> = rows
        .iter()
        .filter(|r| r.variant.ends_with("one run per call"))
        .collect();
    assert_eq!(single.len(), 7);
    let segmentation = single
        .iter()
        .filter(|r| r.variant.starts_with("segmentation"));
    for r in segmentation {
        let base = r.baseline.as_deref().unwrap();
        assert!(base.starts_with("paging"), "{}: against {base}", r.variant);
    }
    let tc = rows.iter().filter(|r| r.params["hook"] == "tc").count();
    assert_eq!(tc, 1 + 5 * sizes + 5 * (sizes - 1) + 3, "tc rows");
    let trace = rows.iter().filter(|r| r.measure == "per_packet_trace");
    assert_eq!(trace.filter(|r| r.baseline.is_some()).count(), 6);
    assert_eq!(targets::notes(&rows).len(), 1);
}

#[test]
fn switch_smoke() {
    let cfg = Config::smoke();
    let rows = switch::run(&cfg);
    assert_sane(&rows, false);
    // Two kinds of switch, three statistics, idle and under traffic, at each size.
    assert_eq!(rows.len(), 2 * 3 * 2 * cfg.switch_sizes.len());
    assert_eq!(targets::notes(&rows).len(), 2);
    let md = report::markdown(
        &rows,
        "smoke",
        &about::sections(&cfg),
        &targets::notes(&rows),
        &[],
    );
    assert!(md.contains("| v2r_update | traffic |"), "{md}");
}

#[test]
fn command_smoke() {
    let cfg = Config::smoke();
    let rows = command::run(&cfg);
    assert_sane(&rows, false);
    // The floor and a switch at each size, as p50 and max.
    let (switches, scrapes): (Vec<_>, Vec<_>) =
        rows.iter().partition(|r| r.measure == "switch_command");
    assert_eq!(switches.len(), 2 * (1 + cfg.command_sizes.len()));
    assert!(switches.iter().all(|r| r.repeats == cfg.command_runs));
    // A metrics scrape at each size, its text growing with the table.
    assert_eq!(scrapes.len(), cfg.command_sizes.len());
    assert!(scrapes.iter().all(|r| r.measure == "metrics_scrape"));
    assert!(scrapes[1].params["bytes"].as_u64() > scrapes[0].params["bytes"].as_u64());
    assert_eq!(targets::notes(&rows).len(), 1);
}

#[test]
fn forward_smoke() {
    let cfg = Config::smoke();
    let rows = forward::run(&cfg);
    // The softirq share of a CPU may well be zero.
    assert_sane(&rows, true);
    // Every variant with each sender, each row naming its sender and what limited it.
    let variants = forward::Variant::ALL.len() * forward::Sender::ALL.len();
    let pps: Vec<_> = rows.iter().filter(|r| r.measure == "forward_pps").collect();
    assert_eq!(pps.len(), variants);
    for r in &pps {
        assert!(r.value > 0.0, "{}: nothing forwarded", r.variant);
        assert!(
            ["gateway", "sender"].contains(&r.params["limited_by"].as_str().unwrap()),
            "{}: {:?}",
            r.variant,
            r.params
        );
    }
    // The fast path's rows: every packet delivered was redirected by the program, none
    // handed to the kernel's forwarding.
    for r in rows.iter().filter(|r| r.measure == "forward_cpu_ns") {
        let redirected = r.params.get("redirected_pct").and_then(|v| v.as_f64());
        if r.variant.contains("fast path") {
            let share = redirected.unwrap_or_else(|| panic!("{}: {:?}", r.variant, r.params));
            assert!(share > 99.0, "{}: {share}% redirected", r.variant);
        } else {
            assert_eq!(redirected, None, "{}", r.variant);
        }
    }
    // One target line per netpage mode passing packets to the kernel, one for the fast
    // path with each sender.
    assert_eq!(targets::notes(&rows).len(), 4);
    assert!(!targets::diagnose(&rows).is_empty());
}

#[test]
fn wire_smoke() {
    let cfg = Config::smoke();
    let rows = wire::run(&cfg);
    assert_sane(&rows, false);
    // Two measures, four methods, two VA families.
    assert_eq!(rows.len(), 2 * 4 * 2);
    // Every segment passed whole, and the segment size is the path MTU's: paging's the
    // same as routing's, segmentation's smaller by its outer headers (IPv4 or IPv6, and
    // UDP).
    for r in &rows {
        assert_eq!(r.params["fragments_created"], 0, "{}", r.variant);
    }
    // The headers per packet: segmentation's outer headers on top of routing's, paging's
    // none (a short segment moves these by a fraction of a byte; a retransmitted one by
    // its payload, so a stream with retransmissions is not compared).
    let headers = |variant: &str| {
        let r = rows.iter().find(|r| r.variant == variant).unwrap();
        let again = r.params["retransmitted_segments"].as_u64().unwrap();
        if again > 0 {
            println!("{variant}: {again} segments retransmitted, its headers not compared");
        }
        (again == 0).then(|| r.params["header_bytes_per_packet"].as_f64().unwrap())
    };
    for family in ["ipv4", "ipv6"] {
        let Some(routed) = headers(&format!("plain routing, {family} va")) else {
            continue;
        };
        for (method, extra) in [
            ("paging", 0.0),
            ("segmentation in ipv4", 28.0),
            ("segmentation in ipv6", 48.0),
        ] {
            let Some(h) = headers(&format!("{method}, {family} va")) else {
                continue;
            };
            assert!(
                (h - routed - extra).abs() < 2.0,
                "{method}, {family}: {h} against {routed}"
            );
        }
    }
    let mss = |variant: &str| {
        rows.iter()
            .find(|r| r.measure == "largest_tcp_payload" && r.variant == variant)
            .unwrap_or_else(|| panic!("no row {variant}"))
            .value
    };
    for family in ["ipv4", "ipv6"] {
        let routed = mss(&format!("plain routing, {family} va"));
        assert_eq!(mss(&format!("paging, {family} va")), routed);
        assert_eq!(
            mss(&format!("segmentation in ipv4, {family} va")),
            routed - 28.0
        );
        assert_eq!(
            mss(&format!("segmentation in ipv6, {family} va")),
            routed - 48.0
        );
    }
}

#[test]
fn gap_smoke() {
    let cfg = Config::smoke();
    let rows = gap::run(&cfg);
    assert_sane(&rows, true);
    let largest = rows
        .iter()
        .find(|r| r.measure == "switch_gap_largest" && r.variant == gap::MOVE)
        .expect("a largest-gap row");
    assert!(largest.value > 0.0);
    assert_eq!(targets::notes(&rows).len(), 1);
}

#[test]
fn directory_smoke() {
    let cfg = Config::smoke();
    let rows = directory::run(&cfg);
    // A propagation time may round to zero on a fast machine.
    assert_sane(&rows, true);
    let n = cfg.directory_agents.len();
    // p50, p99 and max at each agent count, and the command with its local baseline.
    assert_eq!(rows.len(), 3 * n + 2);
    let largest = *cfg.directory_agents.iter().max().unwrap();
    for r in rows.iter().filter(|r| r.measure == "directory_propagation") {
        let agents = r.param_u64("agents").unwrap() as usize;
        assert_eq!(r.repeats, agents * cfg.directory_switches, "{r:?}");
    }
    let cmd = rows
        .iter()
        .find(|r| r.measure == "directory_switch_command" && r.variant == directory::VIA_ETCD)
        .expect("the command through etcd");
    assert_eq!(cmd.param_u64("agents"), Some(largest as u64));
    assert!(cmd.ratio.is_some() && cmd.baseline.is_some(), "{cmd:?}");
    assert_eq!(targets::notes(&rows).len(), 1);
}

#[test]
fn wan_smoke() {
    let cfg = Config::smoke();
    let rows = wan::run(&cfg);
    assert_sane(&rows, false);
    // At each rate and for p50 and p99: the one-way time of both variants, the configured
    // delay and the added delay against it; then TCP over each variant.
    assert_eq!(rows.len(), cfg.wan_rates.len() * 2 * 4 + 2);
    for r in rows
        .iter()
        .filter(|r| r.measure == "wan_added_delay" && r.variant == wan::LINE)
    {
        assert!(r.baseline.is_some(), "{r:?}");
    }
}
