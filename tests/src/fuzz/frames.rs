//! The generator: random frames of every header kind the datapath knows, with addresses
//! drawn from the fuzzer's table, each built from scratch (every checksum computed) and
//! labelled with its kinds and with what netpage's documentation says it does with it.

use std::net::IpAddr;

use netpage::loader::Side;

use super::{
    rng::Rng,
    table::{Class, Table},
};

/// What the datapath should do with a generated frame, by its documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Translate it (the oracle's translation).
    Translate,
    /// Pass it untouched (malformed, unknown, not mapped, or a documented pass).
    Pass,
    /// Either (a mutated frame: the oracle alone judges).
    Either,
}

/// Where the generator put the headers a mutation may aim at.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// Network header offset, if IP.
    pub l3: Option<usize>,
    pub v6: bool,
    /// Transport header offset (of the first fragment or whole packet).
    pub l4: Option<usize>,
    /// Offset of the quoted IP header of an ICMP error.
    pub quote: Option<usize>,
    /// Offsets of checksum words in the frame.
    pub checksums: Vec<usize>,
    /// Offsets of address fields: outer source, outer destination, then quoted ones.
    pub addrs: Vec<usize>,
}

/// Which addresses the virtual side's packets may come from.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Whether a virtual-side packet's outer source may be a mapped address (a VA, or an
    /// RA). Off by default: source validation drops such a packet when the VA is not the
    /// ingress port's, or when it is an RA, and this fuzzer does not model port ownership.
    pub mapped_virtual_sources: bool,
}

/// One generated frame.
#[derive(Clone, Debug)]
pub struct Generated {
    pub side: Side,
    pub frame: Vec<u8>,
    pub expect: Expect,
    pub kinds: Vec<&'static str>,
    pub layout: Layout,
}

/// The RFC 1071 checksum of the concatenation of `parts` (each of even length but the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    for p in parts {
        for c in p.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    !(s as u16)
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A pseudo-header (RFC 768, RFC 8200 8.1).
fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = octets(src);
    p.extend(octets(dst));
    if src.is_ipv6() {
        p.extend((len as u32).to_be_bytes());
        p.extend([0, 0, 0, proto]);
    } else {
        p.extend([0, proto]);
        p.extend((len as u16).to_be_bytes());
    }
    p
}

/// Sets the checksum word at `at` of `seg` over `seg` and the pseudo-header of `src`,
/// `dst` (no pseudo-header if `None`).
fn set_checksum(seg: &mut [u8], at: usize, ph: Option<(IpAddr, IpAddr, u8)>, udp: bool) {
    seg[at..at + 2].copy_from_slice(&[0, 0]);
    let p = ph.map_or(Vec::new(), |(s, d, proto)| pseudo(s, d, proto, seg.len()));
    let mut c = checksum(&[&p, seg]);
    if udp && c == 0 {
        c = 0xFFFF;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// How a UDP checksum is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UdpSum {
    Normal,
    /// 0: no checksum.
    Zero,
    /// The payload is chosen so that the checksum computes to 0 (sent as 0xFFFF).
    ComputesZero,
    /// The payload is chosen so that the translated checksum computes to 0.
    TranslatedComputesZero,
}

/// Chooses the last payload word of `seg` (at an even offset) so that the UDP sum over
/// the pseudo-header of `src`, `dst` is all ones: the checksum computes to 0.
fn zero_sum(seg: &mut [u8], src: IpAddr, dst: IpAddr) {
    let w = seg.len() - 2;
    seg[6..8].copy_from_slice(&[0, 0]);
    seg[w..].copy_from_slice(&[0, 0]);
    let c = checksum(&[&pseudo(src, dst, 17, seg.len()), seg]);
    // The sum without the word is !c; adding c makes it all ones.
    seg[w..].copy_from_slice(&c.to_be_bytes());
}

/// A chain of IPv6 extension headers.
struct Chain {
    bytes: Vec<u8>,
    /// The Next Header that leads into it.
    first: u8,
    /// The final destination of a routing header with segments left: the transport's
    /// pseudo-header destination.
    final_dst: Option<IpAddr>,
    /// The home address of a home address option: the pseudo-header's source.
    home: Option<IpAddr>,
}

/// The frame under construction.
struct G<'a> {
    rng: &'a mut Rng,
    table: &'a Table,
    side: Side,
    policy: Policy,
    kinds: Vec<&'static str>,
    layout: Layout,
}

/// Facts of a packet that decide what the datapath does with it.
#[derive(Clone, Copy)]
struct Facts {
    /// Built as netpage translates it, if an outer address maps.
    translatable: bool,
    /// An outer address is in this side's table.
    outer_hit: bool,
    /// On the physical side, an error whose quote netpage translates alone on a miss.
    quote_only: bool,
}

impl G<'_> {
    fn kind(&mut self, k: &'static str) {
        self.kinds.push(k);
    }

    /// A class for an outer address; `src` for the source.
    fn class(&mut self, src: bool) -> Class {
        if src && self.side == Side::Virtual && !self.policy.mapped_virtual_sources {
            return Class::Unmapped;
        }
        match self.rng.below(100) {
            0..45 => Class::Here,
            45..60 => Class::There,
            _ => Class::Unmapped,
        }
    }

    fn any_class(&mut self) -> Class {
        self.rng.pick(&[Class::Here, Class::There, Class::Unmapped])
    }

    fn addr(&mut self, class: Class, v6: bool) -> IpAddr {
        self.table.draw(self.rng, self.side, class, v6)
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.below(100) {
            0..10 => 0,
            10..85 => self.rng.range(1, 64),
            85..97 => self.rng.range(65, 400),
            _ => self.rng.range(401, 1300),
        };
        self.rng.bytes(n)
    }

    fn tcp(&mut self, src: IpAddr, pseudo_dst: IpAddr) -> Vec<u8> {
        let opts: Vec<u8> = match self.rng.below(5) {
            0 => vec![],
            1 => vec![2, 4, 0x05, 0xB4],
            2 => vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            3 => vec![2, 4, 0x05, 0xB4, 4, 2, 1, 3, 3, 7, 1, 1],
            _ => {
                let n = 4 * self.rng.range(1, 10);
                self.rng.bytes(n)
            }
        };
        let mut s = Vec::with_capacity(20 + opts.len() + 64);
        s.extend(self.rng.word().to_be_bytes());
        s.extend(self.rng.word().to_be_bytes());
        s.extend(self.rng.bytes(8));
        s.push((((20 + opts.len()) / 4) as u8) << 4);
        s.push(self.rng.byte());
        s.extend(self.rng.word().to_be_bytes());
        s.extend([0, 0]);
        s.extend(self.rng.word().to_be_bytes());
        s.extend(opts);
        s.extend(self.payload());
        set_checksum(&mut s, 16, Some((src, pseudo_dst, 6)), false);
        s
    }

    /// A UDP datagram; `translated` are the addresses it will carry once translated.
    fn udp(&mut self, src: IpAddr, dst: IpAddr, translated: Option<(IpAddr, IpAddr)>) -> Vec<u8> {
        let mut p = self.payload();
        let mode = match self.rng.below(100) {
            0..70 => UdpSum::Normal,
            70..80 => UdpSum::Zero,
            80..90 => UdpSum::ComputesZero,
            _ if translated.is_some() => UdpSum::TranslatedComputesZero,
            _ => UdpSum::Normal,
        };
        if mode != UdpSum::Normal && mode != UdpSum::Zero && p.len() % 2 == 1 {
            p.push(0);
        }
        if p.len() < 2 {
            p.extend([0, 0]);
        }
        let mut s = Vec::with_capacity(8 + p.len());
        s.extend(self.rng.word().to_be_bytes());
        s.extend(self.rng.word().to_be_bytes());
        s.extend(((8 + p.len()) as u16).to_be_bytes());
        s.extend([0, 0]);
        s.extend(p);
        match mode {
            UdpSum::Normal => {
                self.kind("UDP checksum");
                set_checksum(&mut s, 6, Some((src, dst, 17)), true);
            }
            UdpSum::Zero => self.kind("UDP checksum 0 (none)"),
            UdpSum::ComputesZero => {
                self.kind("UDP checksum computing to 0 (0xFFFF)");
                zero_sum(&mut s, src, dst);
                set_checksum(&mut s, 6, Some((src, dst, 17)), true);
            }
            UdpSum::TranslatedComputesZero => {
                self.kind("UDP checksum computing to 0 once translated");
                let (ts, td) = translated.expect("translated addresses");
                zero_sum(&mut s, ts, td);
                set_checksum(&mut s, 6, Some((src, dst, 17)), true);
            }
        }
        s
    }

    /// The translated form of an address pair on this side, if either maps.
    fn translated(&self, src: IpAddr, dst: IpAddr) -> Option<(IpAddr, IpAddr)> {
        let (s, d) = (
            self.table.lookup(self.side, src),
            self.table.lookup(self.side, dst),
        );
        (s.is_some() || d.is_some()).then(|| (s.unwrap_or(src), d.unwrap_or(dst)))
    }

    fn icmp(&mut self, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0];
        m.extend(rest);
        m.extend(body);
        set_checksum(&mut m, 2, None, false);
        m
    }

    fn icmp6(&mut self, src: IpAddr, dst: IpAddr, ty: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let code = if self.rng.chance(80) {
            0
        } else {
            self.rng.byte()
        };
        let mut m = vec![ty, code, 0, 0];
        m.extend(rest);
        m.extend(body);
        set_checksum(&mut m, 2, Some((src, dst, 58)), false);
        m
    }

    /// IPv4 options: the bytes (a multiple of 4), their kind, and the final destination
    /// of a source route with hops left.
    fn v4_options(&mut self, dst: IpAddr) -> (Vec<u8>, Option<IpAddr>, bool) {
        let hop = self.addr(Class::Unmapped, false);
        let last = if self.rng.chance(50) {
            let c = self.any_class();
            self.addr(c, false)
        } else {
            hop
        };
        let route = |kind: u8, ptr: u8, a: IpAddr, b: IpAddr| {
            let mut o = vec![1, kind, 11, ptr];
            o.extend(octets(a));
            o.extend(octets(b));
            o
        };
        let (opts, final_dst, name) = match self.rng.below(100) {
            0..55 => (vec![], None, None),
            55..63 => {
                let n = self.rng.range(1, 10);
                (vec![1; 4 * n], None, Some("IPv4 options: NOPs"))
            }
            63..68 => (
                vec![7, 7, 4, 0, 0, 0, 0, 1],
                None,
                Some("IPv4 options: record route"),
            ),
            68..72 => (
                vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                None,
                Some("IPv4 options: timestamp"),
            ),
            72..76 => (vec![148, 4, 0, 0], None, Some("IPv4 options: router alert")),
            76..84 => {
                let kind = self.rng.pick(&[131, 137]);
                (
                    route(kind, 4, dst, last),
                    Some(last),
                    Some("IPv4 options: source route, hops left"),
                )
            }
            84..88 => {
                let kind = self.rng.pick(&[131, 137]);
                (
                    route(kind, 8, hop, last),
                    Some(last),
                    Some("IPv4 options: source route, last hop left"),
                )
            }
            88..94 => {
                let kind = self.rng.pick(&[131, 137]);
                (
                    route(kind, 12, hop, dst),
                    None,
                    Some("IPv4 options: source route, completed"),
                )
            }
            _ => {
                let mut o = vec![0; 4];
                o.extend(route(131, 4, hop, last));
                (o, None, Some("IPv4 options: source route after the end"))
            }
        };
        if let Some(n) = name {
            self.kind(n);
        }
        let hidden = final_dst.is_some();
        (opts, final_dst, hidden)
    }

    fn ipv4_header(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        opts: &[u8],
        payload: usize,
        frag: u16,
    ) -> Vec<u8> {
        let ihl = 20 + opts.len();
        let mut h = Vec::with_capacity(ihl);
        h.push(0x40 | (ihl / 4) as u8);
        h.push(self.rng.byte() & 0xFC);
        h.extend(((ihl + payload) as u16).to_be_bytes());
        h.extend(self.rng.word().to_be_bytes());
        h.extend(frag.to_be_bytes());
        h.push(self.rng.range(1, 255) as u8);
        h.push(proto);
        h.extend([0, 0]);
        h.extend(octets(src));
        h.extend(octets(dst));
        h.extend(opts);
        set_checksum(&mut h, 10, None, false);
        h
    }

    fn ipv6_header(&mut self, src: IpAddr, dst: IpAddr, next: u8, payload: usize) -> Vec<u8> {
        let mut h = Vec::with_capacity(40);
        h.push(0x60 | (self.rng.byte() & 0x0F));
        h.extend(self.rng.bytes(3));
        h.extend((payload as u16).to_be_bytes());
        h.push(next);
        h.push(self.rng.range(1, 255) as u8);
        h.extend(octets(src));
        h.extend(octets(dst));
        h
    }

    /// A quoted IPv4 packet (its header at the start); the packet travelled towards the
    /// error's source, usually from the error's destination.
    fn quoted_v4(&mut self, err_dst: IpAddr) -> (Vec<u8>, usize, bool) {
        let qsrc = if self.rng.chance(60) {
            err_dst
        } else {
            let c = self.any_class();
            self.addr(c, false)
        };
        let c = self.any_class();
        let qdst = self.addr(c, false);
        let hit = self.translated(qsrc, qdst).is_some();
        let opts = if self.rng.chance(85) {
            vec![]
        } else {
            self.kind("quote with IPv4 options");
            vec![1; 4 * self.rng.range(1, 4)]
        };
        let (proto, seg) = match self.rng.below(4) {
            0 => {
                self.kind("quoting TCP");
                (6, self.tcp(qsrc, qdst))
            }
            1 => {
                self.kind("quoting UDP");
                (17, self.udp(qsrc, qdst, None))
            }
            2 => {
                self.kind("quoting ICMP echo");
                let p = self.payload();
                (1, self.icmp(8, 0, [0, 1, 0, 2], &p))
            }
            _ => {
                self.kind("quoting another protocol");
                let p = self.payload();
                (self.rng.pick(&[47, 50, 132, 33]), p)
            }
        };
        let mut q = self.ipv4_header(qsrc, qdst, proto, &opts, seg.len(), 0x4000);
        q.extend(seg);
        (q, 20 + opts.len(), hit)
    }

    /// How much of a quoted packet of `len` bytes (header `hlen`) an error carries.
    fn quote_cut(&mut self, len: usize, hlen: usize, min: usize) -> usize {
        let n = match self.rng.below(100) {
            0..35 => len,
            35..65 => hlen + 8,
            65..75 => hlen,
            75..92 => self.rng.range(hlen, len),
            _ => self.rng.range(1, min - 1),
        };
        n.min(len)
    }

    /// An IPv4 packet and its facts.
    fn ipv4(&mut self) -> (Vec<u8>, Facts) {
        self.kind("IPv4");
        let (sc, dc) = (self.class(true), self.class(false));
        let (src, dst) = (self.addr(sc, false), self.addr(dc, false));
        let outer_hit = sc == Class::Here || dc == Class::Here;
        let (opts, final_dst, sr_left) = self.v4_options(dst);
        let pseudo_dst = final_dst.unwrap_or(dst);
        let translated = self
            .translated(src, dst)
            .map(|(s, d)| (s, if sr_left { pseudo_dst } else { d }));
        // The transport over the whole datagram.
        let mut quote_hit = false;
        let mut quote_at = None;
        let (proto, seg, min_len, known) = match self.rng.below(100) {
            0..24 => {
                self.kind("TCP");
                (6, self.tcp(src, pseudo_dst), 20, true)
            }
            24..48 => {
                self.kind("UDP");
                (17, self.udp(src, pseudo_dst, translated), 8, true)
            }
            48..58 => {
                self.kind("ICMP echo");
                let p = self.payload();
                let ty = self.rng.pick(&[8, 0]);
                let rest: [u8; 4] = self.rng.bits().to_be_bytes()[..4].try_into().unwrap();
                (1, self.icmp(ty, 0, rest, &p), 0, true)
            }
            58..61 => {
                self.kind("ICMP informational (not echo)");
                let p = self.payload();
                let ty = self.rng.pick(&[13, 14, 9, 10, 42, 43, 200]);
                (1, self.icmp(ty, 0, [0; 4], &p), 0, true)
            }
            61..83 => {
                let ty = self.rng.pick(&[3, 4, 5, 11, 12]);
                self.kind(match ty {
                    3 => "ICMP destination unreachable",
                    4 => "ICMP source quench",
                    5 => "ICMP redirect",
                    11 => "ICMP time exceeded",
                    _ => "ICMP parameter problem",
                });
                let (q, hlen, hit) = self.quoted_v4(src);
                let cut = self.quote_cut(q.len(), hlen, 20);
                if cut < 20 {
                    self.kind("ICMP error quoting less than an IPv4 header");
                }
                quote_hit = hit && cut >= 20;
                quote_at = Some(8);
                let code = self.rng.below(16) as u8;
                let rest: [u8; 4] = self.rng.bits().to_be_bytes()[..4].try_into().unwrap();
                (1, self.icmp(ty, code, rest, &q[..cut]), 28, true)
            }
            83..91 => {
                let p = self.rng.pick(&[4, 41, 47, 59, 132]);
                self.kind(match p {
                    4 => "IP-in-IP",
                    41 => "IPv6-in-IP",
                    47 => "GRE",
                    59 => "no next header",
                    _ => "SCTP",
                });
                (p, self.payload(), 0, true)
            }
            _ => {
                let p = self.rng.pick(&[50, 51, 33, 136, 253, 58, 103]);
                self.kind(match p {
                    50 => "ESP",
                    51 => "AH",
                    33 => "DCCP",
                    136 => "UDP-Lite",
                    58 => "ICMPv6 over IPv4",
                    _ => "another protocol",
                });
                (p, self.payload(), 0, false)
            }
        };
        // Fragments: the first carries the transport header, later ones data.
        let units = seg.len() / 8;
        let (piece, frag, first) = match self.rng.below(100) {
            0..8 if units >= 2 => {
                self.kind("IPv4 first fragment");
                let k = self.rng.range(1, units - 1);
                (seg[..8 * k].to_vec(), 0x2000u16, true)
            }
            8..14 if units >= 3 => {
                self.kind("IPv4 middle fragment");
                let o = self.rng.range(1, units - 2);
                let k = self.rng.range(1, units - 1 - o);
                (seg[8 * o..8 * (o + k)].to_vec(), 0x2000 | o as u16, false)
            }
            14..20 if units >= 2 => {
                self.kind("IPv4 last fragment");
                let o = self.rng.range(1, units - 1);
                (seg[8 * o..].to_vec(), o as u16, false)
            }
            _ => (seg, if self.rng.chance(50) { 0x4000 } else { 0 }, true),
        };
        let translatable = known && !sr_left && (!first || piece.len() >= min_len);
        let quote_only = self.side == Side::Physical
            && !outer_hit
            && !sr_left
            && first
            && quote_hit
            && proto == 1
            && piece.len() >= 28;
        let mut p = self.ipv4_header(src, dst, proto, &opts, piece.len(), frag);
        let l4 = p.len();
        p.extend(piece);
        self.layout.v6 = false;
        self.layout.l4 = Some(l4);
        self.layout.addrs = vec![12, 16];
        self.layout.checksums.push(10);
        if first {
            match proto {
                6 => self.layout.checksums.push(l4 + 16),
                17 => self.layout.checksums.push(l4 + 6),
                1 => self.layout.checksums.push(l4 + 2),
                _ => {}
            }
            if let Some(q) = quote_at.filter(|_| p.len() >= l4 + 28) {
                self.layout.quote = Some(l4 + q);
                self.layout.addrs.extend([l4 + q + 12, l4 + q + 16]);
                self.layout.checksums.push(l4 + q + 10);
            }
        }
        let facts = Facts {
            translatable,
            outer_hit,
            quote_only,
        };
        (p, facts)
    }

    /// An IPv6 extension header (not a fragment header) whose next header is `next`.
    fn ext(&mut self, next: u8, body: &[u8]) -> Vec<u8> {
        let mut h = vec![next, 0];
        h.extend(body);
        while h.len() % 8 != 0 {
            h.push(0);
        }
        h[1] = (h.len() / 8 - 1) as u8;
        h
    }

    /// Options of a hop-by-hop or destination options header: padding, maybe more.
    fn tlv_options(&mut self) -> Vec<u8> {
        match self.rng.below(3) {
            0 => vec![1, 4, 0, 0, 0, 0],
            1 => vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            _ => vec![5, 2, 0, 0, 1, 0],
        }
    }

    /// A chain of `n` extension headers ending in `proto`.
    fn ext_chain(&mut self, proto: u8, n: usize) -> Chain {
        let mut kinds = Vec::new();
        for i in 0..n {
            let k = match self.rng.below(3) {
                0 if i == 0 => 0,
                1 => 43,
                _ => 60,
            };
            kinds.push(k);
        }
        let mut bytes = Vec::new();
        let (mut final_dst, mut home) = (None, None);
        for (i, &k) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(proto);
            let body = match k {
                43 => {
                    let left = if self.rng.chance(50) {
                        0
                    } else {
                        self.rng.range(1, 2) as u8
                    };
                    let n_addr = self.rng.range(1, 2);
                    let mut b = vec![0, left, 0, 0, 0, 0];
                    let mut last = None;
                    for _ in 0..n_addr {
                        let c = self.any_class();
                        let a = self.addr(c, true);
                        b.extend(octets(a));
                        last = Some(a);
                    }
                    if left > 0 {
                        self.kind("IPv6 routing header, segments left");
                        final_dst = last;
                    } else {
                        self.kind("IPv6 routing header, no segment left");
                    }
                    b
                }
                0 => {
                    self.kind("IPv6 hop-by-hop options");
                    self.tlv_options()
                }
                _ if home.is_none() && self.rng.chance(8) => {
                    // Mobile IPv6 (RFC 6275 6.3): the home address option, at 8n+6 after
                    // a PadN; the transport's pseudo-header holds the home address as its
                    // source.
                    self.kind("IPv6 destination options: home address");
                    let c = self.any_class();
                    let a = self.addr(c, true);
                    home = Some(a);
                    let mut b = vec![1, 2, 0, 0, 0xC9, 16];
                    b.extend(octets(a));
                    b
                }
                _ => {
                    self.kind("IPv6 destination options");
                    self.tlv_options()
                }
            };
            let e = self.ext(next, &body);
            bytes.extend(e);
        }
        Chain {
            bytes,
            first: kinds.first().copied().unwrap_or(proto),
            final_dst,
            home,
        }
    }

    /// A quoted IPv6 packet, as [`Self::quoted_v4`].
    fn quoted_v6(&mut self, err_dst: IpAddr) -> (Vec<u8>, usize, bool) {
        let qsrc = if self.rng.chance(60) {
            err_dst
        } else {
            let c = self.any_class();
            self.addr(c, true)
        };
        let c = self.any_class();
        let qdst = self.addr(c, true);
        let hit = self.translated(qsrc, qdst).is_some();
        let n = match self.rng.below(100) {
            0..80 => 0,
            80..95 => self.rng.range(1, 2),
            _ => {
                self.kind("quote behind more than 6 extension headers");
                self.rng.range(7, 8)
            }
        };
        let (proto, kind) = self.rng.pick(&[
            (6, "quoting TCP"),
            (17, "quoting UDP"),
            (58, "quoting ICMPv6 echo"),
        ]);
        self.kind(kind);
        let chain = self.ext_chain(proto, n);
        if n > 0 {
            self.kind("quote with IPv6 extension headers");
        }
        let (next, ext) = (chain.first, chain.bytes);
        let pd = chain.final_dst.unwrap_or(qdst);
        let ps = chain.home.unwrap_or(qsrc);
        let seg = match proto {
            6 => self.tcp(ps, pd),
            17 => self.udp(ps, pd, None),
            _ => {
                let p = self.payload();
                self.icmp6(ps, pd, 128, [0, 1, 0, 2], &p)
            }
        };
        let mut q = self.ipv6_header(qsrc, qdst, next, ext.len() + seg.len());
        q.extend(ext);
        q.extend(seg);
        (q, 40, hit)
    }
}

impl G<'_> {
    /// An IPv6 packet and its facts.
    fn ipv6(&mut self) -> (Vec<u8>, Facts) {
        self.kind("IPv6");
        let (sc, dc) = (self.class(true), self.class(false));
        let (src, dst) = (self.addr(sc, true), self.addr(dc, true));
        let outer_hit = sc == Class::Here || dc == Class::Here;
        let n = match self.rng.below(100) {
            0..55 => 0,
            55..90 => self.rng.range(1, 3),
            90..97 => self.rng.range(4, 6),
            _ => {
                self.kind("more than 6 IPv6 extension headers");
                self.rng.range(7, 8)
            }
        };
        let frag = match self.rng.below(100) {
            0..8 => Some(true),
            8..15 => Some(false),
            _ => None,
        };
        // The routing header's final destination is drawn inside the chain: build the chain
        // first, for the transport's pseudo-header.
        let (proto, known, min_len, nd, error) = match self.rng.below(100) {
            0..22 => (6, true, 20, false, None),
            22..44 => (17, true, 8, false, None),
            44..54 => (58, true, 8, false, Some(self.rng.pick(&[128u8, 129]))),
            54..58 => (
                58,
                true,
                8,
                false,
                Some(self.rng.pick(&[130u8, 131, 132, 143, 138, 200])),
            ),
            58..63 => (58, true, 8, true, Some(self.rng.range(133, 137) as u8)),
            63..85 => (58, true, 48, false, Some(self.rng.range(1, 4) as u8)),
            85..92 => (self.rng.pick(&[4u8, 41, 47, 59, 132]), true, 0, false, None),
            _ => (
                self.rng.pick(&[50u8, 51, 33, 136, 135, 253, 1]),
                false,
                0,
                false,
                None,
            ),
        };
        let chain_end = if frag.is_some() { 44 } else { proto };
        let chain = self.ext_chain(chain_end, n);
        let (ext, first_next, final_dst) = (chain.bytes, chain.first, chain.final_dst);
        let pd = final_dst.unwrap_or(dst);
        // The sender's pseudo-header source: the home address of a home address option.
        let ps = chain.home.unwrap_or(src);
        let translated = self.translated(src, dst).map(|(s, d)| {
            (
                if chain.home.is_some() { ps } else { s },
                if final_dst.is_some() { pd } else { d },
            )
        });
        let mut quote_hit = false;
        let seg = match (proto, error) {
            (6, _) => {
                self.kind("TCP");
                self.tcp(ps, pd)
            }
            (17, _) => {
                self.kind("UDP");
                self.udp(ps, pd, translated)
            }
            (58, Some(ty @ 1..=4)) => {
                self.kind(match ty {
                    1 => "ICMPv6 destination unreachable",
                    2 => "ICMPv6 packet too big",
                    3 => "ICMPv6 time exceeded",
                    _ => "ICMPv6 parameter problem",
                });
                let (q, hlen, hit) = self.quoted_v6(src);
                let cut = self.quote_cut(q.len(), hlen, 40);
                if cut < 40 {
                    self.kind("ICMPv6 error quoting less than an IPv6 header");
                }
                quote_hit = hit && cut >= 40;
                let rest: [u8; 4] = self.rng.bits().to_be_bytes()[..4].try_into().unwrap();
                self.icmp6(ps, pd, ty, rest, &q[..cut])
            }
            (58, Some(ty)) => {
                self.kind(if nd {
                    "ICMPv6 neighbour discovery"
                } else if (128..=129).contains(&ty) {
                    "ICMPv6 echo"
                } else {
                    "ICMPv6 informational (not echo)"
                });
                let p = self.payload();
                let rest: [u8; 4] = self.rng.bits().to_be_bytes()[..4].try_into().unwrap();
                self.icmp6(ps, pd, ty, rest, &p)
            }
            (p, _) => {
                self.kind(match p {
                    4 => "IP-in-IP",
                    41 => "IPv6-in-IP",
                    47 => "GRE",
                    59 => "no next header",
                    132 => "SCTP",
                    50 => "ESP",
                    51 => "AH",
                    33 => "DCCP",
                    136 => "UDP-Lite",
                    135 => "IPv6 mobility header",
                    1 => "ICMP over IPv6",
                    _ => "another protocol",
                });
                self.payload()
            }
        };
        let units = seg.len() / 8;
        let (piece, frag_hdr, first) = match frag {
            Some(true) if units >= 2 => {
                self.kind("IPv6 first fragment");
                let k = self.rng.range(1, units - 1);
                let mut h = vec![proto, 0, 0, 1];
                h.extend(self.rng.bytes(4));
                (seg[..8 * k].to_vec(), h, true)
            }
            Some(false) if units >= 2 => {
                self.kind("IPv6 later fragment");
                let o = self.rng.range(1, units - 1);
                let m = u16::from(self.rng.chance(50));
                let mut h = vec![proto, 0];
                h.extend(((o as u16) << 3 | m).to_be_bytes());
                h.extend(self.rng.bytes(4));
                (seg[8 * o..].to_vec(), h, false)
            }
            Some(_) => {
                // Too short to cut: an atomic fragment (offset 0, no more).
                self.kind("IPv6 atomic fragment");
                let mut h = vec![proto, 0, 0, 0];
                h.extend(self.rng.bytes(4));
                (seg, h, true)
            }
            None => (seg, vec![], true),
        };
        let walked = n + usize::from(frag.is_some());
        // A home address option passes the packet: its pseudo-header holds the home address.
        let translatable = known
            && walked <= 6
            && chain.home.is_none()
            && (!first || (!nd && piece.len() >= min_len));
        let quote_only = self.side == Side::Physical
            && !outer_hit
            && walked == 0
            && quote_hit
            && piece.len() >= 48;
        let payload = ext.len() + frag_hdr.len() + piece.len();
        let mut p = self.ipv6_header(src, dst, first_next, payload);
        p.extend(ext);
        p.extend(frag_hdr);
        let l4 = p.len();
        p.extend(piece);
        self.layout.v6 = true;
        self.layout.l4 = Some(l4);
        self.layout.addrs = vec![8, 24];
        if first {
            match proto {
                6 => self.layout.checksums.push(l4 + 16),
                17 => self.layout.checksums.push(l4 + 6),
                58 => self.layout.checksums.push(l4 + 2),
                _ => {}
            }
            if matches!(error, Some(1..=4)) && p.len() >= l4 + 48 {
                self.layout.quote = Some(l4 + 8);
                self.layout.addrs.extend([l4 + 16, l4 + 32]);
            }
        }
        (
            p,
            Facts {
                translatable,
                outer_hit,
                quote_only,
            },
        )
    }
}

/// A frame that is not IP.
fn not_ip(rng: &mut Rng) -> (u16, Vec<u8>, &'static str) {
    match rng.below(3) {
        0 => {
            let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 0x0A, 10, 0, 0, 10];
            arp.extend([0; 6]);
            arp.extend([10, 0, 0, 20]);
            (0x0806, arp, "ARP")
        }
        1 => (0x88CC, rng.bytes(40), "LLDP"),
        _ => (0x88B5, rng.bytes(46), "unknown EtherType"),
    }
}

/// Generates one frame from `rng`.
pub fn generate(rng: &mut Rng, table: &Table, policy: Policy) -> Generated {
    let side = rng.pick(&[Side::Virtual, Side::Physical]);
    let tags = match rng.below(100) {
        0..72 => 0,
        72..86 => 1,
        86..97 => 2,
        _ => 3,
    };
    let mut g = G {
        rng,
        table,
        side,
        policy,
        kinds: Vec::new(),
        layout: Layout::default(),
    };
    g.kind(match side {
        Side::Virtual => "virtual side",
        Side::Physical => "physical side",
    });
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x0B, 0x02, 0, 0, 0, 0, 0x0A];
    let tpids: Vec<u16> = (0..tags)
        .map(|_| g.rng.pick(&[0x8100u16, 0x88A8]))
        .collect();
    match tags {
        0 => {}
        1 => g.kind("one VLAN tag"),
        2 => g.kind("two VLAN tags"),
        _ => g.kind("three VLAN tags"),
    }
    let family = g.rng.below(100);
    let (ethertype, l3, facts) = match family {
        0..3 => {
            let (et, body, k) = not_ip(g.rng);
            g.kind(k);
            (et, body, None)
        }
        3..52 => {
            let (p, f) = g.ipv4();
            (0x0800, p, Some(f))
        }
        _ => {
            let (p, f) = g.ipv6();
            (0x86DD, p, Some(f))
        }
    };
    for t in &tpids {
        frame.extend(t.to_be_bytes());
        frame.extend((g.rng.word() & 0x0FFF | 1).to_be_bytes());
    }
    frame.extend(ethertype.to_be_bytes());
    let l3_off = frame.len();
    frame.extend(l3);
    if g.rng.chance(8) {
        g.kind("Ethernet padding");
        let n = g.rng.range(1, 40);
        let pad = g.rng.bytes(n);
        frame.extend(pad);
    }
    let expect = match facts {
        _ if tags > 2 => Expect::Pass,
        None => Expect::Pass,
        Some(f) if f.outer_hit => {
            if f.translatable {
                Expect::Translate
            } else {
                Expect::Pass
            }
        }
        Some(f) if f.quote_only => Expect::Translate,
        Some(_) => Expect::Pass,
    };
    let mut layout = g.layout;
    if facts.is_some() {
        layout.l3 = Some(l3_off);
        layout.l4 = layout.l4.map(|o| o + l3_off);
        layout.quote = layout.quote.map(|o| o + l3_off);
        for o in layout.checksums.iter_mut().chain(layout.addrs.iter_mut()) {
            *o += l3_off;
        }
    }
    Generated {
        side,
        frame,
        expect,
        kinds: g.kinds,
        layout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::mutate::mutate;

    /// Frames stay within what BPF_PROG_TEST_RUN takes: from 14 bytes to under a page
    /// less the kernel's head- and tailroom (about 3,500 bytes).
    #[test]
    fn frames_stay_within_test_run_sizes() {
        let table = Table::standard();
        let policy = Policy {
            mapped_virtual_sources: false,
        };
        let (mut min, mut max) = (usize::MAX, 0);
        for i in 0..20_000 {
            let mut rng = Rng::for_packet(3, i);
            let mut g = generate(&mut rng, &table, policy);
            if i % 2 == 0 {
                mutate(&mut rng, &mut g, &table, policy);
            }
            min = min.min(g.frame.len());
            max = max.max(g.frame.len());
        }
        assert!(min >= 14 && max < 3000, "frames of {min} to {max} bytes");
    }

    /// A virtual-side frame's outer source is never a mapped address unless the policy
    /// allows it.
    #[test]
    fn virtual_sources_stay_unmapped() {
        let table = Table::standard();
        let policy = Policy {
            mapped_virtual_sources: false,
        };
        for i in 0..5_000 {
            let mut rng = Rng::for_packet(4, i);
            let mut g = generate(&mut rng, &table, policy);
            mutate(&mut rng, &mut g, &table, policy);
            let (Some(&src), Side::Virtual) = (g.layout.addrs.first(), g.side) else {
                continue;
            };
            let n = if g.layout.v6 { 16 } else { 4 };
            if src + n > g.frame.len() {
                continue;
            }
            let a: IpAddr = if n == 16 {
                <[u8; 16]>::try_from(&g.frame[src..src + n]).unwrap().into()
            } else {
                <[u8; 4]>::try_from(&g.frame[src..src + n]).unwrap().into()
            };
            let mapped = table.maps.iter().any(|&(va, ra)| a == va || a == ra);
            // A flipped byte may still land on a mapped address: only the generator's
            // own choices are held to the policy.
            if !g.kinds.iter().any(|k| k.starts_with("mutated: flipped")) {
                assert!(!mapped, "virtual-side source {a} in {:?}", g.kinds);
            }
        }
    }
}
