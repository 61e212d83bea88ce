//! A capture of the probes' ICMP echoes on a host's tap, stamped by the kernel: when each
//! request went in to the guest and each reply came out of it, so that the guest's own
//! first-reply latency after a migration's RESUME is told apart from the network's.

use std::{
    io,
    mem::{size_of, zeroed},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::{GUEST_MAC, TAP, VA, mac_watch::parse_mac};
use crate::{
    verify,
    wan::stamp,
    world::{Host, World},
};

/// `ETH_P_IP`, the IPv4 EtherType.
const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_ALL`: a packet socket bound to one protocol sees nothing a device sends, only
/// what it receives, so the capture takes every frame and picks IPv4 itself.
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// How long a receive waits before the capture looks at its stop flag.
const WAIT: Duration = Duration::from_millis(50);

/// Which way an echo crossed the tap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// A request sent in to the guest.
    In,
    /// A reply the guest sent out.
    Out,
}

/// One echo seen on the tap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seen {
    pub way: Way,
    /// The probe's sequence number (the first 8 bytes of its payload).
    pub seq: u64,
    /// The kernel's time of the frame on the tap, ms since the Unix epoch.
    pub unix_ms: f64,
    /// Whether the frame is whole, its IPv4 header and ICMP checksums verify (recomputed
    /// here) and, for a request, it is addressed to the guest's MAC.
    pub intact: bool,
}

/// The guest's answer to the first request in after a moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FirstReply {
    /// The request's time on the tap after the moment, ms after it.
    pub request_after_ms: f64,
    /// From that request in to its reply out, ms: the guest's own latency.
    pub latency_ms: f64,
}

/// Every echo seen on the tap, in the order seen.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    pub seen: Vec<Seen>,
}

impl Capture {
    /// How many of the probes `seqs` (those the client lost) went in to the guest on this
    /// tap: delivered to the guest's host, and lost after.
    pub fn went_in(&self, seqs: &[u64]) -> u64 {
        seqs.iter()
            .filter(|&&q| self.seen.iter().any(|s| s.way == Way::In && s.seq == q))
            .count() as u64
    }

    /// How many of the probes `seqs` the guest answered on this tap (a reply came out).
    pub fn came_out(&self, seqs: &[u64]) -> u64 {
        seqs.iter()
            .filter(|&&q| self.seen.iter().any(|s| s.way == Way::Out && s.seq == q))
            .count() as u64
    }

    /// Whether every one of the probes `seqs` went in to the guest on this tap intact at
    /// or after `unix_ms` and none was answered: what the network delivered after that
    /// moment and the guest (or its hypervisor) lost. False for an empty `seqs`.
    pub fn delivered_unanswered_after(&self, seqs: &[u64], unix_ms: f64) -> bool {
        !seqs.is_empty()
            && seqs.iter().all(|&q| {
                self.seen
                    .iter()
                    .any(|s| s.way == Way::In && s.seq == q && s.intact && s.unix_ms >= unix_ms)
                    && !self.seen.iter().any(|s| s.way == Way::Out && s.seq == q)
            })
    }

    /// The first request in after `unix_ms` that the guest answered, and how long it
    /// took (`None` if none was answered).
    pub fn first_reply_after(&self, unix_ms: f64) -> Option<FirstReply> {
        self.seen
            .iter()
            .filter(|s| s.way == Way::In && s.unix_ms >= unix_ms)
            .find_map(|req| {
                let reply = self
                    .seen
                    .iter()
                    .find(|s| s.way == Way::Out && s.seq == req.seq)?;
                Some(FirstReply {
                    request_after_ms: req.unix_ms - unix_ms,
                    latency_ms: reply.unix_ms - req.unix_ms,
                })
            })
    }
}

/// A capture running on its own thread; [`TapCapture::stop`] ends it.
pub struct TapCapture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Capture>>,
}

impl TapCapture {
    /// Starts capturing on `host`'s tap (which must exist: after its QEMU started).
    pub fn start(world: &World, host: Host) -> Self {
        let socket = world
            .in_ns(host.node(), || open(TAP))
            .unwrap_or_else(|e| panic!("packet socket on {TAP} at host {host:?}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || run(&socket, &flag));
        Self { stop, thread }
    }

    /// Stops and returns what was seen.
    pub fn stop(self) -> io::Result<Capture> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// An AF_PACKET socket on `ifname` that sees frames both ways, stamped by the kernel.
pub(super) fn open(ifname: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    stamp::enable(fd.as_raw_fd())?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: WAIT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: `timeout` is a live timeval of the given size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn run(socket: &OwnedFd, stop: &AtomicBool) -> io::Result<Capture> {
    let guest = parse_mac(GUEST_MAC).expect("the guest's MAC");
    let mut capture = Capture::default();
    let mut buf = [0u8; 256];
    while let Some(meta) = stamp::recv_until(socket.as_raw_fd(), &mut buf, stop)? {
        let frame = &buf[..meta.len.min(buf.len())];
        let (Some(at), Some((way, seq))) = (meta.received_at, parse(frame, VA)) else {
            continue;
        };
        capture.seen.push(Seen {
            way,
            seq,
            unix_ms: at.as_secs_f64() * 1e3,
            intact: meta.len <= buf.len() && intact(frame, way, guest),
        });
    }
    Ok(capture)
}

/// The UDP port of the encapsulation under segmentation (GUE variant 1: the UDP payload
/// is the inner IP packet itself).
const GUE_PORT: u16 = 6080;

/// The IPv4 packet an Ethernet frame carries: its own, or the one inside when it is an
/// IPv4 datagram of the encapsulation. Under segmentation the guest's packets are
/// encapsulated by the tap's XDP hook, before a capture sees them.
fn ipv4_packet(frame: &[u8]) -> Option<&[u8]> {
    let ip = frame.get(14..).filter(|ip| ip.len() >= 20)?;
    if u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    match ip.get(ihl..ihl + 8) {
        Some(udp) if ip[9] == 17 && u16::from_be_bytes([udp[2], udp[3]]) == GUE_PORT => {
            let inner = &ip[ihl + 8..];
            (inner.len() >= 20 && inner[0] >> 4 == 4).then_some(inner)
        }
        _ => Some(ip),
    }
}

/// An ICMP echo to or from `va` in an Ethernet frame (see [`ipv4_packet`]): which way,
/// and the probe's sequence number.
fn parse(frame: &[u8], va: Ipv4Addr) -> Option<(Way, u64)> {
    let ip = ipv4_packet(frame)?;
    if ip[9] != 1 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let (src, dst) = (
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let icmp = ip.get(ihl..)?;
    let seq = u64::from_be_bytes(icmp.get(8..16)?.try_into().ok()?);
    match icmp[0] {
        ECHO_REQUEST if dst == va => Some((Way::In, seq)),
        ECHO_REPLY if src == va => Some((Way::Out, seq)),
        _ => None,
    }
}

/// Whether an Ethernet frame's IPv4 packet (see [`ipv4_packet`]) is whole, both its
/// header checksum and the ICMP checksum over its payload verify (recomputed here) and,
/// going `way` in, the frame is addressed to the guest's MAC `guest` (the guest's NIC
/// drops a frame for another).
fn intact(frame: &[u8], way: Way, guest: [u8; 6]) -> bool {
    let Some(ip) = ipv4_packet(frame) else {
        return false;
    };
    if way == Way::In && frame[..6] != guest {
        return false;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return false;
    }
    verify::valid(&[&ip[..ihl]]) && verify::valid(&[&ip[ihl..total]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(way: Way, seq: u64, unix_ms: f64) -> Seen {
        Seen {
            way,
            seq,
            unix_ms,
            intact: true,
        }
    }

    #[test]
    fn only_intact_unanswered_requests_after_the_moment_are_the_guests_loss() {
        let mut c = Capture {
            seen: vec![
                seen(Way::In, 1, 90.0),
                seen(Way::In, 2, 101.0),
                seen(Way::In, 3, 102.0),
                seen(Way::Out, 3, 110.0),
            ],
        };
        assert!(c.delivered_unanswered_after(&[2], 100.0));
        // Before the moment, answered, never seen, or none at all.
        assert!(!c.delivered_unanswered_after(&[1], 100.0));
        assert!(!c.delivered_unanswered_after(&[2, 3], 100.0));
        assert!(!c.delivered_unanswered_after(&[2, 4], 100.0));
        assert!(!c.delivered_unanswered_after(&[], 100.0));
        c.seen[1].intact = false;
        assert!(!c.delivered_unanswered_after(&[2], 100.0));
    }

    #[test]
    fn a_frame_is_intact_only_whole_to_the_guest_and_with_both_checksums_right() {
        let guest = [0x52, 0x54, 0, 0x4e, 0x50, 0x0a];
        let mut f = guest.to_vec();
        f.extend([0u8; 8]);
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 44, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 198, 19, 0, 10,
        ];
        let sum = !verify::sum(&[&ip]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut icmp = vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
        icmp.extend(42u64.to_be_bytes());
        icmp.extend(*b"NPICMP01");
        let sum = !verify::sum(&[&icmp]);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        f.extend(&ip);
        f.extend(&icmp);
        assert!(intact(&f, Way::In, guest));
        // Padding after the datagram is not part of it.
        let mut padded = f.clone();
        padded.extend([0xab; 6]);
        assert!(intact(&padded, Way::In, guest));
        assert!(!intact(&f[..f.len() - 1], Way::In, guest));
        let mut elsewhere = f.clone();
        elsewhere[5] ^= 1;
        assert!(!intact(&elsewhere, Way::In, guest));
        assert!(intact(&elsewhere, Way::Out, guest));
        for at in [14 + 8, 14 + 20 + 9] {
            let mut bad = f.clone();
            bad[at] ^= 1;
            assert!(
                !intact(&bad, Way::In, guest),
                "a flipped bit at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn the_first_request_after_the_moment_is_matched_to_its_own_reply() {
        let c = Capture {
            seen: vec![
                // Queued before RESUME, answered after it: not the guest's first reply
                // to a fresh request.
                seen(Way::In, 1, 90.0),
                seen(Way::In, 2, 101.0),
                seen(Way::Out, 1, 120.0),
                seen(Way::In, 3, 102.0),
                seen(Way::Out, 2, 130.0),
                seen(Way::Out, 3, 131.0),
            ],
        };
        let r = c.first_reply_after(100.0).unwrap();
        assert_eq!(r.request_after_ms, 1.0);
        assert_eq!(r.latency_ms, 29.0);
        assert_eq!(c.first_reply_after(200.0), None);
    }

    #[test]
    fn an_unanswered_request_gives_way_to_the_next() {
        let c = Capture {
            seen: vec![
                seen(Way::In, 5, 10.0),
                seen(Way::In, 6, 11.0),
                seen(Way::Out, 6, 15.0),
            ],
        };
        let r = c.first_reply_after(0.0).unwrap();
        assert_eq!((r.request_after_ms, r.latency_ms), (11.0, 4.0));
    }

    #[test]
    fn echoes_are_told_by_direction_and_others_ignored() {
        let va = Ipv4Addr::new(198, 19, 0, 10);
        let client = Ipv4Addr::new(10, 0, 0, 1);
        let frame = |ty: u8, src: Ipv4Addr, dst: Ipv4Addr| {
            let mut f = vec![0u8; 14];
            f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
            ip.extend(src.octets());
            ip.extend(dst.octets());
            f.extend(ip);
            f.extend([ty, 0, 0, 0, 0x12, 0x34, 0, 7]);
            f.extend(42u64.to_be_bytes());
            f
        };
        assert_eq!(
            parse(&frame(ECHO_REQUEST, client, va), va),
            Some((Way::In, 42))
        );
        assert_eq!(
            parse(&frame(ECHO_REPLY, va, client), va),
            Some((Way::Out, 42))
        );
        assert_eq!(parse(&frame(ECHO_REQUEST, va, client), va), None);
        assert_eq!(parse(&frame(3, client, va), va), None);
        assert_eq!(parse(&frame(ECHO_REPLY, va, client)[..20], va), None);
        // Under segmentation a reply leaves the tap encapsulated: outer IPv4, then UDP to
        // the encapsulation's port, then the reply itself; to another port it is not one.
        let tunnelled = |port: u16| {
            let inner = &frame(ECHO_REPLY, va, client)[14..];
            let mut f = frame(0, client, client)[..34].to_vec();
            f[23] = 17;
            f.extend(49152u16.to_be_bytes());
            f.extend(port.to_be_bytes());
            f.extend(((8 + inner.len()) as u16).to_be_bytes());
            f.extend([0, 0]);
            f.extend(inner);
            f
        };
        assert_eq!(parse(&tunnelled(6080), va), Some((Way::Out, 42)));
        assert_eq!(parse(&tunnelled(6081), va), None);
    }
}
