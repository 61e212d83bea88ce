//! The directory's mappings as read at one revision, with the changes an operation makes
//! to them, behind the same [`PageTable`] interface as a node's kernel tables: the rules
//! of `ops` (add, delete, apply, the checks of a switch) run unchanged on it, and what
//! they write becomes one etcd transaction.

use std::{collections::BTreeMap, net::IpAddr};

use netpage_common::maps::MappingStats;

use super::schema::{Keys, MapKey, RaValue, VmValue, encode};
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
    Delete,
}

/// The mapping range at one revision plus pending writes.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub revision: i64,
    vms: BTreeMap<IpAddr, Read<VmValue>>,
    ras: BTreeMap<IpAddr, Read<RaValue>>,
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
            let bad = || BadValue {
                key: String::from_utf8_lossy(key).into_owned(),
                value: String::from_utf8_lossy(value).into_owned(),
            };
            match keys.parse_map_key(key) {
                Some(MapKey::Vm(va)) => {
                    let value: VmValue = serde_json::from_slice(value).map_err(|_| bad())?;
                    let read = Read {
                        value,
                        mod_revision,
                        lease,
                    };
                    view.vms.insert(va, read);
                }
                Some(MapKey::Ra(ra)) => {
                    let value: RaValue = serde_json::from_slice(value).map_err(|_| bad())?;
                    let read = Read {
                        value,
                        mod_revision,
                        lease,
                    };
                    view.ras.insert(ra, read);
                }
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

    /// The revision that last changed `key` as read (0: absent), for the compare that
    /// makes a write conditional on nobody having changed the key since.
    pub fn mod_revision(&self, key: MapKey) -> i64 {
        match key {
            MapKey::Vm(va) => self.vms.get(&va).map_or(0, |r| r.mod_revision),
            MapKey::Ra(ra) => self.ras.get(&ra).map_or(0, |r| r.mod_revision),
        }
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

    fn vm_now(&self, va: IpAddr) -> Option<VmValue> {
        match self.writes.get(&MapKey::Vm(va)) {
            Some(Write::Vm(v)) => Some(*v),
            Some(_) => None,
            None => self.vms.get(&va).map(|r| r.value),
        }
    }

    fn ra_now(&self, ra: IpAddr) -> Option<RaValue> {
        match self.writes.get(&MapKey::Ra(ra)) {
            Some(Write::Ra(v)) => Some(*v),
            Some(_) => None,
            None => self.ras.get(&ra).map(|r| r.value),
        }
    }

    fn all_vms(&self) -> Vec<(IpAddr, IpAddr)> {
        let keys = self
            .vms
            .keys()
            .copied()
            .chain(self.writes.keys().filter_map(|k| match k {
                MapKey::Vm(va) => Some(*va),
                MapKey::Ra(_) => None,
            }));
        dedup_sorted(keys)
            .into_iter()
            .filter_map(|va| self.vm_now(va).map(|v| (va, v.real)))
            .collect()
    }

    fn all_ras(&self) -> Vec<(IpAddr, RaValue)> {
        let keys = self
            .ras
            .keys()
            .copied()
            .chain(self.writes.keys().filter_map(|k| match k {
                MapKey::Ra(ra) => Some(*ra),
                MapKey::Vm(_) => None,
            }));
        dedup_sorted(keys)
            .into_iter()
            .filter_map(|ra| self.ra_now(ra).map(|v| (ra, v)))
            .collect()
    }

    /// Encodes a pending write: the value's bytes, or `None` for a delete.
    pub fn encode(write: Write) -> Option<Vec<u8>> {
        match write {
            Write::Vm(v) => Some(encode(&v)),
            Write::Ra(v) => Some(encode(&v)),
            Write::Delete => None,
        }
    }
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

    /// The directory holds paging mappings only, so far.
    fn set_segment(&mut self, _va: IpAddr, _locator: IpAddr) -> Result<(), TableError> {
        Err(TableError::Unsupported {
            what: "a mapping of method encap",
            by: "through the directory yet: map it on each node (--pin-dir)",
        })
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
}
