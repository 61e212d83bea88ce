//! One node's page table: the small interface through which everything reads and changes it.
//!
//! [`PageTable`] has one method per map operation, so that callers decide the order of
//! updates (the switch protocol depends on it) and a remote mapping directory can drive a
//! node through the same interface later. [`BpfTable`] implements it over the kernel maps.

mod batch;

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use netpage_common::maps::{
    Addr4, Addr6, DRAINS, DrainEntry, DrainKey, MappingStats, R2V4, R2V6, STATS4, STATS6, V2R4,
    V2R6,
};

/// A failed table operation, with the map and the address it concerned.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{op} {addr} in map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        addr: IpAddr,
        #[source]
        source: Box<MapError>,
    },
    #[error(
        "batch-setting {addr} in map {map} (the {done} entries before it, of {total}, were set)"
    )]
    Batch {
        map: &'static str,
        addr: IpAddr,
        done: usize,
        total: usize,
        #[source]
        source: Box<MapError>,
    },
    #[error("reading map {map}")]
    Read {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map} is not of the expected type")]
    Open {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map} is missing")]
    Missing { map: &'static str },
    #[error("{a} and {b} are of different address families")]
    FamilyMismatch { a: IpAddr, b: IpAddr },
    #[error("cannot count the CPUs: {0}")]
    Cpus(String),
}

impl TableError {
    /// A failed `op` on the entry of `addr` in map `map`.
    fn map(op: &'static str, map: &'static str, addr: IpAddr, source: MapError) -> Self {
        TableError::Map {
            op,
            map,
            addr,
            source: Box::new(source),
        }
    }
}

/// The primitive operations on one node's page table. Each call is one map operation.
pub trait PageTable {
    /// V2R: the real address of a virtual address.
    fn forward(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError>;
    /// R2V: the virtual address of a real address.
    fn reverse(&self, ra: IpAddr) -> Result<Option<IpAddr>, TableError>;
    /// Sets V2R[va] = ra with one map update, creating or replacing the entry.
    fn set_forward(&mut self, va: IpAddr, ra: IpAddr) -> Result<(), TableError>;
    /// Sets R2V[ra] = va with one map update.
    fn set_reverse(&mut self, ra: IpAddr, va: IpAddr) -> Result<(), TableError>;
    /// Removes V2R[va]; removing an absent entry is not an error.
    fn remove_forward(&mut self, va: IpAddr) -> Result<(), TableError>;
    /// Removes R2V[ra]; removing an absent entry is not an error.
    fn remove_reverse(&mut self, ra: IpAddr) -> Result<(), TableError>;
    /// Every V2R entry, IPv4 first.
    fn forward_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError>;
    /// Every R2V entry, IPv4 first.
    fn reverse_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError>;
    /// Creates zeroed traffic counters for the mapping of `va` (kept if they exist).
    fn create_stats(&mut self, va: IpAddr) -> Result<(), TableError>;
    /// Removes the traffic counters of `va`.
    fn remove_stats(&mut self, va: IpAddr) -> Result<(), TableError>;
    /// The traffic translated by the mapping of `va`, summed over CPUs.
    fn stats(&self, va: IpAddr) -> Result<Option<MappingStats>, TableError>;
    /// The virtual addresses that have traffic counters (a table without per-mapping
    /// counters has none).
    fn stats_entries(&self) -> Result<Vec<IpAddr>, TableError> {
        Ok(Vec::new())
    }
    /// Real addresses kept in R2V after a switch, with their deadlines.
    fn drains(&self) -> Result<Vec<Drain>, TableError>;
    /// Records (or replaces) the drain of `drain.real`.
    fn set_drain(&mut self, drain: Drain) -> Result<(), TableError>;
    /// Forgets the drain of `real`; forgetting an absent drain is not an error.
    fn remove_drain(&mut self, real: IpAddr) -> Result<(), TableError>;

    /// Sets R2V for many entries; a table may batch them into fewer operations.
    fn set_reverse_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        entries
            .iter()
            .try_for_each(|&(ra, va)| self.set_reverse(ra, va))
    }
    /// Sets V2R for many entries; a table may batch them into fewer operations.
    fn set_forward_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        entries
            .iter()
            .try_for_each(|&(va, ra)| self.set_forward(va, ra))
    }
}

/// A real address that stays in R2V until `deadline_ms`, so that replies still in flight
/// from a VM's old location are translated after the VM moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drain {
    pub real: IpAddr,
    pub virt: IpAddr,
    /// Milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

/// An address type of one family, as stored in the maps.
trait Family: aya::Pod + Copy {
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn to_ip(self) -> IpAddr;
}

impl Family for Addr4 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(Addr4 { octets: a.octets() }),
            IpAddr::V6(_) => None,
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::from(self.octets)
    }
}

impl Family for Addr6 {
    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(Addr6 { octets: a.octets() }),
            IpAddr::V4(_) => None,
        }
    }
    fn to_ip(self) -> IpAddr {
        IpAddr::from(self.octets)
    }
}

/// A page table map of one family and direction, with its name for errors.
struct Table<A: Family> {
    name: &'static str,
    map: HashMap<MapData, A, A>,
}

impl<A: Family> Table<A> {
    fn get(&self, k: A) -> Result<Option<IpAddr>, TableError> {
        match self.map.get(&k, 0) {
            Ok(v) => Ok(Some(v.to_ip())),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(self.err("reading", k, source)),
        }
    }

    fn set(&mut self, k: A, v: A) -> Result<(), TableError> {
        self.map
            .insert(k, v, 0)
            .map_err(|source| self.err("setting", k, source))
    }

    fn remove(&mut self, k: A) -> Result<(), TableError> {
        match self.map.remove(&k) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(source) => Err(self.err("removing", k, source)),
        }
    }

    fn entries(&self, out: &mut Vec<(IpAddr, IpAddr)>) -> Result<(), TableError> {
        for kv in self.map.iter() {
            let (k, v) = kv.map_err(|source| TableError::Read {
                map: self.name,
                source: Box::new(source),
            })?;
            out.push((k.to_ip(), v.to_ip()));
        }
        Ok(())
    }

    fn err(&self, op: &'static str, k: A, source: MapError) -> TableError {
        TableError::map(op, self.name, k.to_ip(), source)
    }
}

/// Per-mapping counters of one family.
struct Stats<A: Family> {
    name: &'static str,
    map: PerCpuHashMap<MapData, A, MappingStats>,
}

/// The maps of one address family.
struct FamilyMaps<A: Family> {
    v2r: Table<A>,
    r2v: Table<A>,
    stats: Stats<A>,
}

/// The page table of a node, over its kernel maps (loaded or pinned).
pub struct BpfTable {
    v4: FamilyMaps<Addr4>,
    v6: FamilyMaps<Addr6>,
    drains: HashMap<MapData, DrainKey, DrainEntry>,
}

impl BpfTable {
    /// Builds the table from the node's maps; `take` yields the map of a given name.
    pub fn from_maps(
        mut take: impl FnMut(&'static str) -> Option<Map>,
    ) -> Result<Self, TableError> {
        let mut map = |name: &'static str| take(name).ok_or(TableError::Missing { map: name });
        let open = |name: &'static str, source| TableError::Open {
            map: name,
            source: Box::new(source),
        };
        macro_rules! table {
            ($name:expr) => {
                Table {
                    name: $name,
                    map: HashMap::try_from(map($name)?).map_err(|e| open($name, e))?,
                }
            };
        }
        macro_rules! stats {
            ($name:expr) => {
                Stats {
                    name: $name,
                    map: PerCpuHashMap::try_from(map($name)?).map_err(|e| open($name, e))?,
                }
            };
        }
        Ok(Self {
            v4: FamilyMaps {
                v2r: table!(V2R4),
                r2v: table!(R2V4),
                stats: stats!(STATS4),
            },
            v6: FamilyMaps {
                v2r: table!(V2R6),
                r2v: table!(R2V6),
                stats: stats!(STATS6),
            },
            drains: HashMap::try_from(map(DRAINS)?).map_err(|e| open(DRAINS, e))?,
        })
    }
}

/// Dispatches `$body` to the maps of `$ip`'s family, binding the address as `$a`.
macro_rules! by_family {
    ($self:ident, $ip:expr, |$m:ident, $a:ident| $body:expr) => {
        match $ip {
            IpAddr::V4(ip) => {
                let $m = &$self.v4;
                let $a = Addr4 {
                    octets: ip.octets(),
                };
                $body
            }
            IpAddr::V6(ip) => {
                let $m = &$self.v6;
                let $a = Addr6 {
                    octets: ip.octets(),
                };
                $body
            }
        }
    };
    (mut $self:ident, $ip:expr, |$m:ident, $a:ident| $body:expr) => {
        match $ip {
            IpAddr::V4(ip) => {
                let $m = &mut $self.v4;
                let $a = Addr4 {
                    octets: ip.octets(),
                };
                $body
            }
            IpAddr::V6(ip) => {
                let $m = &mut $self.v6;
                let $a = Addr6 {
                    octets: ip.octets(),
                };
                $body
            }
        }
    };
}

/// Converts `b` to the family of `a`, or reports the mismatch.
fn same_family<A: Family>(a: IpAddr, b: IpAddr) -> Result<A, TableError> {
    A::from_ip(b).ok_or(TableError::FamilyMismatch { a, b })
}

/// Whether a map operation failed only because the key is not in the map (a lookup
/// reports it as `KeyNotFound`, a delete as ENOENT).
pub(crate) fn absent(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

/// `BPF_NOEXIST`: create the element only if it does not exist (uapi/linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

fn zeroed_stats() -> Result<PerCpuValues<MappingStats>, TableError> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| TableError::Cpus(format!("{what}: {e}")))?;
    PerCpuValues::try_from(vec![MappingStats::default(); n])
        .map_err(|e| TableError::Cpus(e.to_string()))
}

impl<A: Family> Stats<A> {
    fn create(&mut self, k: A) -> Result<(), TableError> {
        let zero = zeroed_stats()?;
        // BPF_NOEXIST: keep the counters of a mapping that already has them.
        match self.map.insert(k, zero, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            Err(source) => Err(TableError::map("creating", self.name, k.to_ip(), source)),
        }
    }

    fn remove(&mut self, k: A) -> Result<(), TableError> {
        match self.map.remove(&k) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(source) => Err(TableError::map("removing", self.name, k.to_ip(), source)),
        }
    }

    fn keys(&self, out: &mut Vec<IpAddr>) -> Result<(), TableError> {
        for k in self.map.keys() {
            let k = k.map_err(|source| TableError::Read {
                map: self.name,
                source: Box::new(source),
            })?;
            out.push(k.to_ip());
        }
        Ok(())
    }

    fn get(&self, k: A) -> Result<Option<MappingStats>, TableError> {
        match self.map.get(&k, 0) {
            Ok(per_cpu) => Ok(Some(per_cpu.iter().fold(
                MappingStats::default(),
                |t, s| MappingStats {
                    packets: t.packets + s.packets,
                    bytes: t.bytes + s.bytes,
                },
            ))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(TableError::map("reading", self.name, k.to_ip(), source)),
        }
    }
}

impl PageTable for BpfTable {
    fn forward(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        by_family!(self, va, |m, k| m.v2r.get(k))
    }

    fn reverse(&self, ra: IpAddr) -> Result<Option<IpAddr>, TableError> {
        by_family!(self, ra, |m, k| m.r2v.get(k))
    }

    fn set_forward(&mut self, va: IpAddr, ra: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m, k| m.v2r.set(k, same_family(va, ra)?))
    }

    fn set_reverse(&mut self, ra: IpAddr, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, ra, |m, k| m.r2v.set(k, same_family(ra, va)?))
    }

    fn remove_forward(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m, k| m.v2r.remove(k))
    }

    fn remove_reverse(&mut self, ra: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, ra, |m, k| m.r2v.remove(k))
    }

    fn forward_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        let mut out = Vec::new();
        self.v4.v2r.entries(&mut out)?;
        self.v6.v2r.entries(&mut out)?;
        Ok(out)
    }

    fn reverse_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        let mut out = Vec::new();
        self.v4.r2v.entries(&mut out)?;
        self.v6.r2v.entries(&mut out)?;
        Ok(out)
    }

    fn create_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m, k| m.stats.create(k))
    }

    fn remove_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m, k| m.stats.remove(k))
    }

    fn stats(&self, va: IpAddr) -> Result<Option<MappingStats>, TableError> {
        by_family!(self, va, |m, k| m.stats.get(k))
    }

    fn stats_entries(&self) -> Result<Vec<IpAddr>, TableError> {
        let mut out = Vec::new();
        self.v4.stats.keys(&mut out)?;
        self.v6.stats.keys(&mut out)?;
        Ok(out)
    }

    fn drains(&self) -> Result<Vec<Drain>, TableError> {
        let read = |source| TableError::Read {
            map: DRAINS,
            source: Box::new(source),
        };
        let mut out = Vec::new();
        for kv in self.drains.iter() {
            let (k, v) = kv.map_err(read)?;
            let (real, virt) = drain_addrs(&k, &v);
            out.push(Drain {
                real,
                virt,
                deadline_ms: v.deadline_ms,
            });
        }
        Ok(out)
    }

    fn set_drain(&mut self, drain: Drain) -> Result<(), TableError> {
        let value = DrainEntry {
            virt: drain_bytes(drain.virt),
            deadline_ms: drain.deadline_ms,
        };
        self.drains
            .insert(drain_key(drain.real), value, 0)
            .map_err(|source| drain_err("setting", drain.real, source))
    }

    fn remove_drain(&mut self, real: IpAddr) -> Result<(), TableError> {
        match self.drains.remove(&drain_key(real)) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(source) => Err(drain_err("removing", real, source)),
        }
    }

    fn set_reverse_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        batch::update(&self.v4.r2v, &self.v6.r2v, entries)
    }

    fn set_forward_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        batch::update(&self.v4.v2r, &self.v6.v2r, entries)
    }
}

/// An address as stored in the drain map: IPv4 in the first 4 bytes.
fn drain_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    }
}

fn drain_key(real: IpAddr) -> DrainKey {
    DrainKey {
        family: if real.is_ipv4() { 4 } else { 6 },
        real: drain_bytes(real),
    }
}

fn drain_addrs(k: &DrainKey, v: &DrainEntry) -> (IpAddr, IpAddr) {
    let ip = |b: &[u8; 16]| -> IpAddr {
        if k.family == 4 {
            IpAddr::from([b[0], b[1], b[2], b[3]])
        } else {
            IpAddr::from(*b)
        }
    };
    (ip(&k.real), ip(&v.virt))
}

fn drain_err(op: &'static str, real: IpAddr, source: MapError) -> TableError {
    TableError::map(op, DRAINS, real, source)
}
