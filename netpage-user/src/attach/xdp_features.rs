//! What an interface's driver says it can do with XDP, asked from the kernel: the
//! `xdp-features` of the netdev generic netlink family (Linux 6.3 and later), whose
//! `NDO_XMIT` bit tells whether frames redirected from native XDP may leave through it.
//!
//! For a veth the bit follows its peer: set while the peer has an XDP program or GRO on
//! (only then has it the NAPI context that receives XDP frames), so it is read again at
//! every attach and detach of the node rather than once.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `GENL_ID_CTRL`: the generic netlink controller, which resolves family names.
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
/// `NETDEV_CMD_DEV_GET` and its attributes (include/uapi/linux/netdev.h).
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// Netlink and generic netlink header sizes.
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// A generic netlink socket with the netdev family resolved: one per refresh of a node's
/// interfaces, however many it has.
pub struct Netdev {
    sock: OwnedFd,
    family: u16,
}

impl Netdev {
    /// Opens the socket and resolves the family. Fails on a kernel without the netdev
    /// family (before 6.3).
    pub fn open() -> io::Result<Self> {
        let sock = socket()?;
        let family = request(
            &sock,
            GENL_ID_CTRL,
            CTRL_CMD_GETFAMILY,
            &attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"),
        )
        .and_then(|a| find(&a, CTRL_ATTR_FAMILY_ID, u16::from_ne_bytes))?;
        Ok(Self { sock, family })
    }

    /// The xdp-features (`NETDEV_XDP_ACT_*`) of the interface with index `ifindex` in this
    /// network namespace.
    pub fn xdp_features(&self, ifindex: u32) -> io::Result<u64> {
        request(
            &self.sock,
            self.family,
            NETDEV_CMD_DEV_GET,
            &attr(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
        )
        .and_then(|a| find(&a, NETDEV_A_DEV_XDP_FEATURES, u64::from_ne_bytes))
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_GENERIC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One netlink attribute: length, type, payload padded to 4 bytes.
fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// Sends one generic netlink request and returns the attributes of its answer.
fn request(sock: &OwnedFd, family: u16, cmd: u8, attrs: &[u8]) -> io::Result<Vec<u8>> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&family.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    msg.extend_from_slice(&[cmd, 1, 0, 0]); // command, version, reserved
    msg.extend_from_slice(attrs);
    // SAFETY: `msg` is valid for its length; an unbound netlink socket sends to the kernel.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    answer(&buf)
}

/// The attributes of a netlink answer, or the error it carries.
fn answer(buf: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short netlink answer");
    let header = buf.get(..NLMSG_HDRLEN).ok_or_else(bad)?;
    let len = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let msg = buf.get(..len).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let code = msg.get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4).ok_or_else(bad)?;
        let errno = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
        return Err(io::Error::from_raw_os_error(-errno));
    }
    msg.get(NLMSG_HDRLEN + GENL_HDRLEN..)
        .map(<[u8]>::to_vec)
        .ok_or_else(bad)
}

/// The payload of attribute `kind` among `attrs`, decoded by `decode`.
fn find<const N: usize, T>(attrs: &[u8], kind: u16, decode: fn([u8; N]) -> T) -> io::Result<T> {
    let mut at = 0;
    while let Some(h) = attrs.get(at..at + 4) {
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        // The top two bits are the nested and byte-order flags.
        let k = u16::from_ne_bytes([h[2], h[3]]) & 0x3FFF;
        if len < 4 {
            break;
        }
        if k == kind
            && let Some(Ok(v)) = attrs.get(at + 4..at + len).map(<[u8; N]>::try_from)
        {
            return Ok(decode(v));
        }
        at += len.next_multiple_of(4);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no netlink attribute {kind} in the answer"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_found() {
        let mut attrs = attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0");
        assert_eq!(attrs.len(), 12);
        attrs.extend(attr(7, &[1, 2]));
        attrs.extend(attr(NETDEV_A_DEV_XDP_FEATURES, &0x27u64.to_ne_bytes()));
        assert_eq!(
            find(&attrs, NETDEV_A_DEV_XDP_FEATURES, u64::from_ne_bytes).unwrap(),
            0x27
        );
        assert!(find(&attrs, CTRL_ATTR_FAMILY_ID, u16::from_ne_bytes).is_err());
        // A payload of another size than asked is not taken.
        assert!(find(&attrs, 7, u32::from_ne_bytes).is_err());
    }

    #[test]
    fn an_error_answer_is_its_errno() {
        let len = NLMSG_HDRLEN + 4;
        let mut msg = vec![0u8; len];
        msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let e = answer(&msg).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
    }
}
