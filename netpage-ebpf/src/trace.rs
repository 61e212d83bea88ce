//! `netpage trace` in the datapath: an event per selected packet, with its addresses
//! before and after the translation, through a ring buffer.
//!
//! While no trace runs a packet pays for one load of the configuration's deadline (an
//! array lookup of a constant key, which the verifier turns into a direct load) and a
//! test, before and after the translation. The rest is in two BPF-to-BPF calls that the
//! translation's call chain does not hold: their frames do not add to its stack, and the
//! verifier meets the translation in the same state whether a trace runs or not.
//!
//! The event in the making lives in a per-CPU map slot, not on the stack: a program runs
//! to its end on one CPU, and XDP and tc ingress run in softirq, one packet at a time per
//! CPU.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use netpage_common::{
    maps::MAX_TRACE_SEL,
    proto::{ETH_P_IP, ETH_P_IPV6, IPV4_DST, IPV4_SRC, IPV6_DST, IPV6_HLEN, IPV6_SRC},
    trace::{
        EVENT_EGRESS, EVENT_PHYSICAL, EVENT_TC, RING_BYTES, SELECT_IFACES, SELECT_VMS, TraceConfig,
        TraceCpu, TraceEvent, TraceKey, admit, is_on,
    },
};

use crate::packet::{self, Packet};

/// The trace's configuration: deadline, selection flags, rate (one slot, user space's).
#[map(name = "NP_TRACE")]
static TRACE: Array<TraceConfig> = Array::with_max_entries(1, 0);

/// The trace's selection: VMs by virtual address, interfaces by index.
#[map(name = "NP_TRACE_SEL")]
static SEL: HashMap<TraceKey, u32> = HashMap::with_max_entries(MAX_TRACE_SEL, 0);

/// Per CPU: the rate window, events sent and lost, and the event in the making.
#[map(name = "NP_TRACE_CPU")]
static CPU: PerCpuArray<TraceCpu> = PerCpuArray::with_max_entries(1, 0);

/// The events, on their way to `netpage trace`.
#[map(name = "NP_TRACE_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// The trace's configuration: read once per packet.
#[inline(always)]
pub fn config() -> Option<&'static TraceConfig> {
    TRACE.get(0)
}

/// Whether a trace may be running: its deadline is set (whether it is past is for
/// [`before`] to find out, off the path of untraced packets).
#[inline(always)]
pub fn armed(config: Option<&'static TraceConfig>) -> bool {
    config.is_some_and(|c| c.deadline_ns != 0)
}

/// Before the translation: if the trace is on and selects the packet's interface, starts
/// its event with the addresses as they arrived. `ctx` is the invocation's context (a
/// socket buffer if `TC`).
// A BPF-to-BPF call that returns nothing: the caller's state after it is the same whether
// it captured or not.
#[inline(never)]
pub fn before<const TC: bool, const PHYSICAL: bool>(ctx: *mut core::ffi::c_void) {
    let Some(cpu) = CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, and no other program runs on this CPU meanwhile.
    let cpu = unsafe { &mut *cpu };
    cpu.captured = 0;
    let Some(cfg) = TRACE.get(0) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !is_on(cfg.deadline_ns, now) {
        return;
    }
    let pkt = Packet::of_ctx::<TC>(ctx);
    let ifindex = pkt.ingress::<TC>();
    // SAFETY: only whether there is a value is read.
    if cfg.flags & SELECT_IFACES != 0 && unsafe { SEL.get(TraceKey::iface(ifindex)) }.is_none() {
        return;
    }
    let e = &mut cpu.event;
    e.time_ns = now;
    e.ifindex = ifindex;
    let egress = if pkt.at_ingress::<TC>() {
        0
    } else {
        EVENT_EGRESS
    };
    e.flags = if PHYSICAL { EVENT_PHYSICAL } else { 0 } | if TC { EVENT_TC } else { 0 } | egress;
    let (family, proto) = addresses(&pkt, &mut e.src_before, &mut e.dst_before);
    e.family = family;
    e.proto = proto;
    cpu.captured = 1;
}

/// After the translation: completes the event [`before`] started with the addresses as
/// the packet leaves, the outcome (`reason`) and the verdict, and sends it if it is
/// selected and within the rate; counts it as lost if not within the rate or if the ring
/// buffer is full.
#[inline(never)]
pub fn after<const TC: bool>(ctx: *mut core::ffi::c_void, reason: u32, verdict: u32) {
    let Some(cpu) = CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `before`.
    let cpu = unsafe { &mut *cpu };
    if cpu.captured == 0 {
        return;
    }
    cpu.captured = 0;
    let Some(cfg) = TRACE.get(0) else {
        return;
    };
    let pkt = Packet::of_ctx::<TC>(ctx);
    let e = &mut cpu.event;
    e.reason = reason;
    e.verdict = verdict;
    addresses(&pkt, &mut e.src_after, &mut e.dst_after);
    if cfg.flags & SELECT_VMS != 0 && !selected(e) {
        return;
    }
    let now = e.time_ns;
    if !admit(cpu, now, cfg.rate) {
        cpu.lost += 1;
        return;
    }
    if EVENTS.output::<TraceEvent>(&cpu.event, 0).is_err() {
        cpu.lost += 1;
        return;
    }
    cpu.sent += 1;
}

/// Whether any address of the event, before or after, is a selected VM's.
#[inline(always)]
fn selected(e: &TraceEvent) -> bool {
    let kind = u32::from(e.family);
    is_selected(kind, &e.src_before)
        || is_selected(kind, &e.dst_before)
        || is_selected(kind, &e.src_after)
        || is_selected(kind, &e.dst_after)
}

#[inline(always)]
fn is_selected(kind: u32, bytes: &[u8; 16]) -> bool {
    let key = TraceKey {
        kind,
        bytes: *bytes,
    };
    // SAFETY: only whether there is a value is read.
    unsafe { SEL.get(key) }.is_some()
}

/// Copies the packet's source and destination into `src` and `dst` (laid out as
/// [`TraceEvent`] lays them out); returns the family (0 if not IP or unreadable) and the
/// IPv4 protocol or IPv6 next header.
#[inline(always)]
fn addresses(pkt: &Packet, src: &mut [u8; 16], dst: &mut [u8; 16]) -> (u8, u8) {
    let Ok((l3, ethertype)) = pkt.skip_l2() else {
        return (0, 0);
    };
    let Ok(l3) = packet::settle(l3) else {
        return (0, 0);
    };
    match ethertype {
        ETH_P_IP => {
            let Ok(h) = pkt.field::<[u8; 20]>(l3) else {
                return (0, 0);
            };
            // SAFETY: `field` checked the 20 bytes.
            let b = unsafe { &*h };
            *src = [0; 16];
            *dst = [0; 16];
            src[..4].copy_from_slice(&b[IPV4_SRC..IPV4_SRC + 4]);
            dst[..4].copy_from_slice(&b[IPV4_DST..IPV4_DST + 4]);
            (4, b[9])
        }
        ETH_P_IPV6 => {
            let Ok(h) = pkt.field::<[u8; IPV6_HLEN]>(l3) else {
                return (0, 0);
            };
            // SAFETY: `field` checked the 40 bytes.
            let b = unsafe { &*h };
            src.copy_from_slice(&b[IPV6_SRC..IPV6_SRC + 16]);
            dst.copy_from_slice(&b[IPV6_DST..IPV6_DST + 16]);
            (6, b[6])
        }
        _ => (0, 0),
    }
}
