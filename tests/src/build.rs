//! Packet builders for fixtures, on etherparse. Every checksum is computed from scratch.
//!
//! Builders take the addresses they write, so a fixture builds its input with the original
//! addresses and its expected output with the translated ones.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpFragOffset,
    IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel, Ipv6Header, SingleVlanHeader, TcpHeader,
    UdpHeader, VlanId, VlanPcp,
};

/// An address translation applied while building: identity for inputs, the table for
/// expected outputs.
pub type Xlate<'a> = &'a dyn Fn(IpAddr) -> IpAddr;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88A8;

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("{a} is not IPv4"),
    }
}

fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("{a} is not IPv6"),
    }
}

/// An Ethernet frame with VLAN tags (`tpids`, outermost first) around `payload`.
pub fn ether(tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let first = tpids.first().copied().unwrap_or(ethertype);
    let mut f = Ethernet2Header {
        source: [0x02, 0, 0, 0, 0, 0x0A],
        destination: [0x02, 0, 0, 0, 0, 0x0B],
        ether_type: EtherType(first),
    }
    .to_bytes()
    .to_vec();
    for (i, _) in tpids.iter().enumerate() {
        let inner = tpids.get(i + 1).copied().unwrap_or(ethertype);
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(100 + i as u16).unwrap(),
            ether_type: EtherType(inner),
        };
        f.extend(tag.to_bytes());
    }
    f.extend(payload);
    f
}

/// Options of an IPv4 header beyond addresses and protocol.
#[derive(Clone, Default)]
pub struct V4Opts {
    /// Header options (a multiple of 4 bytes, at most 40).
    pub options: Vec<u8>,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub offset: u16,
}

/// An IPv4 packet; the header checksum is computed.
pub fn ipv4(src: IpAddr, dst: IpAddr, proto: u8, o: &V4Opts, payload: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(payload.len() as u16, 64, IpNumber(proto), v4(src), v4(dst))
        .expect("IPv4 payload fits");
    h.identification = 0x1234;
    h.options = Ipv4Options::try_from(&o.options[..]).expect("IPv4 options");
    h.set_payload_len(payload.len()).expect("IPv4 payload fits");
    h.more_fragments = o.more_fragments;
    h.dont_fragment = !o.more_fragments && o.offset == 0;
    h.fragment_offset = IpFragOffset::try_new(o.offset).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut p = h.to_bytes().to_vec();
    p.extend(payload);
    p
}

/// An IPv6 packet with raw extension headers `ext` (whose Next Header chain ends in the
/// transport protocol); `next` is the header's own Next Header.
pub fn ipv6(src: IpAddr, dst: IpAddr, next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let h = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::try_new(0x12345).unwrap(),
        payload_length: (ext.len() + payload.len()) as u16,
        next_header: IpNumber(next),
        hop_limit: 64,
        source: v6(src),
        destination: v6(dst),
    };
    let mut p = h.to_bytes().to_vec();
    p.extend(ext);
    p.extend(payload);
    p
}

/// An IPv6 extension header: `kind` is its own protocol number, `next` the one after it,
/// `body` its contents after the first two bytes (padded to a multiple of 8 in total).
pub fn ext(kind: u8, next: u8, body: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend(body);
    while h.len() % 8 != 0 {
        h.push(0);
    }
    if kind != 44 {
        h[1] = (h.len() / 8 - 1) as u8;
    }
    h
}

/// A TCP segment from port 40000 to 80 with its checksum over the pseudo-header of
/// `src`, `dst`.
pub fn tcp(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut h = TcpHeader::new(40000, 80, 0x0102_0304, 8192);
    h.ack = true;
    h.psh = true;
    h.acknowledgment_number = 0x0A0B_0C0D;
    h.checksum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        _ => h.calc_checksum_ipv6_raw(v6(src), v6(dst), payload),
    }
    .unwrap();
    let mut s = h.to_bytes().to_vec();
    s.extend(payload);
    s
}

/// A UDP datagram from port 5353 to 9 with its checksum over the pseudo-header of `src`,
/// `dst` (a computed 0 is sent as 0xFFFF).
pub fn udp(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut h = UdpHeader {
        source_port: 5353,
        destination_port: 9,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    };
    h.checksum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
        _ => h.calc_checksum_ipv6_raw(v6(src), v6(dst), payload),
    }
    .unwrap();
    let mut s = h.to_bytes().to_vec();
    s.extend(payload);
    s
}

/// An ICMP message of raw type and code; `rest` is bytes 4..8, `body` follows.
pub fn icmp4(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let t = Icmpv4Type::Unknown {
        type_u8: ty,
        code_u8: code,
        bytes5to8: rest,
    };
    let mut m = Icmpv4Header::with_checksum(t, body).to_bytes().to_vec();
    m.extend(body);
    m
}

/// An ICMPv6 message of raw type and code, with its checksum over the pseudo-header of
/// `src`, `dst`.
pub fn icmp6(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let t = Icmpv6Type::Unknown {
        type_u8: ty,
        code_u8: code,
        bytes5to8: rest,
    };
    let mut m = Icmpv6Header::with_checksum(t, v6(src), v6(dst), body)
        .unwrap()
        .to_bytes()
        .to_vec();
    m.extend(body);
    m
}

/// An IPv4 frame carrying a transport segment built for its addresses.
pub fn frame4(
    x: Xlate,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    seg: impl Fn(IpAddr, IpAddr) -> Vec<u8>,
) -> Vec<u8> {
    let (s, d) = (x(src), x(dst));
    ether(
        &[],
        0x0800,
        &ipv4(s, d, proto, &V4Opts::default(), &seg(s, d)),
    )
}

/// An IPv6 frame carrying a transport segment built for its addresses.
pub fn frame6(
    x: Xlate,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    seg: impl Fn(IpAddr, IpAddr) -> Vec<u8>,
) -> Vec<u8> {
    let (s, d) = (x(src), x(dst));
    ether(&[], 0x86DD, &ipv6(s, d, proto, &[], &seg(s, d)))
}
