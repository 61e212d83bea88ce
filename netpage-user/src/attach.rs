//! Attaching the program to a node's interfaces, through XDP or tcx links pinned in its pin
//! directory, and detaching it.

pub mod hook;
pub mod xdp_features;

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya_obj::programs::XdpAttachType;

use aya::{
    pin::PinError,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
pub use hook::Hook;
use netpage_common::maps::{
    IFACE_HOOK_ASKED, IfaceRecord, MODE_NATIVE, MODE_SKB, MODE_TC, PORT_FAST_PATH, PORT_SKB,
    PortRecord, takes_xdp_frames,
};
use serde::Serialize;

use crate::{
    loader::Side,
    node::{Node, NodeError, OpenNode, iface_key},
    ops::{Unusable, unusable},
};

/// How the program is run on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native if the driver supports it, else skb.
    Auto,
    /// Run by the driver, before the kernel allocates a socket buffer.
    Native,
    /// Run by the generic path, on socket buffers; works on every interface.
    Skb,
}

impl Mode {
    fn code(self) -> u32 {
        match self {
            Mode::Native => MODE_NATIVE,
            _ => MODE_SKB,
        }
    }

    /// The mode recorded as `code`.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            MODE_NATIVE => Some(Mode::Native),
            MODE_SKB => Some(Mode::Skb),
            _ => None,
        }
    }

    fn xdp(self) -> XdpMode {
        match self {
            Mode::Auto => XdpMode::Default,
            Mode::Native => XdpMode::Driver,
            Mode::Skb => XdpMode::Skb,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Native => "native",
            Mode::Skb => "skb",
        })
    }
}

/// A failure to attach or detach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("no interface named {iface} in this network namespace")]
    UnknownInterface { iface: String },
    #[error("attaching to {iface} in {mode} mode{}", native_hint(*.mode))]
    Attach {
        iface: String,
        mode: Mode,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "{iface} is attached in {old} mode; a program can be replaced only in the same mode (use --mode auto to keep it, or `netpage detach {iface}` first)"
    )]
    ModeChange { iface: String, old: Mode, new: Mode },
    #[error(
        "attaching the tc program to {iface} (a tcx link on ingress; needs Linux 6.6 or later)"
    )]
    AttachTc {
        iface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "the fast path runs in XDP: attach {iface} with --hook xdp (or auto), or without --fast-path"
    )]
    TcFastPath { iface: String },
    #[error("--mode {mode} is an XDP mode: attach {iface} with --hook xdp, or without --mode")]
    TcMode { iface: String, mode: Mode },
    #[error("reading the node's segmentation settings")]
    Segments(#[source] Box<crate::segment::SegError>),
    #[error("letting {iface} take packets from the node's own IPv4 locator (accept_local)")]
    AcceptLocal {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the link of {iface}")]
    Link {
        iface: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("pinning the link of {iface} at {}", path.display())]
    Pin {
        iface: String,
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },
    #[error("loading {program}")]
    Verify {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the program at {}", path.display())]
    PinProgram {
        path: PathBuf,
        #[source]
        source: Box<PinError>,
    },
    #[error("cannot read the MAC address of {iface}")]
    Mac {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("{iface} is not attached on this node (see `netpage status`)")]
    NotAttached { iface: String },
    #[error("removing the pinned link {}", path.display())]
    Unpin { path: PathBuf, source: io::Error },
    #[error(
        "--vm names the VMs behind a port of the virtual side (their tap); {iface} is attached --side physical, which owns no VM"
    )]
    VmOnPhysical { iface: String },
    #[error("--vm {vm}: {why}, not a VM's address")]
    UnusableVm { vm: IpAddr, why: Unusable },
    #[error(
        "{vm} is owned by {owner}, another port of this node (a VM's addresses are accepted as a source from one port only): detach {owner} first, or attach it without --vm {vm}"
    )]
    Owned {
        vm: IpAddr,
        iface: String,
        owner: String,
    },
}

impl AttachError {
    /// The interface the error is about, if it names one.
    pub fn iface(&self) -> Option<&str> {
        match self {
            AttachError::UnknownInterface { iface }
            | AttachError::Attach { iface, .. }
            | AttachError::ModeChange { iface, .. }
            | AttachError::AttachTc { iface, .. }
            | AttachError::TcFastPath { iface }
            | AttachError::TcMode { iface, .. }
            | AttachError::Link { iface, .. }
            | AttachError::Pin { iface, .. }
            | AttachError::Mac { iface, .. }
            | AttachError::AcceptLocal { iface, .. }
            | AttachError::NotAttached { iface }
            | AttachError::VmOnPhysical { iface }
            | AttachError::Owned { iface, .. } => Some(iface),
            _ => None,
        }
    }
}

fn native_hint(mode: Mode) -> &'static str {
    if mode == Mode::Native {
        " (the driver may lack native XDP: try --mode skb)"
    } else {
        ""
    }
}

/// What `attach` did.
#[derive(Clone, Debug, Serialize)]
pub struct Attached {
    pub iface: String,
    pub side: Side,
    /// The hook the program runs at, and why.
    pub hook: Hook,
    pub hook_reason: String,
    /// The XDP mode the program runs in (XDP only).
    pub mode: Option<Mode>,
    /// Whether a program already attached there was replaced atomically (or, on a change
    /// of hook, the new one attached before the old one went).
    pub replaced: bool,
    /// Whether translated packets whose route is a plain forward are redirected by the
    /// program itself.
    pub fast_path: bool,
    /// Whether the fast path may redirect frames to this interface from native XDP: its
    /// driver takes XDP frames (for a veth: its peer has an XDP program or GRO on).
    pub redirect_target: bool,
    /// Why native mode was not used, when `auto` fell back to skb.
    pub fallback: Option<String>,
    /// The virtual addresses of the VMs the interface owns (`--vm`, this time or before):
    /// the only port of the node they are accepted from as a source.
    pub vms: Vec<IpAddr>,
}

/// Attaches the program of `side` to `iface` at `hook`, loading the node's table if it has
/// none. An interface already attached gets the new program in place, with no moment
/// without one: at the same hook by an atomic swap, at another hook by attaching the new
/// one before detaching the old (packets translated twice meanwhile are not changed by the
/// second pass: virtual and real addresses never overlap).
///
/// `fast_path` turns the fast path on or off; `None` keeps the interface's setting (off
/// for a new attachment). The setting is one entry of the port map, which the program
/// reads per packet: changing it is one atomic map update, before the link is created or
/// updated, so that the first packet the program sees on the interface already sees it.
///
/// `vms` are the virtual addresses of the VMs behind the interface (a virtual-side port,
/// their tap): it becomes their owner, the only port of the node their addresses are
/// accepted from as a source, before its program runs. It adds to what the interface
/// owned; a VM owned by another port that is still there is refused.
#[expect(clippy::too_many_arguments, reason = "the options of `netpage attach`")]
pub fn attach(
    node: &Node,
    iface: &str,
    side: Side,
    hook: Hook,
    mode: Mode,
    capacity: Option<u32>,
    reload: bool,
    fast_path: Option<bool>,
    vms: &[IpAddr],
) -> Result<Attached, AttachError> {
    iface_key(iface)?;
    if side == Side::Physical && !vms.is_empty() {
        return Err(AttachError::VmOnPhysical {
            iface: iface.to_owned(),
        });
    }
    if let Some((&vm, why)) = vms.iter().find_map(|vm| Some(vm).zip(unusable(*vm))) {
        return Err(AttachError::UnusableVm { vm, why });
    }
    let Some(ifindex) = if_index(iface) else {
        return Err(AttachError::UnknownInterface {
            iface: iface.to_owned(),
        });
    };
    let mac = mac_address(iface).map_err(|source| AttachError::Mac {
        iface: iface.to_owned(),
        source,
    })?;
    let upgraded = ensure_programs(node, capacity, reload)?;
    if upgraded {
        // The other interfaces' programs still use the older maps: swap them too.
        relink_others(node, iface)?;
    }
    let mut open = node.open()?;
    let record = open.iface(iface)?;
    let fast_path =
        fast_path.unwrap_or_else(|| record.is_some_and(|r| r.flags & PORT_FAST_PATH != 0));
    let asked = if hook == Hook::Auto {
        0
    } else {
        IFACE_HOOK_ASKED
    };
    let settings = match &open.segments {
        Some(s) => Some(s.read().map_err(|e| AttachError::Segments(Box::new(e)))?),
        None => None,
    };
    let segments = settings.as_ref().is_some_and(|s| !s.locators.is_empty());
    let (hook, hook_reason) = hook::choose(iface, hook, mode, fast_path, segments)?;
    // The outer source of what the program encapsulates here is the node's locator.
    if side == Side::Virtual && settings.is_some_and(|s| s.locators.iter().any(IpAddr::is_ipv4)) {
        crate::segment::accept_local(iface).map_err(|source| AttachError::AcceptLocal {
            iface: iface.to_owned(),
            source,
        })?;
    }
    let previous = record.and_then(|r| Attachment::from_code(r.mode));
    let flags = if fast_path { PORT_FAST_PATH } else { 0 };
    check_owners(&open, iface, ifindex, vms)?;
    // The interface may have been re-created under the same name with another index.
    if let Some(old) = record.filter(|r| r.ifindex != 0 && r.ifindex != ifindex) {
        open.remove_port(old.ifindex)?;
        move_owners(&mut open, old.ifindex, Some(ifindex))?;
    }
    let old_owners = own(&mut open, side, ifindex, vms)?;
    let old_port = open.port(ifindex)?;
    open.set_port(
        ifindex,
        PortRecord {
            flags,
            mac,
            reserved: [0; 2],
        },
    )?;
    // A change of hook replaces the other hook's program, once the new one runs.
    let other_hook = match hook {
        Hook::Tc => node.link_path(iface),
        _ => node.tc_link_path(iface),
    };
    let hook_change = other_hook.exists();
    let linked = match hook {
        Hook::Tc => attach_tc(node, side, iface)
            .map(|replaced| (Attachment::Tc, replaced || hook_change, None)),
        _ => attach_xdp(node, side, iface, mode, previous)
            .map(|(now, replaced, fallback)| (now, replaced || hook_change, fallback)),
    };
    let (now, replaced, fallback) = match linked {
        Ok(l) => l,
        Err(e) => {
            // Nothing changed: the interface keeps its program, its setting and its VMs.
            match old_port {
                Some(p) => open.set_port(ifindex, p)?,
                None => open.remove_port(ifindex)?,
            }
            for (vm, owner) in old_owners {
                match owner {
                    Some(o) => open.owners.set(vm, o).map_err(NodeError::from)?,
                    None => open.owners.remove(vm).map_err(NodeError::from)?,
                }
            }
            return Err(e);
        }
    };
    remove_pin(&other_hook)?;
    if now != Attachment::Tc || side != Side::Virtual {
        remove_pin(&node.tc_egress_link_path(iface))?;
    }
    open.set_iface(
        iface,
        IfaceRecord {
            side: side.code(),
            mode: now.code(),
            flags: flags | asked,
            ifindex,
        },
    )?;
    let targets = refresh_redirects(&mut open)?;
    Ok(Attached {
        iface: iface.to_owned(),
        side,
        hook,
        hook_reason,
        mode: now.xdp_mode(),
        replaced,
        fast_path,
        redirect_target: targets.contains(&ifindex),
        fallback,
        vms: open.owners.owned_by(ifindex).map_err(NodeError::from)?,
    })
}

/// Fails if a VM of `vms` is owned by another port of the node than `iface` (index
/// `ifindex`) that is still there: attached, and present under the same index. A record
/// of a port that is gone is stale, and `iface` takes the VM over.
fn check_owners(
    open: &OpenNode,
    iface: &str,
    ifindex: u32,
    vms: &[IpAddr],
) -> Result<(), AttachError> {
    for &vm in vms {
        let Some(owner) = open.owners.get(vm).map_err(NodeError::from)? else {
            continue;
        };
        if owner == ifindex {
            continue;
        }
        let live = open
            .ifaces()?
            .into_iter()
            .find(|(name, r)| r.ifindex == owner && name != iface && if_index(name) == Some(owner));
        if let Some((name, _)) = live {
            return Err(AttachError::Owned {
                vm,
                iface: iface.to_owned(),
                owner: name,
            });
        }
    }
    Ok(())
}

/// Makes the port with index `ifindex` the owner of `vms`; a port of the physical side
/// owns nothing, and loses what it owned. Returns the records it changed, with what they
/// held, to restore them if the attachment fails.
fn own(
    open: &mut OpenNode,
    side: Side,
    ifindex: u32,
    vms: &[IpAddr],
) -> Result<Vec<(IpAddr, Option<u32>)>, AttachError> {
    let mut changed = Vec::new();
    if side == Side::Physical {
        for vm in open.owners.owned_by(ifindex).map_err(NodeError::from)? {
            open.owners.remove(vm).map_err(NodeError::from)?;
            changed.push((vm, Some(ifindex)));
        }
        return Ok(changed);
    }
    for &vm in vms {
        let old = open.owners.get(vm).map_err(NodeError::from)?;
        if old != Some(ifindex) {
            open.owners.set(vm, ifindex).map_err(NodeError::from)?;
            changed.push((vm, old));
        }
    }
    Ok(changed)
}

/// Hands the VMs owned by the port with index `from` to `to`, or forgets them (`None`).
fn move_owners(open: &mut OpenNode, from: u32, to: Option<u32>) -> Result<(), AttachError> {
    for vm in open.owners.owned_by(from).map_err(NodeError::from)? {
        match to {
            Some(i) => open.owners.set(vm, i),
            None => open.owners.remove(vm),
        }
        .map_err(NodeError::from)?;
    }
    Ok(())
}

/// Brings what the fast path reads of every attached interface up to date with the
/// kernel: the skb-mode flag of its port, and whether the device map holds it (it takes
/// XDP frames). Run at every attach and detach: attaching native XDP to one end of a veth
/// pair, or detaching it, changes whether the other end takes XDP frames, and whatever
/// changed on a peer since the last run is caught up. Returns the device map's interfaces.
///
/// A kernel that cannot say (no netdev generic netlink family, before 6.3) gets an empty
/// device map: the fast path then redirects from native XDP nowhere, which is safe.
pub fn refresh_redirects(open: &mut crate::node::OpenNode) -> Result<Vec<u32>, NodeError> {
    let netdev = xdp_features::Netdev::open().ok();
    let mut targets = Vec::new();
    for (name, r) in open.ifaces()? {
        // An interface re-created under the name has another index: its next attach
        // records it; until then the old index is nobody's.
        if r.ifindex == 0 || if_index(&name) != Some(r.ifindex) {
            continue;
        }
        if let Some(port) = open.port(r.ifindex)? {
            let skb = if r.mode == MODE_SKB { PORT_SKB } else { 0 };
            if port.flags & PORT_SKB != skb {
                let flags = (port.flags & !PORT_SKB) | skb;
                open.set_port(r.ifindex, PortRecord { flags, ..port })?;
            }
        }
        let features = netdev.as_ref().map(|n| n.xdp_features(r.ifindex));
        if features.is_some_and(|f| f.is_ok_and(takes_xdp_frames)) {
            targets.push(r.ifindex);
        }
    }
    for old in open.redirect_targets()? {
        if !targets.contains(&old) {
            open.set_redirect_target(old, false)?;
        }
    }
    for &t in &targets {
        open.set_redirect_target(t, true)?;
    }
    Ok(targets)
}

/// How an interface's program runs, as its registry entry records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// XDP in this mode (native or skb).
    Xdp(Mode),
    Tc,
}

impl Attachment {
    /// The attachment recorded as `code` (the registry's `mode`).
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            MODE_TC => Some(Attachment::Tc),
            c => Mode::from_code(c).map(Attachment::Xdp),
        }
    }

    fn code(self) -> u32 {
        match self {
            Attachment::Xdp(m) => m.code(),
            Attachment::Tc => MODE_TC,
        }
    }

    pub fn hook(self) -> Hook {
        match self {
            Attachment::Xdp(_) => Hook::Xdp,
            Attachment::Tc => Hook::Tc,
        }
    }

    pub fn xdp_mode(self) -> Option<Mode> {
        match self {
            Attachment::Xdp(m) => Some(m),
            Attachment::Tc => None,
        }
    }
}

/// Attaches (or swaps) the XDP program of `side` on `iface`, in `mode`; `previous` is how
/// the interface was attached. Returns the attachment, whether it replaced a program, and
/// why `auto` fell back to skb mode.
fn attach_xdp(
    node: &Node,
    side: Side,
    iface: &str,
    mode: Mode,
    previous: Option<Attachment>,
) -> Result<(Attachment, bool, Option<String>), AttachError> {
    let mut prog = Xdp::from_pin(node.prog_path(side), XdpAttachType::Interface).map_err(|e| {
        AttachError::Verify {
            program: side.program(),
            source: Box::new(e),
        }
    })?;
    let path = node.link_path(iface);
    if let (Some(Attachment::Xdp(old)), true) = (previous, path.exists()) {
        if mode != Mode::Auto && mode != old {
            return Err(AttachError::ModeChange {
                iface: iface.to_owned(),
                old,
                new: mode,
            });
        }
        if replace_xdp(&mut prog, iface, &path)? {
            return Ok((Attachment::Xdp(old), true, None));
        }
    }
    let (m, fallback) = attach_new(&mut prog, iface, mode, &path)?;
    Ok((Attachment::Xdp(m), false, fallback))
}

/// Attaches (or swaps) the tc program of `side` on `iface`'s ingress through a pinned
/// tcx link. Returns whether it replaced the program of an existing link.
fn attach_tc(node: &Node, side: Side, iface: &str) -> Result<bool, AttachError> {
    let replaced = tc_link(
        node,
        side,
        iface,
        TcAttachType::Ingress,
        &node.tc_link_path(iface),
    )?;
    if side == Side::Virtual {
        // What the node itself sends to the interface's VMs, or routes back to them (a VM
        // talking to another VM of the node), leaves it with real addresses: turned back
        // into virtual addresses on the way out, as the physical side does on the way in.
        let egress = node.tc_egress_link_path(iface);
        tc_link(node, Side::Physical, iface, TcAttachType::Egress, &egress)?;
    }
    Ok(replaced)
}

/// Attaches (or swaps) the tc program of `side` at `at` of `iface` through the tcx link
/// pinned at `path`. Returns whether it replaced the program of an existing link.
fn tc_link(
    node: &Node,
    side: Side,
    iface: &str,
    at: TcAttachType,
    path: &Path,
) -> Result<bool, AttachError> {
    let mut prog =
        SchedClassifier::from_pin(node.tc_prog_path(side)).map_err(|e| AttachError::Verify {
            program: side.tc_program(),
            source: Box::new(e),
        })?;
    let link_err = |e| AttachError::Link {
        iface: iface.to_owned(),
        source: Box::new(e),
    };
    if path.exists() {
        let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
        if swapped(prog.attach_to_link(link), iface, path)? {
            return Ok(true);
        }
    }
    let id = prog
        .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .map_err(|e| tc_err(iface, e))?;
    let link = prog.take_link(id).map_err(|e| tc_err(iface, e))?;
    pin_link(FdLink::try_from(link).map_err(link_err)?, iface, path)?;
    Ok(false)
}

fn tc_err(iface: &str, e: ProgramError) -> AttachError {
    AttachError::AttachTc {
        iface: iface.to_owned(),
        source: Box::new(e),
    }
}

/// Loads, verifies and pins the node's programs (both sides, both hooks) unless the
/// pinned ones are of this build and no `reload` is asked; creates the node's maps if
/// needed, and a new counter array over an older build's, and the maps an older build did
/// not make. Later attaches reuse the
/// pinned programs and skip the verifier, so that a migrating VM's port is attached at its
/// new host in milliseconds.
///
/// Loads the node's programs and maps if it has none, as its first attach would, so that
/// its settings can be written before any interface is attached.
pub fn prepare(node: &Node) -> Result<(), AttachError> {
    ensure_programs(node, None, false).map(drop)
}

/// A node whose page tables an older build made (no counter slots) gets new ones with
/// its entries, each mapping with a slot of its own: returns true then, since every
/// attached interface must get this build's programs, which use the new maps.
fn ensure_programs(node: &Node, capacity: Option<u32>, reload: bool) -> Result<bool, AttachError> {
    node.prepare()?;
    // An older build's node: a counter array of another size, or maps it did not have.
    let renewed = node.exists()
        && (node.renew_counters()? | node.lacks_newer_maps() | node.lacks_added_maps());
    let older = if node.exists() {
        node.take_older_table(capacity)?
    } else {
        None
    };
    let capacity = older.as_ref().map_or(capacity, |o| Some(o.capacity));
    let all_there = [Side::Virtual, Side::Physical]
        .iter()
        .all(|&s| node.prog_path(s).exists() && node.tc_prog_path(s).exists());
    if !reload && !renewed && older.is_none() && all_there {
        node.check_capacity(capacity)?;
        return Ok(false);
    }
    let mut ebpf = node.load(capacity)?;
    clear_dir(&node.progs_dir())?;
    for s in [Side::Virtual, Side::Physical] {
        let verify = |program| {
            move |e| AttachError::Verify {
                program,
                source: Box::new(e),
            }
        };
        let pin = |at: PathBuf| {
            move |e| AttachError::PinProgram {
                path: at,
                source: Box::new(e),
            }
        };
        let xdp: &mut Xdp = ebpf
            .program_mut(s.program())
            .expect("the object has both XDP programs")
            .try_into()
            .expect("XDP programs");
        crate::loader::load_retrying(|| xdp.load()).map_err(verify(s.program()))?;
        xdp.pin(node.prog_path(s)).map_err(pin(node.prog_path(s)))?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(s.tc_program())
            .expect("the object has both tc programs")
            .try_into()
            .expect("tc programs");
        crate::loader::load_retrying(|| tc.load()).map_err(verify(s.tc_program()))?;
        tc.pin(node.tc_prog_path(s))
            .map_err(pin(node.tc_prog_path(s)))?;
    }
    let upgraded = older.is_some();
    if let Some(old) = older {
        node.restore_table(old)?;
    }
    Ok(upgraded)
}

/// Attaches this build's programs again to every interface of the node but `iface`, as
/// each is attached (side, hook, mode, fast path); interfaces gone are left for later.
fn relink_others(node: &Node, iface: &str) -> Result<(), AttachError> {
    let others = node.open()?.ifaces()?;
    for (name, r) in others.into_iter().filter(|(n, _)| n != iface) {
        let (Some(side), Some(how)) = (Side::from_code(r.side), Attachment::from_code(r.mode))
        else {
            continue;
        };
        if !iface_exists(&name) {
            continue;
        }
        let fast_path = Some(r.flags & PORT_FAST_PATH != 0);
        let mode = how.xdp_mode().unwrap_or(Mode::Auto);
        // A hook `auto` chose is chosen again, alike: it keeps its reason in `status`.
        let hook = if r.flags & IFACE_HOOK_ASKED != 0 {
            how.hook()
        } else {
            Hook::Auto
        };
        attach(node, &name, side, hook, mode, None, false, fast_path, &[])?;
    }
    Ok(())
}

/// Unpins every program of an older load; links keep their programs alive.
fn clear_dir(dir: &Path) -> Result<(), AttachError> {
    let unpin = |source| AttachError::Unpin {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(unpin)? {
        std::fs::remove_file(entry.map_err(unpin)?.path()).map_err(unpin)?;
    }
    Ok(())
}

/// Swaps the program behind the pinned XDP link at `path`. Returns false, having removed
/// the pin, if the link no longer reaches an interface (it was deleted or moved away).
fn replace_xdp(prog: &mut Xdp, iface: &str, path: &Path) -> Result<bool, AttachError> {
    let link_err = |e| AttachError::Link {
        iface: iface.to_owned(),
        source: Box::new(e),
    };
    let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
    swapped(prog.attach_to_link(link), iface, path)
}

/// Whether a swap of the program behind the pinned link at `path` worked; false, having
/// removed the pin, if the link no longer reaches an interface.
fn swapped<T>(r: Result<T, ProgramError>, iface: &str, path: &Path) -> Result<bool, AttachError> {
    match r {
        Ok(_) => Ok(true),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {
            remove_pin(path)?;
            Ok(false)
        }
        Err(e) => Err(attach_err(iface, Mode::Auto, e)),
    }
}

/// Removes the pin at `path`, if there is one.
fn remove_pin(path: &Path) -> Result<(), AttachError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(AttachError::Unpin {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Pins `link` at `path`.
fn pin_link(link: FdLink, iface: &str, path: &Path) -> Result<(), AttachError> {
    link.pin(path).map(drop).map_err(|e| AttachError::Pin {
        iface: iface.to_owned(),
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Creates and pins a new XDP link; `auto` tries native first, then skb.
fn attach_new(
    prog: &mut Xdp,
    iface: &str,
    mode: Mode,
    path: &Path,
) -> Result<(Mode, Option<String>), AttachError> {
    let (mode, id, fallback) = match mode {
        Mode::Auto => match prog.attach(iface, Mode::Native.xdp()) {
            Ok(id) => (Mode::Native, id, None),
            Err(native) => {
                let id = prog
                    .attach(iface, Mode::Skb.xdp())
                    .map_err(|e| attach_err(iface, Mode::Skb, e))?;
                (Mode::Skb, id, Some(format!("native mode failed: {native}")))
            }
        },
        m => {
            let id = prog
                .attach(iface, m.xdp())
                .map_err(|e| attach_err(iface, m, e))?;
            (m, id, None)
        }
    };
    let link_err = |e| AttachError::Link {
        iface: iface.to_owned(),
        source: Box::new(e),
    };
    let link = prog.take_link(id).map_err(|e| attach_err(iface, mode, e))?;
    pin_link(FdLink::try_from(link).map_err(link_err)?, iface, path)?;
    Ok((mode, fallback))
}

fn attach_err(iface: &str, mode: Mode, e: ProgramError) -> AttachError {
    AttachError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(e),
    }
}

/// Detaches the program from `iface` by removing its pinned link (XDP or tc), and forgets
/// the VMs it owned.
pub fn detach(node: &Node, iface: &str) -> Result<(), AttachError> {
    let mut open = node.open()?;
    let paths = [
        node.link_path(iface),
        node.tc_link_path(iface),
        node.tc_egress_link_path(iface),
    ];
    let known = open.iface(iface)?.is_some();
    if !known && !paths.iter().any(|p| p.exists()) {
        return Err(AttachError::NotAttached {
            iface: iface.to_owned(),
        });
    }
    for p in &paths {
        remove_pin(p)?;
    }
    if let Some(r) = open.iface(iface)?.filter(|r| r.ifindex != 0) {
        open.remove_port(r.ifindex)?;
        move_owners(&mut open, r.ifindex, None)?;
    }
    open.remove_iface(iface)?;
    refresh_redirects(&mut open)?;
    Ok(())
}

/// Whether `iface` exists in this network namespace.
pub fn iface_exists(iface: &str) -> bool {
    if_index(iface).is_some()
}

/// The index of `iface` in this network namespace, if it exists.
pub fn if_index(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: `c` is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// The MAC address of `iface` in this network namespace (`SIOCGIFHWADDR`; /sys may show
/// another namespace). Interfaces without one (tun, loopback) give zeros.
pub fn mac_address(iface: &str) -> io::Result<[u8; 6]> {
    let req = ifreq_ioctl(iface, libc::SIOCGIFHWADDR, |_| {})?;
    // SAFETY: SIOCGIFHWADDR filled the hardware address member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, &d) in mac.iter_mut().zip(&data[..6]) {
        *m = d as u8;
    }
    Ok(mac)
}

/// Runs the interface ioctl `request` on `iface` with an `ifreq` that `prepare` completes,
/// and returns the `ifreq` as the kernel left it.
fn ifreq_ioctl(
    iface: &str,
    request: libc::Ioctl,
    prepare: impl FnOnce(&mut libc::ifreq),
) -> io::Result<libc::ifreq> {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: an all-zero ifreq is valid; the name is set below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, &b) in req.ifr_name.iter_mut().zip(name) {
        *d = b as libc::c_char;
    }
    prepare(&mut req);
    // SAFETY: `req` is a valid ifreq for `request`, completed by `prepare`, whose pointers
    // (if any) outlive this call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&sock), request, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}
