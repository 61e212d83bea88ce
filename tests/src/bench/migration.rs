//! Part 6 (`cargo xtask bench migration`): live migrations of a real QEMU guest between
//! the hosts of the VM world, the client probing it every millisecond: `netpage migrate
//! --switch-at stop`, `--switch-at resume`, and the operator's way without netpage (plain
//! routing, the gateway's host route replaced by hand when the destination resumes), and
//! the industry's default without netpage nor routes (`l2-stretch`: the guest's segment
//! stretched over VXLAN, its MAC moved by QEMU's announcement), and netpage's
//! segmentation (`segmentation`: `--switch-at stop`, the VA mapped with method encap).
//! Rows per run, then medians per variant against the hand-switched routes. Then the same
//! over the WAN (`migration-wan` alone): the sites 20 ms apart, `stop` also without the
//! hold, segmentation too, the guest's own first-reply latency after RESUME, and the nodes
//! switched gateway first against destination host first.

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, stats::Sorted},
    vmworld::bench::{
        Case, MigrationRun, Order, Variant, WAN_DELAY, migration_runs, wan_cases,
        wan_migration_runs,
    },
};

/// The baseline: how operators move traffic today.
const BASELINE: Variant = Variant::Routes;

/// Runs `cfg.migration_rounds` rounds of every variant, then the WAN's rounds, and
/// reports them.
pub fn run(cfg: &Config) -> Vec<Row> {
    note(format_args!(
        "migration: {} round(s) of {} migrations of a QEMU guest (TCG)",
        cfg.migration_rounds,
        Variant::ALL.len()
    ));
    let runs = migration_runs(cfg.migration_rounds);
    let mut rows: Vec<Row> = runs.iter().flat_map(|r| run_rows("migration", r)).collect();
    rows.extend(medians("migration", &runs));
    rows.extend(run_wan(cfg));
    rows
}

/// Runs `cfg.migration_wan_rounds` rounds of every WAN case and reports them.
pub fn run_wan(cfg: &Config) -> Vec<Row> {
    note(format_args!(
        "migration over a WAN of {} ms one way: {} round(s) of {} migrations",
        WAN_DELAY.as_millis(),
        cfg.migration_wan_rounds,
        wan_cases().len()
    ));
    let runs = wan_migration_runs(cfg.migration_wan_rounds);
    let mut rows: Vec<Row> = runs
        .iter()
        .flat_map(|r| run_rows("migration_wan", r))
        .collect();
    rows.extend(medians("migration_wan", &runs));
    rows
}

/// The figures of one run, or why it failed; each measure named `PREFIX_...`.
fn run_rows(prefix: &str, r: &MigrationRun) -> Vec<Row> {
    let m = |what: &str| format!("{prefix}_{what}");
    let mut params = json!({ "round": r.round });
    if let Some(w) = r.wan_ms {
        params["wan_ms"] = json!(w);
        params["order"] = json!(r.order.name());
    }
    let label = r.case().label();
    if let Some(why) = &r.failure {
        let mut params = params.clone();
        params["failure"] = json!(why);
        return vec![Row::new(&m("failed"), &label, params, 1.0, "runs")];
    }
    let mut rows = vec![
        Row::new(
            &m("lost"),
            &label,
            params.clone(),
            r.probes_lost as f64,
            "probes",
        ),
        Row::new(&m("gap"), &label, params.clone(), r.largest_gap_ms, "ms"),
    ];
    let optional = [
        ("stop_to_resume", r.stop_to_resume_ms),
        ("gap_minus_pause", r.gap_minus_pause_ms),
        ("downtime", r.qemu_downtime_ms.map(|v| v as f64)),
        ("switch_minus_stop", r.switch_minus_stop_ms),
        (
            "first_reply",
            r.first_reply_ms.filter(|_| r.wan_ms.is_some()),
        ),
    ];
    for (measure, value) in optional {
        if let Some(v) = value {
            rows.push(Row::new(&m(measure), &label, params.clone(), v, "ms"));
        }
    }
    if r.wan_ms.is_some() {
        for (node, ms) in &r.node_switch_minus_stop_ms {
            let mut p = params.clone();
            p["node"] = json!(node);
            rows.push(Row::new(&m("node_switch_minus_stop"), &label, p, *ms, "ms"));
        }
    }
    for (measure, n) in [
        ("lost_into_guest", r.lost_into_guest),
        ("unanswered_by_guest", r.unanswered_by_guest),
        ("salvaged", r.salvaged),
    ] {
        if let Some(n) = n {
            rows.push(Row::new(
                &m(measure),
                &label,
                params.clone(),
                n as f64,
                "probes",
            ));
        }
    }
    if let Some(n) = r.wan_lost {
        rows.push(Row::new(
            &m("delay_line_lost"),
            &label,
            params,
            n as f64,
            "frames",
        ));
    }
    rows
}

/// What a case is compared with: a `netpage` case with the nodes in another order against
/// the same case gateway first; every other case against the hand-switched routes.
fn baseline_of(c: &Case) -> Option<Case> {
    match (c.variant, c.order) {
        (v, Order::DestinationFirst | Order::SourceFirst) => Some(Case {
            variant: v,
            order: Order::GatewayFirst,
            wan: c.wan,
        }),
        (BASELINE, _) => None,
        (_, Order::GatewayFirst) => Some(Case {
            variant: BASELINE,
            ..*c
        }),
    }
}

/// Per case, the median of each figure over its completed runs, against its baseline's.
fn medians(prefix: &str, runs: &[MigrationRun]) -> Vec<Row> {
    type Pick = fn(&MigrationRun) -> Option<f64>;
    let figures: [(&str, &str, Pick); 5] = [
        ("lost_median", "probes", |r| Some(r.probes_lost as f64)),
        ("gap_median", "ms", |r| Some(r.largest_gap_ms)),
        ("stop_to_resume_median", "ms", |r| r.stop_to_resume_ms),
        ("gap_minus_pause_median", "ms", |r| r.gap_minus_pause_ms),
        ("first_reply_median", "ms", |r| {
            r.first_reply_ms.filter(|_| r.wan_ms.is_some())
        }),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for r in runs {
        if !cases.iter().any(|c| c.label() == r.case().label()) {
            cases.push(r.case());
        }
    }
    let mut rows = Vec::new();
    for (measure, unit, pick) in figures {
        let median = |c: &Case| {
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| r.case().label() == c.label() && r.ok())
                .filter_map(pick)
                .collect();
            (!values.is_empty()).then(|| (Sorted::new(values.clone()).median(), values.len()))
        };
        for c in &cases {
            let Some((value, n)) = median(c) else {
                continue;
            };
            let label = c.label();
            let mut row = Row::new(
                &format!("{prefix}_{measure}"),
                &label,
                json!({}),
                value,
                unit,
            )
            .repeats(n);
            if let Some((b, base)) = baseline_of(c).and_then(|b| Some((median(&b)?.0, b))) {
                // A baseline of 0 (nothing lost) has no meaningful ratio.
                if b > 0.0 {
                    row = row.against(base.label(), b);
                }
            }
            rows.push(row);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_case_has_the_baseline_it_is_compared_with() {
        let labels: Vec<(String, Option<String>)> = wan_cases()
            .iter()
            .map(|c| (c.label(), baseline_of(c).map(|b| b.label())))
            .collect();
        let want = [
            ("stop", Some("routes")),
            ("stop-no-hold", Some("routes")),
            ("stop-no-salvage", Some("routes")),
            ("resume", Some("routes")),
            ("resume-no-salvage", Some("routes")),
            ("routes", None),
            ("segmentation", Some("routes")),
            ("stop@destination-first", Some("stop")),
            ("stop@source-first", Some("stop")),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(a, b)| ((*a).to_owned(), b.map(str::to_owned)))
            .collect();
        assert_eq!(labels, want);
    }

    #[test]
    fn the_l2_stretch_is_compared_with_the_hand_switched_routes() {
        let case = Case {
            variant: Variant::L2Stretch,
            order: Order::GatewayFirst,
            wan: None,
        };
        assert_eq!(case.label(), "l2-stretch");
        assert_eq!(
            baseline_of(&case).map(|b| b.label()).as_deref(),
            Some("routes")
        );
    }
}
