//! One node's page table: the small interface through which everything reads and changes it.
//!
//! [`PageTable`] has one method per map operation, so that callers decide the order of
//! updates (the switch protocol depends on it) and a remote mapping directory can drive a
//! node through the same interface later. [`BpfTable`] implements it over the kernel maps.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use netpage_common::maps::{Addr4, Addr6, MappingStats, R2V4, R2V6, STATS4, STATS6, V2R4, V2R6};

/// A failed table operation, with the map and the address it concerned.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{op} {addr} in map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        addr: IpAddr,
        #[source]
        source: Box<MapError>,
    },
    #[error("reading map {map}: {source}")]
    Read {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map} is not of the expected type: {source}")]
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
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
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
        TableError::Map {
            op,
            map: self.name,
            addr: k.to_ip(),
            source: Box::new(source),
        }
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
            Err(source) => Err(TableError::Map {
                op: "creating",
                map: self.name,
                addr: k.to_ip(),
                source: Box::new(source),
            }),
        }
    }

    fn remove(&mut self, k: A) -> Result<(), TableError> {
        match self.map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(TableError::Map {
                op: "removing",
                map: self.name,
                addr: k.to_ip(),
                source: Box::new(source),
            }),
        }
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
            Err(source) => Err(TableError::Map {
                op: "reading",
                map: self.name,
                addr: k.to_ip(),
                source: Box::new(source),
            }),
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
}
