//! `netpage migrate --recover`: ends a migration whose `netpage` was killed, from its
//! record (see [`super::intent`]), the way the migration itself would have ended it.
//!
//! The point of no return decides, as in `confirm`: if the destination runs the guest,
//! the migration is finished (every node switched to the new address, the old one
//! drained); otherwise it is undone (the source's migration cancelled if QEMU still runs
//! it, the destination fenced, every node back at the old address with the new one's
//! reverse entry gone, the destination's neighbour entry deleted, the source resumed if
//! it paused). Either way the source gets its own downtime limit back. The record is
//! removed once every table is consistent again.

use std::{
    fmt,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    EdgeSpec, MigrateError, Neighbour, QMP_TIMEOUT,
    confirm::{self, Fate},
    edges::{Edges, Edit},
    intent::{self, Intent, RecordedEdges},
    neighbour::neigh,
};
use crate::{
    failure::Kind,
    node::Node,
    qmp::{MigrationParameters, Qmp},
    timeline::{Source, Timeline},
};

/// How a recovery ended.
#[derive(Clone, Debug, Serialize)]
pub struct RecoverReport {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// `completed` (the guest runs at the destination) or `rolled back`.
    pub status: &'static str,
    /// What went wrong; the record is kept if a table could not be put right.
    pub error: Option<String>,
    /// Whether the record was removed.
    pub record_removed: bool,
    pub timeline: Timeline,
}

impl RecoverReport {
    /// The kind of the failure the report's `error` names: partial while the record is
    /// kept (nodes remain to be brought to one side), else the guest's own trouble.
    pub fn failure_kind(&self) -> Kind {
        if self.record_removed {
            Kind::System
        } else {
            Kind::Partial
        }
    }
}

impl fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "recovery of the migration of {} from {} to {}: {}{}",
            self.vm,
            self.from,
            self.to,
            self.status,
            self.error
                .as_deref()
                .map(|e| format!(", with an error: {e}"))
                .unwrap_or_default()
        )?;
        writeln!(f, "timeline:")?;
        write!(f, "{}", self.timeline)
    }
}

/// Finishes or undoes the recorded migration of `vm`. `cli` is the edges the command
/// names: only used for a migration through the directory (the record names the nodes
/// of this machine itself). `drain` is how long the old address drains on a finish.
pub async fn recover(
    vm: IpAddr,
    state_dir: &Path,
    cli: EdgeSpec,
    drain: Duration,
) -> Result<RecoverReport, MigrateError> {
    let mut timeline = Timeline::new(Instant::now());
    let (rec, path) = Intent::read(state_dir, vm)?;
    if still_running(rec.pid) {
        return Err(MigrateError::StillRunning { vm, pid: rec.pid });
    }
    let spec = match (&rec.edges, cli) {
        // The recorded nodes, as patient as those of the command line.
        (RecordedEdges::Nodes(dirs), cli) => {
            let patience = match &cli {
                EdgeSpec::Nodes(nodes) => nodes.first().map(Node::patience),
                EdgeSpec::Directory { .. } => None,
            };
            EdgeSpec::Nodes(
                dirs.iter()
                    .map(|d| {
                        let n = Node::new(d);
                        match patience {
                            Some(p) => n.with_patience(p),
                            None => n,
                        }
                    })
                    .collect(),
            )
        }
        (RecordedEdges::Directory, d @ EdgeSpec::Directory { .. }) => d,
        (RecordedEdges::Directory, EdgeSpec::Nodes(_)) => {
            return Err(MigrateError::RecoverWithEtcd { vm });
        }
    };
    let mut edges = Edges::open(&spec).await?;
    let mut src = connect("source", &rec.src_qmp).await;
    let mut dst = connect("destination", &rec.dst_qmp).await;
    let (vm, from, to) = (rec.vm, rec.from, rec.to);
    if let Some(s) = &mut src {
        confirm::cancel(s, &mut timeline).await;
    }
    let fate = match &mut dst {
        Some(d) => {
            // A destination that runs the guest is past the point of no return; any
            // other is fenced (a RESUME it reports meanwhile still counts).
            if d.query_status().await.is_ok_and(|s| s.running) {
                Fate::Destination
            } else {
                confirm::fence(d, &mut None, &mut timeline).await
            }
        }
        None => Fate::Source("the destination QEMU is gone".into()),
    };
    let mut errors = Vec::new();
    let status = match fate {
        Fate::Destination => {
            // A VM mapped with method encap has one entry, switched; nothing drains.
            let drain = if edges.by_segmentation(vm).await {
                Duration::ZERO
            } else {
                drain
            };
            let edit = Edit::Finish { drain };
            errors.extend(edges.edit(edit, vm, from, to, &mut timeline).await);
            let draining = if drain.is_zero() {
                String::new()
            } else {
                format!(", {from} draining for {drain:?}")
            };
            timeline.mark(
                Instant::now(),
                Source::Netpage,
                "FINISHED",
                format!("{vm} -> {to}{draining}"),
            );
            if !drain.is_zero() && !edges.drains_end_by_themselves() {
                tokio::time::sleep(drain).await;
                errors.extend(edges.end_drains());
            }
            "completed"
        }
        Fate::Source(what) => {
            eprintln!("netpage: {what}: undoing the migration");
            errors.extend(
                edges
                    .edit(Edit::Rollback, vm, from, to, &mut timeline)
                    .await,
            );
            if let Some((iface, netns)) = &rec.neighbour {
                let n = Neighbour {
                    iface: iface.clone(),
                    netns: netns.clone(),
                    mac: None,
                };
                if let Err(e) = neigh(&n, "del", vm, None)
                    && !e.contains("Cannot find device")
                    && !e.contains("No such file")
                {
                    eprintln!("netpage: warning: removing the destination neighbour entry: {e}");
                }
            }
            timeline.mark(
                Instant::now(),
                Source::Netpage,
                "ROLLED BACK",
                format!("{vm} -> {from}"),
            );
            "rolled back"
        }
    };
    let mut error = None;
    match &mut src {
        Some(s) => {
            let p = MigrationParameters {
                downtime_limit: Some(rec.src_limit_ms),
                ..MigrationParameters::default()
            };
            if let Err(e) = s.migrate_set_parameters(&p).await {
                eprintln!("netpage: warning: restoring the source's downtime limit: {e}");
            }
            if status == "rolled back"
                && rec.src_was_running
                && let Err(e) = confirm::resume(s, &mut timeline).await
            {
                error = Some(e);
            }
        }
        None if status == "rolled back" => {
            error = Some("the source QEMU is gone too: the guest runs nowhere".into());
        }
        None => {}
    }
    let record_removed = errors.is_empty();
    if record_removed {
        intent::remove(&path);
    } else {
        let kept = format!(
            "{}; the record {} is kept: run --recover again once they are reachable",
            errors.join("; "),
            path.display()
        );
        error = Some(error.map_or(kept.clone(), |e| format!("{e}; {kept}")));
    }
    Ok(RecoverReport {
        vm,
        from,
        to,
        status,
        error,
        record_removed,
        timeline,
    })
}

/// A connection to the QEMU at `path`, or `None` (said) if it is gone.
async fn connect(which: &str, path: &Path) -> Option<Qmp> {
    if !path.exists() {
        eprintln!(
            "netpage: the {which} QEMU's QMP socket {} is gone",
            path.display()
        );
        return None;
    }
    match Qmp::connect(path, QMP_TIMEOUT).await {
        Ok(q) => Some(q),
        Err(e) => {
            eprintln!("netpage: warning: the {which} QEMU: {e}");
            None
        }
    }
}

/// Whether `pid` is a `netpage` still running (the migration's own process).
fn still_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "netpage" && pid != std::process::id())
}
