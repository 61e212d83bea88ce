//! What `netpage migrate` reports: the figures, the switches, the release and the
//! timeline of one migration, as JSON and as text.

use std::{fmt, net::IpAddr};

use serde::Serialize;

use super::{SalvageReport, SwitchAt};
use crate::{directory::Confirmation, failure::Kind, timeline::Timeline};

/// One node's switch.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSwitch {
    pub node: String,
    /// A node of this machine: its one V2R update, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_us: Option<f64>,
    /// A node of this machine: when its V2R update ended, ms since the Unix epoch (to set
    /// beside QEMU's STOP and what clients saw; nodes switch in the order given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_unix_ms: Option<f64>,
    /// Through the directory: from the switch transaction to the node's map update, by
    /// the node's clock, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation_ms: Option<f64>,
    /// Through the directory: from the switch transaction to this command hearing the
    /// node's confirmation, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirmed_ms: Option<f64>,
}

impl NodeSwitch {
    pub(super) fn local(node: String, update_us: f64, at_unix_ms: f64) -> Self {
        Self {
            node,
            update_us: Some(update_us),
            at_unix_ms: Some(at_unix_ms),
            propagation_ms: None,
            confirmed_ms: None,
        }
    }

    pub(super) fn confirmed(c: &Confirmation) -> Self {
        Self {
            node: c.node.clone(),
            update_us: None,
            at_unix_ms: None,
            propagation_ms: c.propagation_ms,
            confirmed_ms: c.after_ms,
        }
    }
}

impl fmt::Display for NodeSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
        match self.update_us {
            Some(us) => write!(f, "switched {}: V2R update {us:.1} us", self.node),
            None => write!(
                f,
                "switched {}: map updated {} and confirmed {} after the transaction",
                self.node,
                ms(self.propagation_ms),
                ms(self.confirmed_ms)
            ),
        }
    }
}

/// The moment netpage ended the hold of the downtime limit (`--switch-at stop`).
#[derive(Clone, Debug, Serialize)]
pub struct Release {
    /// The pass under way (QEMU's last MIGRATION_PASS).
    pub pass: u64,
    /// Whether the nodes were switched then (`false`: the fallback to a switch at STOP).
    pub switched: bool,
    /// Whether netpage then paused the source itself (with the switch); else it raised
    /// the limit and QEMU stopped by itself.
    pub paused: bool,
    /// Why: `estimate` (the last copy fits the limit) or `passes` (none fitted in time).
    pub reason: &'static str,
    /// RAM still to send in the pass, and QEMU's measured bandwidth.
    pub remaining_bytes: u64,
    pub mbps: f64,
    /// The pause netpage estimated, and the limit asked for.
    pub estimate_ms: f64,
    pub limit_ms: u64,
}

/// How a migration ended.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    pub switch_at: SwitchAt,
    /// With `switch_at` stop: whether netpage held the downtime limit, then switched and
    /// paused the source (`false`: it switched on hearing STOP, `--no-hold`).
    pub hold: bool,
    /// With the hold: how long netpage waited between the switch and its pause of the
    /// source (`--hold-lead`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_lead_ms: Option<f64>,
    /// Whether netpage's thread ran at SCHED_FIFO through the migration (`--no-realtime`,
    /// or refused for want of CAP_SYS_NICE: `false`).
    pub realtime: bool,
    /// `completed`, or `failed` (the guest stays at the source; `rolled_back` says
    /// whether every node is back at its old address).
    pub status: String,
    /// Why the migration failed, or what went wrong although the guest did move.
    pub error: Option<String>,
    pub rolled_back: bool,
    /// Whether the migration's record was kept because nodes could not be brought to one
    /// side: `netpage migrate --recover` finishes or undoes it.
    pub record_kept: bool,
    /// The guest's pause as QEMU measured it.
    pub qemu_downtime_ms: Option<u64>,
    pub qemu_total_ms: Option<u64>,
    /// From the source's STOP to the destination's RESUME, by QEMU's event timestamps.
    pub stop_to_resume_ms: Option<f64>,
    /// From the source's STOP (QEMU's timestamp) to the last node's V2R update (this
    /// host's clock, which QEMU's shares when it runs here): negative when the switch
    /// came first.
    pub stop_to_switch_ms: Option<f64>,
    /// From the last node's V2R update to the source's STOP, when the switch came first:
    /// what the switch before the pause adds to a client's gap.
    pub switch_to_stop_ms: Option<f64>,
    /// How netpage ended the held downtime limit (`--switch-at stop`).
    pub release: Option<Release>,
    /// QEMU's timestamps of the source's STOP and the destination's RESUME, in
    /// milliseconds since the Unix epoch, to set beside what clients saw.
    pub stop_unix_ms: Option<f64>,
    pub resume_unix_ms: Option<f64>,
    pub passes: u64,
    pub switches: Vec<NodeSwitch>,
    /// Through the directory: the live nodes that did not confirm the switch in time
    /// (the directory keeps it; they converge when they return).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed: Vec<String>,
    /// What was read out of the source's tap after its pause and sent on (`None` with
    /// `--no-salvage`).
    pub salvage: Option<SalvageReport>,
    pub timeline: Timeline,
}

impl MigrateReport {
    /// The kind of the failure the report's `error` names: a migration rolled back left
    /// everything as it was; one whose nodes are not all on one side is partial.
    pub fn failure_kind(&self) -> Kind {
        if self.record_kept || !self.unconfirmed.is_empty() || !self.rolled_back {
            Kind::Partial
        } else {
            Kind::System
        }
    }
}

impl MigrateReport {
    pub fn completed(&self) -> bool {
        self.error.is_none()
    }
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migration of {} from {} to {} (switch at {:?}{}): {}",
            self.vm,
            self.from,
            self.to,
            self.switch_at,
            match (self.switch_at, self.hold, self.hold_lead_ms) {
                (SwitchAt::Stop, true, Some(ms)) if ms > 0.0 =>
                    format!(", limit held, switched at least {ms:.0} ms before its release"),
                (SwitchAt::Stop, true, _) => ", limit held".to_owned(),
                (SwitchAt::Stop, false, _) => ", no hold".to_owned(),
                (SwitchAt::Resume, _, _) => String::new(),
            },
            self.error.as_deref().unwrap_or("completed")
        )?;
        if self.rolled_back {
            writeln!(
                f,
                "  the page table was rolled back: {} is at {} again",
                self.vm, self.from
            )?;
        }
        let opt = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        writeln!(
            f,
            "  QEMU: total {}, downtime {}, {} pass(es); STOP -> RESUME {}",
            opt(self.qemu_total_ms),
            opt(self.qemu_downtime_ms),
            self.passes,
            self.stop_to_resume_ms
                .map_or("-".into(), |v| format!("{v:.1} ms"))
        )?;
        match (self.switch_to_stop_ms, self.stop_to_switch_ms) {
            (Some(ms), _) => writeln!(
                f,
                "  last node switched {ms:.2} ms before STOP (added to a client's gap)"
            )?,
            (None, Some(ms)) => writeln!(f, "  STOP -> last node switched {ms:.2} ms")?,
            (None, None) => {}
        }
        if !self.realtime {
            writeln!(f, "  netpage ran time-shared (not at SCHED_FIFO)")?;
        }
        if let Some(r) = &self.release {
            if r.paused {
                writeln!(
                    f,
                    "  switched and paused the source in pass {} (estimated pause {:.0} ms, limit {} ms)",
                    r.pass, r.estimate_ms, r.limit_ms
                )?;
            } else {
                writeln!(
                    f,
                    "  downtime limit released to {} ms in pass {} ({}: estimated pause {:.0} ms); switched at STOP",
                    r.limit_ms, r.pass, r.reason, r.estimate_ms,
                )?;
            }
        }
        for s in &self.switches {
            writeln!(f, "  {s}")?;
        }
        match &self.salvage {
            Some(SalvageReport {
                unavailable: Some(why),
                ..
            }) => writeln!(f, "  no salvage of the source's tap: {why}")?,
            Some(s) => writeln!(
                f,
                "  salvaged from the source's tap ({}) toward {}: {}",
                s.taps.join(", "),
                self.to,
                s.total
            )?,
            None => {}
        }
        writeln!(f, "timeline:")?;
        write!(f, "{}", self.timeline)
    }
}
