//! Mappings of method `encap` (segmentation): a VA maps to the locator of the node that
//! hosts its VM, held in the segment tables rather than V2R and R2V. Adding, deleting and
//! switching one follow the page table's rules: everything is checked first; a switch is
//! one map update per node, with nothing to drain (no reverse entry names a locator).

use std::{net::IpAddr, time::Instant};

use super::{NodeUpdate, OpError, Role, Switched, agree, on_node, undone, unusable};
use crate::{table::PageTable, tablefile::Segment};

/// The locator of `vm` if it is mapped with method `encap`.
pub fn locator(t: &impl PageTable, vm: IpAddr) -> Result<Option<IpAddr>, OpError> {
    Ok(t.segment(vm)?)
}

/// Checks that `addr` can serve as the VM's address or a locator.
fn check_addr(role: Role, addr: IpAddr) -> Result<(), OpError> {
    match unusable(addr) {
        Some(why) => Err(OpError::UnusableAddress { role, addr, why }),
        None => Ok(()),
    }
}

/// Maps a new VM with method `encap` to `locator` (of either family): its counters, then
/// its one segment entry.
pub fn add(t: &mut impl PageTable, vm: IpAddr, locator: IpAddr) -> Result<(), OpError> {
    check_addr(Role::Vm, vm)?;
    check_addr(Role::Locator, locator)?;
    if let Some(real) = t.forward(vm)?.or(t.segment(vm)?) {
        return Err(OpError::VmExists { vm, real });
    }
    t.create_stats(vm)?;
    t.set_segment(vm, locator)?;
    Ok(())
}

/// Removes the `encap` mapping of `vm`, with its counters; returns its locator.
pub fn delete(t: &mut impl PageTable, vm: IpAddr) -> Result<IpAddr, OpError> {
    let at = t.segment(vm)?.ok_or(OpError::UnknownVm { vm })?;
    t.remove_segment(vm)?;
    t.remove_stats(vm)?;
    Ok(at)
}

/// Whether every node maps `vm` with method `encap` (a switch of it is then a segment
/// switch); fails, naming the node, if some do and some do not.
pub fn is_segment<'a, T: PageTable + 'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a T)>,
    vm: IpAddr,
) -> Result<bool, OpError> {
    let mut kinds = Vec::new();
    for (name, t) in nodes {
        kinds.push((
            name.to_owned(),
            t.segment(vm).map_err(|e| on_node(name, e.into()))?,
        ));
    }
    let encap = kinds.iter().filter(|(_, l)| l.is_some()).count();
    match kinds.iter().find(|(_, l)| l.is_none()) {
        Some((name, _)) if encap > 0 => Err(on_node(name, OpError::NotSegment { vm })),
        _ => Ok(encap > 0),
    }
}

/// Where every node has the VM of `vm`, mapped with method `encap`, checking that it may
/// move to `to`: the nodes must agree, and there must be one. Errors name the node.
pub fn locate<'a, T: PageTable + 'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a T)>,
    vm: IpAddr,
    to: IpAddr,
) -> Result<IpAddr, OpError> {
    check_addr(Role::Locator, to)?;
    let mut from = None;
    for (name, t) in nodes {
        agree(&mut from, name, vm, at(name, t, vm)?)?;
    }
    from.ok_or(OpError::NoNode)
}

/// The locator node `name` has the VM of `vm` at; errors name the node.
fn at(name: &str, t: &impl PageTable, vm: IpAddr) -> Result<IpAddr, OpError> {
    let at = t.segment(vm).map_err(|e| on_node(name, e.into()))?;
    at.ok_or_else(|| on_node(name, OpError::UnknownVm { vm }))
}

/// Moves the VM of `vm`, mapped with method `encap`, to the node of locator `to` on every
/// node: the nodes must agree on where it is; then one segment update per node, timed.
/// Nodes that have it at `to` already are left as they are; a failure puts the nodes
/// switched before back.
pub fn switch_many<T: PageTable>(
    nodes: &mut [(String, &mut T)],
    vm: IpAddr,
    to: IpAddr,
) -> Result<Switched, OpError> {
    check_addr(Role::Locator, to)?;
    let mut from = None;
    let mut done = Vec::new();
    for (name, t) in nodes.iter() {
        let here = at(name, &**t, vm)?;
        done.push(here == to);
        if here != to {
            agree(&mut from, name, vm, here)?;
        }
    }
    if done.is_empty() {
        return Err(OpError::NoNode);
    }
    let from = from.unwrap_or(to);
    let mut switched = Switched {
        vm,
        from,
        to,
        update: Default::default(),
        drain_until_ms: None,
        nodes: Vec::new(),
    };
    for i in 0..nodes.len() {
        if done[i] {
            continue;
        }
        let start = Instant::now();
        if let Err(e) = nodes[i].1.set_segment(vm, to) {
            let e = on_node(&nodes[i].0, e.into());
            let mut failed = Vec::new();
            for ((name, t), _) in nodes[..i].iter_mut().zip(&done).filter(|(_, d)| !**d) {
                if let Err(u) = t.set_segment(vm, from) {
                    failed.push(format!("node {name}: {u}"));
                }
            }
            return Err(undone(e, failed));
        }
        let update = start.elapsed();
        switched.update = switched.update.max(update);
        switched.nodes.push(NodeUpdate {
            node: nodes[i].0.clone(),
            update,
        });
    }
    Ok(switched)
}

/// Every mapping of method `encap`, sorted.
pub fn list(t: &impl PageTable) -> Result<Vec<Segment>, crate::table::TableError> {
    let mut all: Vec<Segment> = t
        .segment_entries()?
        .into_iter()
        .map(|(vm, locator)| Segment { vm, locator })
        .collect();
    all.sort();
    Ok(all)
}
