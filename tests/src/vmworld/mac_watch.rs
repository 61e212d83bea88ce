//! Frames from the guest's MAC arriving on a bridge port, stamped by the kernel: in the
//! stretched world ([`super::stretch`]), when the guest's announcement after a migration
//! (QEMU's RARP, the guest's gratuitous ARPs) or its first frames reached a member of the
//! segment, which is when that member's bridge learned where the MAC is now.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use super::tap_capture;
use crate::{
    wan::stamp,
    world::{Node, World},
};

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h, Linux 4.20): the socket sees what the
/// device receives only, not what it sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// The EtherType of ARP, which the guest's gratuitous announcements use.
pub const ETH_P_ARP: u16 = 0x0806;
/// The EtherType of RARP, which QEMU's own announcement uses.
pub const ETH_P_RARP: u16 = 0x8035;

/// One frame from the MAC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FromMac {
    /// The kernel's time of its arrival, ms since the Unix epoch.
    pub unix_ms: f64,
    pub ethertype: u16,
    /// Whether it went to every station (ff:ff:ff:ff:ff:ff).
    pub broadcast: bool,
}

impl FromMac {
    /// The frame's kind, for reports.
    pub fn kind(&self) -> String {
        let what = match self.ethertype {
            ETH_P_RARP => "RARP".to_owned(),
            ETH_P_ARP => "ARP".to_owned(),
            0x0800 => "IPv4".to_owned(),
            0x86dd => "IPv6".to_owned(),
            t => format!("EtherType {t:#06x}"),
        };
        if self.broadcast {
            format!("broadcast {what}")
        } else {
            what
        }
    }
}

/// The first of `seen` that arrived at or after `unix_ms`.
pub fn first_after(seen: &[FromMac], unix_ms: f64) -> Option<FromMac> {
    seen.iter().copied().find(|f| f.unix_ms >= unix_ms)
}

/// A watch running on its own thread; [`MacWatch::stop`] ends it.
pub struct MacWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<Vec<FromMac>>>,
}

impl MacWatch {
    /// Starts watching what `node`'s `ifname` receives from `mac` (`aa:bb:..`).
    pub fn start(world: &World, node: Node, ifname: &str, mac: &str) -> Self {
        let mac = parse_mac(mac).unwrap_or_else(|| panic!("not a MAC: {mac}"));
        let socket = world
            .in_ns(node, || {
                let fd = tap_capture::open(ifname)?;
                let on: libc::c_int = 1;
                // SAFETY: `on` is a live c_int of the given size.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        PACKET_IGNORE_OUTGOING,
                        (&raw const on).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(fd)
            })
            .unwrap_or_else(|e| panic!("packet socket on {ifname} at {node:?}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || run(&socket, mac, &flag));
        Self { stop, thread }
    }

    /// Stops and returns what arrived, in order.
    pub fn stop(self) -> io::Result<Vec<FromMac>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

fn run(socket: &OwnedFd, mac: [u8; 6], stop: &AtomicBool) -> io::Result<Vec<FromMac>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while let Some(meta) = stamp::recv_until(socket.as_raw_fd(), &mut buf, stop)? {
        if let (Some(at), Some(f)) = (
            meta.received_at,
            parse(&buf[..meta.len.min(buf.len())], mac),
        ) {
            seen.push(FromMac {
                unix_ms: at.as_secs_f64() * 1e3,
                ..f
            });
        }
    }
    Ok(seen)
}

/// An Ethernet frame from `mac`: its EtherType and whether it was broadcast (the time
/// left at 0).
fn parse(frame: &[u8], mac: [u8; 6]) -> Option<FromMac> {
    if frame.len() < 14 || frame[6..12] != mac {
        return None;
    }
    Some(FromMac {
        unix_ms: 0.0,
        ethertype: u16::from_be_bytes([frame[12], frame[13]]),
        broadcast: frame[..6] == [0xff; 6],
    })
}

/// The six bytes of a MAC address written `aa:bb:cc:dd:ee:ff`.
pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_the_mac_are_told_apart_by_kind() {
        let mac = parse_mac("52:54:00:4e:50:0a").unwrap();
        let frame = |dst: [u8; 6], src: [u8; 6], ty: u16| {
            let mut f = dst.to_vec();
            f.extend(src);
            f.extend(ty.to_be_bytes());
            f.extend([0u8; 46]);
            f
        };
        let rarp = parse(&frame([0xff; 6], mac, ETH_P_RARP), mac).unwrap();
        assert_eq!(rarp.kind(), "broadcast RARP");
        let ip = parse(&frame([2, 0, 0, 0, 0, 1], mac, 0x0800), mac).unwrap();
        assert_eq!(ip.kind(), "IPv4");
        assert_eq!(
            parse(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], ETH_P_ARP), mac),
            None
        );
        assert_eq!(parse(&frame([0xff; 6], mac, ETH_P_ARP)[..13], mac), None);
        assert_eq!(parse_mac("52:54:00:4e:50"), None);
    }

    #[test]
    fn the_first_frame_after_a_moment_is_found() {
        let f = |unix_ms| FromMac {
            unix_ms,
            ethertype: ETH_P_ARP,
            broadcast: true,
        };
        let seen = [f(1.0), f(5.0), f(9.0)];
        assert_eq!(first_after(&seen, 4.0), Some(f(5.0)));
        assert_eq!(first_after(&seen, 10.0), None);
    }
}
