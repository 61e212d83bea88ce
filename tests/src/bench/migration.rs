//! Part 6 (`cargo xtask bench migration`): live migrations of a real QEMU guest between
//! the hosts of the VM world, the client probing it every millisecond: `netpage migrate
//! --switch-at stop`, `--switch-at resume`, and the operator's way without netpage (plain
//! routing, the gateway's host route replaced by hand when the destination resumes).
//! Rows per run, then medians per variant against the hand-switched routes.

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, stats::Sorted},
    vmworld::bench::{MigrationRun, Variant, migration_runs},
};

/// The baseline: how operators move traffic today.
const BASELINE: Variant = Variant::Routes;

/// Runs `cfg.migration_rounds` rounds of every variant and reports them.
pub fn run(cfg: &Config) -> Vec<Row> {
    note(format_args!(
        "migration: {} round(s) of {} migrations of a QEMU guest (TCG)",
        cfg.migration_rounds,
        Variant::ALL.len()
    ));
    let runs = migration_runs(cfg.migration_rounds);
    let mut rows: Vec<Row> = runs.iter().flat_map(run_rows).collect();
    rows.extend(medians(&runs));
    rows
}

/// The figures of one run, or why it failed.
fn run_rows(r: &MigrationRun) -> Vec<Row> {
    let params = json!({ "round": r.round });
    let variant = r.variant.name();
    if let Some(why) = &r.failure {
        let params = json!({ "round": r.round, "failure": why });
        return vec![Row::new("migration_failed", variant, params, 1.0, "runs")];
    }
    let mut rows = vec![
        Row::new(
            "migration_lost",
            variant,
            params.clone(),
            r.probes_lost as f64,
            "probes",
        ),
        Row::new(
            "migration_gap",
            variant,
            params.clone(),
            r.largest_gap_ms,
            "ms",
        ),
    ];
    let optional = [
        ("migration_stop_to_resume", r.stop_to_resume_ms),
        ("migration_gap_minus_pause", r.gap_minus_pause_ms),
        ("migration_downtime", r.qemu_downtime_ms.map(|v| v as f64)),
        ("migration_switch_minus_stop", r.switch_minus_stop_ms),
    ];
    for (measure, value) in optional {
        if let Some(v) = value {
            rows.push(Row::new(measure, variant, params.clone(), v, "ms"));
        }
    }
    rows
}

/// Per variant, the median of each figure over its completed runs, against the baseline's.
fn medians(runs: &[MigrationRun]) -> Vec<Row> {
    type Pick = fn(&MigrationRun) -> Option<f64>;
    let figures: [(&str, &str, Pick); 4] = [
        ("migration_lost_median", "probes", |r| {
            Some(r.probes_lost as f64)
        }),
        ("migration_gap_median", "ms", |r| Some(r.largest_gap_ms)),
        ("migration_stop_to_resume_median", "ms", |r| {
            r.stop_to_resume_ms
        }),
        ("migration_gap_minus_pause_median", "ms", |r| {
            r.gap_minus_pause_ms
        }),
    ];
    let mut rows = Vec::new();
    for (measure, unit, pick) in figures {
        let median = |v: Variant| {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.variant == v && r.ok())
                .filter_map(pick)
                .collect();
            (!values.is_empty()).then(|| (Sorted::new(values.clone()).median(), values.len()))
        };
        let base = median(BASELINE);
        for v in Variant::ALL {
            let Some((value, n)) = median(v) else {
                continue;
            };
            let mut row = Row::new(measure, v.name(), json!({}), value, unit).repeats(n);
            if let (Some((b, _)), true) = (base, v != BASELINE) {
                // A baseline of 0 (nothing lost) has no meaningful ratio.
                if b > 0.0 {
                    row = row.against(BASELINE.name(), b);
                }
            }
            rows.push(row);
        }
    }
    rows
}
