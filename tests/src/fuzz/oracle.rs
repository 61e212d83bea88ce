//! The oracle: a reference translation written from the RFCs alone (791, 768, 793, 792,
//! 8200, 4443, 1071), sharing no code with netpage, that says what a frame may become.
//!
//! A frame either must pass untouched (it is malformed, truncated, of a protocol whose
//! checks may cover the addresses, or nothing in it is mapped) or has exactly one
//! translation: the outer source and destination replaced where this side's table maps
//! them, and in an ICMP or ICMPv6 error the quoted source and destination too. Every
//! checksum over the changed bytes is judged by full recomputation: its sum over the
//! output must equal its sum over the input, so that a valid checksum stays valid and a
//! wrong one stays wrong by the same amount. A UDP checksum of 0 (none) stays 0, and a
//! UDP checksum is never made 0.
//!
//! Quote-only translation (the outer addresses unmapped, the quote mapped) is the
//! physical side's alone. On the physical side a packet for a real address that drains
//! (recorded as draining, in R2V, its VA mapped to another real address) with a TTL or hop limit above
//! [`FORWARD_TTL`] is forwarded instead: its destination becomes the current real
//! address, its TTL or hop limit [`FORWARD_TTL`], its source and an ICMP error's quote
//! stay as they are (IPv6: only a packet without extension headers; one with them is
//! translated). The pseudo-header's destination is the final one of a routing
//! header with segments left or of an IPv4 source route with hops left. A packet with a
//! home address option (RFC 6275 6.3: the pseudo-header's source is the home address, not
//! the header's) passes untouched, as netpage documents, and so does one whose destination
//! options netpage does not scan to their end (more than [`DSTOPTS_SCAN`] bytes or
//! [`DSTOPTS_OPTIONS`] options) or that run past their header. Documented relaxations: the
//! transport checksum of a quoted IPv6 packet behind more than [`QUOTED_EXT_WALK`]
//! extension headers, or behind a destination options header of the kinds above, is not
//! judged.

use std::net::IpAddr;

use netpage::loader::Side;

use super::table::Table;

/// Extension headers of a quoted IPv6 packet after which its transport checksum may be
/// left as it is (netpage-common's `MAX_QUOTED_EXT_HEADERS`, restated).
pub const QUOTED_EXT_WALK: usize = 6;

/// The longest destination options header netpage scans for a home address option; a
/// longer one passes (netpage-common's `MAX_DSTOPTS_LEN`, restated).
pub const DSTOPTS_SCAN: usize = 40;
/// The most options netpage scans in one destination options header (netpage-common's
/// `MAX_OPTIONS`, restated).
pub const DSTOPTS_OPTIONS: usize = 8;

/// The TTL or hop limit a forwarded packet leaves with, and above which a packet for a
/// draining real address is forwarded (netpage-common's `FORWARD_TTL`, restated).
pub const FORWARD_TTL: u8 = 32;

const F: u32 = 0xFFFF;

/// Protocols whose integrity checks cover no address, so that rewriting the IP layer
/// alone keeps them valid: IP-in-IP, IPv6-in-IP, GRE (RFC 2784), No Next Header, SCTP
/// (CRC32c, RFC 9260).
const OPAQUE: [u8; 5] = [4, 41, 47, 59, 132];

/// One checksum whose sum the translation must keep.
#[derive(Clone, Debug)]
struct Check {
    /// Offset of the checksum word.
    at: usize,
    /// The bytes it covers (besides the pseudo-header).
    start: usize,
    end: usize,
    /// The pseudo-header's sum before and after.
    pseudo_in: u32,
    pseudo_out: u32,
    udp: bool,
    /// Nesting: quoted checksums are finished before the ICMP checksum over them.
    depth: u8,
    name: &'static str,
}

/// The one translation of a frame.
#[derive(Clone, Debug)]
pub struct Translation {
    /// The expected output, with every checksum at its canonical value.
    pub bytes: Vec<u8>,
    checks: Vec<Check>,
    /// Checksum words the oracle does not judge (documented relaxations).
    free: Vec<usize>,
    /// Named address fields, for messages.
    names: Vec<(usize, usize, &'static str)>,
    /// Whether only the quote changed.
    pub quote_only: bool,
    /// Whether the packet was forwarded to a draining address's current one.
    pub forwarded: bool,
}

/// What the oracle says of a frame: its translation, or why it must pass untouched.
pub type Expected = Result<Translation, &'static str>;

/// What a judged output was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    Untouched,
    Translated,
}

/// Ones'-complement sum of `b` as big-endian words (a trailing byte padded with zero),
/// not folded.
fn sum(b: &[u8]) -> u32 {
    let mut s: u32 = 0;
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u32::from(*last) << 8;
    }
    s
}

/// `s` modulo 0xFFFF: ones'-complement sums that are equal (0 and 0xFFFF alike) are equal
/// here.
fn modf(s: u64) -> u32 {
    (s % u64::from(F)) as u32
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn addr(b: &[u8], at: usize, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(<[u8; 16]>::try_from(&b[at..at + 16]).unwrap())
    } else {
        IpAddr::from(<[u8; 4]>::try_from(&b[at..at + 4]).unwrap())
    }
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The sum of a pseudo-header (RFC 768, RFC 8200 8.1).
fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut s = sum(&octets(src)) + sum(&octets(dst)) + u32::from(proto);
    s += (len as u32 & 0xFFFF) + (len as u32 >> 16);
    s
}

/// The translation under way.
struct Cx<'a> {
    table: &'a Table,
    side: Side,
    input: &'a [u8],
    t: Translation,
}

impl Cx<'_> {
    /// Looks up the address pair at `src`/`dst` and writes what maps; returns the old and
    /// new addresses, or `None` if neither maps.
    fn pair(
        &mut self,
        src: usize,
        dst: usize,
        v6: bool,
        names: [&'static str; 2],
    ) -> Option<[IpAddr; 4]> {
        let (s, d) = (addr(self.input, src, v6), addr(self.input, dst, v6));
        let (ns, nd) = (
            self.table.lookup(self.side, s),
            self.table.lookup(self.side, d),
        );
        if ns.is_none() && nd.is_none() {
            return None;
        }
        let (ns, nd) = (ns.unwrap_or(s), nd.unwrap_or(d));
        let n = if v6 { 16 } else { 4 };
        self.t.bytes[src..src + n].copy_from_slice(&octets(ns));
        self.t.bytes[dst..dst + n].copy_from_slice(&octets(nd));
        self.t.names.push((src, n, names[0]));
        self.t.names.push((dst, n, names[1]));
        Some([s, d, ns, nd])
    }

    /// Physical side: if the packet whose addresses are at `src`/`dst` and whose TTL or
    /// hop limit is at `ttl` is for a real address that drains, forwards it (the
    /// destination and the TTL written); returns the old and new addresses as
    /// [`Cx::pair`] does, the source unchanged.
    fn forward(&mut self, src: usize, dst: usize, ttl: usize, v6: bool) -> Option<[IpAddr; 4]> {
        if self.side != Side::Physical || self.input[ttl] <= FORWARD_TTL {
            return None;
        }
        let (s, d) = (addr(self.input, src, v6), addr(self.input, dst, v6));
        if !self.table.draining(d) {
            return None;
        }
        let va = self.table.lookup(Side::Physical, d)?;
        let current = self.table.current(va)?;
        if current == d {
            return None;
        }
        let n = if v6 { 16 } else { 4 };
        self.t.bytes[dst..dst + n].copy_from_slice(&octets(current));
        self.t.bytes[ttl] = FORWARD_TTL;
        self.t.names.push((dst, n, "forwarded destination"));
        self.t.names.push((ttl, 1, "forwarded TTL"));
        self.t.forwarded = true;
        Some([s, d, s, current])
    }

    #[expect(clippy::too_many_arguments, reason = "a checksum names all it covers")]
    fn check(
        &mut self,
        name: &'static str,
        at: usize,
        start: usize,
        end: usize,
        pseudo: Option<(u32, u32)>,
        udp: bool,
        depth: u8,
    ) {
        let (pseudo_in, pseudo_out) = pseudo.unwrap_or((0, 0));
        self.t.checks.push(Check {
            at,
            start,
            end,
            pseudo_in,
            pseudo_out,
            udp,
            depth,
            name,
        });
    }
}

/// What the oracle expects of `input` arriving on `side`, with `table` installed.
pub fn expect(table: &Table, side: Side, input: &[u8]) -> Expected {
    if input.len() < 14 {
        return Err("shorter than an Ethernet header");
    }
    let mut cx = Cx {
        table,
        side,
        input,
        t: Translation {
            bytes: input.to_vec(),
            checks: Vec::new(),
            free: Vec::new(),
            names: Vec::new(),
            quote_only: false,
            forwarded: false,
        },
    };
    let mut off = 12;
    let mut tags = 0;
    loop {
        let et = be16(input, off);
        if et == 0x8100 || et == 0x88A8 {
            tags += 1;
            off += 4;
            if tags > 4 || off + 2 > input.len() {
                return Err("VLAN tags without end");
            }
            continue;
        }
        match et {
            0x0800 => ipv4(&mut cx, off + 2)?,
            0x86DD => ipv6(&mut cx, off + 2)?,
            _ => return Err("not IP"),
        }
        break;
    }
    finish(&mut cx.t, input);
    Ok(cx.t)
}

/// Sets every checksum to its canonical value: the one whose full sum over the output
/// equals the sum over the input, innermost first.
fn finish(t: &mut Translation, input: &[u8]) {
    let mut checks = t.checks.clone();
    checks.sort_by_key(|c| std::cmp::Reverse(c.depth));
    for c in &checks {
        let s_in = modf(u64::from(c.pseudo_in) + u64::from(sum(&input[c.start..c.end])));
        t.bytes[c.at..c.at + 2].copy_from_slice(&[0, 0]);
        let t_out = modf(u64::from(c.pseudo_out) + u64::from(sum(&t.bytes[c.start..c.end])));
        let mut v = ((s_in + F - t_out) % F) as u16;
        if c.udp {
            if be16(input, c.at) == 0 {
                v = 0;
            } else if v == 0 {
                v = 0xFFFF;
            }
        }
        t.bytes[c.at..c.at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Walks IPv4 options (RFC 791 3.1): whether a loose or strict source route still has
/// hops to visit (the pseudo-header then holds the final destination, not the header's).
fn v4_options(o: &[u8]) -> Result<bool, &'static str> {
    let (mut i, mut hidden) = (0, false);
    while i < o.len() {
        match o[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(*o.get(i + 1).ok_or("an IPv4 option cut after its type")?);
                if len < 2 || i + len > o.len() {
                    return Err("an IPv4 option of a wrong length");
                }
                if kind == 131 || kind == 137 {
                    if len < 3 {
                        return Err("a source route without pointer");
                    }
                    let ptr = usize::from(o[i + 2]);
                    if ptr < 4 {
                        return Err("a source route pointer below 4");
                    }
                    hidden |= ptr <= len;
                }
                i += len;
            }
        }
    }
    Ok(hidden)
}

fn ipv4(cx: &mut Cx, l3: usize) -> Result<(), &'static str> {
    let f = cx.input;
    let h = f.get(l3..l3 + 20).ok_or("IPv4 header cut")?;
    if h[0] >> 4 != 4 {
        return Err("IPv4 EtherType, another version");
    }
    let ihl = usize::from(h[0] & 15) * 4;
    if ihl < 20 {
        return Err("IHL below 5");
    }
    let total = usize::from(be16(h, 2));
    if total < ihl {
        return Err("total length below the header length");
    }
    let end = l3 + total;
    if end > f.len() {
        return Err("IPv4 packet longer than the frame");
    }
    // Malformed options pass the packet whatever is mapped, its quote included. A source
    // route with hops left hides the destination of the outer transport's pseudo-header;
    // netpage passes such a packet, and an ICMP error with one on a miss too (its walk
    // stops at the route, before any malformed option behind it).
    let dst_hidden = v4_options(&f[l3 + 20..l3 + ihl])?;
    let miss = [12, 16]
        .iter()
        .all(|&o| cx.table.lookup(cx.side, addr(f, l3 + o, false)).is_none());
    if dst_hidden && miss {
        return Err("a source route with hops left");
    }
    let first = be16(h, 6) & 0x1FFF == 0;
    let proto = h[9];
    let l4 = l3 + ihl;
    // The transport checksum over a pseudo-header (offset, UDP), if any.
    let transport = match proto {
        6 if first => Some((16, false)),
        17 if first => Some((6, true)),
        6 | 17 | 1 => None,
        p if OPAQUE.contains(&p) => None,
        _ => return Err("a protocol whose checks may cover the addresses"),
    };
    let outer = cx.forward(l3 + 12, l3 + 16, l3 + 8, false).or_else(|| {
        cx.pair(
            l3 + 12,
            l3 + 16,
            false,
            ["outer IPv4 source", "outer IPv4 destination"],
        )
    });
    if let Some([s, d, ns, nd]) = outer {
        cx.check(
            "IPv4 header checksum",
            l3 + 10,
            l3,
            l3 + ihl,
            None,
            false,
            0,
        );
        if let Some((o, udp)) = transport {
            if l4 + o + 2 > end {
                return Err("transport checksum not in the packet");
            }
            let len = end - l4;
            let (pd_in, pd_out) = if dst_hidden { (d, d) } else { (d, nd) };
            let ps = (pseudo(s, pd_in, proto, len), pseudo(ns, pd_out, proto, len));
            let name = if udp { "UDP checksum" } else { "TCP checksum" };
            cx.check(name, l4 + o, l4, end, Some(ps), udp, 1);
        }
    }
    let mut quoted = false;
    if proto == 1 && first && l4 + 4 <= end {
        cx.check("ICMP checksum", l4 + 2, l4, end, None, false, 1);
        if matches!(f[l4], 3 | 4 | 5 | 11 | 12) && l4 + 8 <= end && !cx.t.forwarded {
            quoted = quote4(cx, l4 + 8, end);
        }
    }
    quote_only(cx, outer.is_none(), quoted)
}

/// The verdict on a packet after its quote was judged: with no outer address in the table
/// (`missed`), it translates only as a physical-side ICMP error whose quote maps.
fn quote_only(cx: &mut Cx, missed: bool, quoted: bool) -> Result<(), &'static str> {
    if missed {
        if !quoted {
            return Err("no address in the table");
        }
        if cx.side == Side::Virtual {
            return Err("quote-only translation is the physical side's");
        }
        cx.t.quote_only = true;
    }
    Ok(())
}

/// Translates the IPv4 header quoted at `q` (the quote ends at `end`); whether it maps.
fn quote4(cx: &mut Cx, q: usize, end: usize) -> bool {
    let f = cx.input;
    if q + 20 > end || f[q] >> 4 != 4 || f[q] & 15 < 5 {
        return false;
    }
    let ihl = usize::from(f[q] & 15) * 4;
    let Some([s, d, ns, nd]) = cx.pair(
        q + 12,
        q + 16,
        false,
        ["quoted IPv4 source", "quoted IPv4 destination"],
    ) else {
        return false;
    };
    let hend = (q + ihl).min(end);
    cx.check(
        "quoted IPv4 header checksum",
        q + 10,
        q,
        hend,
        None,
        false,
        2,
    );
    let (proto, first, ql4) = (f[q + 9], be16(f, q + 6) & 0x1FFF == 0, q + ihl);
    let o = match proto {
        6 => 16,
        17 => 6,
        _ => return true,
    };
    if !first || ql4 + o + 2 > end {
        return true;
    }
    match v4_options(&f[q + 20..hend]) {
        Ok(hidden) => {
            let len = end - ql4;
            let (pd_in, pd_out) = if hidden { (d, d) } else { (d, nd) };
            let ps = (pseudo(s, pd_in, proto, len), pseudo(ns, pd_out, proto, len));
            cx.check(
                "quoted transport checksum",
                ql4 + o,
                ql4,
                end,
                Some(ps),
                proto == 17,
                2,
            );
        }
        Err(_) => cx.t.free.push(ql4 + o),
    }
    true
}

/// Where an IPv6 walk over extension headers (RFC 8200 4) ended.
struct Walk {
    off: usize,
    proto: u8,
    first: bool,
    /// A routing header with segments left: the pseudo-header holds the final destination.
    dst_hidden: bool,
    /// Why netpage passes the packet for its destination options (a home address option,
    /// say), if it does.
    dst_opts: Option<&'static str>,
    headers: usize,
}

/// Walks the options of a destination options header `h` (RFC 8200 4.2): whether one is
/// a home address option (type 201, RFC 6275 6.3).
fn home_address(h: &[u8]) -> Result<bool, &'static str> {
    let mut i = 2;
    for _ in 0..DSTOPTS_OPTIONS {
        if i >= h.len() {
            return Ok(false);
        }
        if h[i] == 0 {
            i += 1; // Pad1
            continue;
        }
        let len = usize::from(*h.get(i + 1).ok_or("an IPv6 option cut after its type")?);
        if i + 2 + len > h.len() {
            return Err("an IPv6 option running past its header");
        }
        if h[i] == 0xC9 {
            return Ok(true);
        }
        i += 2 + len;
    }
    if i < h.len() {
        return Err("more destination options than netpage scans");
    }
    Ok(false)
}

fn walk6(f: &[u8], mut off: usize, mut nh: u8, end: usize) -> Result<Walk, &'static str> {
    let (mut first, mut dst_hidden, mut headers) = (true, false, 0);
    let mut dst_opts = None;
    while matches!(nh, 0 | 43 | 44 | 60) {
        if off + 8 > end {
            return Err("an extension header past the packet");
        }
        headers += 1;
        let next = f[off];
        if nh == 44 {
            if be16(f, off + 2) & 0xFFF8 != 0 {
                // A later fragment: what follows is data, not headers.
                first = false;
                off += 8;
                nh = next;
                break;
            }
            off += 8;
        } else {
            if nh == 43 && f[off + 3] != 0 {
                dst_hidden = true;
            }
            let len = (usize::from(f[off + 1]) + 1) * 8;
            if off + len > end {
                return Err("an extension header past the packet");
            }
            if nh == 60 && dst_opts.is_none() {
                dst_opts = if len > DSTOPTS_SCAN {
                    Some("a destination options header longer than netpage scans")
                } else {
                    match home_address(&f[off..off + len]) {
                        Ok(true) => Some("a home address option, the pseudo-header's source"),
                        Ok(false) => None,
                        Err(e) => Some(e),
                    }
                };
            }
            off += len;
        }
        nh = next;
    }
    Ok(Walk {
        off,
        proto: nh,
        first,
        dst_hidden,
        dst_opts,
        headers,
    })
}

fn ipv6(cx: &mut Cx, l3: usize) -> Result<(), &'static str> {
    let f = cx.input;
    let h = f.get(l3..l3 + 40).ok_or("IPv6 header cut")?;
    if h[0] >> 4 != 6 {
        return Err("IPv6 EtherType, another version");
    }
    let end = l3 + 40 + usize::from(be16(h, 4));
    if end > f.len() {
        return Err("IPv6 packet longer than the frame");
    }
    let w = walk6(f, l3 + 40, h[6], end)?;
    if let Some(why) = w.dst_opts {
        return Err(why);
    }
    let l4 = w.off;
    let transport = match w.proto {
        6 if w.first => Some((16, false)),
        17 if w.first => Some((6, true)),
        58 if w.first => {
            if l4 + 4 > end {
                return Err("ICMPv6 checksum not in the packet");
            }
            if (133..=137).contains(&f[l4]) {
                return Err("neighbour discovery belongs to the link");
            }
            Some((2, false))
        }
        6 | 17 | 58 => None,
        p if OPAQUE.contains(&p) => None,
        // A later fragment whose fragment header names an extension header: the protocol
        // is in the first fragment alone (commonly TCP or UDP behind destination options),
        // and the later one is translated at the IP layer.
        0 | 43 | 44 | 60 if !w.first => None,
        _ => return Err("a protocol whose checks may cover the addresses"),
    };
    let (s, d) = (addr(f, l3 + 8, true), addr(f, l3 + 24, true));
    let forwarded = if matches!(h[6], 0 | 43 | 44 | 60) {
        None
    } else {
        cx.forward(l3 + 8, l3 + 24, l3 + 7, true)
    };
    let outer = forwarded.or_else(|| {
        cx.pair(
            l3 + 8,
            l3 + 24,
            true,
            ["outer IPv6 source", "outer IPv6 destination"],
        )
    });
    let [_, _, ns, nd] = outer.unwrap_or([s, d, s, d]);
    if let Some((o, udp)) = transport {
        if l4 + o + 2 > end {
            if outer.is_some() {
                return Err("transport checksum not in the packet");
            }
        } else {
            let len = end - l4;
            let (pd_in, pd_out) = if w.dst_hidden { (d, d) } else { (d, nd) };
            let ps = (
                pseudo(s, pd_in, w.proto, len),
                pseudo(ns, pd_out, w.proto, len),
            );
            let name = match w.proto {
                6 => "TCP checksum",
                17 => "UDP checksum",
                _ => "ICMPv6 checksum",
            };
            cx.check(name, l4 + o, l4, end, Some(ps), udp, 1);
        }
    }
    let mut quoted = false;
    if w.proto == 58 && w.first && (1..=4).contains(&f[l4]) && l4 + 8 <= end && !cx.t.forwarded {
        quoted = quote6(cx, l4 + 8, end);
    }
    quote_only(cx, outer.is_none(), quoted)
}

/// Translates the IPv6 header quoted at `q` (the quote ends at `end`); whether it maps.
fn quote6(cx: &mut Cx, q: usize, end: usize) -> bool {
    let f = cx.input;
    if q + 40 > end || f[q] >> 4 != 6 {
        return false;
    }
    let Some([s, d, ns, nd]) = cx.pair(
        q + 8,
        q + 24,
        true,
        ["quoted IPv6 source", "quoted IPv6 destination"],
    ) else {
        return false;
    };
    let Ok(w) = walk6(f, q + 40, f[q + 6], end) else {
        return true;
    };
    let o = match w.proto {
        6 => 16,
        17 => 6,
        58 => 2,
        _ => return true,
    };
    if !w.first || w.off + o + 2 > end {
        return true;
    }
    if w.headers > QUOTED_EXT_WALK || w.dst_opts.is_some() {
        cx.t.free.push(w.off + o);
        return true;
    }
    let len = end - w.off;
    let (pd_in, pd_out) = if w.dst_hidden { (d, d) } else { (d, nd) };
    let ps = (
        pseudo(s, pd_in, w.proto, len),
        pseudo(ns, pd_out, w.proto, len),
    );
    cx.check(
        "quoted transport checksum",
        w.off + o,
        w.off,
        end,
        Some(ps),
        w.proto == 17,
        2,
    );
    true
}

/// Judges the output of a run against what the oracle expects: untouched, or the one
/// translation with every judged checksum's sum kept. The error describes the first
/// difference.
pub fn judge(input: &[u8], expected: &Expected, output: &[u8]) -> Result<Judged, String> {
    if output == input {
        return Ok(Judged::Untouched);
    }
    let t = match expected {
        Err(why) => return Err(format!("changed a frame that must pass untouched ({why})")),
        Ok(t) => t,
    };
    if output.len() != input.len() {
        return Err(format!(
            "changed the frame's length from {} to {}",
            input.len(),
            output.len()
        ));
    }
    let in_word = |at: usize, i: usize| i == at || i == at + 1;
    for (i, (&o, &e)) in output.iter().zip(&t.bytes).enumerate() {
        let judged_elsewhere =
            t.checks.iter().any(|c| in_word(c.at, i)) || t.free.iter().any(|&at| in_word(at, i));
        if o != e && !judged_elsewhere {
            return Err(format!(
                "byte {i} ({}) is {o:#04x}, expected {e:#04x}",
                field_name(t, i)
            ));
        }
    }
    for c in &t.checks {
        let s_in = modf(u64::from(c.pseudo_in) + u64::from(sum(&input[c.start..c.end])));
        let s_out = modf(u64::from(c.pseudo_out) + u64::from(sum(&output[c.start..c.end])));
        let (was, now) = (be16(input, c.at), be16(output, c.at));
        if c.udp && was == 0 && now != 0 {
            return Err(format!(
                "{} at byte {}: 0 (none) became {now:#06x}",
                c.name, c.at
            ));
        }
        if c.udp && was != 0 && now == 0 {
            return Err(format!(
                "{} at byte {}: {was:#06x} became 0 (none), expected {:#06x}",
                c.name,
                c.at,
                be16(&t.bytes, c.at)
            ));
        }
        if !(c.udp && was == 0) && s_in != s_out {
            return Err(format!(
                "{} at byte {}: {now:#06x}, expected {:#06x} (input {was:#06x}; sums {s_in:#06x} in, {s_out:#06x} out)",
                c.name,
                c.at,
                be16(&t.bytes, c.at)
            ));
        }
    }
    Ok(Judged::Translated)
}

fn field_name(t: &Translation, i: usize) -> &'static str {
    t.names
        .iter()
        .find(|&&(at, n, _)| (at..at + n).contains(&i))
        .map_or("not an address", |n| n.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fuzz::{
            frames::{Expect, Policy, generate},
            rng::Rng,
        },
        verify,
    };

    /// Unmutated frames the documentation says translate, and their oracle translations.
    fn translations(n: u64) -> Vec<(Vec<u8>, Translation, Vec<&'static str>)> {
        let table = Table::standard();
        let policy = Policy {
            mapped_virtual_sources: true,
        };
        (0..n)
            .filter_map(|i| {
                let g = generate(&mut Rng::for_packet(99, i), &table, policy);
                if g.expect != Expect::Translate {
                    return None;
                }
                let t = expect(&table, g.side, &g.frame).expect("a translation");
                Some((g.frame, t, g.kinds))
            })
            .collect()
    }

    /// The oracle's translations verify under the tests' other independent checksum walk
    /// (where that walk applies: it takes a UDP checksum of 0 over IPv6 for a wrong one,
    /// an IPv6 first fragment for a whole packet, and knows no home address option).
    #[test]
    fn translations_verify_independently() {
        let mut verified = 0;
        for (input, t, kinds) in translations(4000) {
            assert_ne!(input, t.bytes);
            let other_walk_cannot = [
                "UDP checksum 0 (none)",
                "IPv6 first fragment",
                "IPv6 destination options: home address",
            ];
            if other_walk_cannot.iter().any(|k| kinds.contains(k)) {
                continue;
            }
            let v = verify::frame(&t.bytes)
                .unwrap_or_else(|e| panic!("{e} in {kinds:?}: {:02x?}", t.bytes));
            verified += v.ip_headers + v.transport;
            assert_eq!(
                judge(&input, &Ok(t.clone()), &t.bytes),
                Ok(Judged::Translated)
            );
            assert_eq!(judge(&input, &Ok(t), &input), Ok(Judged::Untouched));
        }
        assert!(verified > 1000, "only {verified} checksums verified");
    }

    /// Packets for a draining real address are forwarded: the destination becomes the
    /// VM's current real address and the TTL or hop limit [`FORWARD_TTL`]; the source
    /// stays.
    #[test]
    fn forwards_packets_for_a_draining_address() {
        let table = Table::standard();
        let mut forwarded = 0;
        for (input, t, _) in translations(4000) {
            if !t.forwarded {
                continue;
            }
            forwarded += 1;
            let names = |what| t.names.iter().filter(move |n| n.2 == what);
            for &(at, n, _) in names("forwarded destination") {
                let new = addr(&t.bytes, at, n == 16);
                let old = addr(&input, at, n == 16);
                let va = table
                    .lookup(Side::Physical, old)
                    .expect("a draining address");
                assert_eq!(table.current(va), Some(new));
                assert_ne!(old, new);
            }
            for &(at, _, _) in names("forwarded TTL") {
                assert!(input[at] > FORWARD_TTL);
                assert_eq!(t.bytes[at], FORWARD_TTL);
            }
            assert!(names("outer IPv4 source").next().is_none());
        }
        assert!(forwarded > 20, "only {forwarded} forwarded");
    }

    /// Every changed byte of a translation, changed once more, is caught: an address, a
    /// checksum off by one, a byte elsewhere.
    #[test]
    fn judge_catches_every_wrong_byte() {
        let mut caught = 0;
        for (input, t, kinds) in translations(600) {
            for i in 0..input.len() {
                let mut bad = t.bytes.clone();
                bad[i] ^= 0x01;
                // A checksum word may hold 0 or 0xFFFF alike; flipping bit 0 of it never
                // gives the other form.
                let r = judge(&input, &Ok(t.clone()), &bad);
                assert!(
                    r.is_err() || bad == input,
                    "byte {i} flipped was accepted ({kinds:?}): {r:?}"
                );
                caught += 1;
            }
        }
        assert!(caught > 10_000);
    }

    /// A frame the oracle says must pass may not change at all.
    #[test]
    fn must_pass_frames_may_not_change() {
        let table = Table::standard();
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x0B, 0x02, 0, 0, 0, 0, 0x0A, 0x08, 0x06];
        frame.extend([0; 28]);
        let e = expect(&table, Side::Virtual, &frame);
        assert_eq!(e.as_ref().err(), Some(&"not IP"));
        let mut changed = frame.clone();
        changed[20] = 1;
        assert!(judge(&frame, &e, &changed).is_err());
        assert_eq!(judge(&frame, &e, &frame), Ok(Judged::Untouched));
    }

    #[test]
    fn udp_zero_rules() {
        let table = Table::standard();
        let (frame, t, _) = translations(3000)
            .into_iter()
            .find(|(_, _, k)| k.contains(&"UDP checksum computing to 0 once translated"))
            .expect("a UDP checksum computing to 0 once translated");
        let at = t.checks.iter().find(|c| c.udp).expect("a UDP check").at;
        assert_eq!(be16(&t.bytes, at), 0xFFFF, "a computed 0 is sent as 0xFFFF");
        let mut zero = t.bytes.clone();
        zero[at..at + 2].copy_from_slice(&[0, 0]);
        assert!(judge(&frame, &Ok(t), &zero).is_err());
        let _ = table;
    }
}
