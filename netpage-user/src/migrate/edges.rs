//! The page tables a migration switches: this machine's nodes (pin directories, one V2R
//! update each) or the directory on etcd (one transaction that every edge's agent
//! applies and confirms), behind the same few steps: locate, reserve, switch, edit.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use netpage_common::counters::Counter;
use tokio::task::JoinHandle;

use super::{MigrateError, NodeSwitch};
use crate::{
    clock,
    directory::{
        Committed, Confirmation, DirError, Directory, EtcdOptions, Reservation, SegmentMove,
        laggards,
    },
    node::{self, Node, OpenNode},
    ops,
    table::{Drain, PageTable, TableError},
    timeline::{Source, Timeline},
};

/// Where a migration's page tables are.
#[derive(Clone, Debug)]
pub enum EdgeSpec {
    /// Nodes of this machine (their pin directories, and how long to wait for their
    /// locks).
    Nodes(Vec<Node>),
    /// The directory on etcd; every node's agent applies it. `confirm` bounds each wait
    /// for the nodes' confirmations.
    Directory {
        etcd: EtcdOptions,
        confirm: Duration,
    },
}

/// A change that takes back or completes a migration's switch; the same on a node's
/// table and on the directory.
#[derive(Clone, Copy, Debug)]
pub(super) enum Edit {
    /// Everything back as it was: the VM at its old address, the new address's reverse
    /// entry removed.
    Rollback,
    /// The migration completed: the old address drains for `drain` from now.
    Retire { drain: Duration },
    /// A migration whose netpage was killed completed all the same: the VM at its new
    /// address (its reverse entry there), the old address draining as after `Retire`.
    Finish { drain: Duration },
}

impl Edit {
    /// Makes the edit on `t`, whose clock reads `now_ms`.
    fn apply<T: PageTable>(
        self,
        t: &mut T,
        vm: IpAddr,
        from: IpAddr,
        to: IpAddr,
        now_ms: u64,
    ) -> Result<(), TableError> {
        // A mapping of method encap: one segment entry, nothing reserved, nothing drains.
        if t.segment(vm)?.is_some() {
            let at = match self {
                Edit::Rollback => from,
                Edit::Retire { .. } => return Ok(()),
                Edit::Finish { .. } => to,
            };
            if t.segment(vm)? != Some(at) {
                t.set_segment(vm, at)?;
            }
            return Ok(());
        }
        match self {
            Edit::Rollback => {
                if t.forward(vm)? != Some(from) {
                    t.set_forward(vm, from)?;
                }
                t.remove_drain(from)?;
                ops::remove_reverse_of(t, to, vm)
            }
            Edit::Retire { drain } => {
                t.remove_drain(to)?;
                ops::retire(t, vm, from, drain, now_ms).map(drop)
            }
            Edit::Finish { drain } => {
                if t.reverse(to)? != Some(vm) {
                    t.set_reverse(to, vm)?;
                }
                if t.forward(vm)? != Some(to) {
                    t.set_forward(vm, to)?;
                }
                Edit::Retire { drain }.apply(t, vm, from, to, now_ms)
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Edit::Rollback => "rolling back",
            Edit::Retire { .. } => "draining the old address",
            Edit::Finish { .. } => "finishing the switch",
        }
    }
}

/// The open page tables of one migration.
pub(super) enum Edges {
    Local(Vec<(PathBuf, OpenNode)>),
    Directory(Box<DirEdges>),
}

/// The directory, the migration's reservation in it (or, for a VM mapped with method
/// `encap`, its move made ready), and the nodes' confirmations of its switch, heard in
/// the background.
pub(super) struct DirEdges {
    dir: Directory,
    confirm: Duration,
    reservation: Option<Reservation>,
    segment: Option<SegmentMove>,
    confirming: Option<Confirming>,
}

/// The wait for the nodes' confirmations of a switch transaction.
struct Confirming {
    sent: Instant,
    /// `sent` by the wall clock, which the nodes' reports use.
    sent_unix: SystemTime,
    /// The wait, until awaited; then what it heard.
    task: Option<JoinHandle<Result<Vec<Confirmation>, DirError>>>,
    heard: Vec<Confirmation>,
}

impl Confirming {
    /// The nodes' confirmations, waited for once.
    async fn hear(&mut self) -> &[Confirmation] {
        if let Some(task) = self.task.take() {
            self.heard = match task.await {
                Ok(Ok(cs)) => cs,
                Ok(Err(e)) => {
                    eprintln!("netpage: warning: hearing the nodes' confirmations: {e:#}");
                    Vec::new()
                }
                Err(e) => {
                    eprintln!("netpage: warning: hearing the nodes' confirmations: {e}");
                    Vec::new()
                }
            };
        }
        &self.heard
    }
}

/// The nodes' confirmations of the directory's switch.
pub(super) struct Confirmed {
    pub switches: Vec<NodeSwitch>,
    /// The live nodes that did not confirm in time: the directory keeps the switch, and
    /// they converge when they return.
    pub unconfirmed: Vec<String>,
    /// The last node's map update, by its clock.
    pub last_update: Option<SystemTime>,
}

/// What a switch did on every table.
pub(super) struct Switched {
    pub switches: Vec<NodeSwitch>,
    /// The nodes whose update failed, and why.
    pub failed: Vec<String>,
}

impl Edges {
    /// Opens every node to write (refused on a node an agent manages) and ends the drains
    /// that are over, or connects to the directory.
    pub(super) async fn open(spec: &EdgeSpec) -> Result<Self, MigrateError> {
        match spec {
            EdgeSpec::Nodes(nodes) => {
                let opened =
                    node::open_many_for_write(nodes).map_err(|(i, source)| MigrateError::Node {
                        dir: nodes[i].dir().to_owned(),
                        source,
                    })?;
                let mut local = Vec::new();
                for (node, mut n) in nodes.iter().zip(opened) {
                    ops::gc(&mut n.table, clock::node_ms())?;
                    local.push((node.dir().to_owned(), n));
                }
                Ok(Edges::Local(local))
            }
            EdgeSpec::Directory { etcd, confirm } => Ok(Edges::Directory(Box::new(DirEdges {
                dir: Directory::connect(etcd).await?,
                confirm: *confirm,
                reservation: None,
                segment: None,
                confirming: None,
            }))),
        }
    }

    /// Where the VM is now (every node must agree), checking that it may move to `to`.
    pub(super) async fn locate(&mut self, vm: IpAddr, to: IpAddr) -> Result<IpAddr, MigrateError> {
        match self {
            Edges::Local(nodes) => {
                let named: Vec<(String, &OpenNode)> = nodes
                    .iter()
                    .map(|(dir, n)| (dir.display().to_string(), n))
                    .collect();
                let tables = || named.iter().map(|(d, n)| (d.as_str(), &n.table));
                if ops::segment::is_segment(tables(), vm)? {
                    return Ok(ops::segment::locate(tables(), vm, to)?);
                }
                Ok(ops::locate(tables(), vm, to)?)
            }
            Edges::Directory(d) => {
                let view = d.dir.view().await?;
                if view.read_seg(vm).is_some() {
                    // The move's own checks are `locate`'s, and it finds where the VM is.
                    let m = SegmentMove::new(view, vm, to)?;
                    let from = m.from;
                    d.segment = Some(m);
                    return Ok(from);
                }
                Ok(ops::check_switch(&view, vm, to)?)
            }
        }
    }

    /// R2V[to] = vm everywhere before the migration starts: on every node or on none, or
    /// reserved in the directory and confirmed by every live node (and the lease of the
    /// old address's drain until `drain_until` granted). `from` is where
    /// [`Edges::locate`] found the VM.
    pub(super) async fn reserve(
        &mut self,
        vm: IpAddr,
        from: IpAddr,
        to: IpAddr,
        drain_until: u64,
        timeline: &mut Timeline,
    ) -> Result<(), MigrateError> {
        match self {
            Edges::Local(nodes) => {
                // A mapping of method encap has no reverse entry to reserve.
                if nodes[0].1.table.segment(vm)?.is_some() {
                    return Ok(());
                }
                for i in 0..nodes.len() {
                    if let Err(e) = nodes[i].1.table.set_reverse(to, vm) {
                        for (_, n) in &mut nodes[..i] {
                            let _ = n.table.remove_reverse(to);
                        }
                        return Err(MigrateError::Table(e));
                    }
                }
                timeline.mark(
                    Instant::now(),
                    Source::Netpage,
                    "R2V INSTALLED",
                    format!("{to} -> {vm}"),
                );
            }
            // A mapping of method encap has no reverse entry to reserve, nor a drain.
            Edges::Directory(d) if d.segment.is_some() => {}
            Edges::Directory(d) => {
                let mut r = d.dir.reserve_move(vm, to, Some(d.confirm)).await?;
                if let Err(e) = d.dir.grant_drain(&mut r, drain_until).await {
                    d.dir.release_move(&r).await;
                    return Err(e.into());
                }
                if r.from != from {
                    d.dir.release_move(&r).await;
                    return Err(DirError::Conflict {
                        vm,
                        now: r.from.to_string(),
                    }
                    .into());
                }
                timeline.mark(
                    r.reserved_at,
                    Source::Netpage,
                    "RESERVED",
                    format!("{to} -> {vm} at revision {}", r.revision),
                );
                mark_confirmations(timeline, r.reserved_at, &r.confirmations, "R2V");
                if !r.late.is_empty() {
                    eprintln!(
                        "netpage: warning: {} did not confirm the reservation of {to} within {:?}",
                        r.late.join(", "),
                        d.confirm
                    );
                }
                d.reservation = Some(r);
            }
        }
        Ok(())
    }

    /// V2R[vm] = to: one update per node, in the order the nodes were given and as fast
    /// as they follow one another, or the directory's one transaction. The old address keeps translating
    /// (in the directory, under a drain lease until `drain_until`, so that nothing
    /// outlives a migration that never finishes).
    ///
    /// The nodes' confirmations of the directory's switch are heard in the background
    /// ([`Edges::confirmed`]): the migration goes on at once. An agent applies a
    /// revision within milliseconds, but its report is an etcd write of its own, which
    /// may take tens of milliseconds more; waiting for it would hold the guest running
    /// at the source after the switch, and so lengthen every client's gap.
    pub(super) async fn switch(
        &mut self,
        vm: IpAddr,
        from: IpAddr,
        to: IpAddr,
        drain_until: u64,
        timeline: &mut Timeline,
    ) -> Result<Switched, String> {
        let mut out = Switched {
            switches: Vec::new(),
            failed: Vec::new(),
        };
        match self {
            Edges::Local(nodes) => {
                // The old address drains from the switch on, as in the directory, so that
                // packets still in flight to it are forwarded. Recorded first: while V2R
                // still names it nothing is forwarded, and the V2R updates follow one
                // another as fast as before.
                // `drain_until` is Unix time, the directory's clock; a node counts boot time.
                let deadline_ms = clock::unix_to_node(drain_until);
                let encap = matches!(nodes[0].1.table.segment(vm), Ok(Some(_)));
                for (dir, n) in nodes.iter_mut().filter(|_| !encap) {
                    let drain = Drain {
                        real: from,
                        virt: vm,
                        deadline_ms,
                    };
                    if let Err(e) = n.table.set_drain(drain) {
                        out.failed.push(format!("{}: {e}", dir.display()));
                    }
                }
                for (dir, n) in nodes {
                    let t = Instant::now();
                    let r = if encap {
                        n.table.set_segment(vm, to)
                    } else {
                        n.table.set_forward(vm, to)
                    };
                    let us = t.elapsed().as_nanos() as f64 / 1000.0;
                    let at_unix_ms = clock::unix_ms_f64();
                    let node = dir.display().to_string();
                    match r {
                        Ok(()) => {
                            timeline.mark(
                                Instant::now(),
                                Source::Netpage,
                                format!("SWITCHED {node}"),
                                format!("{us:.1} us"),
                            );
                            out.switches.push(NodeSwitch::local(node, us, at_unix_ms));
                        }
                        Err(e) => out.failed.push(format!("{node}: {e}")),
                    }
                }
            }
            Edges::Directory(d) => {
                let (done, late) = match (&d.segment, &d.reservation) {
                    (Some(m), _) => (d.dir.commit_segment_move(m).await, Vec::new()),
                    (None, Some(r)) => (
                        d.dir.commit_move(r, Some(drain_until)).await,
                        r.late.clone(),
                    ),
                    (None, None) => return Err("switching before the reservation".into()),
                };
                let done = done.map_err(|e| format!("{e:#}"))?;
                timeline.mark(
                    done.sent + Duration::from_secs_f64(done.txn_ms / 1e3),
                    Source::Netpage,
                    "SWITCHED",
                    format!(
                        "{vm} -> {to} at revision {} ({:.1} ms)",
                        done.revision, done.txn_ms
                    ),
                );
                d.hear_confirmations(done, late);
            }
        }
        Ok(out)
    }

    /// Waits until every live node has applied the last switch: at once on this machine's
    /// nodes, which `switch` updated itself; through the directory, until each node's
    /// agent has confirmed it (or `--confirm-timeout` passed). Returns whether every node
    /// has.
    pub(super) async fn applied(&mut self) -> bool {
        if let Edges::Directory(d) = self
            && let Some(c) = &mut d.confirming
        {
            c.hear().await;
        }
        self.known_applied()
    }

    /// Whether every live node is known to have applied the last switch (see
    /// [`Edges::applied`]), without waiting.
    pub(super) fn known_applied(&self) -> bool {
        match self {
            Edges::Local(_) => true,
            Edges::Directory(d) => d.confirming.as_ref().is_some_and(|c| {
                c.task.is_none() && !c.heard.is_empty() && laggards(&c.heard).is_empty()
            }),
        }
    }

    /// The nodes' confirmations of the directory's last switch, once heard (`None` for
    /// this machine's nodes, or if nothing was switched), each marked in the timeline.
    pub(super) async fn confirmed(&mut self, timeline: &mut Timeline) -> Option<Confirmed> {
        let Edges::Directory(d) = self else {
            return None;
        };
        let mut c = d.confirming.take()?;
        let confirmations = c.hear().await.to_vec();
        mark_confirmations(timeline, c.sent, &confirmations, "V2R");
        let last_update = confirmations
            .iter()
            .filter_map(|c| c.propagation_ms)
            .max_by(f64::total_cmp)
            .map(|ms| c.sent_unix + Duration::from_secs_f64(ms / 1e3));
        Some(Confirmed {
            switches: confirmations
                .iter()
                .filter(|c| c.confirmed)
                .map(NodeSwitch::confirmed)
                .collect(),
            unconfirmed: laggards(&confirmations),
            last_update,
        })
    }

    /// Makes `edit` on every node (each tried; the failures named), or as one change of
    /// the directory that the live nodes confirm.
    pub(super) async fn edit(
        &mut self,
        edit: Edit,
        vm: IpAddr,
        from: IpAddr,
        to: IpAddr,
        timeline: &mut Timeline,
    ) -> Vec<String> {
        match self {
            Edges::Local(nodes) => nodes
                .iter_mut()
                .filter_map(|(dir, n)| {
                    let r = edit.apply(&mut n.table, vm, from, to, clock::node_ms());
                    r.err()
                        .map(|e| format!("node {}: {}: {e}", dir.display(), edit.name()))
                })
                .collect(),
            Edges::Directory(d) => {
                if let (Edit::Rollback, Some(r)) = (edit, &d.reservation)
                    && !is_at(&mut d.dir, vm, to).await
                {
                    // Nothing switched: only the reservation is taken back.
                    d.dir.release_move(r).await;
                    return Vec::new();
                }
                let sent = Instant::now();
                let changed = d
                    .dir
                    .change(|v| Ok(edit.apply(v, vm, from, to, clock::unix_ms())?))
                    .await;
                let rev = match changed {
                    Ok(((), rev)) => rev,
                    Err(e) => return vec![format!("the directory: {}: {e:#}", edit.name())],
                };
                match d.dir.wait_applied(rev, d.confirm, sent, &[]).await {
                    Ok(c) => {
                        mark_confirmations(timeline, sent, &c, edit.name());
                        laggards(&c)
                            .into_iter()
                            .map(|n| format!("node {n} did not confirm {} in time", edit.name()))
                            .collect()
                    }
                    Err(e) => vec![format!("the directory: {}: {e:#}", edit.name())],
                }
            }
        }
    }

    /// Whether `vm` is mapped with method encap: a segment entry, which reserves nothing
    /// and does not drain (a failure to read counts as no).
    pub(super) async fn by_segmentation(&mut self, vm: IpAddr) -> bool {
        match self {
            Edges::Local(nodes) => matches!(nodes[0].1.table.segment(vm), Ok(Some(_))),
            Edges::Directory(d) => d.dir.view().await.is_ok_and(|v| v.read_seg(vm).is_some()),
        }
    }

    /// Whether the edges end drains by themselves (the directory's leases, which every
    /// agent follows), so that a completed migration need not wait to end them.
    pub(super) fn drains_end_by_themselves(&self) -> bool {
        matches!(self, Edges::Directory(_))
    }

    /// The `forwarded` counter of every node of this machine, by node: packets that arrived
    /// for a real address that drains and were sent on to the current one (every VM's).
    /// The directory's nodes count on their own machines: none here.
    pub(super) fn forwarded(&self) -> Vec<(String, u64)> {
        let Edges::Local(nodes) = self else {
            return Vec::new();
        };
        nodes
            .iter()
            .filter_map(|(dir, n)| {
                let t = n.counters().ok()?;
                Some((dir.display().to_string(), t.get(Counter::Forwarded)))
            })
            .collect()
    }

    /// Ends the drains that are over on every node of this machine; the failures named.
    pub(super) fn end_drains(&mut self) -> Vec<String> {
        let Edges::Local(nodes) = self else {
            return Vec::new();
        };
        nodes
            .iter_mut()
            .filter_map(|(dir, n)| {
                let r = ops::gc(&mut n.table, clock::node_ms());
                r.err()
                    .map(|e| format!("node {}: ending the drain: {e}", dir.display()))
            })
            .collect()
    }
}

impl DirEdges {
    /// Hears the nodes' confirmations of the switch `done` in the background, not waiting
    /// again for the nodes in `late`.
    fn hear_confirmations(&mut self, done: Committed, late: Vec<String>) {
        let mut dir = self.dir.clone();
        let confirm = self.confirm;
        let task = tokio::spawn(async move {
            dir.wait_applied(done.revision, confirm, done.sent, &late)
                .await
        });
        self.confirming = Some(Confirming {
            sent: done.sent,
            sent_unix: SystemTime::now() - done.sent.elapsed(),
            task: Some(task),
            heard: Vec::new(),
        });
    }
}

/// Whether the directory has the VM at `to` (a failure to read counts as yes: a
/// rollback then goes through the directory's change, which checks for itself).
async fn is_at(dir: &mut Directory, vm: IpAddr, to: IpAddr) -> bool {
    match dir.view().await {
        Ok(v) => v.read_vm(vm).is_some_and(|r| r.value.real == to),
        Err(_) => true,
    }
}

/// A timeline mark for each node that confirmed `what`, at the moment it was heard.
fn mark_confirmations(timeline: &mut Timeline, sent: Instant, cs: &[Confirmation], what: &str) {
    for c in cs {
        let (when, detail) = match (c.confirmed, c.after_ms) {
            (true, Some(ms)) => (
                sent + Duration::from_secs_f64(ms / 1e3),
                format!(
                    "{what}: confirmed after {ms:.1} ms, map updated after {:.1} ms",
                    c.propagation_ms.unwrap_or(f64::NAN)
                ),
            ),
            _ if c.left => (Instant::now(), format!("{what}: left the directory")),
            _ => (Instant::now(), format!("{what}: not confirmed")),
        };
        timeline.mark(when, Source::Netpage, format!("NODE {}", c.node), detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{directory::view_with, table::Drain};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The directory just after a migration's switch of 198.19.0.10 from A to B: B
    /// reserved, the VM at B, A draining under the switch's lease.
    fn switched() -> (crate::directory::View, IpAddr, IpAddr, IpAddr) {
        let (vm, a, b) = (ip("198.19.0.10"), ip("198.18.10.100"), ip("198.18.20.100"));
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        v.set_reverse(b, vm).unwrap();
        v.set_forward(vm, b).unwrap();
        v.set_drain(Drain {
            real: a,
            virt: vm,
            deadline_ms: 1_000_000,
        })
        .unwrap();
        (v, vm, a, b)
    }

    /// Asserts that `v` maps `vm` to `real`, and `real` back to `vm`.
    #[track_caller]
    fn assert_maps(v: &crate::directory::View, vm: IpAddr, real: IpAddr) {
        assert_eq!(v.forward(vm).unwrap(), Some(real));
        assert_eq!(v.reverse(real).unwrap(), Some(vm));
    }

    #[test]
    fn a_rollback_puts_everything_back() {
        let (mut v, vm, a, b) = switched();
        Edit::Rollback.apply(&mut v, vm, a, b, 5_000).unwrap();
        assert_maps(&v, vm, a);
        assert_eq!(v.reverse(b).unwrap(), None, "the reservation is gone");
        assert!(v.drains().unwrap().is_empty(), "A no longer drains");
    }

    #[test]
    fn finishing_an_interrupted_migration_switches_and_drains() {
        let (vm, a, b) = (ip("198.19.0.10"), ip("198.18.10.100"), ip("198.18.20.100"));
        // Killed after the reservation, before the switch.
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        v.set_reverse(b, vm).unwrap();
        let finish = Edit::Finish {
            drain: Duration::from_secs(2),
        };
        finish.apply(&mut v, vm, a, b, 5_000).unwrap();
        assert_maps(&v, vm, b);
        assert_eq!(v.drains().unwrap().len(), 1, "A drains");
        // Killed after the switch: the same end.
        let (mut w, ..) = switched();
        finish.apply(&mut w, vm, a, b, 5_000).unwrap();
        assert_eq!(w.forward(vm).unwrap(), Some(b));
        assert_eq!(w.drains().unwrap(), v.drains().unwrap());
    }

    #[test]
    fn completion_drains_the_old_address_from_now() {
        let (mut v, vm, a, b) = switched();
        let retire = Edit::Retire {
            drain: Duration::from_secs(2),
        };
        retire.apply(&mut v, vm, a, b, 5_000).unwrap();
        assert_maps(&v, vm, b);
        assert_eq!(
            v.drains().unwrap(),
            vec![Drain {
                real: a,
                virt: vm,
                deadline_ms: 7_000
            }]
        );
        let (mut v, ..) = switched();
        let at_once = Edit::Retire {
            drain: Duration::ZERO,
        };
        at_once.apply(&mut v, vm, a, b, 5_000).unwrap();
        assert_eq!(v.reverse(a).unwrap(), None, "no drain: A is removed");
        assert!(v.drains().unwrap().is_empty());
    }
}
