//! Making a node's table equal to the directory: all at once from a view (sync), or one
//! revision at a time from watch events. Reverse entries always go in before the forward
//! entries that use them and come out after, as `apply` does. Segment entries (method
//! encap) go in and out as a local `map add --locator` and `map del` do: counters first
//! in, last out.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    clock,
    directory::{
        View,
        schema::{Keys, MapKey, RaValue, SegValue, VmValue},
    },
    table::{Drain, PageTable, TableError},
};

/// What a sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub mappings: usize,
    pub reverse: usize,
    /// Mappings of method encap.
    pub segments: usize,
    pub changed: usize,
}

/// Makes `t` equal to the directory's view: V2R = its VM entries, R2V = its reverse
/// entries, the segment tables = its segment entries, and the drains those of the directory (whose leases end them; the node keeps
/// them so that its own view of the table is whole).
pub fn sync(t: &mut impl PageTable, view: &View) -> Result<Synced, TableError> {
    let want_fwd: BTreeMap<IpAddr, IpAddr> =
        view.vm_reads().map(|(va, r)| (va, r.value.real)).collect();
    let want_rev: BTreeMap<IpAddr, IpAddr> = view
        .reverse_reads()
        .map(|(ra, r)| (ra, r.value.vm))
        .collect();
    let want_seg: BTreeMap<IpAddr, IpAddr> = view
        .seg_reads()
        .map(|(va, r)| (va, r.value.locator))
        .collect();
    // A VA that changed method keeps its counters: they go with the VA, not the entry.
    let wanted = |va: &IpAddr| want_fwd.contains_key(va) || want_seg.contains_key(va);
    let have_fwd: BTreeMap<IpAddr, IpAddr> = t.forward_entries()?.into_iter().collect();
    let have_rev: BTreeMap<IpAddr, IpAddr> = t.reverse_entries()?.into_iter().collect();
    let rev_set: Vec<(IpAddr, IpAddr)> = differing(&want_rev, &have_rev);
    let fwd_set: Vec<(IpAddr, IpAddr)> = differing(&want_fwd, &have_fwd);
    for &(va, _) in &fwd_set {
        t.create_stats(va)?;
    }
    t.set_reverse_many(&rev_set)?;
    t.set_forward_many(&fwd_set)?;
    let mut changed = rev_set.len() + fwd_set.len();
    for va in have_fwd.keys().filter(|va| !want_fwd.contains_key(va)) {
        t.remove_forward(*va)?;
        if !wanted(va) {
            t.remove_stats(*va)?;
        }
        changed += 1;
    }
    changed += sync_segments(t, &want_seg, &wanted)?;
    for ra in have_rev.keys().filter(|ra| !want_rev.contains_key(ra)) {
        t.remove_reverse(*ra)?;
        changed += 1;
    }
    let want_drains: Vec<Drain> = view
        .reverse_reads()
        .filter_map(|(real, r)| {
            r.value.drain_until_ms.map(|until| Drain {
                real,
                virt: r.value.vm,
                deadline_ms: clock::unix_to_node(until),
            })
        })
        .collect();
    for d in t.drains()? {
        if !want_drains.iter().any(|w| w.real == d.real) {
            t.remove_drain(d.real)?;
        }
    }
    for d in want_drains {
        t.set_drain(d)?;
    }
    Ok(Synced {
        mappings: want_fwd.len(),
        reverse: want_rev.len(),
        segments: want_seg.len(),
        changed,
    })
}

/// Makes the segment tables of `t` equal to `want`; `wanted` tells the VAs the directory
/// maps by either method (whose counters stay). Returns how many entries changed.
fn sync_segments(
    t: &mut impl PageTable,
    want: &BTreeMap<IpAddr, IpAddr>,
    wanted: &impl Fn(&IpAddr) -> bool,
) -> Result<usize, TableError> {
    let have: BTreeMap<IpAddr, IpAddr> = t.segment_entries()?.into_iter().collect();
    let set = differing(want, &have);
    for &(va, locator) in &set {
        t.create_stats(va)?;
        t.set_segment(va, locator)?;
    }
    let mut changed = set.len();
    for va in have.keys().filter(|va| !want.contains_key(va)) {
        t.remove_segment(*va)?;
        if !wanted(va) {
            t.remove_stats(*va)?;
        }
        changed += 1;
    }
    Ok(changed)
}

fn differing(
    want: &BTreeMap<IpAddr, IpAddr>,
    have: &BTreeMap<IpAddr, IpAddr>,
) -> Vec<(IpAddr, IpAddr)> {
    want.iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// One change of a watched revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    PutVm(IpAddr, IpAddr),
    /// A reverse entry, with its drain's deadline if it drains.
    PutRa(IpAddr, IpAddr, Option<u64>),
    DelVm(IpAddr),
    DelRa(IpAddr),
    /// A mapping of method encap: VA, locator.
    PutSeg(IpAddr, IpAddr),
    DelSeg(IpAddr),
}

impl Change {
    /// Decodes a watch event on `key` (`value` is `None` for a delete); `None` for keys
    /// outside the layout and values that do not decode (counted by the caller).
    pub fn decode(keys: &Keys, key: &[u8], value: Option<&[u8]>) -> Option<Self> {
        let k = keys.parse_map_key(key)?;
        Some(match (k, value) {
            (MapKey::Vm(va), Some(v)) => {
                Change::PutVm(va, serde_json::from_slice::<VmValue>(v).ok()?.real)
            }
            (MapKey::Ra(ra), Some(v)) => {
                let v: RaValue = serde_json::from_slice(v).ok()?;
                Change::PutRa(ra, v.vm, v.drain_until_ms)
            }
            (MapKey::Seg(va), Some(v)) => {
                Change::PutSeg(va, serde_json::from_slice::<SegValue>(v).ok()?.locator)
            }
            (MapKey::Vm(va), None) => Change::DelVm(va),
            (MapKey::Ra(ra), None) => Change::DelRa(ra),
            (MapKey::Seg(va), None) => Change::DelSeg(va),
        })
    }

    /// Reverse entries in, then forward and segment entries in, forward and segment
    /// entries out, reverse entries out.
    fn order(&self) -> u8 {
        match self {
            Change::PutRa(..) => 0,
            Change::PutVm(..) | Change::PutSeg(..) => 1,
            Change::DelVm(_) | Change::DelSeg(_) => 2,
            Change::DelRa(_) => 3,
        }
    }
}

/// Applies the changes of one revision (one transaction of the directory) in the safe order.
pub fn apply_revision(t: &mut impl PageTable, changes: &mut [Change]) -> Result<(), TableError> {
    changes.sort_by_key(Change::order);
    for c in changes.iter() {
        match *c {
            Change::PutRa(ra, va, drain) => {
                t.set_reverse(ra, va)?;
                match drain {
                    Some(until) => t.set_drain(Drain {
                        real: ra,
                        virt: va,
                        deadline_ms: clock::unix_to_node(until),
                    })?,
                    None => t.remove_drain(ra)?,
                }
            }
            Change::PutVm(va, ra) => {
                t.create_stats(va)?;
                t.set_forward(va, ra)?;
            }
            Change::PutSeg(va, locator) => {
                t.create_stats(va)?;
                t.set_segment(va, locator)?;
            }
            Change::DelVm(va) => {
                t.remove_forward(va)?;
                t.remove_stats(va)?;
            }
            Change::DelSeg(va) => {
                t.remove_segment(va)?;
                t.remove_stats(va)?;
            }
            Change::DelRa(ra) => {
                t.remove_reverse(ra)?;
                t.remove_drain(ra)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        directory::schema::encode,
        ops::{self, tests::MemTable},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn directory(entries: &[(String, Vec<u8>)]) -> View {
        View::from_kvs(
            &Keys::new("/t"),
            9,
            entries
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice(), 1, 0)),
        )
        .unwrap()
    }

    #[test]
    fn sync_makes_the_table_equal_to_the_directory() {
        let keys = Keys::new("/t");
        let (va, ra, old) = (ip("198.19.0.10"), ip("198.18.20.100"), ip("198.18.10.100"));
        let rev = |vm| {
            encode(&RaValue {
                vm,
                drain_until_ms: None,
            })
        };
        let dir = directory(&[
            (keys.vm(va), encode(&VmValue { real: ra })),
            (keys.ra(ra), rev(va)),
            (keys.ra(old), rev(va)),
        ]);
        // The node holds a stale mapping and an entry the directory no longer has.
        let mut node = directory(&[]);
        node.set_forward(va, old).unwrap();
        node.set_forward(ip("198.19.0.99"), ip("198.18.10.99"))
            .unwrap();
        node.set_reverse(ip("198.18.10.99"), ip("198.19.0.99"))
            .unwrap();
        let s = sync(&mut node, &dir).unwrap();
        assert_eq!((s.mappings, s.reverse), (1, 2));
        assert_eq!(node.forward_entries().unwrap(), vec![(va, ra)]);
        assert_eq!(node.reverse_entries().unwrap(), vec![(old, va), (ra, va)]);
        assert_eq!(sync(&mut node, &dir).unwrap().changed, 0, "idempotent");
    }

    #[test]
    fn a_revision_installs_reverse_entries_first() {
        let keys = Keys::new("/t");
        let (va, ra) = (ip("2001:db8::10"), ip("2001:db8:20::100"));
        let mut changes = vec![
            Change::decode(
                &keys,
                keys.vm(va).as_bytes(),
                Some(&encode(&VmValue { real: ra })),
            )
            .unwrap(),
            Change::decode(
                &keys,
                keys.ra(ra).as_bytes(),
                Some(&encode(&RaValue {
                    vm: va,
                    drain_until_ms: Some(3),
                })),
            )
            .unwrap(),
            Change::decode(&keys, keys.ra(ip("2001:db8:10::100")).as_bytes(), None).unwrap(),
        ];
        let mut node = directory(&[]);
        apply_revision(&mut node, &mut changes).unwrap();
        assert_eq!(changes[0], Change::PutRa(ra, va, Some(3)));
        assert_eq!(node.drains().unwrap().len(), 1);
        assert_eq!(changes[2], Change::DelRa(ip("2001:db8:10::100")));
        assert_eq!(node.forward_entries().unwrap(), vec![(va, ra)]);
        assert_eq!(
            Change::decode(&keys, keys.vm(va).as_bytes(), Some(b"{bad")),
            None
        );
    }

    #[test]
    fn segment_entries_follow_the_directory() {
        let keys = Keys::new("/t");
        let (va, loc) = (ip("198.19.0.20"), ip("2001:db8:b::1"));
        let (paged, ra) = (ip("198.19.0.30"), ip("198.18.10.30"));
        let dir = directory(&[(keys.seg(va), encode(&SegValue { locator: loc }))]);
        // The node maps `paged` by paging, which the directory no longer has, and a
        // stale segment entry.
        let mut node = MemTable::default();
        ops::add(
            &mut node,
            ops::Mapping {
                vm: paged,
                real: ra,
            },
        )
        .unwrap();
        ops::segment::add(&mut node, ip("198.19.0.40"), loc).unwrap();
        let s = sync(&mut node, &dir).unwrap();
        assert_eq!((s.mappings, s.segments), (0, 1));
        assert_eq!(node.segment_entries().unwrap(), vec![(va, loc)]);
        assert!(node.forward_entries().unwrap().is_empty());
        assert!(
            node.stats(va).unwrap().is_some(),
            "counters, as a local add"
        );
        assert!(node.stats(paged).unwrap().is_none());
        assert_eq!(sync(&mut node, &dir).unwrap().changed, 0, "idempotent");

        let to = ip("10.0.0.9");
        let put = encode(&SegValue { locator: to });
        let mut changes = vec![Change::decode(&keys, keys.seg(va).as_bytes(), Some(&put)).unwrap()];
        assert_eq!(changes[0], Change::PutSeg(va, to));
        apply_revision(&mut node, &mut changes).unwrap();
        assert_eq!(node.segment(va).unwrap(), Some(to));
        let mut changes = vec![Change::decode(&keys, keys.seg(va).as_bytes(), None).unwrap()];
        apply_revision(&mut node, &mut changes).unwrap();
        assert!(node.segment_entries().unwrap().is_empty());
        assert!(node.stats(va).unwrap().is_none());
    }
}
