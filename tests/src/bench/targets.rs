//! The targets the report is read against, each stated with the worst measured value.
//! They are noted, never asserted: a benchmark on a shared machine is not a test.

use crate::bench::report::Row;

/// Per-packet cost may grow this much from the smallest to the largest table.
const GROWTH: f64 = 1.10;
/// p99 of the V2R update, in microseconds.
const V2R_P99_US: f64 = 2.0;
/// p99 of the whole switch, in microseconds.
const WHOLE_P99_US: f64 = 5.0;

/// One line per target: what it is, the worst row against it, and whether it is met.
pub fn notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let largest = rows
        .iter()
        .filter(|r| r.measure == "per_packet_growth")
        .filter_map(|r| r.param_u64("table_entries"))
        .max();
    if let Some(size) = largest {
        let worst = worst(rows, |r| {
            (r.measure == "per_packet_growth" && r.param_u64("table_entries") == Some(size))
                .then_some(r.ratio?)
        });
        if let Some((ratio, r)) = worst {
            notes.push(format!(
                "per-packet cost grows at most {:.0}% from the smallest table to {size} entries: \
                 worst {:+.1}% ({}) - {}",
                (GROWTH - 1.0) * 100.0,
                (ratio - 1.0) * 100.0,
                r.variant,
                verdict(ratio <= GROWTH)
            ));
        }
    }
    for (measure, what, limit) in [
        ("v2r_update", "V2R update", V2R_P99_US),
        (
            "switch_whole",
            "whole switch (R2V insert + V2R update)",
            WHOLE_P99_US,
        ),
    ] {
        let worst = worst(rows, |r| {
            (r.measure == measure && r.param_str("stat") == Some("p99")).then_some(r.value)
        });
        if let Some((us, r)) = worst {
            notes.push(format!(
                "{what} p99 at most {limit} us: worst {us:.2} us ({} entries, {}) - {}",
                r.param_u64("table_entries").unwrap_or(0),
                r.variant,
                verdict(us <= limit)
            ));
        }
    }
    notes
}

/// The largest value `pick` finds among `rows`, with its row.
fn worst(rows: &[Row], pick: impl Fn(&Row) -> Option<f64>) -> Option<(f64, &Row)> {
    rows.iter()
        .filter_map(|r| pick(r).map(|v| (v, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
