//! `apply`: making a table equal to a table file. The plan is checked whole before any
//! write (bad input, an empty file, the node's capacity); removals go first, so that the
//! installs find room; installs that fail are undone; a real address that passes from one
//! VM to another drains first, as after a switch.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;

use super::{Mapping, OpError, check_mapping, list, remove_mapping, retire};
use crate::{
    pause,
    progress::Progress,
    table::{PageTable, TableError},
};

/// What `apply` changes to make the table equal to a desired set of mappings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub added: Vec<Mapping>,
    /// Mappings whose VM moves, with the real address it leaves.
    pub moved: Vec<Moved>,
    pub removed: Vec<Mapping>,
    pub unchanged: usize,
    /// Mappings left for a later `apply`: their real address is another VM's, still
    /// draining (or about to drain) after it left.
    pub deferred: Vec<Deferred>,
}

/// A VM that `apply` moves from one real address to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
}

/// A mapping of the file that waits for its real address to be free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Deferred {
    pub vm: IpAddr,
    pub real: IpAddr,
    /// The VM whose reverse entry holds the address now.
    pub held_by: IpAddr,
}

impl Plan {
    /// Whether applying the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.moved.is_empty() && self.removed.is_empty()
    }

    /// The (VM, real address) entries the plan installs.
    fn installs(&self) -> Vec<(IpAddr, IpAddr)> {
        self.added
            .iter()
            .map(|m| (m.vm, m.real))
            .chain(self.moved.iter().map(|m| (m.vm, m.to)))
            .collect()
    }
}

/// How `apply` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Plan only.
    pub dry_run: bool,
    /// How long the addresses that moved VMs leave keep translating.
    pub drain: Duration,
    /// The clock of the drains.
    pub now_ms: u64,
    /// Accept a file without mappings (which removes every mapping).
    pub allow_empty: bool,
    /// Entries each map of the table holds, if it is bounded.
    pub capacity: Option<u32>,
}

/// Compares the desired table with the current one. Fails, changing nothing, on an address
/// that cannot be mapped, a family mismatch or a VM or real address given twice. A real
/// address may pass from one VM to another: the file is the whole table.
pub fn plan(t: &impl PageTable, desired: &[Mapping]) -> Result<Plan, OpError> {
    let mut by_vm = BTreeMap::new();
    let mut by_real: BTreeMap<IpAddr, IpAddr> = BTreeMap::new();
    for &m in desired {
        check_mapping(m)?;
        if by_vm.insert(m.vm, m.real).is_some() {
            return Err(OpError::DuplicateVm { vm: m.vm });
        }
        if let Some(a) = by_real.insert(m.real, m.vm) {
            return Err(OpError::DuplicateReal {
                real: m.real,
                a,
                b: m.vm,
            });
        }
    }
    let current = list(t)?;
    let mut plan = Plan::default();
    for m in &current {
        match by_vm.get(&m.vm) {
            None => plan.removed.push(*m),
            Some(&to) if to == m.real => plan.unchanged += 1,
            Some(&to) => plan.moved.push(Moved {
                vm: m.vm,
                from: m.real,
                to,
            }),
        }
    }
    let known: BTreeSet<IpAddr> = current.iter().map(|m| m.vm).collect();
    plan.added = desired
        .iter()
        .filter(|m| !known.contains(&m.vm))
        .copied()
        .collect();
    plan.added.sort();
    // A VA mapped with method encap is not the file's to take (apply manages paging).
    for m in &plan.added {
        if let Some(locator) = t.segment(m.vm)? {
            return Err(OpError::VmExists {
                vm: m.vm,
                real: locator,
            });
        }
    }
    Ok(plan)
}

/// Plans what makes the table equal to `desired` and, unless `dry_run`, carries it out
/// ([`plan`], [`defer_handovers`], a check of the capacity, then [`apply`]); returns the
/// plan. An empty `desired` is refused unless `allow_empty`.
pub fn make_equal(
    t: &mut impl PageTable,
    desired: &[Mapping],
    opts: &ApplyOptions,
) -> Result<Plan, OpError> {
    make_equal_showing(t, desired, opts, &Progress::hidden())
}

/// [`make_equal`], its stages shown by `progress`.
pub fn make_equal_showing(
    t: &mut impl PageTable,
    desired: &[Mapping],
    opts: &ApplyOptions,
    progress: &Progress,
) -> Result<Plan, OpError> {
    progress.stage(format!(
        "planning {} mappings against the table",
        desired.len()
    ));
    if desired.is_empty() && !opts.allow_empty {
        return Err(OpError::EmptyTable {
            mappings: list(t)?.len(),
        });
    }
    let mut plan = plan(t, desired)?;
    defer_handovers(t, &mut plan, opts.drain)?;
    if let Some(capacity) = opts.capacity {
        check_room(t, &plan, capacity)?;
    }
    if !opts.dry_run {
        apply_showing(t, &plan, opts.drain, opts.now_ms, progress)?;
    }
    Ok(plan)
}

/// With a drain, takes out of the plan the installs whose real address another VM holds
/// (one that moves away in this plan, or whose old address still drains) and that the
/// plan's removals do not free: they wait for the drain to end, as `switch` would. A VM
/// whose move waits stays where it is.
pub fn defer_handovers(
    t: &impl PageTable,
    plan: &mut Plan,
    drain: Duration,
) -> Result<(), TableError> {
    if drain.is_zero() {
        return Ok(());
    }
    let removed: BTreeSet<IpAddr> = plan.removed.iter().map(|m| m.vm).collect();
    let held = |vm: IpAddr, real: IpAddr| -> Result<Option<IpAddr>, TableError> {
        Ok(t.reverse(real)?
            .filter(|&owner| owner != vm && !removed.contains(&owner)))
    };
    let mut deferred = Vec::new();
    let added = split_held(
        std::mem::take(&mut plan.added),
        |m| (m.vm, m.real),
        &held,
        &mut deferred,
    )?;
    let moved = split_held(
        std::mem::take(&mut plan.moved),
        |m| (m.vm, m.to),
        &held,
        &mut deferred,
    )?;
    plan.added = added;
    plan.moved = moved;
    plan.deferred = deferred;
    Ok(())
}

/// Keeps of `items` those to install now, and adds to `deferred` those whose real address
/// `held` says another VM holds; `addrs` gives an item's VM and the real address it takes.
fn split_held<M>(
    items: Vec<M>,
    addrs: impl Fn(&M) -> (IpAddr, IpAddr),
    held: &impl Fn(IpAddr, IpAddr) -> Result<Option<IpAddr>, TableError>,
    deferred: &mut Vec<Deferred>,
) -> Result<Vec<M>, TableError> {
    let mut now = Vec::new();
    for m in items {
        let (vm, real) = addrs(&m);
        match held(vm, real)? {
            Some(held_by) => deferred.push(Deferred { vm, real, held_by }),
            None => now.push(m),
        }
    }
    Ok(now)
}

/// Fails unless the table has room, in each map of each family, for what it holds at its
/// fullest while the plan is carried out (after the removals, with every install in and
/// no old address of a moved VM gone yet): checked before any write, so that a full table
/// is not changed half-way.
fn check_room(t: &impl PageTable, plan: &Plan, capacity: u32) -> Result<(), OpError> {
    let mut fwd: BTreeSet<IpAddr> = t.forward_entries()?.into_iter().map(|e| e.0).collect();
    let mut rev: BTreeSet<IpAddr> = t.reverse_entries()?.into_iter().map(|e| e.0).collect();
    let drains = t.drains()?;
    for m in &plan.removed {
        fwd.remove(&m.vm);
        rev.remove(&m.real);
        for d in drains.iter().filter(|d| d.virt == m.vm) {
            rev.remove(&d.real);
        }
    }
    for (vm, real) in plan.installs() {
        fwd.insert(vm);
        rev.insert(real);
    }
    for (map, keys) in [("V2R", &fwd), ("R2V", &rev)] {
        for v4 in [true, false] {
            let need = keys.iter().filter(|a| a.is_ipv4() == v4).count();
            if need > capacity as usize {
                return Err(OpError::NoRoom {
                    family: if v4 { "IPv4" } else { "IPv6" },
                    map,
                    need,
                    capacity,
                });
            }
        }
    }
    Ok(())
}

/// Carries out a plan: the removals first (they free addresses and room), then all R2V
/// entries in one batch, then all V2R entries in one batch; moved VMs' old real addresses
/// drain as after a switch. If a batch fails, the installs are undone (the removals stay).
pub fn apply(
    t: &mut impl PageTable,
    plan: &Plan,
    drain: Duration,
    now_ms: u64,
) -> Result<(), OpError> {
    apply_showing(t, plan, drain, now_ms, &Progress::hidden())
}

/// [`apply`], shown by `progress` as it goes: one step per removal, per install saved
/// and per counter made, and one per batch.
pub fn apply_showing(
    t: &mut impl PageTable,
    plan: &Plan,
    drain: Duration,
    now_ms: u64,
    progress: &Progress,
) -> Result<(), OpError> {
    let installs = plan.installs();
    progress.set_length((plan.removed.len() + 2 * installs.len() + 2) as u64);
    progress.stage(format!("removing {} mappings", plan.removed.len()));
    plan.removed.iter().try_for_each(|&m| {
        progress.inc(1);
        remove_mapping(t, m)
    })?;
    pause::at(|| "apply-removed".to_owned());
    progress.stage(format!(
        "saving the entries {} installs replace",
        installs.len()
    ));
    let mut before = Vec::with_capacity(installs.len());
    for &(vm, real) in &installs {
        before.push((t.forward(vm)?, t.reverse(real)?, t.stats(vm)?.is_some()));
        progress.inc(1);
    }
    let reverse: Vec<_> = installs.iter().map(|&(vm, real)| (real, vm)).collect();
    let done = (|| {
        progress.stage("making the mappings' counters");
        for &(vm, _) in &installs {
            t.create_stats(vm)?;
            progress.inc(1);
        }
        progress.stage(format!(
            "installing {} reverse entries (R2V)",
            reverse.len()
        ));
        t.set_reverse_many(&reverse)?;
        progress.inc(1);
        pause::at(|| "apply-reverse".to_owned());
        progress.stage(format!("installing {} mappings (V2R)", installs.len()));
        let set = t.set_forward_many(&installs);
        progress.inc(1);
        set
    })();
    if let Err(e) = done {
        let undo = undo_installs(t, &installs, &before).err();
        return Err(OpError::ApplyFailed {
            failed: e,
            removed: plan.removed.len(),
            undo: undo.map(|u| u.to_string()),
        });
    }
    pause::at(|| "apply-forward".to_owned());
    for &(_, real) in &installs {
        t.remove_drain(real)?;
    }
    // An address that another VM takes over (with no drain) does not drain.
    for m in plan
        .moved
        .iter()
        .filter(|m| !installs.iter().any(|i| i.1 == m.from))
    {
        retire(t, m.vm, m.from, drain, now_ms)?;
    }
    Ok(())
}

/// Puts back the entries that the installs replaced or added, and the counters they made.
fn undo_installs(
    t: &mut impl PageTable,
    installs: &[(IpAddr, IpAddr)],
    before: &[(Option<IpAddr>, Option<IpAddr>, bool)],
) -> Result<(), TableError> {
    for (&(vm, real), &(fwd, rev, stats)) in installs.iter().zip(before) {
        match fwd {
            Some(old) => t.set_forward(vm, old)?,
            None => t.remove_forward(vm)?,
        }
        match rev {
            Some(old) => t.set_reverse(real, old)?,
            None => t.remove_reverse(real)?,
        }
        if !stats {
            t.remove_stats(vm)?;
        }
    }
    Ok(())
}
