//! One node's page table: the small interface through which everything reads and changes it.
//!
//! [`PageTable`] has one method per map operation, so that callers decide the order of
//! updates (the switch protocol depends on it) and a remote mapping directory can drive a
//! node through the same interface later. [`BpfTable`] implements it over the kernel maps.

mod batch;
pub mod slots;

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use netpage_common::{
    maps::{
        Addr4, Addr6, DRAINS, DrainEntry, DrainKey, Entry4, Entry6, MappingStats, R2V4, R2V6, SEG4,
        SEG6, SLOT_STATS4, SLOT_STATS6, V2R4, V2R6,
    },
    segment::Locator,
};

use slots::{SlotProblem, Slots};

/// A failed read of a map (an iteration's step, or a lookup), naming the map.
#[derive(Debug, thiserror::Error)]
#[error("reading map {map}")]
pub struct ReadError {
    pub map: &'static str,
    #[source]
    pub source: Box<MapError>,
}

impl ReadError {
    /// The error mapping (for `map_err`) of the reads of `map`.
    pub fn of(map: &'static str) -> impl Fn(MapError) -> Self {
        move |source| Self {
            map,
            source: Box::new(source),
        }
    }
}

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
    #[error(transparent)]
    Read(#[from] ReadError),
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
    #[error(
        "no free counter slot for {vm}: as many mappings of its family as the table holds (or their draining addresses) have one"
    )]
    SlotsFull { vm: IpAddr },
    #[error("{what} is not supported {by}")]
    Unsupported {
        what: &'static str,
        by: &'static str,
    },
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
    /// Real addresses kept in R2V after a switch, with their deadlines.
    fn drains(&self) -> Result<Vec<Drain>, TableError>;
    /// Records (or replaces) the drain of `drain.real`.
    fn set_drain(&mut self, drain: Drain) -> Result<(), TableError>;
    /// Forgets the drain of `real`; forgetting an absent drain is not an error.
    fn remove_drain(&mut self, real: IpAddr) -> Result<(), TableError>;

    /// The segment tables (mappings of method `encap`): the locator of the node that
    /// hosts the VM of `va`, if `va` is mapped that way.
    fn segment(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        let _ = va;
        Ok(None)
    }
    /// Sets the locator of `va` with one map update, creating or replacing the entry.
    fn set_segment(&mut self, va: IpAddr, locator: IpAddr) -> Result<(), TableError> {
        let _ = (va, locator);
        Err(TableError::Unsupported {
            what: "a mapping of method encap",
            by: "by this table",
        })
    }
    /// Removes the segment entry of `va`; removing an absent entry is not an error.
    fn remove_segment(&mut self, va: IpAddr) -> Result<(), TableError> {
        let _ = va;
        Ok(())
    }
    /// Every segment entry (VA, locator), IPv4 VAs first.
    fn segment_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(Vec::new())
    }

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

/// An address type of one family, as stored in the maps, with its table entry type.
trait Family: aya::Pod + Copy + Default {
    /// A page table's value: an address of the family and a counter slot.
    type Entry: aya::Pod + Copy;
    fn from_ip(ip: IpAddr) -> Option<Self>;
    fn to_ip(self) -> IpAddr;
    fn entry(addr: Self, slot: u32) -> Self::Entry;
    fn split(e: Self::Entry) -> (Self, u32);
}

impl Family for Addr4 {
    type Entry = Entry4;
    fn entry(addr: Self, slot: u32) -> Entry4 {
        Entry4 { addr, slot }
    }
    fn split(e: Entry4) -> (Self, u32) {
        (e.addr, e.slot)
    }
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
    type Entry = Entry6;
    fn entry(addr: Self, slot: u32) -> Entry6 {
        Entry6 { addr, slot }
    }
    fn split(e: Entry6) -> (Self, u32) {
        (e.addr, e.slot)
    }
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
    map: HashMap<MapData, A, A::Entry>,
}

impl<A: Family> Table<A> {
    /// The entry of `k`: the address it translates to, and its counter slot.
    fn get(&self, k: A) -> Result<Option<(IpAddr, u32)>, TableError> {
        match self.map.get(&k, 0) {
            Ok(v) => {
                let (a, slot) = A::split(v);
                Ok(Some((a.to_ip(), slot)))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(self.err("reading", k, source)),
        }
    }

    fn set(&mut self, k: A, v: A, slot: u32) -> Result<(), TableError> {
        self.map
            .insert(k, A::entry(v, slot), 0)
            .map_err(|source| self.err("setting", k, source))
    }

    fn remove(&mut self, k: A) -> Result<(), TableError> {
        match self.map.remove(&k) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(source) => Err(self.err("removing", k, source)),
        }
    }

    /// Every entry as (key, address, slot).
    fn entries(&self, out: &mut Vec<(IpAddr, IpAddr, u32)>) -> Result<(), TableError> {
        for (k, v) in self.all()? {
            let (a, slot) = A::split(v);
            out.push((k.to_ip(), a.to_ip(), slot));
        }
        Ok(())
    }

    fn err(&self, op: &'static str, k: A, source: MapError) -> TableError {
        TableError::map(op, self.name, k.to_ip(), source)
    }
}

/// Per-mapping counters of one family, indexed by slot.
struct Stats {
    name: &'static str,
    map: PerCpuArray<MapData, MappingStats>,
}

/// Which table of a family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// V2R: keyed by the VM's address.
    Forward,
    /// R2V: keyed by a real address, naming the VM.
    Reverse,
}

/// The maps of one address family, and the index of its counter slots once one was
/// needed (kept up to date by every write through this table from then on).
struct FamilyMaps<A: Family> {
    v2r: Table<A>,
    r2v: Table<A>,
    /// The segment table, keyed by VA; `None` on a node attached by a build without it.
    seg: Option<SegTable<A>>,
    stats: Stats,
    slots: Option<Slots>,
}

/// A segment table of one family: VA -> locator (of either family) and counter slot.
struct SegTable<A: Family> {
    name: &'static str,
    map: HashMap<MapData, A, Locator>,
}

/// A locator as the segment tables hold it.
fn locator(ip: IpAddr, slot: u32) -> Locator {
    let (family, addr) = padded(ip);
    Locator { family, addr, slot }
}

/// The address a segment table's value holds.
fn locator_ip(l: &Locator) -> IpAddr {
    unpadded(l.family, &l.addr)
}

impl<A: Family> SegTable<A> {
    fn get(&self, va: IpAddr) -> Result<Option<(IpAddr, u32)>, TableError> {
        match self.map.get(&key::<A>(va)?, 0) {
            Ok(l) => Ok(Some((locator_ip(&l), l.slot))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(TableError::map("reading", self.name, va, source)),
        }
    }

    /// Every entry as (VA, locator, slot).
    fn entries(&self, out: &mut Vec<(IpAddr, IpAddr, u32)>) -> Result<(), TableError> {
        for kv in self.map.iter() {
            let (k, l) = kv.map_err(ReadError::of(self.name))?;
            out.push((k.to_ip(), locator_ip(&l), l.slot));
        }
        Ok(())
    }
}

impl<A: Family> FamilyMaps<A> {
    fn table(&self, dir: Dir) -> &Table<A> {
        match dir {
            Dir::Forward => &self.v2r,
            Dir::Reverse => &self.r2v,
        }
    }

    fn table_mut(&mut self, dir: Dir) -> &mut Table<A> {
        match dir {
            Dir::Forward => &mut self.v2r,
            Dir::Reverse => &mut self.r2v,
        }
    }

    /// Every entry of both tables as (VM, slot), and the number of slots.
    fn slot_entries(&self) -> Result<(u32, Vec<(IpAddr, u32)>), TableError> {
        let mut fwd = Vec::new();
        let mut rev = Vec::new();
        self.v2r.entries(&mut fwd)?;
        self.r2v.entries(&mut rev)?;
        if let Some(seg) = &self.seg {
            seg.entries(&mut fwd)?;
        }
        let all = fwd
            .into_iter()
            .map(|(va, _, slot)| (va, slot))
            .chain(rev.into_iter().map(|(_, va, slot)| (va, slot)))
            .collect();
        Ok((self.stats.map.len(), all))
    }

    /// The slot index, built from the tables' entries on first use.
    fn index(&mut self) -> Result<&mut Slots, TableError> {
        if self.slots.is_none() {
            let (capacity, entries) = self.slot_entries()?;
            self.slots = Some(Slots::from_entries(capacity, entries).0);
        }
        Ok(self.slots.as_mut().expect("built above"))
    }

    /// The slot of `vm` if it has one: from the index once built, else from its V2R entry
    /// (one lookup: a switch needs no more).
    fn known_slot(&self, vm: IpAddr) -> Result<Option<u32>, TableError> {
        if let Some(s) = &self.slots {
            return Ok(s.slot_of(vm));
        }
        let key = A::from_ip(vm).expect("an address of the family");
        if let Some(slot) = self.v2r.get(key)?.map(|(_, slot)| slot) {
            return Ok(Some(slot));
        }
        match &self.seg {
            Some(seg) => Ok(seg.get(vm)?.map(|(_, slot)| slot)),
            None => Ok(None),
        }
    }

    /// The segment table, or the error of a node attached by a build without it.
    fn seg_table(&self) -> Result<&SegTable<A>, TableError> {
        self.seg.as_ref().ok_or(TableError::Unsupported {
            what: "a mapping of method encap",
            by: "by this node until it is attached again (its maps predate segmentation)",
        })
    }

    /// Sets the segment entry of `va`, with the VM's slot.
    fn put_segment(&mut self, va: IpAddr, to: IpAddr) -> Result<(), TableError> {
        let name = self.seg_table()?.name;
        let slot = self.slot_for(va)?;
        let old = match &self.slots {
            Some(_) => self.seg_table()?.get(va)?,
            None => None,
        };
        let seg = self.seg.as_mut().expect("checked above");
        seg.map
            .insert(key::<A>(va)?, locator(to, slot), 0)
            .map_err(|source| TableError::map("setting", name, va, source))?;
        if let Some(s) = &mut self.slots {
            if let Some((_, oslot)) = old {
                s.entry_removed(va, oslot);
            }
            s.entry_added(va, slot);
        }
        Ok(())
    }

    /// Removes the segment entry of `va`.
    fn delete_segment(&mut self, va: IpAddr) -> Result<(), TableError> {
        let Some(seg) = &mut self.seg else {
            return Ok(());
        };
        let old = match &self.slots {
            Some(_) => seg.get(va)?,
            None => None,
        };
        match seg.map.remove(&key::<A>(va)?) {
            Ok(()) => {}
            Err(e) if absent(&e) => {}
            Err(source) => return Err(TableError::map("removing", seg.name, va, source)),
        }
        if let (Some(s), Some((_, slot))) = (&mut self.slots, old) {
            s.entry_removed(va, slot);
        }
        Ok(())
    }

    /// The slot for entries of `vm`: its own, or a free one claimed for it, zeroed.
    fn slot_for(&mut self, vm: IpAddr) -> Result<u32, TableError> {
        if let Some(slot) = self.known_slot(vm)? {
            return Ok(slot);
        }
        self.claim(vm)
    }

    /// Claims the slot of `vm` (its own, or a free one, zeroed).
    fn claim(&mut self, vm: IpAddr) -> Result<u32, TableError> {
        let c = self
            .index()?
            .claim(vm)
            .map_err(|_| TableError::SlotsFull { vm })?;
        if c.fresh {
            self.stats.zero(c.slot)?;
        }
        Ok(c.slot)
    }

    /// The VM an entry of `dir` names: the key of V2R, the value of R2V.
    fn vm_of(dir: Dir, key: IpAddr, value: IpAddr) -> IpAddr {
        match dir {
            Dir::Forward => key,
            Dir::Reverse => value,
        }
    }

    /// Sets `key -> value` in `dir`'s table, with the slot of the VM it names.
    fn put(&mut self, dir: Dir, key: IpAddr, value: IpAddr) -> Result<(), TableError> {
        let k = A::from_ip(key).expect("an address of the family");
        let v = same_family::<A>(key, value)?;
        let vm = Self::vm_of(dir, key, value);
        let slot = self.slot_for(vm)?;
        let old = self.tracked_entry(dir, k)?;
        self.table_mut(dir).set(k, v, slot)?;
        if let Some(s) = &mut self.slots {
            if let Some((ovm, oslot)) = old {
                s.entry_removed(ovm, oslot);
            }
            s.entry_added(vm, slot);
        }
        Ok(())
    }

    /// Removes `key` from `dir`'s table.
    fn delete(&mut self, dir: Dir, key: IpAddr) -> Result<(), TableError> {
        let k = A::from_ip(key).expect("an address of the family");
        let old = self.tracked_entry(dir, k)?;
        self.table_mut(dir).remove(k)?;
        if let (Some(s), Some((vm, slot))) = (&mut self.slots, old) {
            s.entry_removed(vm, slot);
        }
        Ok(())
    }

    /// The VM and slot of the entry of `k` in `dir`, read only when the index needs it.
    fn tracked_entry(&self, dir: Dir, k: A) -> Result<Option<(IpAddr, u32)>, TableError> {
        if self.slots.is_none() {
            return Ok(None);
        }
        Ok(self
            .table(dir)
            .get(k)?
            .map(|(v, slot)| (Self::vm_of(dir, k.to_ip(), v), slot)))
    }

    /// Sets many entries of `dir` with one batch, each with its VM's slot.
    fn put_many(&mut self, dir: Dir, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        let mut keys = Vec::with_capacity(entries.len());
        let mut values = Vec::with_capacity(entries.len());
        let mut notes = Vec::new();
        for &(key, value) in entries {
            let k = A::from_ip(key).expect("an address of the family");
            let v = same_family::<A>(key, value)?;
            let vm = Self::vm_of(dir, key, value);
            let slot = self.slot_for(vm)?;
            notes.push((self.tracked_entry(dir, k)?, vm, slot));
            keys.push(k);
            values.push(A::entry(v, slot));
        }
        self.table(dir).update_batch(&keys, &values)?;
        if let Some(s) = &mut self.slots {
            for (old, vm, slot) in notes {
                if let Some((ovm, oslot)) = old {
                    s.entry_removed(ovm, oslot);
                }
                s.entry_added(vm, slot);
            }
        }
        Ok(())
    }

    /// The traffic of `vm`'s mapping, summed over CPUs, if it has a slot.
    fn stats(&self, vm: IpAddr) -> Result<Option<MappingStats>, TableError> {
        match self.known_slot(vm)? {
            Some(slot) => self.stats.get(slot, vm).map(Some),
            None => Ok(None),
        }
    }
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
        // A node attached by an older build has no segment tables until its next attach.
        macro_rules! seg {
            ($name:expr) => {
                match map($name).ok() {
                    Some(m) => Some(SegTable {
                        name: $name,
                        map: HashMap::try_from(m).map_err(|e| open($name, e))?,
                    }),
                    None => None,
                }
            };
        }
        macro_rules! stats {
            ($name:expr) => {
                Stats {
                    name: $name,
                    map: PerCpuArray::try_from(map($name)?).map_err(|e| open($name, e))?,
                }
            };
        }
        Ok(Self {
            v4: FamilyMaps {
                v2r: table!(V2R4),
                r2v: table!(R2V4),
                seg: seg!(SEG4),
                stats: stats!(SLOT_STATS4),
                slots: None,
            },
            v6: FamilyMaps {
                v2r: table!(V2R6),
                r2v: table!(R2V6),
                seg: seg!(SEG6),
                stats: stats!(SLOT_STATS6),
                slots: None,
            },
            drains: HashMap::try_from(map(DRAINS)?).map_err(|e| open(DRAINS, e))?,
        })
    }
}

/// Dispatches `$body` to the maps of `$ip`'s family.
macro_rules! by_family {
    ($self:ident, $ip:expr, |$m:ident| $body:expr) => {
        match $ip {
            IpAddr::V4(_) => {
                let $m = &$self.v4;
                $body
            }
            IpAddr::V6(_) => {
                let $m = &$self.v6;
                $body
            }
        }
    };
    (mut $self:ident, $ip:expr, |$m:ident| $body:expr) => {
        match $ip {
            IpAddr::V4(_) => {
                let $m = &mut $self.v4;
                $body
            }
            IpAddr::V6(_) => {
                let $m = &mut $self.v6;
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

fn zeroed_stats() -> Result<PerCpuValues<MappingStats>, TableError> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| TableError::Cpus(format!("{what}: {e}")))?;
    PerCpuValues::try_from(vec![MappingStats::default(); n])
        .map_err(|e| TableError::Cpus(e.to_string()))
}

impl Stats {
    /// Zeroes `slot` before a new mapping counts into it.
    fn zero(&mut self, slot: u32) -> Result<(), TableError> {
        self.map
            .set(slot, zeroed_stats()?, 0)
            .map_err(ReadError::of(self.name))?;
        Ok(())
    }

    /// The counters of `slot` (counting for `vm`), summed over CPUs.
    fn get(&self, slot: u32, vm: IpAddr) -> Result<MappingStats, TableError> {
        let per_cpu = self
            .map
            .get(&slot, 0)
            .map_err(|source| TableError::map("reading the counters of", self.name, vm, source))?;
        Ok(per_cpu
            .iter()
            .fold(MappingStats::default(), |t, s| MappingStats {
                packets: t.packets + s.packets,
                bytes: t.bytes + s.bytes,
            }))
    }
}

impl BpfTable {
    /// What is wrong with the counter slots the tables' entries carry: slots shared by
    /// two VMs, VMs whose entries carry different slots, slots beyond the stats array.
    /// One pass over the tables (their entries are read anyway by `check`).
    pub fn slot_problems(&self) -> Result<Vec<SlotProblem>, TableError> {
        let mut out = Vec::new();
        for (capacity, entries) in [self.v4.slot_entries()?, self.v6.slot_entries()?] {
            out.extend(Slots::from_entries(capacity, entries).1);
        }
        Ok(out)
    }

    /// Every V2R entry with its counter slot, IPv4 first.
    pub fn forward_slots(&self) -> Result<Vec<(IpAddr, IpAddr, u32)>, TableError> {
        let mut out = Vec::new();
        self.v4.v2r.entries(&mut out)?;
        self.v6.v2r.entries(&mut out)?;
        Ok(out)
    }

    /// Every mapping (VM, real address) with its traffic, read in a few batched calls
    /// per map rather than a lookup per mapping.
    pub fn mapping_stats(&self) -> Result<Vec<(IpAddr, IpAddr, MappingStats)>, TableError> {
        let stats = [self.v4.stats.all()?, self.v6.stats.all()?];
        Ok(self
            .forward_slots()?
            .into_iter()
            .map(|(vm, real, slot)| {
                let family = &stats[usize::from(vm.is_ipv6())];
                let s = family.get(slot as usize).copied().unwrap_or_default();
                (vm, real, s)
            })
            .collect())
    }
}

impl PageTable for BpfTable {
    fn forward(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        by_family!(self, va, |m| m
            .v2r
            .get(key(va)?)
            .map(|e| e.map(|(ra, _)| ra)))
    }

    fn reverse(&self, ra: IpAddr) -> Result<Option<IpAddr>, TableError> {
        by_family!(self, ra, |m| m
            .r2v
            .get(key(ra)?)
            .map(|e| e.map(|(va, _)| va)))
    }

    fn set_forward(&mut self, va: IpAddr, ra: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| m.put(Dir::Forward, va, ra))
    }

    fn set_reverse(&mut self, ra: IpAddr, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, ra, |m| m.put(Dir::Reverse, ra, va))
    }

    fn remove_forward(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| m.delete(Dir::Forward, va))
    }

    fn remove_reverse(&mut self, ra: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, ra, |m| m.delete(Dir::Reverse, ra))
    }

    fn forward_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(strip(self.forward_slots()?))
    }

    fn reverse_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        let mut out = Vec::new();
        self.v4.r2v.entries(&mut out)?;
        self.v6.r2v.entries(&mut out)?;
        Ok(strip(out))
    }

    /// Claims the mapping's slot (zeroed if it was free); a VM that has one keeps it and
    /// its counters.
    fn create_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| m.claim(va).map(drop))
    }

    /// Ends the claim of the mapping's slot, which is free once no entry carries it (a
    /// draining reverse entry may still: its drain's end frees it).
    fn remove_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| {
            if let Some(s) = &mut m.slots {
                s.unclaim(va);
            }
            Ok(())
        })
    }

    fn stats(&self, va: IpAddr) -> Result<Option<MappingStats>, TableError> {
        by_family!(self, va, |m| m.stats(va))
    }

    fn drains(&self) -> Result<Vec<Drain>, TableError> {
        let mut out = Vec::new();
        for kv in self.drains.iter() {
            let (k, v) = kv.map_err(ReadError::of(DRAINS))?;
            let (real, virt) = drain_addrs(&k, &v);
            out.push(Drain {
                real,
                virt,
                deadline_ms: crate::clock::node_deadline(v.deadline_ms),
            });
        }
        Ok(out)
    }

    fn set_drain(&mut self, drain: Drain) -> Result<(), TableError> {
        let value = DrainEntry {
            virt: padded(drain.virt).1,
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

    fn segment(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        by_family!(self, va, |m| match &m.seg {
            Some(seg) => seg.get(va).map(|e| e.map(|(l, _)| l)),
            None => Ok(None),
        })
    }

    fn set_segment(&mut self, va: IpAddr, locator: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| m.put_segment(va, locator))
    }

    fn remove_segment(&mut self, va: IpAddr) -> Result<(), TableError> {
        by_family!(mut self, va, |m| m.delete_segment(va))
    }

    fn segment_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        let mut out = Vec::new();
        if let Some(m) = &self.v4.seg {
            m.entries(&mut out)?;
        }
        if let Some(m) = &self.v6.seg {
            m.entries(&mut out)?;
        }
        Ok(strip(out))
    }

    fn set_reverse_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        let (v4, v6): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| k.is_ipv4());
        self.v4.put_many(Dir::Reverse, &v4)?;
        self.v6.put_many(Dir::Reverse, &v6)
    }

    fn set_forward_many(&mut self, entries: &[(IpAddr, IpAddr)]) -> Result<(), TableError> {
        let (v4, v6): (Vec<_>, Vec<_>) = entries.iter().partition(|(k, _)| k.is_ipv4());
        self.v4.put_many(Dir::Forward, &v4)?;
        self.v6.put_many(Dir::Forward, &v6)
    }
}

/// `ip` as a key of its family's maps.
fn key<A: Family>(ip: IpAddr) -> Result<A, TableError> {
    A::from_ip(ip).ok_or(TableError::FamilyMismatch { a: ip, b: ip })
}

/// Entries without their slots.
fn strip(entries: Vec<(IpAddr, IpAddr, u32)>) -> Vec<(IpAddr, IpAddr)> {
    entries.into_iter().map(|(k, v, _)| (k, v)).collect()
}

/// An address as the maps that hold either family store it (the drain map, the segment
/// tables and settings): its family (4 or 6), and its bytes, IPv4 in the first 4.
pub(crate) fn padded(ip: IpAddr) -> (u32, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (4, b)
        }
        IpAddr::V6(a) => (6, a.octets()),
    }
}

/// The address of `family` stored as [`padded`] stores it.
pub(crate) fn unpadded(family: u32, b: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(*b)
    }
}

fn drain_key(real: IpAddr) -> DrainKey {
    let (family, real) = padded(real);
    DrainKey { family, real }
}

fn drain_addrs(k: &DrainKey, v: &DrainEntry) -> (IpAddr, IpAddr) {
    (unpadded(k.family, &k.real), unpadded(k.family, &v.virt))
}

fn drain_err(op: &'static str, real: IpAddr, source: MapError) -> TableError {
    TableError::map(op, DRAINS, real, source)
}
