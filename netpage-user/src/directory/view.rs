//! The directory's mappings as read at one revision, with the changes an operation makes
//! to them, behind the same [`PageTable`] interface as a node's kernel tables: the rules
//! of `ops` (add, delete, apply, the checks of a switch) run unchanged on it, and what
//! they write becomes one etcd transaction.

use std::{collections::BTreeMap, net::IpAddr};

use netpage_common::maps::MappingStats;

use serde::de::DeserializeOwned;

use super::schema::{Keys, MapKey, RaValue, SegValue, VmValue, encode};
use crate::table::{Drain, PageTable, TableError};

/// A key as read: its value, the revision that last changed it, and its lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read<T> {
    pub value: T,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A change to one key. A key changes at most once per transaction (etcd refuses a
/// transaction that names a key twice), so later writes replace earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    Vm(VmValue),
    /// A reverse entry; a drain's gets a lease that ends it at `drain_until_ms`.
    Ra(RaValue),
    Seg(SegValue),
    Delete,
}

/// The mapping range at one revision plus pending writes.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub revision: i64,
    vms: BTreeMap<IpAddr, Read<VmValue>>,
    ras: BTreeMap<IpAddr, Read<RaValue>>,
    segs: BTreeMap<IpAddr, Read<SegValue>>,
    writes: BTreeMap<MapKey, Write>,
}

/// A value that could not be decoded, with its key.
#[derive(Debug, thiserror::Error)]
#[error("directory key {key} holds {value:?}, which is not a valid entry")]
pub struct BadValue {
    pub key: String,
    pub value: String,
}

impl View {
    /// The view of the mapping range `kvs` (key, value, mod revision, lease) read at
    /// `revision`. Keys outside the layout are ignored.
    pub fn from_kvs<'a>(
        keys: &Keys,
        revision: i64,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64, i64)>,
    ) -> Result<Self, BadValue> {
        let mut view = View {
            revision,
            ..Default::default()
        };
        for (key, value, mod_revision, lease) in kvs {
            let (at, read) = ((key, value), (mod_revision, lease));
            match keys.parse_map_key(key) {
                Some(MapKey::Vm(va)) => insert(&mut view.vms, va, at, read)?,
                Some(MapKey::Ra(ra)) => insert(&mut view.ras, ra, at, read)?,
                Some(MapKey::Seg(va)) => insert(&mut view.segs, va, at, read)?,
                None => {}
            }
        }
        Ok(view)
    }

    /// The entry of `va` as read, before any pending write.
    pub fn read_vm(&self, va: IpAddr) -> Option<Read<VmValue>> {
        self.vms.get(&va).copied()
    }

    /// The entry of `ra` as read, before any pending write.
    pub fn read_ra(&self, ra: IpAddr) -> Option<Read<RaValue>> {
        self.ras.get(&ra).copied()
    }

    /// The segment entry of `va` as read, before any pending write.
    pub fn read_seg(&self, va: IpAddr) -> Option<Read<SegValue>> {
        self.segs.get(&va).copied()
    }

    /// The revision that last changed `key` as read (0: absent), for the compare that
    /// makes a write conditional on nobody having changed the key since.
    pub fn mod_revision(&self, key: MapKey) -> i64 {
        match key {
            MapKey::Vm(va) => self.vms.get(&va).map_or(0, |r| r.mod_revision),
            MapKey::Ra(ra) => self.ras.get(&ra).map_or(0, |r| r.mod_revision),
            MapKey::Seg(va) => self.segs.get(&va).map_or(0, |r| r.mod_revision),
        }
    }

    /// The newest revision that wrote one of the entries as read (0: none). A node that
    /// applied it holds every entry as read, but for one deleted after it.
    pub fn newest_entry_revision(&self) -> i64 {
        let vms = self.vms.values().map(|r| r.mod_revision);
        let ras = self.ras.values().map(|r| r.mod_revision);
        let segs = self.segs.values().map(|r| r.mod_revision);
        vms.chain(ras).chain(segs).max().unwrap_or(0)
    }

    /// The keys whose revision as read a commit compares beyond the ones it writes: a
    /// VA's other key (`vm` for `seg`, `seg` for `vm`) when the VA's key is created, so
    /// that two writers who each found the VA free cannot map it by both methods.
    pub fn guards(&self) -> impl Iterator<Item = (MapKey, i64)> + '_ {
        self.writes
            .iter()
            .filter(|(k, w)| **w != Write::Delete && self.mod_revision(**k) == 0)
            .filter_map(|(k, _)| k.sibling())
            .filter(|g| !self.writes.contains_key(g))
            .map(|g| (g, self.mod_revision(g)))
    }

    /// The pending writes, one per key.
    pub fn writes(&self) -> impl Iterator<Item = (MapKey, Write)> + '_ {
        self.writes.iter().map(|(k, w)| (*k, *w))
    }

    /// Every reverse entry as read (draining ones included), for checks.
    pub fn reverse_reads(&self) -> impl Iterator<Item = (IpAddr, Read<RaValue>)> + '_ {
        self.ras.iter().map(|(k, r)| (*k, *r))
    }

    /// Every VM entry as read.
    pub fn vm_reads(&self) -> impl Iterator<Item = (IpAddr, Read<VmValue>)> + '_ {
        self.vms.iter().map(|(k, r)| (*k, *r))
    }

    /// Every segment entry (method encap) as read.
    pub fn seg_reads(&self) -> impl Iterator<Item = (IpAddr, Read<SegValue>)> + '_ {
        self.segs.iter().map(|(k, r)| (*k, *r))
    }

    /// The value of `key` now: its pending write's, else as read in `read` at `addr`.
    fn now<T: Copy>(
        &self,
        key: MapKey,
        read: &BTreeMap<IpAddr, Read<T>>,
        addr: IpAddr,
        written: fn(Write) -> Option<T>,
    ) -> Option<T> {
        match self.writes.get(&key) {
            Some(w) => written(*w),
            None => read.get(&addr).map(|r| r.value),
        }
    }

    fn vm_now(&self, va: IpAddr) -> Option<VmValue> {
        self.now(MapKey::Vm(va), &self.vms, va, |w| match w {
            Write::Vm(v) => Some(v),
            _ => None,
        })
    }

    fn ra_now(&self, ra: IpAddr) -> Option<RaValue> {
        self.now(MapKey::Ra(ra), &self.ras, ra, |w| match w {
            Write::Ra(v) => Some(v),
            _ => None,
        })
    }

    fn seg_now(&self, va: IpAddr) -> Option<SegValue> {
        self.now(MapKey::Seg(va), &self.segs, va, |w| match w {
            Write::Seg(v) => Some(v),
            _ => None,
        })
    }

    /// Every key of one kind, as read or written, with its value now: `read` holds the
    /// kind's reads, `kind` picks its keys among the writes, `now` gives a key's value.
    fn all_now<T, V>(
        &self,
        read: &BTreeMap<IpAddr, Read<T>>,
        kind: fn(&MapKey) -> Option<IpAddr>,
        now: impl Fn(IpAddr) -> Option<V>,
    ) -> Vec<(IpAddr, V)> {
        let keys = read
            .keys()
            .copied()
            .chain(self.writes.keys().filter_map(kind));
        dedup_sorted(keys)
            .into_iter()
            .filter_map(|a| now(a).map(|v| (a, v)))
            .collect()
    }

    fn all_vms(&self) -> Vec<(IpAddr, IpAddr)> {
        let kind = |k: &MapKey| match k {
            MapKey::Vm(va) => Some(*va),
            _ => None,
        };
        self.all_now(&self.vms, kind, |va| self.vm_now(va).map(|v| v.real))
    }

    fn all_ras(&self) -> Vec<(IpAddr, RaValue)> {
        let kind = |k: &MapKey| match k {
            MapKey::Ra(ra) => Some(*ra),
            _ => None,
        };
        self.all_now(&self.ras, kind, |ra| self.ra_now(ra))
    }

    fn all_segs(&self) -> Vec<(IpAddr, IpAddr)> {
        let kind = |k: &MapKey| match k {
            MapKey::Seg(va) => Some(*va),
            _ => None,
        };
        self.all_now(&self.segs, kind, |va| self.seg_now(va).map(|v| v.locator))
    }

    /// Encodes a pending write: the value's bytes, or `None` for a delete.
    pub fn encode(write: Write) -> Option<Vec<u8>> {
        match write {
            Write::Vm(v) => Some(encode(&v)),
            Write::Ra(v) => Some(encode(&v)),
            Write::Seg(v) => Some(encode(&v)),
            Write::Delete => None,
        }
    }
}

/// Decodes the value of `(key, value)` into `map` at `addr`, read at `(mod_revision,
/// lease)`.
fn insert<T: DeserializeOwned>(
    map: &mut BTreeMap<IpAddr, Read<T>>,
    addr: IpAddr,
    (key, value): (&[u8], &[u8]),
    (mod_revision, lease): (i64, i64),
) -> Result<(), BadValue> {
    let value = serde_json::from_slice(value).map_err(|_| BadValue {
        key: String::from_utf8_lossy(key).into_owned(),
        value: String::from_utf8_lossy(value).into_owned(),
    })?;
    map.insert(
        addr,
        Read {
            value,
            mod_revision,
            lease,
        },
    );
    Ok(())
}

/// IPv4 first, then IPv6, each in address order, without repeats.
fn dedup_sorted(keys: impl Iterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = keys.collect();
    v.sort();
    v.dedup();
    v
}

fn family(a: IpAddr, b: IpAddr) -> Result<(), TableError> {
    if a.is_ipv4() == b.is_ipv4() {
        Ok(())
    } else {
        Err(TableError::FamilyMismatch { a, b })
    }
}

impl PageTable for View {
    fn forward(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.vm_now(va).map(|v| v.real))
    }

    fn reverse(&self, ra: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.ra_now(ra).map(|v| v.vm))
    }

    fn set_forward(&mut self, va: IpAddr, ra: IpAddr) -> Result<(), TableError> {
        family(va, ra)?;
        self.writes
            .insert(MapKey::Vm(va), Write::Vm(VmValue { real: ra }));
        Ok(())
    }

    fn set_reverse(&mut self, ra: IpAddr, va: IpAddr) -> Result<(), TableError> {
        family(ra, va)?;
        let value = RaValue {
            vm: va,
            drain_until_ms: None,
        };
        self.writes.insert(MapKey::Ra(ra), Write::Ra(value));
        Ok(())
    }

    fn remove_forward(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.writes.insert(MapKey::Vm(va), Write::Delete);
        Ok(())
    }

    fn remove_reverse(&mut self, ra: IpAddr) -> Result<(), TableError> {
        self.writes.insert(MapKey::Ra(ra), Write::Delete);
        Ok(())
    }

    fn forward_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self.all_vms())
    }

    fn reverse_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self
            .all_ras()
            .into_iter()
            .map(|(ra, v)| (ra, v.vm))
            .collect())
    }

    fn segment(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.seg_now(va).map(|v| v.locator))
    }

    /// A locator may be of either family.
    fn set_segment(&mut self, va: IpAddr, locator: IpAddr) -> Result<(), TableError> {
        self.writes
            .insert(MapKey::Seg(va), Write::Seg(SegValue { locator }));
        Ok(())
    }

    fn remove_segment(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.writes.insert(MapKey::Seg(va), Write::Delete);
        Ok(())
    }

    fn segment_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self.all_segs())
    }

    /// Counters live in each node's kernel, not in the directory.
    fn create_stats(&mut self, _va: IpAddr) -> Result<(), TableError> {
        Ok(())
    }

    fn remove_stats(&mut self, _va: IpAddr) -> Result<(), TableError> {
        Ok(())
    }

    fn stats(&self, _va: IpAddr) -> Result<Option<MappingStats>, TableError> {
        Ok(None)
    }

    fn drains(&self) -> Result<Vec<Drain>, TableError> {
        Ok(self
            .all_ras()
            .into_iter()
            .filter_map(|(real, v)| {
                v.drain_until_ms.map(|deadline_ms| Drain {
                    real,
                    virt: v.vm,
                    deadline_ms,
                })
            })
            .collect())
    }

    fn set_drain(&mut self, d: Drain) -> Result<(), TableError> {
        family(d.real, d.virt)?;
        let value = RaValue {
            vm: d.virt,
            drain_until_ms: Some(d.deadline_ms),
        };
        self.writes.insert(MapKey::Ra(d.real), Write::Ra(value));
        Ok(())
    }

    /// Ends a drain by keeping the address as a plain reverse entry (the caller removes
    /// it if it should go).
    fn remove_drain(&mut self, real: IpAddr) -> Result<(), TableError> {
        if let Some(v) = self.ra_now(real).filter(|v| v.drain_until_ms.is_some()) {
            self.set_reverse(real, v.vm)?;
        }
        Ok(())
    }
}

/// A view of `mappings` (VA, RA), each with its reverse entry, read at revision 7.
#[cfg(test)]
pub(crate) fn view_with(mappings: &[(&str, &str)]) -> View {
    let keys = Keys::new("/t");
    let kvs: Vec<(String, Vec<u8>)> = mappings
        .iter()
        .flat_map(|(va, ra)| {
            let (vm, real): (IpAddr, IpAddr) = (va.parse().unwrap(), ra.parse().unwrap());
            [
                (keys.vm(vm), encode(&VmValue { real })),
                (
                    keys.ra(real),
                    encode(&RaValue {
                        vm,
                        drain_until_ms: None,
                    }),
                ),
            ]
        })
        .collect();
    View::from_kvs(
        &keys,
        7,
        kvs.iter().map(|(k, v)| (k.as_bytes(), v.as_slice(), 3, 0)),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ops::{self, Mapping, OpError};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rules_of_ops_hold_on_the_directory() {
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        let taken = ops::add(
            &mut v,
            Mapping {
                vm: ip("198.19.0.11"),
                real: ip("198.18.10.100"),
            },
        );
        assert!(matches!(taken, Err(OpError::RealInUse { .. })), "{taken:?}");
        assert_eq!(v.writes().count(), 0, "a refused add writes nothing");
        ops::add(
            &mut v,
            Mapping {
                vm: ip("198.19.0.11"),
                real: ip("198.18.10.101"),
            },
        )
        .unwrap();
        let writes: Vec<_> = v.writes().collect();
        assert_eq!(writes.len(), 2, "one write per key: {writes:?}");
        assert_eq!(ops::list(&v).unwrap().len(), 2);
    }

    /// A change that writes nothing is confirmed at the newest entry's revision, not at
    /// the store's (read at 7, past the entries' 3 and 5).
    #[test]
    fn the_newest_entry_revision_is_that_of_the_last_entry_written() {
        let keys = Keys::new("/t");
        let (vm, real) = (ip("198.19.0.10"), ip("198.18.10.100"));
        let kvs = [
            (keys.vm(vm), encode(&VmValue { real }), 5),
            (
                keys.ra(real),
                encode(&RaValue {
                    vm,
                    drain_until_ms: None,
                }),
                3,
            ),
        ];
        let v = View::from_kvs(
            &keys,
            7,
            kvs.iter()
                .map(|(k, v, rev)| (k.as_bytes(), v.as_slice(), *rev, 0)),
        )
        .unwrap();
        assert_eq!(v.newest_entry_revision(), 5);
        assert_eq!(View::default().newest_entry_revision(), 0);
    }

    #[test]
    fn a_move_by_apply_drains_the_old_address_once() {
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        let desired = [Mapping {
            vm: ip("198.19.0.10"),
            real: ip("198.18.20.100"),
        }];
        let plan = ops::plan(&v, &desired).unwrap();
        ops::apply(&mut v, &plan, Duration::from_secs(5), 1000).unwrap();
        let ra_old = v
            .writes()
            .find(|(k, _)| *k == MapKey::Ra(ip("198.18.10.100")));
        assert_eq!(
            ra_old,
            Some((
                MapKey::Ra(ip("198.18.10.100")),
                Write::Ra(RaValue {
                    vm: ip("198.19.0.10"),
                    drain_until_ms: Some(6000)
                })
            ))
        );
        assert_eq!(v.drains().unwrap().len(), 1);
        assert_eq!(v.mod_revision(MapKey::Ra(ip("198.18.10.100"))), 3);
        assert_eq!(v.mod_revision(MapKey::Ra(ip("198.18.20.100"))), 0);
    }

    #[test]
    fn delete_removes_both_directions() {
        let mut v = view_with(&[("2001:db8::10", "2001:db8:10::100")]);
        ops::delete(&mut v, ip("2001:db8::10")).unwrap();
        assert!(v.writes().all(|(_, w)| w == Write::Delete));
        assert_eq!(v.writes().count(), 2);
        assert!(ops::list(&v).unwrap().is_empty());
    }

    #[test]
    fn a_mapping_of_method_encap_lives_in_its_own_key() {
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        let (va, loc) = (ip("198.19.0.20"), ip("2001:db8:b::1"));
        ops::segment::add(&mut v, va, loc).unwrap();
        let writes: Vec<_> = v.writes().collect();
        assert_eq!(
            writes,
            vec![(MapKey::Seg(va), Write::Seg(SegValue { locator: loc }))]
        );
        assert_eq!(ops::segment::list(&v).unwrap().len(), 1);
        assert_eq!(v.segment(va).unwrap(), Some(loc));
        assert_eq!(ops::list(&v).unwrap().len(), 1, "paging mappings unchanged");
        // Created: the commit also holds the VA's vm key as read (absent).
        assert_eq!(v.guards().collect::<Vec<_>>(), vec![(MapKey::Vm(va), 0)]);
    }

    #[test]
    fn a_va_is_mapped_by_one_method_only() {
        let mut v = view_with(&[("198.19.0.10", "198.18.10.100")]);
        let refused = ops::segment::add(&mut v, ip("198.19.0.10"), ip("10.0.0.1"));
        assert!(
            matches!(refused, Err(OpError::VmExists { .. })),
            "{refused:?}"
        );
        let keys = Keys::new("/t");
        let (va, loc) = (ip("198.19.0.20"), ip("10.0.0.2"));
        let mut v = View::from_kvs(
            &keys,
            7,
            [(
                keys.seg(va).as_bytes(),
                &encode(&SegValue { locator: loc })[..],
                5,
                0,
            )],
        )
        .unwrap();
        let refused = ops::add(
            &mut v,
            Mapping {
                vm: va,
                real: ip("198.18.10.101"),
            },
        );
        assert!(
            matches!(refused, Err(OpError::VmExists { .. })),
            "{refused:?}"
        );
        assert_eq!(v.writes().count(), 0);
        let desired = [Mapping {
            vm: va,
            real: ip("198.18.10.101"),
        }];
        let refused = ops::plan(&v, &desired);
        assert!(
            matches!(refused, Err(OpError::VmExists { .. })),
            "{refused:?}"
        );
        // A switch rewrites the key as read: no guard, its own revision compared.
        ops::segment::switch_many(&mut [("d".into(), &mut v)], va, ip("10.0.0.3")).unwrap();
        assert_eq!(v.guards().count(), 0);
        assert_eq!(v.mod_revision(MapKey::Seg(va)), 5);
        assert_eq!(ops::delete(&mut v, va).unwrap().real, ip("10.0.0.3"));
        assert_eq!(
            v.writes().collect::<Vec<_>>(),
            vec![(MapKey::Seg(va), Write::Delete)]
        );
    }

    #[test]
    fn a_paging_add_guards_the_segment_key() {
        let mut v = view_with(&[]);
        let va = ip("2001:db8::10");
        ops::add(
            &mut v,
            Mapping {
                vm: va,
                real: ip("2001:db8:10::100"),
            },
        )
        .unwrap();
        assert_eq!(v.guards().collect::<Vec<_>>(), vec![(MapKey::Seg(va), 0)]);
    }
}
