//! A node's persistent state: the bpffs pin directory that holds its maps and XDP links,
//! so that the page table and the attachments outlive every `netpage` process.
//!
//! Layout: `<dir>/maps/<map name>`, `<dir>/progs/<program>-<object hash>` (verified
//! programs, so that attaching again takes milliseconds) and `<dir>/links/<interface>`.

mod capabilities;

use std::{
    collections::{BTreeSet, HashMap},
    ffi::CString,
    io,
    net::IpAddr,
    os::unix::{ffi::OsStrExt, fs::DirBuilderExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfError,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, Map, MapData, MapError, xdp::XdpMapError},
};
use netpage_common::maps::{
    ADDED_MAPS, ALL_MAPS, Addr4, Addr6, COUNTERS, DEVMAP, FAST_PORTS, IFACES, IfaceName,
    IfaceRecord, LAYOUTS, Layout, NEWER_MAPS, OLD_STATS, PORTS, PortRecord, R2V4, R2V6, SEG_CONFIG,
    TABLES, V2R4, V2R6, fast_port_count, old_table_value_size,
};

use crate::{
    counters::Totals,
    loader::{self, Side},
    owner::{OwnerError, Owners},
    segment::SegSettings,
    table::{BpfTable, PageTable, TableError, absent},
};

/// Where a node keeps its state unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netpage";

/// How long a command waits, by default, for another that is changing the node.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// `BPF_FS_MAGIC` (uapi/linux/magic.h): the `f_type` of a bpffs.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// A failure to find, prepare or open a node's state.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "netpage needs CAP_BPF and CAP_NET_ADMIN, and this process lacks {}: run it as root (`sudo netpage ...`) or grant it those capabilities",
        missing.join(" and ")
    )]
    Capabilities { missing: Vec<&'static str> },
    #[error(
        "no page table under {}: nothing was attached on this node; run `netpage attach IFACE --side virtual|physical` first, or pass the node's --pin-dir",
        dir.display()
    )]
    NoTable { dir: PathBuf },
    #[error("cannot prepare the pin directory {}", dir.display())]
    PinDir { dir: PathBuf, source: io::Error },
    #[error("cannot mount a bpf filesystem at {}", dir.display())]
    Mount { dir: PathBuf, source: io::Error },
    #[error(
        "this node's tables hold {have} entries each, not {want}; the capacity is fixed when a node is created (detach every interface and remove {} to start over)",
        dir.display()
    )]
    Capacity { dir: PathBuf, have: u32, want: u32 },
    #[error("opening the pinned map {}", path.display())]
    OpenMap {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("loading the XDP program with the maps pinned under {}", dir.display())]
    Load {
        dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error(
        "the tables under {} were made by another build of netpage (map {map} differs): use that build, or detach every interface and remove {} to start over (its table is lost)",
        dir.display(),
        dir.display()
    )]
    Incompatible { dir: PathBuf, map: &'static str },
    #[error(
        "the node under {} was made by an older build of netpage (its counter array has another size): attach its interfaces again (`netpage attach IFACE --side SIDE`), which keeps its table and starts its counters anew",
        dir.display()
    )]
    OlderCounters { dir: PathBuf },
    #[error(
        "the node under {} was made by an older build of netpage (it has no record of which port owns each VM): attach its interfaces again (`netpage attach IFACE --side SIDE`, with `--vm VA` for each VM's port), which keeps its table",
        dir.display()
    )]
    OlderOwners { dir: PathBuf },
    #[error(
        "the node under {} was made by an older build of netpage (its page tables carry no counter slots): attach its interfaces again (`netpage attach IFACE --side SIDE`), which keeps its table and starts its per-mapping counters anew",
        dir.display()
    )]
    OlderTable { dir: PathBuf },
    #[error("removing the pin of the older map {}", path.display())]
    Unpin { path: PathBuf, source: io::Error },
    #[error("interface name {0:?} is not valid (1 to 15 bytes, no '/' or NUL)")]
    IfaceName(String),
    #[error("registry of attached interfaces: {0}")]
    Registry(#[source] Box<MapError>),
    #[error("device map of the fast path: {0}")]
    Devmap(#[source] Box<XdpMapError>),
    #[error(
        "node {} is managed by `netpage agent`: change the directory instead (the same command with --etcd URLS), or stop the agent first",
        dir.display()
    )]
    Managed { dir: PathBuf },
    #[error(
        "node {} is held by another `netpage agent` or by a running netpage command",
        dir.display()
    )]
    Busy { dir: PathBuf },
    #[error(
        "node {} is busy: another netpage command has been changing it for the {:.1} s this one waited; try again, or wait longer with --lock-wait SECONDS",
        dir.display(),
        waited.as_secs_f64()
    )]
    WriterBusy { dir: PathBuf, waited: Duration },
    #[error(
        "{} and {} are the same node: give each node once",
        dir.display(),
        again.display()
    )]
    NodeTwice { dir: PathBuf, again: PathBuf },
    #[error("cannot lock node {}", dir.display())]
    Lock { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Owners(#[from] OwnerError),
}

impl NodeError {
    /// The pin directory of the node the error is about, if it names one.
    pub fn pin_dir(&self) -> Option<&Path> {
        match self {
            NodeError::NoTable { dir }
            | NodeError::PinDir { dir, .. }
            | NodeError::Mount { dir, .. }
            | NodeError::Capacity { dir, .. }
            | NodeError::Load { dir, .. }
            | NodeError::Incompatible { dir, .. }
            | NodeError::OlderCounters { dir }
            | NodeError::OlderOwners { dir }
            | NodeError::OlderTable { dir }
            | NodeError::Managed { dir }
            | NodeError::Busy { dir }
            | NodeError::WriterBusy { dir, .. }
            | NodeError::NodeTwice { dir, .. }
            | NodeError::Lock { dir, .. } => Some(dir),
            _ => None,
        }
    }
}

/// A hold on a node: `flock`s released when dropped. Three locks make it:
///
/// - the maps directory, which the agent holds exclusively for its whole life and a
///   command that writes the table holds shared, so that no command writes a node whose
///   agent is its only writer (`Managed`);
/// - the table writers' directory `<dir>/lock`, which every command that changes the
///   table holds exclusively, so that they run one at a time;
/// - the attachment writers' directory `<dir>/lock-attach`, which `attach` and `detach`
///   hold exclusively: they change the programs, links and ports, not the table, so that
///   an interface can be attached while a long command (`migrate`) holds the table.
///
/// A command waits for a writers' lock up to its patience, then gives up (`WriterBusy`).
/// `check` takes both writers' locks, to see the node between two changes. Read-only
/// commands take none: they read what the maps hold, and write nothing.
#[derive(Debug)]
pub struct NodeLock(#[expect(dead_code, reason = "held for their flocks")] Vec<std::fs::File>);

/// Fails unless the process has the capabilities netpage needs: CAP_BPF (or, before
/// Linux 5.8, CAP_SYS_ADMIN) for the maps and programs, and CAP_NET_ADMIN for the links.
/// Being root is neither needed (capabilities granted to another user do) nor enough (a
/// container's root may lack them).
pub fn require_capabilities() -> Result<(), NodeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let missing = capabilities::missing(capabilities::effective(&status));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Capabilities { missing })
    }
}

/// One node's pin directory.
#[derive(Clone, Debug)]
pub struct Node {
    dir: PathBuf,
    /// How long to wait for another command that is changing the node.
    patience: Duration,
}

impl Node {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            patience: DEFAULT_LOCK_WAIT,
        }
    }

    /// How long the node waits for another command that is changing it.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// The same node, waiting up to `patience` for another command that is changing it.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    /// Where the node's map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Where the XDP link of `iface` is pinned.
    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(iface)
    }

    /// Where the tcx link of `iface` (ingress) is pinned.
    pub fn tc_link_path(&self, iface: &str) -> PathBuf {
        self.dir.join("links-tc").join(iface)
    }

    /// Where the tcx link on the egress of `iface` (a virtual-side interface) is pinned.
    pub fn tc_egress_link_path(&self, iface: &str) -> PathBuf {
        self.dir.join("links-tc-egress").join(iface)
    }

    /// Where the table writers' lock is: a directory, since bpffs holds no regular files.
    fn table_lock_dir(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Where the attachment writers' lock is.
    fn attach_lock_dir(&self) -> PathBuf {
        self.dir.join("lock-attach")
    }

    /// Takes the node for its agent, waiting up to `patience` for commands that are
    /// writing it now to finish.
    pub fn lock_for_agent(&self, patience: Duration) -> Result<NodeLock, NodeError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.flock(&self.maps_dir(), libc::LOCK_EX) {
                Err(NodeError::Managed { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(NodeError::Managed { dir }) => return Err(NodeError::Busy { dir }),
                other => return other.map(|f| NodeLock(vec![f])),
            }
        }
    }

    /// Takes the node for a command that writes its table: refused while an agent manages
    /// it, and waits for any other command that is changing it. A node without a table has
    /// nothing to lock (`None`).
    pub fn lock_for_write(&self) -> Result<Option<NodeLock>, NodeError> {
        if !self.exists() {
            return Ok(None);
        }
        let shared = self.flock(&self.maps_dir(), libc::LOCK_SH)?;
        let writer = self.wait_lock(self.table_lock_dir())?;
        Ok(Some(NodeLock(vec![shared, writer])))
    }

    /// Takes the node for a command that changes its attachments (`attach`, `detach`),
    /// which an agent does not do: waits for any other command that is changing them.
    /// Prepares the pin directory first (the node may be new).
    pub fn lock_for_attach(&self) -> Result<NodeLock, NodeError> {
        self.prepare()?;
        Ok(NodeLock(vec![self.wait_lock(self.attach_lock_dir())?]))
    }

    /// Takes the attachment writers' lock on an existing node (`detach`, and `check
    /// --repair`, which recounts the fast-path ports).
    pub fn lock_attachments(&self) -> Result<NodeLock, NodeError> {
        Ok(NodeLock(vec![self.wait_lock(self.attach_lock_dir())?]))
    }

    /// Takes both writers' locks, waiting for any command that is changing the node: for
    /// a command that must see the node between two commands' changes (`check`), and may
    /// do so under an agent.
    pub fn lock_writers(&self) -> Result<NodeLock, NodeError> {
        let table = self.wait_lock(self.table_lock_dir())?;
        let attach = self.wait_lock(self.attach_lock_dir())?;
        Ok(NodeLock(vec![table, attach]))
    }

    /// Whether an agent manages the node now.
    pub fn managed(&self) -> bool {
        self.exists()
            && matches!(
                self.flock(&self.maps_dir(), libc::LOCK_SH),
                Err(NodeError::Managed { .. })
            )
    }

    /// A writers' lock (made if missing), waiting up to the node's patience.
    fn wait_lock(&self, dir: PathBuf) -> Result<std::fs::File, NodeError> {
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(NodeError::Lock {
                    dir: self.dir.clone(),
                    source,
                });
            }
        }
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match self.flock(&dir, libc::LOCK_EX) {
                Err(NodeError::Managed { .. }) if start.elapsed() < self.patience => {
                    std::thread::sleep(pause.min(self.patience.saturating_sub(start.elapsed())));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(NodeError::Managed { .. }) => {
                    return Err(NodeError::WriterBusy {
                        dir: self.dir.clone(),
                        waited: start.elapsed(),
                    });
                }
                other => return other,
            }
        }
    }

    /// `flock(how | LOCK_NB)` on `path`; `Managed` if it is held otherwise.
    fn flock(&self, path: &Path, how: libc::c_int) -> Result<std::fs::File, NodeError> {
        let lock_err = |source| NodeError::Lock {
            dir: self.dir.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(lock_err)?;
        // SAFETY: `file` is an open descriptor for the duration of the call.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), how | libc::LOCK_NB) } == 0
        {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(NodeError::Managed {
                dir: self.dir.clone(),
            })
        } else {
            Err(lock_err(e))
        }
    }

    /// Whether the node has a page table.
    pub fn exists(&self) -> bool {
        self.map_path(V2R4).exists()
    }

    /// Creates the pin directory on a bpffs (mounting one if needed) with its subdirectories.
    pub fn prepare(&self) -> Result<(), NodeError> {
        let pin_dir = |source| NodeError::PinDir {
            dir: self.dir.clone(),
            source,
        };
        private_dirs(&self.dir).map_err(pin_dir)?;
        if !is_bpffs(&self.dir).map_err(pin_dir)? {
            mount_bpffs(&self.dir).map_err(|source| NodeError::Mount {
                dir: self.dir.clone(),
                source,
            })?;
        }
        for sub in [
            self.maps_dir(),
            self.dir.join("links"),
            self.dir.join("links-tc"),
            self.dir.join("links-tc-egress"),
            self.progs_dir(),
            self.table_lock_dir(),
            self.attach_lock_dir(),
        ] {
            private_dirs(&sub).map_err(pin_dir)?;
        }
        Ok(())
    }

    /// The capacity of the node's tables.
    pub fn capacity(&self) -> Result<u32, NodeError> {
        let path = self.map_path(V2R4);
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map_err(|e| open_err(&path, e))?;
        Ok(info.max_entries())
    }

    /// The capacity to create the node with, or that it has: fails if `want` differs from
    /// the capacity of an existing node.
    pub fn check_capacity(&self, want: Option<u32>) -> Result<u32, NodeError> {
        if !self.exists() {
            return Ok(want.unwrap_or(netpage_common::maps::DEFAULT_CAPACITY));
        }
        let have = self.capacity()?;
        match want {
            Some(want) if want != have => Err(NodeError::Capacity {
                dir: self.dir.clone(),
                have,
                want,
            }),
            _ => Ok(have),
        }
    }

    /// Loads the object over the node's pinned maps, creating and pinning them (with
    /// `capacity` entries, or the default) if the node is new.
    pub fn load(&self, capacity: Option<u32>) -> Result<Ebpf, NodeError> {
        self.prepare()?;
        if self.exists() {
            self.check_layouts()?;
        }
        let capacity = self.check_capacity(capacity)?;
        let paths: Vec<_> = ALL_MAPS.iter().map(|n| (*n, self.map_path(n))).collect();
        loader::load_pinned(capacity, &paths).map_err(|e| NodeError::Load {
            dir: self.dir.clone(),
            source: Box::new(e),
        })
    }

    /// Where the verified program of `side` of this build of netpage is pinned. The name
    /// carries the object's hash, so that another build loads its own.
    pub fn prog_path(&self, side: Side) -> PathBuf {
        self.progs_dir()
            .join(format!("{}-{:016x}", side.program(), loader::object_id()))
    }

    /// Where the node's verified tc program of `side` is pinned.
    pub fn tc_prog_path(&self, side: Side) -> PathBuf {
        self.progs_dir().join(format!(
            "{}-{:016x}",
            side.tc_program(),
            loader::object_id()
        ))
    }

    /// Where the node's verified programs are pinned.
    pub fn progs_dir(&self) -> PathBuf {
        self.dir.join("progs")
    }

    /// Opens every pinned map of an existing node.
    fn open_maps(&self) -> Result<HashMap<&'static str, Map>, NodeError> {
        if !self.exists() {
            return Err(NodeError::NoTable {
                dir: self.dir.clone(),
            });
        }
        LAYOUTS
            .iter()
            .filter(|l| !self.lacks(l.name))
            .map(|l| {
                let path = self.map_path(l.name);
                if NEWER_MAPS.contains(&l.name) && !path.exists() {
                    return Err(NodeError::OlderOwners {
                        dir: self.dir.clone(),
                    });
                }
                let data = MapData::from_pin(&path).map_err(|e| open_err(&path, e))?;
                self.check_layout(l, &data)?;
                let map = Map::from_map_data(data).map_err(|e| open_err(&path, e))?;
                Ok((l.name, map))
            })
            .collect()
    }

    /// Fails unless the pinned map is laid out as this build lays it out.
    fn check_layout(&self, l: &Layout, data: &MapData) -> Result<(), NodeError> {
        let path = self.map_path(l.name);
        let info = data.info().map_err(|e| open_err(&path, e))?;
        let sizes = info.key_size() == l.key_size && info.value_size() == l.value_size;
        if sizes && l.max_entries.is_none_or(|n| n == info.max_entries()) {
            Ok(())
        } else if sizes && l.name == COUNTERS {
            Err(NodeError::OlderCounters {
                dir: self.dir.clone(),
            })
        } else if is_older_table(l, &info) {
            Err(NodeError::OlderTable {
                dir: self.dir.clone(),
            })
        } else {
            Err(NodeError::Incompatible {
                dir: self.dir.clone(),
                map: l.name,
            })
        }
    }

    /// Replaces a counter array of another size (an older build's) with an empty one of
    /// this build's, keeping the table: the counters are statistics, the table is not. The
    /// programs still attached count into the old array until `attach` swaps them. Returns
    /// whether it did (the programs must then be loaded again, over the new array).
    pub fn renew_counters(&self) -> Result<bool, NodeError> {
        let path = self.map_path(COUNTERS);
        let layout = LAYOUTS
            .iter()
            .find(|l| l.name == COUNTERS)
            .expect("the counters have a layout");
        let Ok(data) = MapData::from_pin(&path) else {
            return Ok(false);
        };
        let info = data.info().map_err(|e| open_err(&path, e))?;
        let older = info.key_size() == layout.key_size
            && info.value_size() == layout.value_size
            && layout.max_entries != Some(info.max_entries());
        if older {
            std::fs::remove_file(&path).map_err(|source| NodeError::PinDir {
                dir: path.clone(),
                source,
            })?;
        }
        Ok(older)
    }

    /// Whether the node lacks maps that an older build did not make (the owner records):
    /// the loader makes them, and the programs must be loaded again, over them.
    pub fn lacks_newer_maps(&self) -> bool {
        NEWER_MAPS.iter().any(|n| !self.map_path(n).exists())
    }

    /// If the node's page tables are an older build's (values without a counter slot):
    /// reads every entry, then removes their pins and those of the older per-mapping
    /// counters (bpffs cannot rename), so that loading this build makes new ones; the
    /// entries are written back by [`Node::restore_table`]. The programs still attached
    /// keep translating with the old maps, which they hold, until `attach` replaces them.
    /// `want` is the capacity asked for, which must be the table's.
    pub fn take_older_table(&self, want: Option<u32>) -> Result<Option<OlderTable>, NodeError> {
        let v2r4 = self.map_path(V2R4);
        let Ok(data) = MapData::from_pin(&v2r4) else {
            return Ok(None);
        };
        let info = data.info().map_err(|e| open_err(&v2r4, e))?;
        let layout = LAYOUTS.iter().find(|l| l.name == V2R4).expect("a layout");
        if !is_older_table(layout, &info) {
            return Ok(None);
        }
        let capacity = info.max_entries();
        if let Some(want) = want.filter(|&w| w != capacity) {
            return Err(NodeError::Capacity {
                dir: self.dir.clone(),
                have: capacity,
                want,
            });
        }
        let v4 = |a: Addr4| IpAddr::from(a.octets);
        let v6 = |a: Addr6| IpAddr::from(a.octets);
        let mut forward = self.read_older(V2R4, v4)?;
        forward.extend(self.read_older(V2R6, v6)?);
        let mut reverse = self.read_older(R2V4, v4)?;
        reverse.extend(self.read_older(R2V6, v6)?);
        for name in TABLES.iter().chain(&OLD_STATS) {
            let path = self.map_path(name);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(NodeError::Unpin { path, source: e });
                }
                _ => {}
            }
        }
        Ok(Some(OlderTable {
            capacity,
            forward,
            reverse,
        }))
    }

    /// Every entry of an older build's page table `name` (the address alone as value).
    fn read_older<A: aya::Pod>(
        &self,
        name: &str,
        ip: fn(A) -> IpAddr,
    ) -> Result<Vec<(IpAddr, IpAddr)>, NodeError> {
        let path = self.map_path(name);
        let data = MapData::from_pin(&path).map_err(|e| open_err(&path, e))?;
        let map = Map::from_map_data(data).map_err(|e| open_err(&path, e))?;
        let table: BpfHashMap<_, A, A> =
            BpfHashMap::try_from(map).map_err(|e| open_err(&path, e))?;
        table
            .iter()
            .map(|kv| kv.map(|(k, v)| (ip(k), ip(v))))
            .collect::<Result<_, _>>()
            .map_err(|e| open_err(&path, e))
    }

    /// Writes an older build's table into this build's new maps, every mapping with a
    /// counter slot of its own (zeroed), reverse entries first. Its traffic counters are
    /// not carried over.
    pub fn restore_table(&self, old: OlderTable) -> Result<(), NodeError> {
        let mut open = self.open()?;
        let vms: BTreeSet<IpAddr> = old.forward.iter().map(|&(va, _)| va).collect();
        for &va in &vms {
            open.table.create_stats(va)?;
        }
        open.table.set_reverse_many(&old.reverse)?;
        open.table.set_forward_many(&old.forward)?;
        Ok(())
    }

    /// Whether the node lacks `map`, one that older builds did not have ([`ADDED_MAPS`]).
    fn lacks(&self, map: &str) -> bool {
        ADDED_MAPS.contains(&map) && !self.map_path(map).exists()
    }

    /// Whether the node, made by an older build, lacks maps of this build: its programs
    /// must then be loaded again, which creates them.
    pub fn lacks_added_maps(&self) -> bool {
        self.exists() && ADDED_MAPS.iter().any(|m| self.lacks(m))
    }

    /// Checks every pinned map of an existing node against this build's layouts. Only the
    /// counter array (renewed) and the maps of later builds may be missing: the loader
    /// makes them anew.
    fn check_layouts(&self) -> Result<(), NodeError> {
        for l in LAYOUTS.iter() {
            let path = self.map_path(l.name);
            if (l.name == COUNTERS || NEWER_MAPS.contains(&l.name)) && !path.exists()
                || self.lacks(l.name)
            {
                continue;
            }
            let data = MapData::from_pin(&path).map_err(|e| open_err(&path, e))?;
            self.check_layout(l, &data)?;
        }
        Ok(())
    }

    /// Opens the node's pinned state.
    pub fn open(&self) -> Result<OpenNode, NodeError> {
        let mut maps = self.open_maps()?;
        let table = BpfTable::from_maps(|n| maps.remove(n))?;
        let owners = Owners::from_maps(|n| maps.remove(n))?;
        let registry = |e| NodeError::Registry(Box::new(e));
        let ifaces =
            BpfHashMap::try_from(maps.remove(IFACES).expect("opened above")).map_err(registry)?;
        let ports =
            BpfHashMap::try_from(maps.remove(PORTS).expect("opened above")).map_err(registry)?;
        let counters = maps.remove(COUNTERS).expect("opened above");
        let fast =
            Array::try_from(maps.remove(FAST_PORTS).expect("opened above")).map_err(registry)?;
        let devmap = maps
            .remove(DEVMAP)
            .map(DevMapHash::try_from)
            .transpose()
            .map_err(registry)?;
        let segments = maps
            .remove(SEG_CONFIG)
            .map(Array::try_from)
            .transpose()
            .map_err(registry)?
            .map(SegSettings::new);
        Ok(OpenNode {
            table,
            owners,
            segments,
            ifaces,
            ports,
            fast,
            devmap,
            counters,
            _lock: None,
        })
    }

    /// Opens the node's pinned state to write its table: refused while an agent manages
    /// the node, and held against an agent starting until the returned node is dropped.
    pub fn open_for_write(&self) -> Result<OpenNode, NodeError> {
        let lock = self.lock_for_write()?;
        let mut open = self.open()?;
        open._lock = lock;
        Ok(open)
    }
}

/// Opens several nodes to write their tables, locking them in one canonical order (their
/// resolved paths, sorted) so that two commands on overlapping sets of nodes do not wait
/// for each other in a cycle. Returns them in the order given; a node given twice is
/// refused. An error names the node by its index in `nodes`.
pub fn open_many_for_write(nodes: &[Node]) -> Result<Vec<OpenNode>, (usize, NodeError)> {
    let keys: Vec<PathBuf> = nodes
        .iter()
        .map(|n| std::fs::canonicalize(&n.dir).unwrap_or_else(|_| n.dir.clone()))
        .collect();
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    for w in order.windows(2) {
        if keys[w[0]] == keys[w[1]] {
            let (first, again) = (w[0].min(w[1]), w[0].max(w[1]));
            return Err((
                again,
                NodeError::NodeTwice {
                    dir: nodes[first].dir.clone(),
                    again: nodes[again].dir.clone(),
                },
            ));
        }
    }
    let mut opened: Vec<Option<OpenNode>> = nodes.iter().map(|_| None).collect();
    for i in order {
        opened[i] = Some(nodes[i].open_for_write().map_err(|e| (i, e))?);
    }
    Ok(opened
        .into_iter()
        .map(|n| n.expect("opened above"))
        .collect())
}

/// A node's page table as an older build laid it out, read before its maps were replaced.
#[derive(Debug)]
pub struct OlderTable {
    pub capacity: u32,
    /// V2R entries (VA, RA).
    pub forward: Vec<(IpAddr, IpAddr)>,
    /// R2V entries (RA, VA), draining ones included.
    pub reverse: Vec<(IpAddr, IpAddr)>,
}

/// Whether a pinned page table of layout `l` has an older build's value: the address
/// alone, without a counter slot.
fn is_older_table(l: &Layout, info: &aya::maps::MapInfo) -> bool {
    TABLES.contains(&l.name)
        && info.key_size() == l.key_size
        && info.value_size() == old_table_value_size(l.name)
}

fn open_err(path: &Path, e: MapError) -> NodeError {
    NodeError::OpenMap {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

/// A node's maps, opened from their pins.
pub struct OpenNode {
    pub table: BpfTable,
    /// Which port owns each VM of the node.
    pub owners: Owners,
    /// The node's segmentation settings; `None` on a node of an older build until its next
    /// attach.
    pub segments: Option<SegSettings>,
    ifaces: BpfHashMap<MapData, IfaceName, IfaceRecord>,
    ports: BpfHashMap<MapData, u32, PortRecord>,
    fast: Array<MapData, u32>,
    /// The interfaces frames may be redirected to from native XDP; `None` on a node of an
    /// older build until its next attach.
    devmap: Option<DevMapHash<MapData>>,
    counters: Map,
    /// The hold of a command that writes the table ([`Node::open_for_write`]).
    _lock: Option<NodeLock>,
}

impl OpenNode {
    /// The outcome counters of every program of the node.
    pub fn counters(&self) -> Result<Totals, NodeError> {
        Totals::read(&self.counters).map_err(|e| NodeError::Registry(Box::new(e)))
    }

    /// The attached interfaces, sorted by name.
    pub fn ifaces(&self) -> Result<Vec<(String, IfaceRecord)>, NodeError> {
        let mut out = Vec::new();
        for kv in self.ifaces.iter() {
            let (k, v) = kv.map_err(|e| NodeError::Registry(Box::new(e)))?;
            let len = k
                .bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(k.bytes.len());
            out.push((String::from_utf8_lossy(&k.bytes[..len]).into_owned(), v));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// How `iface` is attached, if it is.
    pub fn iface(&self, iface: &str) -> Result<Option<IfaceRecord>, NodeError> {
        match self.ifaces.get(&iface_key(iface)?, 0) {
            Ok(r) => Ok(Some(r)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(NodeError::Registry(Box::new(e))),
        }
    }

    /// Records how `iface` is attached.
    pub fn set_iface(&mut self, iface: &str, record: IfaceRecord) -> Result<(), NodeError> {
        self.ifaces
            .insert(iface_key(iface)?, record, 0)
            .map_err(|e| NodeError::Registry(Box::new(e)))
    }

    /// What the program does on the interface with index `ifindex`, if it is attached.
    pub fn port(&self, ifindex: u32) -> Result<Option<PortRecord>, NodeError> {
        match self.ports.get(&ifindex, 0) {
            Ok(r) => Ok(Some(r)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(NodeError::Registry(Box::new(e))),
        }
    }

    /// Sets what the program does on the interface with index `ifindex` (one map update,
    /// which packets see atomically).
    pub fn set_port(&mut self, ifindex: u32, record: PortRecord) -> Result<(), NodeError> {
        self.ports
            .insert(ifindex, record, 0)
            .map_err(|e| NodeError::Registry(Box::new(e)))?;
        self.count_fast_ports()
    }

    /// Stores how many ports have the fast path on, which gates the program's port lookup.
    fn count_fast_ports(&mut self) -> Result<(), NodeError> {
        let count = self.fast_ports()?.1;
        self.fast
            .set(0, count, 0)
            .map_err(|e| NodeError::Registry(Box::new(e)))
    }

    /// The count of fast-path ports that the programs read, and the count the port map
    /// gives: they differ only if a writer was interrupted (or raced another).
    pub fn fast_ports(&self) -> Result<(u32, u32), NodeError> {
        let registry = |e| NodeError::Registry(Box::new(e));
        let ports = self
            .ports
            .iter()
            .map(|kv| kv.map(|(_, p)| p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(registry)?;
        let stored = self.fast.get(&0, 0).map_err(registry)?;
        Ok((stored, fast_port_count(ports)))
    }

    /// Stores the count of fast-path ports that the port map gives (`check --repair`).
    pub fn recount_fast_ports(&mut self) -> Result<(), NodeError> {
        self.count_fast_ports()
    }

    /// Forgets the interface with index `ifindex`.
    pub fn remove_port(&mut self, ifindex: u32) -> Result<(), NodeError> {
        match self.ports.remove(&ifindex) {
            Ok(()) => {}
            Err(e) if absent(&e) => {}
            Err(e) => return Err(NodeError::Registry(Box::new(e))),
        }
        self.count_fast_ports()
    }

    /// The interfaces, by index, that the fast path may redirect frames to from native XDP.
    pub fn redirect_targets(&self) -> Result<Vec<u32>, NodeError> {
        let Some(devmap) = &self.devmap else {
            return Ok(Vec::new());
        };
        devmap
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| NodeError::Registry(Box::new(e)))
    }

    /// Adds the interface with index `ifindex` to the device map, or removes it: whether
    /// the fast path may redirect frames to it from native XDP. Nothing on a node of an
    /// older build, whose programs have no device map.
    pub fn set_redirect_target(&mut self, ifindex: u32, on: bool) -> Result<(), NodeError> {
        let Some(devmap) = &mut self.devmap else {
            return Ok(());
        };
        if on {
            // Without a program to chain, the only failure is the map update's.
            devmap
                .insert(ifindex, ifindex, None, 0)
                .map_err(|e| match e {
                    XdpMapError::MapError(e) => NodeError::Registry(Box::new(e)),
                    other => NodeError::Devmap(Box::new(other)),
                })
        } else {
            devmap
                .remove(ifindex)
                .or_else(|e| if absent(&e) { Ok(()) } else { Err(e) })
                .map_err(|e| NodeError::Registry(Box::new(e)))
        }
    }

    /// Forgets `iface`.
    pub fn remove_iface(&mut self, iface: &str) -> Result<(), NodeError> {
        match self.ifaces.remove(&iface_key(iface)?) {
            Ok(()) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(e) => Err(NodeError::Registry(Box::new(e))),
        }
    }
}

/// The registry key of an interface name, which must be a valid Linux interface name.
pub fn iface_key(iface: &str) -> Result<IfaceName, NodeError> {
    let b = iface.as_bytes();
    if b.is_empty()
        || b.len() > 15
        || b.contains(&b'/')
        || b.contains(&0)
        || iface == "."
        || iface == ".."
    {
        return Err(NodeError::IfaceName(iface.to_owned()));
    }
    let mut key = IfaceName::default();
    key.bytes[..b.len()].copy_from_slice(b);
    Ok(key)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = c_path(path)?;
    // SAFETY: `c` is a valid C string; `st` is written by statfs before it is read.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// Creates `path` and its missing parents with mode 0700: the pins give whoever can open
/// them the power to rewrite the table. A directory that exists keeps its mode.
fn private_dirs(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Mounts a bpffs at `path` whose root only its owner (root) may enter.
fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let fs = c"bpf";
    let data = c"mode=0700";
    // SAFETY: all pointers are valid C strings.
    let r = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert_eq!(&iface_key("eth0").unwrap().bytes[..5], b"eth0\0");
        assert!(iface_key("fifteen-bytes-x").is_ok());
        for bad in ["", "sixteen-bytes-xx", "a/b", "..", "a\0b"] {
            assert!(iface_key(bad).is_err(), "{bad:?}");
        }
    }
}
