//! The benchmark's measurements, run in the smoke configuration: every part produces rows
//! with sane values and the report renders. No timing is asserted.

use netpage_tests::bench::{Config, per_packet, report, switch, targets};

fn assert_sane(rows: &[report::Row]) {
    assert!(!rows.is_empty(), "no rows");
    for r in rows {
        assert!(
            r.value.is_finite() && r.value > 0.0,
            "{} {}: value {}",
            r.measure,
            r.variant,
            r.value
        );
        if let Some(ratio) = r.ratio {
            assert!(
                ratio.is_finite() && ratio > 0.0,
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
    assert_sane(&rows);
    // The floor, five packets at each size, and the growth of each beyond the first size.
    let sizes = cfg.packet_sizes.len();
    assert_eq!(rows.len(), 1 + 5 * sizes + 5 * (sizes - 1));
    assert_eq!(targets::notes(&rows).len(), 1);
}

#[test]
fn switch_smoke() {
    let cfg = Config::smoke();
    let rows = switch::run(&cfg);
    assert_sane(&rows);
    // Two kinds of switch, three statistics, idle and under traffic, at each size.
    assert_eq!(rows.len(), 2 * 3 * 2 * cfg.switch_sizes.len());
    assert_eq!(targets::notes(&rows).len(), 2);
    let md = report::markdown(&rows, "smoke", &targets::notes(&rows));
    assert!(md.contains("| v2r_update | traffic |"), "{md}");
}
