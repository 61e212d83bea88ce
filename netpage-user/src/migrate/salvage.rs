//! Salvage of what a paused source never reads: the packets left in its tap's queue.
//!
//! QEMU stops reading its tap as it pauses the guest for the last copy, before it announces
//! STOP. Whatever reaches the source host from then until its page table names the VM's
//! new address goes into the tap's queue, and the source guest never runs again to read
//! it: with a switch on hearing STOP, the packets in flight toward the source in that
//! window; with `--switch-at resume`, everything sent during the pause.
//!
//! netpage takes a duplicate of each of the source QEMU's tap descriptors before the
//! migration starts (`pidfd_getfd`; the QEMU process is its QMP socket's peer). Once the
//! source host's table has switched and the source has paused, it reads the queue out and
//! writes every IP packet for the VM back into the tap turned around ([`frame`]), as if
//! the guest had sent it: the tap's virtual side translates its destination, the VM's
//! virtual address, to the new real address (or encapsulates it toward the new locator),
//! and the source host routes it there, where it waits in the destination's tap with the
//! rest until RESUME. Frames of another kind (ARP, neighbour discovery, packets for
//! another address) are dropped and counted: the source guest would never read them.
//!
//! Limits:
//! - it reads the queue QEMU reads. QEMU stops delivering to the guest as soon as its run
//!   state leaves `running`, before it pauses the vCPUs and announces STOP; the first
//!   packet its main loop then reads from the tap it keeps in its own queue for a guest
//!   that no longer runs there, and it stops polling the tap. That packet is lost unless
//!   the switch came before the pause: the hold switches, waits until QEMU has read
//!   what the tap held ([`Salvage::wait_read`]), and only then pauses the source;
//! - it needs the source QEMU on this machine, in a pid namespace this one sees, and the
//!   right to take its descriptors (CAP_SYS_PTRACE over it); else the migration goes on
//!   without, and says why;
//! - a packet whose source address is another VM's is refused by the tap's virtual side
//!   (spoofed from this port);
//! - a migration that fails after a salvage leaves the guest at the source: what was
//!   salvaged went to the destination, which never runs it, and is lost there, as is
//!   everything a switch at the pause sends there.

mod frame;

use std::{
    fs::File,
    io::{self, Read, Write},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

/// `TUNGETIFF`: the tap's name and flags (`_IOR('T', 210, unsigned int)`).
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `TUNGETVNETHDRSZ`: the length of the virtio-net header before every frame.
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// The longest frame a tap gives (a GSO packet) with its header, and some.
const FRAME_MAX: usize = 1 << 17;
/// The most frames one salvage reads from one queue: a bound should anything written
/// back come into the queue again.
const FRAMES_MAX: u64 = 1 << 16;
/// How often [`Salvage::wait_read`] looks at the queues.
const SETTLE_POLL: Duration = Duration::from_micros(100);

/// Why the source's taps cannot be salvaged.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error(
        "the source QEMU's process is not known: its QMP socket's peer runs in a pid namespace this one does not see"
    )]
    NoPid,
    #[error("opening the source QEMU's process (pid {pid})")]
    Process {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("listing the source QEMU's descriptors in {}", dir.display())]
    Descriptors {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("taking descriptor {fd} (tap {tap}) from the source QEMU (pid {pid})")]
    Take {
        pid: u32,
        fd: RawFd,
        tap: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {tap}: {what}")]
    Tap {
        tap: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tap {tap} is in blocking mode: reading its queue could hang")]
    Blocking { tap: String },
    #[error("the source QEMU (pid {pid}) has no tap")]
    NoTap { pid: u32 },
}

/// What the salvages of one migration did, for its report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SalvageReport {
    /// The source's taps read (one entry per queue).
    pub taps: Vec<String>,
    /// Why there was nothing to read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// What every salvage did, together.
    #[serde(flatten)]
    pub total: Salvaged,
}

/// What salvages did: of one queue, or of a whole migration.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Salvaged {
    /// IP packets for the VM written back, on their way to its new address.
    pub resent: u64,
    /// Frames of another kind, dropped.
    pub dropped: u64,
    /// Packets for the VM that could not be written back (the error is in the timeline).
    pub failed: u64,
}

impl std::fmt::Display for Salvaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets for the VM sent on, {} other frames dropped, {} not written",
            self.resent, self.dropped, self.failed
        )
    }
}

impl std::ops::AddAssign for Salvaged {
    fn add_assign(&mut self, s: Salvaged) {
        self.resent += s.resent;
        self.dropped += s.dropped;
        self.failed += s.failed;
    }
}

/// One queue of the source's taps, held open.
struct Queue {
    tap: String,
    file: File,
    vnet_hdr: usize,
}

/// The source QEMU's tap queues, ready to be read out.
pub(super) struct Salvage {
    queues: Vec<Queue>,
}

impl Salvage {
    /// Takes a duplicate of every tap descriptor of QEMU process `pid` (`None`: unknown).
    pub(super) fn open(pid: Option<u32>) -> Result<Self, SalvageError> {
        let pid = pid.ok_or(SalvageError::NoPid)?;
        let pidfd = pidfd_open(pid).map_err(|source| SalvageError::Process { pid, source })?;
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let listed = std::fs::read_dir(&dir).map_err(|source| SalvageError::Descriptors {
            dir: dir.clone(),
            source,
        })?;
        let mut queues = Vec::new();
        for entry in listed.flatten() {
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if std::fs::read_link(entry.path()).ok() != Some("/dev/net/tun".into()) {
                continue;
            }
            let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
                continue;
            };
            let Some(tap) = frame::tap_name(&info) else {
                continue;
            };
            let tap = tap.to_owned();
            let file = pidfd_getfd(&pidfd, fd).map_err(|source| SalvageError::Take {
                pid,
                fd,
                tap: tap.clone(),
                source,
            })?;
            if let Some(q) = Queue::new(tap, file)? {
                queues.push(q);
            }
        }
        if queues.is_empty() {
            return Err(SalvageError::NoTap { pid });
        }
        Ok(Self { queues })
    }

    /// The queues held, by tap name.
    pub(super) fn taps(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.tap.clone()).collect()
    }

    /// Waits until every queue is empty (QEMU has read what the tap held), at most
    /// `within`; returns whether they are. Called while the guest still runs, after the
    /// source host's switch (which sends nothing more to the tap), so that a pause that
    /// follows finds nothing for QEMU to take and keep (see the module's limits).
    pub(super) fn wait_read(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.queues.iter().any(Queue::holds_any) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // Finer than the runtime's timer (a millisecond): this is a wait of
            // microseconds, once per migration.
            std::thread::sleep(SETTLE_POLL);
        }
    }

    /// Reads every queue out, writing each IP packet for `vm` back turned around; by tap,
    /// with the first error met.
    pub(super) fn run(&self, vm: IpAddr) -> Vec<(String, Salvaged, Option<io::Error>)> {
        self.queues
            .iter()
            .map(|q| {
                let (done, err) = q.salvage(vm);
                (q.tap.clone(), done, err)
            })
            .collect()
    }
}

impl Queue {
    /// The queue of `file`, if it is a tap's (not a tun's) and reads without blocking, as
    /// QEMU's do.
    fn new(tap: String, file: File) -> Result<Option<Self>, SalvageError> {
        let fd = file.as_raw_fd();
        let err = |what| {
            let source = io::Error::last_os_error();
            SalvageError::Tap {
                tap: tap.clone(),
                what,
                source,
            }
        };
        // SAFETY: F_GETFL on a descriptor this process owns.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if fl < 0 {
            return Err(err("reading its flags"));
        }
        // struct ifreq: the name (16 bytes), then the flags.
        let mut ifr = [0u8; 40];
        // SAFETY: TUNGETIFF writes a struct ifreq, which `ifr` is large enough for.
        if unsafe { libc::ioctl(fd, TUNGETIFF, ifr.as_mut_ptr()) } < 0 {
            return Err(err("asking its flags (TUNGETIFF)"));
        }
        let flags = libc::c_short::from_ne_bytes([ifr[16], ifr[17]]);
        if flags & IFF_TAP == 0 {
            return Ok(None);
        }
        if fl & libc::O_NONBLOCK == 0 {
            return Err(SalvageError::Blocking { tap });
        }
        let vnet_hdr = if flags & IFF_VNET_HDR != 0 {
            let mut len: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one int.
            if unsafe { libc::ioctl(fd, TUNGETVNETHDRSZ, &mut len) } < 0 {
                return Err(err("asking its header's length (TUNGETVNETHDRSZ)"));
            }
            len as usize
        } else {
            0
        };
        Ok(Some(Self {
            tap,
            file,
            vnet_hdr,
        }))
    }

    /// Whether the queue holds a frame (the tap's `poll` says it is readable).
    fn holds_any(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of a descriptor this process owns, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & libc::POLLIN != 0
    }

    /// Reads this queue out (at most [`FRAMES_MAX`] frames).
    fn salvage(&self, vm: IpAddr) -> (Salvaged, Option<io::Error>) {
        let mut done = Salvaged::default();
        let mut buf = vec![0u8; FRAME_MAX];
        for _ in 0..FRAMES_MAX {
            let n = match (&self.file).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return (done, Some(e)),
            };
            let Some(frame) = buf.get_mut(self.vnet_hdr..n) else {
                done.dropped += 1;
                continue;
            };
            if !frame::turn_around(frame, vm) {
                done.dropped += 1;
                continue;
            }
            // The virtio-net header goes back as it came: the same checksum and GSO
            // instructions for the same packet.
            match (&self.file).write(&buf[..n]) {
                Ok(w) if w == n => done.resent += 1,
                Ok(_) => done.failed += 1,
                Err(e) => {
                    done.failed += 1;
                    return (done, Some(e));
                }
            }
        }
        (done, None)
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and this process's own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<File> {
    // SAFETY: pidfd_getfd takes a pidfd, the target's descriptor and flags, and returns a
    // new descriptor (close-on-exec) or -1.
    let new = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and this process's own.
    Ok(unsafe { File::from_raw_fd(new as RawFd) })
}
