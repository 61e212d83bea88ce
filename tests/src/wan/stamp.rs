//! Receiving a frame or datagram with what the kernel says about it in control messages:
//! when it received it (`SO_TIMESTAMPNS`, the realtime clock) and, on a packet socket, the
//! VLAN tag the device took out of it (`PACKET_AUXDATA`).

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::RawFd,
    time::Duration,
};

/// What one receive returned.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// The length the call returned (with `MSG_TRUNC`, the whole length even if cut).
    pub len: usize,
    /// When the kernel received it, since the epoch (realtime clock).
    pub received_at: Option<Duration>,
    /// The VLAN tag (TPID, TCI) the device removed, on a packet socket with auxdata.
    pub vlan: Option<(u16, u16)>,
}

/// Asks the kernel to stamp what `fd` receives with the realtime clock.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `on` is a readable c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the next frame into `buf`, waiting through the socket's timeouts and
/// interruptions until one comes (`Some`) or `stop` is set (`None`): the loop of a
/// capture thread.
pub fn recv_until(
    fd: RawFd,
    buf: &mut [u8],
    stop: &std::sync::atomic::AtomicBool,
) -> io::Result<Option<Meta>> {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match recv(fd, buf, 0) {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Receives into `buf` with `flags`; `None` if the socket would block.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Option<Meta>> {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let mut m = Meta {
        len: n as usize,
        received_at: None,
        vlan: None,
    };
    // SAFETY: the kernel filled the control buffer; CMSG_* walk it within its length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let ts: libc::timespec = std::ptr::read_unaligned(data.cast());
                    m.received_at = Some(since_epoch(&ts));
                }
                (libc::SOL_PACKET, libc::PACKET_AUXDATA) => {
                    let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(data.cast());
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            libc::ETH_P_8021Q as u16
                        };
                        m.vlan = Some((tpid, aux.tp_vlan_tci));
                    }
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok(Some(m))
}

/// The realtime clock, since the epoch: the clock of the kernel's receive stamps.
pub fn realtime() -> Duration {
    // SAFETY: an all-zero timespec is valid, and clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: `ts` is writable.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
    since_epoch(&ts)
}

fn since_epoch(ts: &libc::timespec) -> Duration {
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}
