//! `netpage trace`: the per-packet events the datapath emits while a trace runs, its
//! configuration, and the pure decisions around them (expiry, rate, selection, verdicts).
//!
//! Tracing is off unless [`TraceConfig::deadline_ns`] lies in the future (in
//! `CLOCK_BOOTTIME`): the command renews it while it runs, so a trace whose command died
//! turns itself off.

use core::net::IpAddr;

/// The trace's configuration: the one slot of [`crate::maps::TRACE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceConfig {
    /// `CLOCK_BOOTTIME` nanoseconds until which tracing is on; 0 (or a time past): off.
    pub deadline_ns: u64,
    /// [`SELECT_VMS`] and [`SELECT_IFACES`]: which selections of [`crate::maps::TRACE_SEL`]
    /// apply (none: every packet).
    pub flags: u32,
    /// Events per second and CPU at most; those over it are counted as lost.
    pub rate: u32,
}

/// [`TraceConfig::flags`]: only packets with a selected VM's address, before or after.
pub const SELECT_VMS: u32 = 1;
/// [`TraceConfig::flags`]: only packets of a selected interface.
pub const SELECT_IFACES: u32 = 2;

/// A key of the trace's selection ([`crate::maps::TRACE_SEL`]): a VM's virtual address
/// (`kind` 4 or 6, the address's bytes as on the wire, zero-padded), or an interface
/// (`kind` [`SEL_IFACE`], its index as a native-endian `u32` in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceKey {
    pub kind: u32,
    pub bytes: [u8; 16],
}

/// [`TraceKey::kind`] of an interface.
pub const SEL_IFACE: u32 = 1;

impl TraceKey {
    /// The key of the VM of virtual address `va`.
    pub fn vm(va: IpAddr) -> Self {
        let (kind, bytes) = family_bytes(va);
        Self { kind, bytes }
    }

    /// The key of the interface of index `ifindex`.
    pub fn iface(ifindex: u32) -> Self {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&ifindex.to_ne_bytes());
        Self {
            kind: SEL_IFACE,
            bytes,
        }
    }
}

/// The address family (4 or 6) and bytes of `a`, laid out as in [`TraceEvent`].
pub fn family_bytes(a: IpAddr) -> (u32, [u8; 16]) {
    let mut bytes = [0; 16];
    match a {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            (4, bytes)
        }
        IpAddr::V6(a) => (6, a.octets()),
    }
}

/// One traced packet, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// `CLOCK_BOOTTIME` nanoseconds when the program saw the packet.
    pub time_ns: u64,
    /// The interface the program runs on.
    pub ifindex: u32,
    /// The outcome counter ([`crate::counters::Counter`]): the reason.
    pub reason: u32,
    /// [`VERDICT_PASS`], [`VERDICT_DROP`], [`VERDICT_REDIRECT`] or [`VERDICT_TX`].
    pub verdict: u32,
    /// [`EVENT_PHYSICAL`], [`EVENT_TC`] and [`EVENT_EGRESS`].
    pub flags: u32,
    /// 4 or 6; 0 if the packet is not IP (or its header could not be read): no addresses.
    pub family: u8,
    /// The IPv4 protocol, or the IPv6 header's next header.
    pub proto: u8,
    /// Zero.
    pub reserved: [u8; 6],
    /// Source and destination before the program ran, laid out as [`TraceKey::bytes`].
    pub src_before: [u8; 16],
    pub dst_before: [u8; 16],
    /// Source and destination as the packet left the program.
    pub src_after: [u8; 16],
    pub dst_after: [u8; 16],
}

/// [`TraceEvent::flags`]: the program of the physical side.
pub const EVENT_PHYSICAL: u32 = 1;
/// [`TraceEvent::flags`]: the tc program (else XDP).
pub const EVENT_TC: u32 = 2;
/// [`TraceEvent::flags`]: the tc program at the interface's egress (a virtual-side
/// interface's, which runs the physical side's program on what the node sends its VMs).
pub const EVENT_EGRESS: u32 = 4;

/// [`TraceEvent::verdict`]: the packet goes on to the kernel (or the next tc program).
pub const VERDICT_PASS: u32 = 0;
/// [`TraceEvent::verdict`]: dropped.
pub const VERDICT_DROP: u32 = 1;
/// [`TraceEvent::verdict`]: redirected to another interface by the fast path.
pub const VERDICT_REDIRECT: u32 = 2;
/// [`TraceEvent::verdict`]: sent back out of the interface it arrived on.
pub const VERDICT_TX: u32 = 3;

/// The name of verdict `v`.
pub const fn verdict_name(v: u32) -> &'static str {
    match v {
        VERDICT_PASS => "pass",
        VERDICT_DROP => "drop",
        VERDICT_REDIRECT => "redirect",
        VERDICT_TX => "tx",
        _ => "unknown",
    }
}

/// The verdict of the XDP action `action` (`enum xdp_action`: aborted 0, drop 1, pass 2,
/// tx 3, redirect 4).
pub const fn xdp_verdict(action: u32) -> u32 {
    match action {
        0 | 1 => VERDICT_DROP,
        3 => VERDICT_TX,
        4 => VERDICT_REDIRECT,
        _ => VERDICT_PASS,
    }
}

/// The trace's state on one CPU: the slot of [`crate::maps::TRACE_CPU`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCpu {
    /// Start of the current one-second rate window (`CLOCK_BOOTTIME` ns).
    pub window_ns: u64,
    /// Events sent in the current window.
    pub window_events: u64,
    /// Events sent since the node's programs were loaded.
    pub sent: u64,
    /// Events lost since then: over the rate, or the ring buffer full.
    pub lost: u64,
    /// 1 while [`TraceCpu::event`] holds the packet being run (its addresses before).
    pub captured: u32,
    /// Zero.
    pub reserved: u32,
    /// The event in the making.
    pub event: TraceEvent,
}

/// Default of [`TraceConfig::rate`].
pub const DEFAULT_RATE: u32 = 10_000;

/// Bytes of the ring buffer ([`crate::maps::TRACE_EVENTS`]): a power of two of pages.
pub const RING_BYTES: u32 = 256 * 1024;

/// How long a trace's deadline reaches past each renewal.
pub const DEADLINE_NS: u64 = 3_000_000_000;

/// Length of a rate window.
pub const WINDOW_NS: u64 = 1_000_000_000;

/// Whether a trace with `deadline_ns` is on at `now_ns`.
pub const fn is_on(deadline_ns: u64, now_ns: u64) -> bool {
    now_ns < deadline_ns
}

/// Whether one more event may go out at `now_ns` on a CPU whose state is `cpu`, at `rate`
/// events per second at most; updates the window.
pub fn admit(cpu: &mut TraceCpu, now_ns: u64, rate: u32) -> bool {
    if now_ns.wrapping_sub(cpu.window_ns) >= WINDOW_NS {
        cpu.window_ns = now_ns;
        cpu.window_events = 0;
    }
    if cpu.window_events >= u64::from(rate) {
        return false;
    }
    cpu.window_events += 1;
    true
}

/// The address at `bytes` of family `family` (4 or 6), as [`TraceEvent`] lays it out.
pub fn addr(family: u8, bytes: [u8; 16]) -> Option<IpAddr> {
    match family {
        4 => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
        6 => Some(IpAddr::from(bytes)),
        _ => None,
    }
}

const _: () = assert!(core::mem::size_of::<TraceConfig>() == 16);
const _: () = assert!(core::mem::size_of::<TraceKey>() == 20);
const _: () = assert!(core::mem::size_of::<TraceEvent>() == 96);
const _: () = assert!(core::mem::size_of::<TraceCpu>() == 136);
const _: () = assert!(RING_BYTES.is_power_of_two());

#[cfg(feature = "user")]
mod pod {
    // SAFETY: integers and byte arrays, `repr(C)`, no padding (checked above).
    unsafe impl aya::Pod for super::TraceConfig {}
    unsafe impl aya::Pod for super::TraceKey {}
    unsafe impl aya::Pod for super::TraceEvent {}
    unsafe impl aya::Pod for super::TraceCpu {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_and_rate() {
        assert!(!is_on(0, 5));
        assert!(is_on(10, 5));
        assert!(!is_on(10, 10));
        let mut cpu = TraceCpu::default();
        let t0 = 5 * WINDOW_NS;
        assert!(admit(&mut cpu, t0, 2));
        assert!(admit(&mut cpu, t0 + 1, 2));
        assert!(!admit(&mut cpu, t0 + 2, 2));
        assert!(admit(&mut cpu, t0 + WINDOW_NS, 2));
        assert_eq!(cpu.window_events, 1);
        assert!(!admit(&mut TraceCpu::default(), t0, 0));
    }

    #[test]
    fn keys_and_addresses() {
        let va: IpAddr = "198.19.0.10".parse().unwrap();
        let k = TraceKey::vm(va);
        assert_eq!(k.kind, 4);
        assert_eq!(addr(4, k.bytes), Some(va));
        let v6: IpAddr = "fd00::10".parse().unwrap();
        let k6 = TraceKey::vm(v6);
        assert_eq!((k6.kind, addr(6, k6.bytes)), (6, Some(v6)));
        assert_eq!(addr(0, [0; 16]), None);
        let i = TraceKey::iface(7);
        assert_eq!(i.kind, SEL_IFACE);
        assert_ne!(i, TraceKey::vm("7.0.0.0".parse().unwrap()));
        assert_eq!(verdict_name(VERDICT_REDIRECT), "redirect");
        assert_eq!(
            [0, 1, 2, 3, 4].map(xdp_verdict),
            [
                VERDICT_DROP,
                VERDICT_DROP,
                VERDICT_PASS,
                VERDICT_TX,
                VERDICT_REDIRECT
            ]
        );
    }
}
