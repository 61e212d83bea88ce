//! An AF_PACKET socket bound to one interface that receives and sends whole frames with
//! their offload metadata (a virtio-net header), the kernel's receive time and any VLAN tag
//! the device took out of the frame.

use super::stamp;

use std::{
    ffi::CString,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

/// Bytes of the virtio-net header in front of every frame (`struct virtio_net_hdr`).
pub const VNET_HDR: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
const NEEDS_CSUM: u8 = 1;
/// The receive buffer the kernel may fill before it drops frames for this socket.
const RCVBUF: libc::c_int = 8 << 20;

/// One frame taken from the socket.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Bytes written to the buffer: the virtio-net header and the frame.
    pub len: usize,
    /// Whether the frame was longer than the buffer (and so cut).
    pub truncated: bool,
    /// How long before the `recv` returned the kernel received the frame.
    pub age: Duration,
    /// The VLAN tag the device removed (TPID, TCI), to be put back.
    pub vlan: Option<(u16, u16)>,
}

/// An AF_PACKET socket on one interface of the namespace it was opened in.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

impl PacketSocket {
    /// Opens a non-blocking socket that receives every frame arriving on `ifname` (but none
    /// that leaves it) and sends on it. Call it inside the interface's namespace.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: nothing is queued before the bind below names the interface.
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = Self {
            fd,
            ifname: ifname.to_owned(),
        };
        s.set(libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1)?;
        s.set(libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
        s.set(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        stamp::enable(s.fd.as_raw_fd())?;
        if s.set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)
            .is_err()
        {
            s.set(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF)?;
        }
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The interface the socket is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The descriptor, to poll.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Takes the next frame into `buf` (virtio-net header first), or `None` if none waits.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        let Some(m) = stamp::recv(self.fd.as_raw_fd(), buf, libc::MSG_TRUNC)? else {
            return Ok(None);
        };
        let age = m
            .received_at
            .map_or(Duration::ZERO, |at| stamp::realtime().saturating_sub(at));
        Ok(Some(Received {
            len: m.len.min(buf.len()),
            truncated: m.len > buf.len(),
            age,
            vlan: m.vlan,
        }))
    }

    /// Sends `frame` (virtio-net header first) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live buffer of its length.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Frames the kernel dropped for want of room in this socket since the last call.
    pub fn kernel_drops(&self) -> io::Result<u64> {
        // SAFETY: an all-zero tpacket_stats is valid.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(u64::from(stats.tp_drops))
    }

    fn set(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` is a readable c_int of the given length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Puts a VLAN tag the device removed back into a received frame (`buf`, virtio-net header
/// first), after the two MAC addresses, moving the header's offsets past it.
pub fn reinsert_vlan(buf: &[u8], (tpid, tci): (u16, u16)) -> Vec<u8> {
    let macs = VNET_HDR + 12;
    let mut out = Vec::with_capacity(buf.len() + 4);
    out.extend_from_slice(&buf[..macs]);
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&buf[macs..]);
    let shift = |at: usize, out: &mut Vec<u8>| {
        let v = u16::from_le_bytes([out[at], out[at + 1]]);
        if v != 0 {
            out[at..at + 2].copy_from_slice(&(v + 4).to_le_bytes());
        }
    };
    // hdr_len (bytes 2..4), and csum_start (6..8) when the checksum is partial.
    shift(2, &mut out);
    if out[0] & NEEDS_CSUM != 0 {
        shift(6, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_goes_back_after_the_macs_and_shifts_offsets() {
        let mut buf = vec![0u8; VNET_HDR + 14 + 20];
        buf[0] = NEEDS_CSUM;
        buf[2..4].copy_from_slice(&54u16.to_le_bytes());
        buf[6..8].copy_from_slice(&34u16.to_le_bytes());
        buf[VNET_HDR + 12..VNET_HDR + 14].copy_from_slice(&[0x08, 0x00]);
        let out = reinsert_vlan(&buf, (0x8100, 0x0064));
        assert_eq!(out.len(), buf.len() + 4);
        assert_eq!(
            &out[VNET_HDR + 12..VNET_HDR + 18],
            &[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]
        );
        assert_eq!(u16::from_le_bytes([out[2], out[3]]), 58);
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 38);
    }

    #[test]
    fn offsets_of_a_complete_checksum_stay() {
        let mut buf = vec![0u8; VNET_HDR + 14];
        buf[6..8].copy_from_slice(&34u16.to_le_bytes());
        let out = reinsert_vlan(&buf, (0x88a8, 7));
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 34);
        assert_eq!(u16::from_le_bytes([out[2], out[3]]), 0);
    }
}
