//! An ICMP echo prober on a fixed clock: a sequence-numbered echo request every interval
//! from a raw socket, and a report of which were answered and the longest silence between
//! answers. Unlike `ping`, it never slows down while replies are outstanding, so a pause
//! of the target shows as lost probes or a gap, not as fewer probes sent.

use std::{
    io,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

use crate::world::{Answer, Node, ProbeReport, World};

/// Marks an echo payload as one of ours, after its big-endian sequence number.
const MAGIC: &[u8; 8] = b"NPICMP01";
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// `ICMP_FILTER` (linux/icmp.h): a raw ICMP socket's mask of types to drop.
const ICMP_FILTER: libc::c_int = 1;
/// How long the prober waits for late answers once it stops sending.
const LATE: Duration = Duration::from_millis(500);

/// What a probe run saw, with the wall-clock bounds of its largest gap.
#[derive(Clone, Debug)]
pub struct IcmpReport {
    pub probes: ProbeReport,
    /// The answers on either side of the largest gap (the epoch if there were fewer
    /// than two answers).
    pub gap_from: SystemTime,
    pub gap_to: SystemTime,
    /// When each probe was sent, by sequence number.
    pub sent_at: Vec<SystemTime>,
}

/// A prober running on its own threads; [`IcmpProbe::stop`] ends it and reports.
pub struct IcmpProbe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<IcmpReport>,
}

impl IcmpProbe {
    /// Sends an echo request from `node` to `dst` every `interval` until stopped (or for
    /// at most `longest`).
    pub fn spawn(
        world: &World,
        node: Node,
        dst: Ipv4Addr,
        interval: Duration,
        longest: Duration,
    ) -> Self {
        let socket = world
            .in_ns(node, raw_icmp_socket)
            .unwrap_or_else(|e| panic!("raw ICMP socket in {node:?}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || run(socket, dst, interval, longest, &flag));
        Self { stop, thread }
    }

    /// Stops sending, waits a little for late answers, and reports.
    pub fn stop(self) -> IcmpReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// A raw ICMP socket that receives echo replies only, with a large receive buffer (the
/// replies to probes queued during a pause come in one burst) and a short read timeout.
fn raw_icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let filter: u32 = !(1 << ECHO_REPLY);
    setsockopt(&socket, libc::SOL_RAW, ICMP_FILTER, &filter)?;
    let buffer: libc::c_int = 8 << 20;
    setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buffer)?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    setsockopt(&socket, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    Ok(socket)
}

fn setsockopt<T>(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn run(
    socket: OwnedFd,
    dst: Ipv4Addr,
    interval: Duration,
    longest: Duration,
    stop: &AtomicBool,
) -> IcmpReport {
    let socket = Arc::new(socket);
    let ident = (std::process::id() as u16) ^ 0x4e50;
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (socket, done) = (socket.clone(), done.clone());
        thread::spawn(move || receive(&socket, dst, ident, &done))
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let mut sent_at = Vec::new();
    while start.elapsed() < longest && !stop.load(Ordering::Relaxed) {
        // A send can fail while a route is missing; the probe then counts as lost.
        sent_at.push(SystemTime::now());
        let _ = send(&socket, dst, ident, sent);
        sent += 1;
        let next = interval * sent as u32;
        thread::sleep(next.saturating_sub(start.elapsed()));
    }
    thread::sleep(LATE);
    done.store(true, Ordering::Relaxed);
    let arrivals = receiver.join().expect("ICMP receiver");
    let answers: Vec<Answer> = arrivals.iter().map(|&(s, t, _)| (s, t)).collect();
    let probes = ProbeReport::from_answers(sent, &answers, 0);
    let widest = arrivals
        .windows(2)
        .max_by_key(|w| w[1].1.saturating_duration_since(w[0].1));
    let (gap_from, gap_to) = widest.map_or((SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH), |w| {
        (w[0].2, w[1].2)
    });
    IcmpReport {
        probes,
        gap_from,
        gap_to,
        sent_at,
    }
}

fn send(socket: &OwnedFd, dst: Ipv4Addr, ident: u16, seq: u64) -> io::Result<()> {
    let mut packet = vec![ECHO_REQUEST, 0, 0, 0];
    packet.extend(ident.to_be_bytes());
    packet.extend((seq as u16).to_be_bytes());
    packet.extend(seq.to_be_bytes());
    packet.extend(MAGIC);
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: the buffer and the address are live and their sizes are given.
    let n = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// When an answer arrived, on both clocks.
type Arrival = (u64, Instant, SystemTime);

fn receive(socket: &OwnedFd, dst: Ipv4Addr, ident: u16, done: &AtomicBool) -> Vec<Arrival> {
    let mut answers = Vec::new();
    let mut buf = [0u8; 1500];
    while !done.load(Ordering::Relaxed) {
        // SAFETY: the buffer is live and its size is given.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(seq) = parse_reply(&buf[..n as usize], dst, ident) {
            answers.push((seq, Instant::now(), SystemTime::now()));
        }
    }
    answers
}

/// The sequence number of an echo reply from `dst` to one of our requests, if it is one
/// (a raw socket receives the IPv4 header too).
fn parse_reply(packet: &[u8], dst: Ipv4Addr, ident: u16) -> Option<u64> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.len() < ihl + 8 + 16 || packet[9] != libc::IPPROTO_ICMP as u8 {
        return None;
    }
    let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    if from != dst || icmp[0] != ECHO_REPLY || icmp[4..6] != ident.to_be_bytes() {
        return None;
    }
    if icmp[16..24] != MAGIC[..] || checksum(icmp) != 0 {
        return None;
    }
    Some(u64::from_be_bytes(icmp[8..16].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies() {
        let mut p = vec![ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
        p.extend(7u64.to_be_bytes());
        p.extend(MAGIC);
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn parses_only_our_replies() {
        let dst = Ipv4Addr::new(198, 19, 0, 10);
        let mut icmp = vec![ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 9];
        icmp.extend(9u64.to_be_bytes());
        icmp.extend(MAGIC);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend(dst.octets());
        ip.extend([198, 18, 1, 2]);
        let packet: Vec<u8> = ip.iter().chain(&icmp).copied().collect();
        assert_eq!(parse_reply(&packet, dst, 0x1234), Some(9));
        assert_eq!(parse_reply(&packet, dst, 0x1235), None);
        assert_eq!(
            parse_reply(&packet, Ipv4Addr::new(1, 2, 3, 4), 0x1234),
            None
        );
    }

    #[test]
    fn reports_losses_and_gaps() {
        let t = Instant::now();
        let answers = [(0, t), (3, t + Duration::from_millis(40)), (3, t)];
        let r = ProbeReport::from_answers(5, &answers, 0);
        assert_eq!((r.sent, r.received, r.lost), (5, 2, 3));
        assert_eq!(r.lost_seqs, vec![1, 2, 4]);
        assert_eq!((r.longest_loss_run, r.duplicates), (2, 1));
        assert_eq!(r.largest_gap, Duration::from_millis(40));
    }
}
