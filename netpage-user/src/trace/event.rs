//! A trace event as `netpage trace` prints it: decoded from the ring buffer's bytes, as
//! one JSON object or one line of text.

use std::{collections::HashMap, fmt, net::IpAddr};

use netpage_common::{
    counters::Counter,
    trace::{EVENT_EGRESS, EVENT_PHYSICAL, EVENT_TC, TraceEvent, addr, verdict_name},
};
use serde::Serialize;

/// One traced packet, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds when the program saw the packet.
    pub time_ns: u64,
    /// The interface's name (`if<index>` if it is not in the node's registry).
    pub iface: String,
    pub ifindex: u32,
    /// `virtual` or `physical`.
    pub side: &'static str,
    /// `xdp` or `tc`.
    pub hook: &'static str,
    /// `ingress`, or `egress` (tc at a virtual-side interface's egress).
    pub at: &'static str,
    /// The IPv4 protocol or IPv6 next header; `None` for a packet that is not IP.
    pub proto: Option<u8>,
    /// Source and destination as the packet arrived and as it left (`None`: not IP).
    pub src_before: Option<IpAddr>,
    pub dst_before: Option<IpAddr>,
    pub src_after: Option<IpAddr>,
    pub dst_after: Option<IpAddr>,
    /// `pass`, `drop`, `redirect` or `tx`.
    pub verdict: &'static str,
    /// The outcome counter's name: why the packet was translated or passed untouched.
    pub reason: &'static str,
}

impl Event {
    /// The event in `bytes` (one ring buffer record), its interface named from `names`
    /// (interface index to name); `None` if the record is too short.
    pub fn decode(bytes: &[u8], names: &HashMap<u32, String>) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<TraceEvent>() {
            return None;
        }
        // SAFETY: the record holds a whole `TraceEvent`, a plain-data type for which any
        // bytes are a value; the read does not assume alignment.
        let e = unsafe { bytes.as_ptr().cast::<TraceEvent>().read_unaligned() };
        Some(Self::of(&e, names))
    }

    /// The decoded form of `e`.
    pub fn of(e: &TraceEvent, names: &HashMap<u32, String>) -> Self {
        let ip = addr(e.family, [0; 16]).is_some();
        Event {
            time_ns: e.time_ns,
            iface: names
                .get(&e.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", e.ifindex)),
            ifindex: e.ifindex,
            side: if e.flags & EVENT_PHYSICAL != 0 {
                "physical"
            } else {
                "virtual"
            },
            hook: if e.flags & EVENT_TC != 0 { "tc" } else { "xdp" },
            at: if e.flags & EVENT_EGRESS != 0 {
                "egress"
            } else {
                "ingress"
            },
            proto: ip.then_some(e.proto),
            src_before: addr(e.family, e.src_before),
            dst_before: addr(e.family, e.dst_before),
            src_after: addr(e.family, e.src_after),
            dst_after: addr(e.family, e.dst_after),
            verdict: verdict_name(e.verdict),
            reason: Counter::ALL
                .get(e.reason as usize)
                .map_or("unknown", |c| c.name()),
        }
    }
}

/// The name of an IP protocol number, for text.
fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        p => format!("proto{p}"),
    }
}

fn opt(a: Option<IpAddr>) -> String {
    a.map_or_else(|| "-".into(), |a| a.to_string())
}

/// One line: `SECONDS IFACE SIDE/HOOK[/egress] PROTO SRC > DST => SRC' > DST' VERDICT
/// REASON`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06} {} {}/{}{} ",
            self.time_ns / 1_000_000_000,
            self.time_ns % 1_000_000_000 / 1000,
            self.iface,
            self.side,
            self.hook,
            if self.at == "egress" { "/egress" } else { "" }
        )?;
        match self.proto {
            None => write!(f, "not-ip")?,
            Some(p) => write!(
                f,
                "{} {} > {} => {} > {}",
                proto_name(p),
                opt(self.src_before),
                opt(self.dst_before),
                opt(self.src_after),
                opt(self.dst_after)
            )?,
        }
        write!(f, " {} {}", self.verdict, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use netpage_common::trace::{VERDICT_DROP, VERDICT_PASS, family_bytes};

    use super::*;

    fn raw(e: &TraceEvent) -> Vec<u8> {
        // SAFETY: a plain-data type without padding, read as its bytes.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const TraceEvent).cast::<u8>(),
                std::mem::size_of::<TraceEvent>(),
            )
        }
        .to_vec()
    }

    fn bytes(a: &str) -> [u8; 16] {
        family_bytes(a.parse().unwrap()).1
    }

    #[test]
    fn decodes_and_prints_a_translated_packet() {
        let e = TraceEvent {
            time_ns: 12_345_678_901,
            ifindex: 7,
            reason: Counter::V4ToReal as u32,
            verdict: VERDICT_PASS,
            flags: EVENT_TC,
            family: 4,
            proto: 17,
            src_before: bytes("198.19.0.10"),
            dst_before: bytes("198.18.0.1"),
            src_after: bytes("198.18.10.100"),
            dst_after: bytes("198.18.0.1"),
            ..TraceEvent::default()
        };
        let names = HashMap::from([(7, "tap0".to_string())]);
        let ev = Event::decode(&raw(&e), &names).unwrap();
        assert_eq!(ev.iface, "tap0");
        assert_eq!(
            (ev.side, ev.hook, ev.at, ev.proto),
            ("virtual", "tc", "ingress", Some(17))
        );
        assert_eq!(ev.src_before, Some("198.19.0.10".parse().unwrap()));
        assert_eq!(ev.src_after, Some("198.18.10.100".parse().unwrap()));
        assert_eq!(ev.reason, "translated_v4_to_real");
        assert_eq!(
            ev.to_string(),
            "12.345678 tap0 virtual/tc udp 198.19.0.10 > 198.18.0.1 => 198.18.10.100 > 198.18.0.1 pass translated_v4_to_real"
        );
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["verdict"], "pass");
        assert_eq!(json["dst_after"], "198.18.0.1");
        assert_eq!(json["side"], "virtual");
        assert!(Event::decode(&raw(&e)[..40], &names).is_none());
    }

    #[test]
    fn not_ip_and_unknown_names() {
        let e = TraceEvent {
            ifindex: 3,
            reason: Counter::PassNotIp as u32,
            verdict: VERDICT_DROP,
            flags: EVENT_PHYSICAL | EVENT_TC | EVENT_EGRESS,
            ..TraceEvent::default()
        };
        let ev = Event::of(&e, &HashMap::new());
        assert_eq!(
            (ev.iface.as_str(), ev.side, ev.hook, ev.at),
            ("if3", "physical", "tc", "egress")
        );
        assert_eq!((ev.proto, ev.src_before), (None, None));
        assert_eq!(
            ev.to_string(),
            "0.000000 if3 physical/tc/egress not-ip drop pass_not_ip"
        );
        let v6 = TraceEvent {
            family: 6,
            proto: 58,
            src_before: bytes("fd00::10"),
            reason: 999,
            ..TraceEvent::default()
        };
        let ev = Event::of(&v6, &HashMap::new());
        assert_eq!(ev.src_before, Some("fd00::10".parse().unwrap()));
        assert_eq!(ev.reason, "unknown");
    }
}
