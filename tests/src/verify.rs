//! Independent checksum verification of frames that leave the datapath.
//!
//! Written from RFC 791, 768, 793, 792 and 4443 alone, sharing no code with netpage, so that
//! a wrong incremental update in the program cannot hide behind the same wrong arithmetic.

use std::net::IpAddr;

/// RFC 1071 sum of `parts`, concatenated, folded to 16 bits (not complemented).
pub fn sum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut s: u64 = bytes
        .chunks(2)
        .map(|c| (u64::from(c[0]) << 8) | u64::from(*c.get(1).unwrap_or(&0)))
        .sum();
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// Whether data that includes its checksum sums to all ones (a valid Internet checksum).
pub fn valid(parts: &[&[u8]]) -> bool {
    sum(parts) == 0xFFFF
}

/// The pseudo-header of a transport checksum (RFC 768 / RFC 8200 8.1).
pub fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend([0, proto]);
            p.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend(s.octets());
            p.extend(d.octets());
            p.extend((len as u32).to_be_bytes());
            p.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed families in a pseudo-header"),
    }
    p
}

/// What a frame's checksums verified as.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// IPv4 header checksums checked (outer and quoted).
    pub ip_headers: usize,
    /// Transport checksums checked over a complete segment.
    pub transport: usize,
}

/// Verifies every checksum of an Ethernet frame that can be verified from its bytes: the
/// IPv4 header, and the transport checksum of an unfragmented TCP, UDP (unless 0 over
/// IPv4), ICMP or ICMPv6 packet without extension headers. Quoted IPv4 headers inside ICMP
/// errors are verified too. Returns the first wrong checksum as an error.
pub fn frame(f: &[u8]) -> Result<Verified, String> {
    let mut v = Verified::default();
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    while ethertype == 0x8100 || ethertype == 0x88A8 {
        off += 4;
        ethertype = u16::from_be_bytes([f[off], f[off + 1]]);
    }
    let l3 = off + 2;
    match ethertype {
        0x0800 => ipv4(&f[l3..], &mut v, true)?,
        0x86DD => ipv6(&f[l3..], &mut v)?,
        _ => {}
    }
    Ok(v)
}

fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("wrong {what}"))
    }
}

fn ipv4(p: &[u8], v: &mut Verified, outer: bool) -> Result<(), String> {
    let ihl = usize::from(p[0] & 0xF) * 4;
    ensure(
        valid(&[&p[..ihl]]),
        if outer {
            "IPv4 header checksum"
        } else {
            "quoted IPv4 header checksum"
        },
    )?;
    v.ip_headers += 1;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if !outer || frag & 0x3FFF != 0 {
        return Ok(()); // a quote or a fragment: no complete segment to verify
    }
    let src = IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).unwrap());
    let dst = IpAddr::from(<[u8; 4]>::try_from(&p[16..20]).unwrap());
    let seg = &p[ihl..total];
    match p[9] {
        6 => transport(src, dst, 6, seg, v),
        17 if u16::from_be_bytes([seg[6], seg[7]]) != 0 => transport(src, dst, 17, seg, v),
        1 => {
            ensure(valid(&[seg]), "ICMP checksum")?;
            v.transport += 1;
            // Unreachable, source quench, redirect, time exceeded, parameter problem quote
            // the offending header (RFC 792).
            if matches!(seg[0], 3 | 4 | 5 | 11 | 12) && seg.len() >= 28 {
                ipv4(&seg[8..], v, false)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn ipv6(p: &[u8], v: &mut Verified) -> Result<(), String> {
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let src = IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap());
    let mut dst = IpAddr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap());
    let (mut next, mut off) = (p[6], 40);
    // Hop-by-hop, routing, destination options, fragment (RFC 8200 4.3-4.6).
    while matches!(next, 0 | 43 | 44 | 60) && off + 8 <= 40 + len {
        let h = &p[off..];
        match next {
            44 if u16::from_be_bytes([h[2], h[3]]) & 0xFFF8 != 0 => return Ok(()), // non-first fragment
            // Type 0 layout: with segments left, the pseudo-header holds the last address.
            43 if h[3] != 0 => {
                let n = usize::from(h[1]) * 8 + 8;
                dst = IpAddr::from(<[u8; 16]>::try_from(&h[n - 16..n]).unwrap());
            }
            _ => {}
        }
        off += if next == 44 {
            8
        } else {
            (usize::from(h[1]) + 1) * 8
        };
        next = h[0];
    }
    if matches!(next, 6 | 17 | 58) && off <= 40 + len {
        transport(src, dst, next, &p[off..40 + len], v)?;
    }
    Ok(())
}

fn transport(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    seg: &[u8],
    v: &mut Verified,
) -> Result<(), String> {
    let ph = pseudo(src, dst, proto, seg.len());
    ensure(
        valid(&[&ph, seg]),
        &format!("transport checksum of protocol {proto}"),
    )?;
    v.transport += 1;
    Ok(())
}
