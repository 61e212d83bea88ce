//! A node's metrics in the OpenMetrics text format: packets by outcome, packets and bytes
//! per mapping, and the table's size, capacity and drains, all read from the pinned maps
//! at the moment of the scrape (so they equal what `netpage stats` reads then).
//!
//! Names (every one prefixed `netpage_`):
//! - `packets_total{outcome}`: the node's outcome counters, as `netpage stats` names them
//!   (`translated_*`, `pass_*`, `dropped_spoofed`, `fast_redirected`, `fast_fallback_*`).
//! - `mapping_packets_total{vm,real}`, `mapping_bytes_total{vm,real}`: per mapping; two
//!   series per mapping, so 2,000,000 at the largest table of a million mappings.
//! - `table_entries{map,family}` (`map`: `v2r` or `r2v`), `table_capacity` (entries each
//!   map holds), `drains`.
//! - `scrape_read_seconds`: how long reading the node took for this scrape; `up`: 1 when
//!   the node was read (0, with the error as a comment, when it could not be).
//! - `migrations_total{outcome}` (`completed`, `rolled_back`, `failed`),
//!   `migration_downtime_seconds` (QEMU's downtime) and `migration_gap_seconds` (the gap a
//!   client saw at least: from the switch or STOP, whichever came first, to RESUME), both
//!   histograms of completed migrations: the migrations `netpage migrate` ran on this
//!   machine, from the tally in its state directory (`--state-dir`).
//!
//! An agent's (`netpage agent --metrics ADDR`) add, prefixed `netpage_agent_`:
//! `applied_revision` (the directory revision its table equals), `lag_revisions` (how many
//! revisions etcd was ahead when it last applied), `etcd_up` (1 while its session with
//! etcd lasts), `syncs_total` (whole-table syncs: the first and each after a watch was
//! lost), `sessions_ended_total` (sessions with etcd that ended in an error, then
//! retried), and `apply_seconds` (a histogram of the time from a watch event's arrival to
//! its table update).

pub mod serve;

use std::{
    fmt::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    migrate::tally::{Tally, TallyError},
    node::{Node, NodeError},
    table::{PageTable, TableError},
};

/// Everything a scrape shows of a node, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct NodeSnapshot {
    pub outcomes: Vec<(&'static str, u64)>,
    /// VM, real address, packets, bytes.
    pub mappings: Vec<(IpAddr, IpAddr, u64, u64)>,
    /// (map, family, entries).
    pub entries: Vec<(&'static str, &'static str, u64)>,
    pub capacity: u32,
    pub drains: u64,
    pub read: Duration,
    /// The migrations this machine ran.
    pub migrations: Tally,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Tally(#[from] TallyError),
}

impl NodeSnapshot {
    /// Reads `node` (no lock: it writes nothing), and the migrations' tally in
    /// `state_dir`.
    pub fn read(node: &Node, state_dir: &std::path::Path) -> Result<Self, MetricsError> {
        let start = Instant::now();
        let open = node.open()?;
        let outcomes = open.counters()?.named().collect();
        let mut mappings: Vec<_> = open
            .table
            .mapping_stats()?
            .into_iter()
            .map(|(vm, real, s)| (vm, real, s.packets, s.bytes))
            .collect();
        mappings.sort_unstable();
        // Each mapping is one V2R entry: only R2V needs reading again.
        let [v2r4, v2r6] = per_family(mappings.iter().map(|m| m.0));
        let [r2v4, r2v6] = per_family(open.table.reverse_entries()?.into_iter().map(|r| r.0));
        let entries = vec![
            ("v2r", "ipv4", v2r4),
            ("v2r", "ipv6", v2r6),
            ("r2v", "ipv4", r2v4),
            ("r2v", "ipv6", r2v6),
        ];
        Ok(NodeSnapshot {
            outcomes,
            mappings,
            entries,
            capacity: node.capacity()?,
            drains: open.table.drains()?.len() as u64,
            read: start.elapsed(),
            migrations: Tally::read(state_dir)?,
        })
    }

    /// The snapshot, and an agent's own metrics if given, as an OpenMetrics text
    /// exposition.
    pub fn encode(self, agent: Option<&AgentMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        if let Some(agent) = agent {
            agent.register(&mut registry);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// How many of `keys` are IPv4 and IPv6 addresses.
fn per_family(keys: impl Iterator<Item = IpAddr>) -> [u64; 2] {
    keys.fold([0, 0], |mut n, k| {
        n[usize::from(k.is_ipv6())] += 1;
        n
    })
}

/// Labels as the encoder takes them.
type Labels<'a> = Vec<(&'static str, &'a str)>;

fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NodeSnapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter_family(
            &mut encoder,
            "netpage_packets",
            "Packets by outcome at the node's hooks, as `netpage stats` counts them.",
            self.outcomes
                .iter()
                .map(|(outcome, v)| (vec![("outcome", *outcome)], *v)),
        )?;
        let addrs: Vec<(String, String)> = self
            .mappings
            .iter()
            .map(|(vm, real, ..)| (vm.to_string(), real.to_string()))
            .collect();
        let per_mapping = |pick: fn(&(IpAddr, IpAddr, u64, u64)) -> u64| {
            self.mappings
                .iter()
                .zip(&addrs)
                .map(move |(m, (vm, real))| {
                    (vec![("vm", vm.as_str()), ("real", real.as_str())], pick(m))
                })
        };
        counter_family(
            &mut encoder,
            "netpage_mapping_packets",
            "Packets in which the mapping's address was rewritten.",
            per_mapping(|m| m.2),
        )?;
        counter_family(
            &mut encoder,
            "netpage_mapping_bytes",
            "Bytes of those packets, Ethernet header to the end of the IP packet.",
            per_mapping(|m| m.3),
        )?;
        let mut family = encoder.encode_descriptor(
            "netpage_table_entries",
            "Entries in the page table (v2r) and its inverse (r2v), by address family.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, fam, n) in &self.entries {
            let labels: Labels = vec![("map", map), ("family", fam)];
            ConstGauge::new(*n as i64).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "netpage_table_capacity",
            "Entries each of the node's tables holds.",
            f64::from(self.capacity),
        )?;
        gauge(
            &mut encoder,
            "netpage_drains",
            "Real addresses that still translate after their VM moved.",
            self.drains as f64,
        )?;
        gauge(
            &mut encoder,
            "netpage_scrape_read_seconds",
            "Time this scrape took to read the node's maps.",
            self.read.as_secs_f64(),
        )?;
        gauge(
            &mut encoder,
            "netpage_up",
            "1: the node was read for this scrape.",
            1.0,
        )?;
        self.encode_migrations(&mut encoder)
    }
}

impl NodeSnapshot {
    fn encode_migrations(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.migrations;
        counter_family(
            encoder,
            "netpage_migrations",
            "Migrations `netpage migrate` ran on this machine, by outcome.",
            ["completed", "rolled_back", "failed"].into_iter().map(|o| {
                (
                    vec![("outcome", o)],
                    m.outcomes.get(o).copied().unwrap_or(0),
                )
            }),
        )?;
        for (name, help, h) in [
            (
                "netpage_migration_downtime_seconds",
                "QEMU's downtime in each completed migration.",
                &m.downtime_seconds,
            ),
            (
                "netpage_migration_gap_seconds",
                "The gap a client saw at least in each completed migration: from the switch or STOP, whichever came first, to RESUME.",
                &m.gap_seconds,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            family.encode_histogram::<Labels>(h.sum, h.count, &h.buckets(), None)?;
        }
        Ok(())
    }
}

/// What an agent counts as it follows the directory; shared with its metrics endpoint.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    pub applied_revision: Gauge,
    pub lag_revisions: Gauge,
    pub etcd_up: Gauge,
    pub syncs: Counter,
    pub sessions_ended: Counter,
    pub apply_seconds: Histogram,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            applied_revision: Gauge::default(),
            lag_revisions: Gauge::default(),
            etcd_up: Gauge::default(),
            syncs: Counter::default(),
            sessions_ended: Counter::default(),
            // 10 us to about 0.33 s.
            apply_seconds: Histogram::new(exponential_buckets(1e-5, 2.0, 16)),
        }
    }
}

impl AgentMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "netpage_agent_applied_revision",
            "The directory revision the node's table equals.",
            self.applied_revision.clone(),
        );
        r.register(
            "netpage_agent_lag_revisions",
            "Revisions etcd was ahead of the table when the agent last applied one.",
            self.lag_revisions.clone(),
        );
        r.register(
            "netpage_agent_etcd_up",
            "1 while the agent's session with etcd lasts, else 0.",
            self.etcd_up.clone(),
        );
        r.register(
            "netpage_agent_syncs",
            "Whole-table syncs: the first, and each after the watch was lost.",
            self.syncs.clone(),
        );
        r.register(
            "netpage_agent_sessions_ended",
            "Sessions with etcd that ended in an error (and were retried).",
            self.sessions_ended.clone(),
        );
        r.register(
            "netpage_agent_apply_seconds",
            "Time from a watch event's arrival to the table's update.",
            self.apply_seconds.clone(),
        );
    }
}

/// What a scrape of `node` answers (with `agent`'s metrics, for an agent's node, and the
/// tally of the migrations in `state_dir`).
pub fn scrape_of(
    node: Node,
    agent: Option<AgentMetrics>,
    state_dir: std::path::PathBuf,
) -> serve::Scrape {
    std::sync::Arc::new(move || match NodeSnapshot::read(&node, &state_dir) {
        Ok(s) => s.encode(agent.as_ref()),
        Err(e) => unreadable(&format!("{:#}", anyhow::Error::from(e))),
    })
}

/// A scrape's answer when the node could not be read: the error as a comment, and
/// `netpage_up 0`, so that an alert can tell a broken node from a quiet one.
pub fn unreadable(error: &str) -> String {
    let mut out = String::new();
    for line in error.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out + "# TYPE netpage_up gauge\nnetpage_up 0\n# EOF\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_encodes_as_openmetrics() {
        let s = NodeSnapshot {
            outcomes: vec![("translated_v4_to_real", 7), ("dropped_spoofed", 1)],
            mappings: vec![(
                "198.19.0.10".parse().unwrap(),
                "198.18.10.100".parse().unwrap(),
                5,
                420,
            )],
            entries: vec![("v2r", "ipv4", 1)],
            capacity: 1024,
            drains: 0,
            read: Duration::from_millis(2),
            migrations: Tally::default(),
        };
        let mut s = s;
        s.migrations.outcomes.insert("completed".into(), 2);
        s.migrations.gap_seconds.observe(0.04);
        s.migrations.gap_seconds.observe(0.3);
        let agent = AgentMetrics::default();
        agent.applied_revision.set(12);
        agent.apply_seconds.observe(0.002);
        let text = s.encode(Some(&agent));
        for line in [
            "# TYPE netpage_packets counter",
            "netpage_packets_total{outcome=\"translated_v4_to_real\"} 7",
            "netpage_packets_total{outcome=\"dropped_spoofed\"} 1",
            "netpage_mapping_packets_total{vm=\"198.19.0.10\",real=\"198.18.10.100\"} 5",
            "netpage_mapping_bytes_total{vm=\"198.19.0.10\",real=\"198.18.10.100\"} 420",
            "netpage_table_entries{map=\"v2r\",family=\"ipv4\"} 1",
            "netpage_table_capacity 1024.0",
            "netpage_agent_applied_revision 12",
            "netpage_agent_apply_seconds_count 1",
            "netpage_up 1.0",
            "netpage_migrations_total{outcome=\"completed\"} 2",
            "netpage_migrations_total{outcome=\"failed\"} 0",
            "netpage_migration_gap_seconds_bucket{le=\"0.025\"} 0",
            "netpage_migration_gap_seconds_bucket{le=\"0.05\"} 1",
            "netpage_migration_gap_seconds_bucket{le=\"0.5\"} 2",
            "netpage_migration_gap_seconds_bucket{le=\"+Inf\"} 2",
            "netpage_migration_gap_seconds_count 2",
            "netpage_migration_downtime_seconds_count 0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(unreadable("no table\nat all").starts_with("# no table\n# at all\n"));
    }

    /// Every metric the Grafana dashboard in deploy/ queries is one netpage exposes.
    #[test]
    fn the_dashboard_queries_metrics_that_exist() {
        let s = NodeSnapshot {
            outcomes: vec![("translated_v4_to_real", 1)],
            mappings: vec![(
                "198.19.0.10".parse().unwrap(),
                "198.18.10.100".parse().unwrap(),
                1,
                1,
            )],
            entries: vec![("v2r", "ipv4", 1)],
            ..NodeSnapshot::default()
        };
        let text = s.encode(Some(&AgentMetrics::default()));
        let exposed: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/netpage.json")).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("netpage_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    assert!(
                        exposed.contains(name.as_str()),
                        "panel {:?} queries {name}, which netpage does not expose",
                        panel["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 13, "{queried}");
    }
}
