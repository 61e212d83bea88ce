//! Attaching the program to a node's interfaces, through XDP links pinned in its pin
//! directory, and detaching it.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya_obj::programs::XdpAttachType;

use aya::{
    pin::PinError,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use netpage_common::maps::{IfaceRecord, MODE_NATIVE, MODE_SKB, PORT_FAST_PATH, PortRecord};
use serde::Serialize;

use crate::{
    loader::Side,
    node::{Node, NodeError, iface_key},
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
    #[error("the XDP link of {iface}")]
    Link {
        iface: String,
        #[source]
        source: Box<LinkError>,
    },
    #[error("pinning the XDP link of {iface} at {}", path.display())]
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
    /// The mode the program runs in.
    pub mode: Mode,
    /// Whether a program already attached there was replaced atomically.
    pub replaced: bool,
    /// Whether translated packets whose route is a plain forward are redirected by the
    /// program itself.
    pub fast_path: bool,
    /// Why native mode was not used, when `auto` fell back to skb.
    pub fallback: Option<String>,
}

/// Attaches the program of `side` to `iface`, loading the node's table if it has none. An
/// interface already attached gets the new program in place, with no moment without one.
///
/// `fast_path` turns the fast path on or off; `None` keeps the interface's setting (off
/// for a new attachment). The setting is one entry of the port map, which the program
/// reads per packet: changing it is one atomic map update, before the link is created or
/// updated, so that the first packet the program sees on the interface already sees it.
pub fn attach(
    node: &Node,
    iface: &str,
    side: Side,
    mode: Mode,
    capacity: Option<u32>,
    reload: bool,
    fast_path: Option<bool>,
) -> Result<Attached, AttachError> {
    iface_key(iface)?;
    let Some(ifindex) = if_index(iface) else {
        return Err(AttachError::UnknownInterface {
            iface: iface.to_owned(),
        });
    };
    let mac = mac_address(iface).map_err(|source| AttachError::Mac {
        iface: iface.to_owned(),
        source,
    })?;
    let mut prog = program(node, side, capacity, reload)?;
    let mut open = node.open()?;
    let record = open.iface(iface)?;
    let previous = record.and_then(|r| Mode::from_code(r.mode));
    let fast_path =
        fast_path.unwrap_or_else(|| record.is_some_and(|r| r.flags & PORT_FAST_PATH != 0));
    let flags = if fast_path { PORT_FAST_PATH } else { 0 };
    // The interface may have been re-created under the same name with another index.
    if let Some(old) = record.filter(|r| r.ifindex != 0 && r.ifindex != ifindex) {
        open.remove_port(old.ifindex)?;
    }
    let old_port = open.port(ifindex)?;
    open.set_port(
        ifindex,
        PortRecord {
            flags,
            mac,
            reserved: [0; 2],
        },
    )?;
    let path = node.link_path(iface);
    let linked = match (previous, path.exists()) {
        (Some(old), true) => {
            if mode != Mode::Auto && mode != old {
                Err(AttachError::ModeChange {
                    iface: iface.to_owned(),
                    old,
                    new: mode,
                })
            } else {
                match replace(&mut prog, iface, &path) {
                    Ok(true) => Ok((old, true, None)),
                    Ok(false) => {
                        attach_new(&mut prog, iface, mode, &path).map(|(m, f)| (m, false, f))
                    }
                    Err(e) => Err(e),
                }
            }
        }
        _ => attach_new(&mut prog, iface, mode, &path).map(|(m, f)| (m, false, f)),
    };
    let (mode, replaced, fallback) = match linked {
        Ok(l) => l,
        Err(e) => {
            // Nothing changed: the interface keeps its program and its setting.
            match old_port {
                Some(p) => open.set_port(ifindex, p)?,
                None => open.remove_port(ifindex)?,
            }
            return Err(e);
        }
    };
    open.set_iface(
        iface,
        IfaceRecord {
            side: side.code(),
            mode: mode.code(),
            flags,
            ifindex,
        },
    )?;
    Ok(Attached {
        iface: iface.to_owned(),
        side,
        mode,
        replaced,
        fast_path,
        fallback,
    })
}

/// The node's verified program of `side`. The first attach of a node (or `reload`, or a new
/// build) loads the object, verifies both programs and pins them, creating the node's
/// maps if needed; later attaches reuse the pinned program and skip the verifier, so that
/// a migrating VM's port is attached at its new host in milliseconds.
fn program(
    node: &Node,
    side: Side,
    capacity: Option<u32>,
    reload: bool,
) -> Result<Xdp, AttachError> {
    node.prepare()?;
    let path = node.prog_path(side);
    if reload || !path.exists() {
        let mut ebpf = node.load(capacity)?;
        clear_dir(&node.progs_dir())?;
        for s in [Side::Virtual, Side::Physical] {
            let prog: &mut Xdp = ebpf
                .program_mut(s.program())
                .expect("the object has both programs")
                .try_into()
                .expect("both programs are XDP programs");
            let verify = |e| AttachError::Verify {
                program: s.program(),
                source: Box::new(e),
            };
            prog.load().map_err(verify)?;
            let at = node.prog_path(s);
            prog.pin(&at).map_err(|e| AttachError::PinProgram {
                path: at.clone(),
                source: Box::new(e),
            })?;
        }
    } else {
        node.check_capacity(capacity)?;
    }
    Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|e| AttachError::Verify {
        program: side.program(),
        source: Box::new(e),
    })
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

/// Swaps the program behind the pinned link at `path`. Returns false, having removed the
/// pin, if the link no longer reaches an interface (it was deleted or moved away).
fn replace(prog: &mut Xdp, iface: &str, path: &PathBuf) -> Result<bool, AttachError> {
    let link_err = |e| AttachError::Link {
        iface: iface.to_owned(),
        source: Box::new(e),
    };
    let pinned = PinnedLink::from_pin(path).map_err(link_err)?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_err)?;
    match prog.attach_to_link(link) {
        Ok(_) => Ok(true),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOLINK) => {
            std::fs::remove_file(path).map_err(|source| AttachError::Unpin {
                path: path.clone(),
                source,
            })?;
            Ok(false)
        }
        Err(e) => Err(attach_err(iface, Mode::Auto, e)),
    }
}

/// Creates and pins a new link; `auto` tries native first, then skb.
fn attach_new(
    prog: &mut Xdp,
    iface: &str,
    mode: Mode,
    path: &PathBuf,
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
    let fd = FdLink::try_from(link).map_err(link_err)?;
    fd.pin(path).map_err(|e| AttachError::Pin {
        iface: iface.to_owned(),
        path: path.clone(),
        source: Box::new(e),
    })?;
    Ok((mode, fallback))
}

fn attach_err(iface: &str, mode: Mode, e: ProgramError) -> AttachError {
    AttachError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(e),
    }
}

/// Detaches the program from `iface` by removing its pinned link.
pub fn detach(node: &Node, iface: &str) -> Result<(), AttachError> {
    let mut open = node.open()?;
    let path = node.link_path(iface);
    let known = open.iface(iface)?.is_some();
    if !known && !path.exists() {
        return Err(AttachError::NotAttached {
            iface: iface.to_owned(),
        });
    }
    if path.exists() {
        std::fs::remove_file(&path).map_err(|source| AttachError::Unpin {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(r) = open.iface(iface)?.filter(|r| r.ifindex != 0) {
        open.remove_port(r.ifindex)?;
    }
    open.remove_iface(iface)?;
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
    // SAFETY: `req` is a valid ifreq for SIOCGIFHWADDR, which fills ifru_hwaddr.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCGIFHWADDR,
            &mut req,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hardware address member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, &d) in mac.iter_mut().zip(&data[..6]) {
        *m = d as u8;
    }
    Ok(mac)
}
