//! Which hook runs the program on an interface, and how `auto` picks one.
//!
//! XDP runs before the kernel builds a socket buffer: the fastest hook, and the only one
//! with the fast path, but blind to checksum offload. A guest's virtio-net or a veth peer
//! with transmit offload on hands over packets whose transport checksum holds only the
//! pseudo-header's partial sum (CHECKSUM_PARTIAL), and GSO packets of many segments; XDP
//! cannot tell them apart and would "fix" a partial sum as if it were final. tc runs on the
//! socket buffer and fixes the checksum through the kernel, which knows.

use serde::Serialize;

use super::{AttachError, Mode};

/// The hook of an interface's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// tc for tun/tap and veth devices (whose senders may use checksum offload), XDP for
    /// the rest; XDP whenever the fast path or an XDP mode is asked for, or the node has a
    /// locator (segmentation runs at both hooks, XDP the quicker).
    Auto,
    /// XDP: the fastest; for devices whose packets carry final checksums (physical NICs).
    Xdp,
    /// tc (a tcx link on ingress): correct with checksum offload and GSO.
    Tc,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::Auto => "auto",
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        })
    }
}

/// The hook for `iface` when `asked` (with XDP `mode` and the fast path as asked), and
/// why, in words for `status`.
pub fn choose(
    iface: &str,
    asked: Hook,
    mode: Mode,
    fast_path: bool,
    segments: bool,
) -> Result<(Hook, String), AttachError> {
    match asked {
        Hook::Tc if fast_path => Err(AttachError::TcFastPath {
            iface: iface.to_owned(),
        }),
        Hook::Tc if mode != Mode::Auto => Err(AttachError::TcMode {
            iface: iface.to_owned(),
            mode,
        }),
        Hook::Tc | Hook::Xdp => Ok((asked, "asked for".to_owned())),
        Hook::Auto if fast_path => Ok((Hook::Xdp, "auto: the fast path runs in XDP".to_owned())),
        Hook::Auto if segments => Ok((
            Hook::Xdp,
            "auto: the node has a locator, and XDP is segmentation's quicker hook".to_owned(),
        )),
        Hook::Auto if mode != Mode::Auto => {
            Ok((Hook::Xdp, format!("auto: XDP {mode} mode was asked for")))
        }
        Hook::Auto => Ok(by_driver(iface)),
    }
}

/// `auto`'s choice by the interface's driver.
fn by_driver(iface: &str) -> (Hook, String) {
    match driver(iface).as_deref() {
        Some(d @ ("tun" | "veth")) => (
            Hook::Tc,
            format!(
                "auto: a {d} device, whose senders may leave checksums to offload or send GSO packets"
            ),
        ),
        Some(d) => (
            Hook::Xdp,
            format!("auto: driver {d}, whose packets carry final checksums"),
        ),
        None => (
            Hook::Xdp,
            "auto: the driver is unknown (no ethtool information)".to_owned(),
        ),
    }
}

/// The name of `iface`'s driver (`ETHTOOL_GDRVINFO`; /sys may show another namespace).
pub fn driver(iface: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` of linux/ethtool.h.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    super::ifreq_ioctl(iface, libc::SIOCETHTOOL, |req| {
        req.ifr_ifru.ifru_data = (&raw mut info).cast();
    })
    .ok()?;
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}
