//! The mapping operations (add, delete, switch, drain, apply) and their rules, over any
//! [`PageTable`], so that the same protocol drives a local node or, later, a remote one.
//!
//! Every operation checks everything first and writes only when the whole request is
//! valid: bad input changes nothing.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    pause,
    table::{Drain, PageTable, TableError},
};

/// A VM's mapping: its virtual address and the real address where it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub vm: IpAddr,
    pub real: IpAddr,
}

/// Why a mapping operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(
        "{vm} and {real} are of different address families: a VM's addresses must both be IPv4 or both IPv6"
    )]
    FamilyMismatch { vm: IpAddr, real: IpAddr },
    #[error("{role} {addr} cannot be mapped: it is {why}")]
    UnusableAddress {
        role: Role,
        addr: IpAddr,
        why: Unusable,
    },
    #[error(
        "VM {vm} is already mapped (to {real}); use `netpage switch --vm {vm} --to RA` to move it"
    )]
    VmExists { vm: IpAddr, real: IpAddr },
    #[error("VM {vm} is not in the page table; add it with `netpage map add --vm {vm} --real RA`")]
    UnknownVm { vm: IpAddr },
    #[error("real address {real} is already used by VM {owner}{}", in_use_hint(*.draining, *.orphan))]
    RealInUse {
        real: IpAddr,
        owner: IpAddr,
        draining: bool,
        /// Neither mapped nor draining: a reverse entry left behind.
        orphan: bool,
    },
    #[error("VM {vm} appears twice in the table file")]
    DuplicateVm { vm: IpAddr },
    #[error("real address {real} is given to both {a} and {b} in the table file")]
    DuplicateReal { real: IpAddr, a: IpAddr, b: IpAddr },
    #[error("this node has {vm} at {here}, another at {elsewhere}; make the tables agree first")]
    Disagree {
        vm: IpAddr,
        here: IpAddr,
        elsewhere: IpAddr,
    },
    #[error("no node to change")]
    NoNode,
    #[error("{failed} (what the switch had changed on the nodes is undone)")]
    Undone { failed: Box<OpError> },
    #[error(
        "{failed}; undoing what was done before failed too ({undo}): run `netpage check --repair` on every node, then the switch again"
    )]
    NotUndone { failed: Box<OpError>, undo: String },
    #[error("node {node}")]
    OnNode {
        node: String,
        #[source]
        source: Box<OpError>,
    },
    #[error(
        "the table file has no mapping: applying it would remove all {mappings} mappings of the table; pass --allow-empty if that is what you want"
    )]
    EmptyTable { mappings: usize },
    #[error(
        "the table would need {need} {family} entries in {map} at its fullest, more than the {capacity} it holds; nothing was changed (a moved VM's new real address is installed before its old one goes, which then drains for --drain: `netpage gc --now` frees the addresses that drain, and smaller steps need less room)"
    )]
    NoRoom {
        family: &'static str,
        map: &'static str,
        need: usize,
        capacity: u32,
    },
    #[error("{failed}; the installs are undone{}{}", removals_note(*.removed), undo_note(.undo.as_deref()))]
    ApplyFailed {
        failed: TableError,
        removed: usize,
        undo: Option<String>,
    },
    #[error(
        "VM {vm} is mapped with method encap on some nodes but not on this one; make the tables agree first"
    )]
    NotSegment { vm: IpAddr },
    #[error(transparent)]
    Table(#[from] TableError),
}

fn removals_note(removed: usize) -> String {
    if removed == 0 {
        String::new()
    } else {
        format!(" (the {removed} removals, done first, stay)")
    }
}

fn undo_note(undo: Option<&str>) -> String {
    undo.map_or(String::new(), |u| {
        format!("; undoing them failed too ({u}): run `netpage check --repair`")
    })
}

fn in_use_hint(draining: bool, orphan: bool) -> &'static str {
    if orphan {
        " (a reverse entry left behind, with no mapping nor drain: `netpage check --repair` removes it)"
    } else if draining {
        " (still draining after a switch; wait for the drain to end or run `netpage gc --now`)"
    } else {
        ""
    }
}

/// Which address of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Vm,
    Real,
    Locator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Vm => "VM address",
            Role::Real => "real address",
            Role::Locator => "locator",
        })
    }
}

/// Why an address cannot be a mapping's VM or real address: the datapath rewrites the
/// unicast source or destination of one host, which these addresses do not name. (An
/// IPv4-mapped IPv6 address stands for an IPv4 host, whose packets carry its IPv4 address.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("a multicast address")]
    Multicast,
    #[error("the IPv4 broadcast address")]
    Broadcast,
    #[error("the unspecified address")]
    Unspecified,
    #[error("a loopback address")]
    Loopback,
    #[error("an IPv4-mapped IPv6 address; map {0} as an IPv4 address instead")]
    Ipv4Mapped(Ipv4Addr),
}

/// Why `addr` cannot be one of a mapping's addresses, if it cannot.
pub fn unusable(addr: IpAddr) -> Option<Unusable> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some(Unusable::Unspecified),
        IpAddr::V4(a) if a.is_broadcast() => Some(Unusable::Broadcast),
        IpAddr::V4(a) if a.is_multicast() => Some(Unusable::Multicast),
        IpAddr::V4(a) if a.is_loopback() => Some(Unusable::Loopback),
        IpAddr::V4(_) => None,
        IpAddr::V6(a) if a.is_unspecified() => Some(Unusable::Unspecified),
        IpAddr::V6(a) if a.is_multicast() => Some(Unusable::Multicast),
        IpAddr::V6(a) if a.is_loopback() => Some(Unusable::Loopback),
        IpAddr::V6(a) => a.to_ipv4_mapped().map(Unusable::Ipv4Mapped),
    }
}

/// Checks that a mapping's addresses can be mapped, and to each other.
fn check_mapping(m: Mapping) -> Result<(), OpError> {
    for (role, addr) in [(Role::Vm, m.vm), (Role::Real, m.real)] {
        if let Some(why) = unusable(addr) {
            return Err(OpError::UnusableAddress { role, addr, why });
        }
    }
    check_family(m)
}

fn check_family(m: Mapping) -> Result<(), OpError> {
    if m.vm.is_ipv4() == m.real.is_ipv4() {
        Ok(())
    } else {
        Err(OpError::FamilyMismatch {
            vm: m.vm,
            real: m.real,
        })
    }
}

/// Fails if `real` is in R2V for a VM other than `vm`.
fn check_real_free(t: &impl PageTable, vm: IpAddr, real: IpAddr) -> Result<(), OpError> {
    match t.reverse(real)? {
        Some(owner) if owner != vm => {
            let moved = t.forward(owner)? != Some(real);
            let drains = moved
                && t.drains()?
                    .iter()
                    .any(|d| d.real == real && d.virt == owner);
            Err(OpError::RealInUse {
                real,
                owner,
                draining: drains,
                orphan: moved && !drains,
            })
        }
        _ => Ok(()),
    }
}

/// Installs a new mapping: R2V first, then V2R, then its counters.
pub fn add(t: &mut impl PageTable, m: Mapping) -> Result<(), OpError> {
    check_mapping(m)?;
    if let Some(real) = t.forward(m.vm)?.or(t.segment(m.vm)?) {
        return Err(OpError::VmExists { vm: m.vm, real });
    }
    check_real_free(t, m.vm, m.real)?;
    t.create_stats(m.vm)?;
    pause::at(|| "add-stats".to_owned());
    t.set_reverse(m.real, m.vm)?;
    pause::at(|| "add-reverse".to_owned());
    t.set_forward(m.vm, m.real)?;
    t.remove_drain(m.real)?;
    Ok(())
}

/// Removes a VM's mapping in both directions, with its counters and drains (of a mapping
/// of method encap: its segment entry; the locator is returned as its `real`).
pub fn delete(t: &mut impl PageTable, vm: IpAddr) -> Result<Mapping, OpError> {
    let Some(real) = t.forward(vm)? else {
        let locator = segment::delete(t, vm)?;
        return Ok(Mapping { vm, real: locator });
    };
    remove_mapping(t, Mapping { vm, real })?;
    Ok(Mapping { vm, real })
}

fn remove_mapping(t: &mut impl PageTable, Mapping { vm, real }: Mapping) -> Result<(), TableError> {
    t.remove_forward(vm)?;
    remove_reverse_of(t, real, vm)?;
    for d in t.drains()?.into_iter().filter(|d| d.virt == vm) {
        remove_reverse_of(t, d.real, vm)?;
        t.remove_drain(d.real)?;
    }
    t.remove_stats(vm)
}

/// Removes R2V[real] if it still names `vm`.
pub fn remove_reverse_of(
    t: &mut impl PageTable,
    real: IpAddr,
    vm: IpAddr,
) -> Result<(), TableError> {
    if t.reverse(real)? == Some(vm) {
        t.remove_reverse(real)?;
    }
    Ok(())
}

/// What a switch did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Switched {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// The slowest node's V2R update.
    #[serde(rename = "update_us", serialize_with = "as_micros")]
    pub update: Duration,
    /// Until when the old real address keeps translating (ms since the epoch), if it drains.
    pub drain_until_ms: Option<u64>,
    /// Each node's one V2R update, in switching order.
    pub nodes: Vec<NodeUpdate>,
}

/// One node's V2R update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeUpdate {
    pub node: String,
    #[serde(rename = "update_us", serialize_with = "as_micros")]
    pub update: Duration,
}

fn as_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_nanos() as f64 / 1000.0)
}

/// Checks that `vm` may move to `to` and returns where it is now.
pub fn check_switch(t: &impl PageTable, vm: IpAddr, to: IpAddr) -> Result<IpAddr, OpError> {
    check_mapping(Mapping { vm, real: to })?;
    let from = t.forward(vm)?.ok_or(OpError::UnknownVm { vm })?;
    check_real_free(t, vm, to)?;
    Ok(from)
}

/// Moves a VM to `to` on one node; see [`switch_many`].
pub fn switch<T: PageTable>(
    t: &mut T,
    vm: IpAddr,
    to: IpAddr,
    drain: Duration,
    now_ms: u64,
) -> Result<Switched, OpError> {
    switch_many(&mut [(String::new(), t)], vm, to, drain, now_ms)
}

/// Moves a VM to `to` on every node, as one step: all nodes are checked (they must agree
/// on where the VM is), then R2V[to] is installed on every node, then each node's V2R
/// entry is updated (one map update each, timed), and the old real address drains until
/// `now_ms + drain` (it is removed at once when `drain` is zero). Installing every reverse
/// entry first means no node receives the new address before it can translate it.
///
/// Nodes where the VM is already at `to` (a switch that stopped part-way) are left as
/// they are, so that running the switch again completes it. If a step fails on a node,
/// what the switch did on the nodes before is undone, and the error says so.
pub fn switch_many<T: PageTable>(
    nodes: &mut [(String, &mut T)],
    vm: IpAddr,
    to: IpAddr,
    drain: Duration,
    now_ms: u64,
) -> Result<Switched, OpError> {
    if segment::is_segment(nodes.iter().map(|(n, t)| (n.as_str(), &**t)), vm)? {
        return segment::switch_many(nodes, vm, to);
    }
    let (from, done) = locate_resuming(nodes.iter().map(|(n, t)| (n.as_str(), &**t)), vm, to)?;
    let mut switched = Switched {
        vm,
        from,
        to,
        update: Duration::ZERO,
        drain_until_ms: None,
        nodes: Vec::new(),
    };
    if from == to {
        return Ok(switched);
    }
    pause::at(|| "switch-checked".to_owned());
    for i in 0..nodes.len() {
        let (name, t) = &mut nodes[i];
        if let Err(e) = t.set_reverse(to, vm) {
            let e = on_node(name, e.into());
            return Err(undone(e, undo_switch(&mut nodes[..i], &done, vm, from, to)));
        }
        pause::at(|| format!("switch-reverse:{}", i + 1));
    }
    for i in 0..nodes.len() {
        let (name, t) = &mut nodes[i];
        let start = Instant::now();
        if let Err(e) = t.set_forward(vm, to) {
            let e = on_node(name, e.into());
            return Err(undone(e, undo_switch(nodes, &done, vm, from, to)));
        }
        let update = start.elapsed();
        switched.update = switched.update.max(update);
        switched.nodes.push(NodeUpdate {
            node: name.clone(),
            update,
        });
        pause::at(|| format!("switch-forward:{}", i + 1));
    }
    for (_, t) in nodes.iter_mut() {
        t.remove_drain(to)?;
        // A node that had switched already may have lost the old address's entry.
        if t.reverse(from)? == Some(vm) {
            let until = retire(&mut **t, vm, from, drain, now_ms)?;
            switched.drain_until_ms = switched.drain_until_ms.or(until);
        }
    }
    Ok(switched)
}

/// Puts the nodes that were not `done` back where the VM was (V2R[vm] = from, no
/// R2V[to]); returns what could not be undone.
fn undo_switch<T: PageTable>(
    nodes: &mut [(String, &mut T)],
    done: &[bool],
    vm: IpAddr,
    from: IpAddr,
    to: IpAddr,
) -> Vec<String> {
    let mut failed = Vec::new();
    for ((name, t), _) in nodes.iter_mut().zip(done).filter(|(_, d)| !**d) {
        let undo = (|| {
            if t.forward(vm)? == Some(to) {
                t.set_forward(vm, from)?;
            }
            remove_reverse_of(&mut **t, to, vm)
        })();
        if let Err(e) = undo {
            failed.push(format!("node {name}: {e}"));
        }
    }
    failed
}

/// The error of a step, with whether undoing the steps before it failed.
fn undone(e: OpError, failed: Vec<String>) -> OpError {
    if failed.is_empty() {
        OpError::Undone {
            failed: Box::new(e),
        }
    } else {
        OpError::NotUndone {
            failed: Box::new(e),
            undo: failed.join("; "),
        }
    }
}

/// Where the nodes that have not switched yet have `vm` (they must agree, and there must
/// be a node), and which nodes have it at `to` already; checks on each that it may move
/// to `to`. Errors name the node.
fn locate_resuming<'a, T: PageTable + 'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a T)>,
    vm: IpAddr,
    to: IpAddr,
) -> Result<(IpAddr, Vec<bool>), OpError> {
    let mut from = None;
    let mut done = Vec::new();
    for (name, t) in nodes {
        let at = check_switch(t, vm, to).map_err(|e| on_node(name, e))?;
        done.push(at == to);
        if at != to {
            agree(&mut from, name, vm, at)?;
        }
    }
    if done.is_empty() {
        return Err(OpError::NoNode);
    }
    Ok((from.unwrap_or(to), done))
}

/// Where every node has `vm` now, checking on each that it may move to `to`: the nodes
/// must agree, and there must be one. Errors name the node.
pub fn locate<'a, T: PageTable + 'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a T)>,
    vm: IpAddr,
    to: IpAddr,
) -> Result<IpAddr, OpError> {
    let mut from = None;
    for (name, t) in nodes {
        let at = check_switch(t, vm, to).map_err(|e| on_node(name, e))?;
        agree(&mut from, name, vm, at)?;
    }
    from.ok_or(OpError::NoNode)
}

/// Records in `from` that node `name` has `vm` at `at`; fails, naming the node, if an
/// earlier node had it elsewhere.
fn agree(from: &mut Option<IpAddr>, name: &str, vm: IpAddr, at: IpAddr) -> Result<(), OpError> {
    match *from {
        Some(f) if f != at => {
            let e = OpError::Disagree {
                vm,
                here: at,
                elsewhere: f,
            };
            Err(on_node(name, e))
        }
        _ => {
            *from = Some(at);
            Ok(())
        }
    }
}

fn on_node(name: &str, e: OpError) -> OpError {
    if name.is_empty() {
        e
    } else {
        OpError::OnNode {
            node: name.to_owned(),
            source: Box::new(e),
        }
    }
}

/// Starts the drain of `vm`'s old real address, or removes it when `drain` is zero.
pub fn retire(
    t: &mut impl PageTable,
    vm: IpAddr,
    real: IpAddr,
    drain: Duration,
    now_ms: u64,
) -> Result<Option<u64>, TableError> {
    if drain.is_zero() {
        remove_reverse_of(t, real, vm)?;
        return Ok(None);
    }
    let deadline_ms = now_ms + drain.as_millis() as u64;
    t.set_drain(Drain {
        real,
        virt: vm,
        deadline_ms,
    })?;
    Ok(Some(deadline_ms))
}

/// Ends the drains whose deadline has passed (all of them with `now_ms == u64::MAX`).
/// An R2V entry is removed only if its VM has not come back to that address.
pub fn gc(t: &mut impl PageTable, now_ms: u64) -> Result<Vec<Drain>, TableError> {
    let mut ended = Vec::new();
    for d in t.drains()? {
        if d.deadline_ms > now_ms {
            continue;
        }
        if t.forward(d.virt)? != Some(d.real) {
            remove_reverse_of(t, d.real, d.virt)?;
        }
        t.remove_drain(d.real)?;
        ended.push(d);
    }
    Ok(ended)
}

/// Every mapping of the table, sorted.
pub fn list(t: &impl PageTable) -> Result<Vec<Mapping>, TableError> {
    let mut all: Vec<Mapping> = t
        .forward_entries()?
        .into_iter()
        .map(|(vm, real)| Mapping { vm, real })
        .collect();
    all.sort();
    Ok(all)
}

mod apply;
pub mod segment;
pub use apply::{
    ApplyOptions, Deferred, Moved, Plan, apply, apply_showing, make_equal, make_equal_showing, plan,
};

#[cfg(test)]
pub(crate) mod tests;
