//! What a delay line carried and dropped in one direction: frames and bytes, and among them
//! UDP and TCP, so that a test can count its own datagrams among the link's other traffic
//! (ARP, neighbour discovery).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Frames of one kind of outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub frames: u64,
    /// Ethernet bytes (from the destination MAC, VLAN tags included; no FCS).
    pub bytes: u64,
    /// Frames carrying UDP over IPv4 or IPv6 (the IPv6 header's next header, not behind
    /// extension headers).
    pub udp: u64,
    /// Frames carrying TCP, counted as UDP is.
    pub tcp: u64,
    /// The longest frame, in bytes (a GSO frame can exceed the MTU).
    pub largest: u64,
}

/// One direction of a link through the delay line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Frames sent on after their delay.
    pub carried: Tally,
    /// Frames read and then dropped: the queue was full, the frame was longer than the
    /// relay's buffer, or the send failed.
    pub dropped: Tally,
    /// Frames the kernel dropped before the relay read them (its socket buffer was full).
    pub unread: u64,
}

/// The transport of a frame, as far as [`Tally`] cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Tcp,
    Other,
}

/// Reads the transport of an Ethernet frame: up to two VLAN tags, then IPv4's protocol or
/// IPv6's next header.
pub fn kind(frame: &[u8]) -> Kind {
    let mut at = 12;
    let mut ethertype = be16(frame, at);
    for _ in 0..2 {
        if matches!(ethertype, Some(0x8100 | 0x88a8)) {
            at += 4;
            ethertype = be16(frame, at);
        }
    }
    let l3 = at + 2;
    let proto = match ethertype {
        Some(0x0800) => frame.get(l3 + 9),
        Some(0x86dd) => frame.get(l3 + 6),
        _ => None,
    };
    match proto {
        Some(17) => Kind::Udp,
        Some(6) => Kind::Tcp,
        _ => Kind::Other,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[derive(Default)]
struct AtomicTally {
    frames: AtomicU64,
    bytes: AtomicU64,
    udp: AtomicU64,
    tcp: AtomicU64,
    largest: AtomicU64,
}

impl AtomicTally {
    fn add(&self, frame: &[u8]) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(frame.len() as u64, Relaxed);
        self.largest.fetch_max(frame.len() as u64, Relaxed);
        match kind(frame) {
            Kind::Udp => self.udp.fetch_add(1, Relaxed),
            Kind::Tcp => self.tcp.fetch_add(1, Relaxed),
            Kind::Other => 0,
        };
    }

    fn get(&self) -> Tally {
        Tally {
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            udp: self.udp.load(Relaxed),
            tcp: self.tcp.load(Relaxed),
            largest: self.largest.load(Relaxed),
        }
    }
}

/// The live counters of one direction, shared by the relay and its handle.
#[derive(Default)]
pub struct FlowCounters {
    carried: AtomicTally,
    dropped: AtomicTally,
    unread: AtomicU64,
}

impl FlowCounters {
    /// Counts an Ethernet frame sent on.
    pub fn carried(&self, frame: &[u8]) {
        self.carried.add(frame);
    }

    /// Counts an Ethernet frame dropped by the relay.
    pub fn dropped(&self, frame: &[u8]) {
        self.dropped.add(frame);
    }

    /// Counts frames the kernel dropped before the relay read them.
    pub fn unread(&self, n: u64) {
        self.unread.fetch_add(n, Relaxed);
    }

    /// The counts so far.
    pub fn get(&self) -> Flow {
        Flow {
            carried: self.carried.get(),
            dropped: self.dropped.get(),
            unread: self.unread.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ethertype: &[u8], l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(ethertype);
        f.extend_from_slice(l3);
        f
    }

    #[test]
    fn kinds() {
        let mut v4 = vec![0x45u8; 20];
        v4[9] = 17;
        assert_eq!(kind(&frame(&[0x08, 0x00], &v4)), Kind::Udp);
        v4[9] = 6;
        assert_eq!(kind(&frame(&[0x08, 0x00], &v4)), Kind::Tcp);
        let mut v6 = vec![0x60u8; 40];
        v6[6] = 17;
        assert_eq!(kind(&frame(&[0x86, 0xdd], &v6)), Kind::Udp);
        v6[6] = 58;
        assert_eq!(kind(&frame(&[0x86, 0xdd], &v6)), Kind::Other);
        assert_eq!(kind(&frame(&[0x08, 0x06], &[0; 28])), Kind::Other);
        let tagged = frame(&[0x81, 0x00, 0x00, 0x05, 0x86, 0xdd], &{
            let mut v = vec![0x60u8; 40];
            v[6] = 6;
            v
        });
        assert_eq!(kind(&tagged), Kind::Tcp);
        assert_eq!(kind(&[0u8; 5]), Kind::Other);
    }

    #[test]
    fn counts_by_outcome() {
        let c = FlowCounters::default();
        let mut v4 = vec![0x45u8; 20];
        v4[9] = 17;
        let udp = frame(&[0x08, 0x00], &v4);
        c.carried(&udp);
        c.carried(&frame(&[0x08, 0x06], &[0; 28]));
        c.dropped(&udp);
        c.unread(3);
        let f = c.get();
        assert_eq!((f.carried.frames, f.carried.udp, f.carried.tcp), (2, 1, 0));
        assert_eq!(f.carried.bytes, (udp.len() + 42) as u64);
        assert_eq!(f.carried.largest, 42);
        assert_eq!((f.dropped.frames, f.dropped.udp), (1, 1));
        assert_eq!(f.unread, 3);
    }
}
