//! The mutator: damages a generated frame in the ways real traffic and attackers do —
//! truncations, flipped bytes and lengths, other protocols and fragment fields, added
//! VLAN tags, swapped-in addresses — or merely corrupts a checksum or pads the frame,
//! which the datapath must translate all the same.

use netpage::loader::Side;

use super::{
    frames::{Expect, Generated, Policy},
    rng::Rng,
    table::{Class, Table},
};

/// Applies one to three mutations to `g`, naming each in its kinds. A mutation that leaves
/// the documented expectation in doubt makes it `Either` (the oracle alone then judges).
pub fn mutate(rng: &mut Rng, g: &mut Generated, table: &Table, policy: Policy) {
    let n = rng.range(1, 3);
    for _ in 0..n {
        let keeps = one(rng, g, table, policy);
        if !keeps {
            g.expect = Expect::Either;
        }
    }
}

/// One mutation; whether it keeps the expectation.
fn one(rng: &mut Rng, g: &mut Generated, table: &Table, policy: Policy) -> bool {
    let f = &mut g.frame;
    let l = &g.layout;
    // After a truncation, headers may lie past the frame: those are left alone.
    let fits = |at: usize, n: usize| at + n <= f.len();
    match rng.below(11) {
        0 => {
            g.kinds.push("mutated: truncated");
            let len = rng.range(14, f.len().max(15) - 1);
            f.truncate(len);
            false
        }
        1 => {
            g.kinds.push("mutated: flipped bytes");
            let span = f.len().min(160);
            for _ in 0..rng.range(1, 3) {
                let i = rng.range(12, span - 1);
                f[i] ^= 1 << rng.below(8);
            }
            false
        }
        2 => {
            let Some(l3) = l.l3.filter(|&o| fits(o, 8)) else {
                return true;
            };
            g.kinds.push("mutated: IP length field");
            let at = if l.v6 { l3 + 4 } else { l3 + 2 };
            let v = u16::from_be_bytes([f[at], f[at + 1]]);
            let nv = match rng.below(3) {
                0 => rng.word(),
                1 => v.wrapping_add(rng.range(1, 16) as u16),
                _ => v.wrapping_sub(rng.range(1, 16) as u16),
            };
            f[at..at + 2].copy_from_slice(&nv.to_be_bytes());
            false
        }
        3 => {
            let Some(l3) = l.l3.filter(|&o| fits(o, 1)) else {
                return true;
            };
            if l.v6 {
                g.kinds.push("mutated: IPv6 version");
                f[l3] = (rng.byte() & 0xF0) | (f[l3] & 0x0F);
            } else {
                g.kinds.push("mutated: IPv4 version/IHL");
                f[l3] = rng.byte();
            }
            false
        }
        4 => {
            let Some(l3) = l.l3.filter(|&o| fits(o, 10)) else {
                return true;
            };
            g.kinds.push("mutated: protocol / next header");
            let at = if l.v6 { l3 + 6 } else { l3 + 9 };
            f[at] = rng.pick(&[0, 1, 4, 6, 17, 41, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255]);
            false
        }
        5 => {
            let Some(l3) = l.l3.filter(|&o| !l.v6 && fits(o, 8)) else {
                return true;
            };
            g.kinds.push("mutated: IPv4 fragment field");
            let v = match rng.below(3) {
                0 => rng.word(),
                1 => 0x2000,
                _ => rng.range(1, 8) as u16,
            };
            f[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
            false
        }
        6 => {
            // The datapath never verifies a checksum: a wrong one is translated and stays
            // wrong by the same amount.
            let c: Vec<usize> = l
                .checksums
                .iter()
                .copied()
                .filter(|&at| fits(at, 2))
                .collect();
            if c.is_empty() {
                return true;
            }
            g.kinds.push("mutated: wrong checksum");
            let at = c[rng.below(c.len())];
            let v = if rng.chance(25) { 0 } else { rng.word() };
            f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            true
        }
        7 => {
            g.kinds.push("mutated: Ethernet padding");
            let n = rng.range(1, 64);
            f.extend(rng.bytes(n));
            true
        }
        8 => {
            if l.addrs.is_empty() {
                return true;
            }
            g.kinds.push("mutated: address swapped");
            let i = rng.below(l.addrs.len());
            let at = l.addrs[i];
            // An outer source on the virtual side stays unmapped (see `Policy`).
            let class = if i == 0 && g.side == Side::Virtual && !policy.mapped_virtual_sources {
                Class::Unmapped
            } else {
                rng.pick(&[Class::Here, Class::There, Class::Unmapped])
            };
            let a = table.draw(rng, g.side, class, l.v6);
            let o: Vec<u8> = match a {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            if at + o.len() <= f.len() {
                f[at..at + o.len()].copy_from_slice(&o);
            }
            false
        }
        9 => {
            let Some(l4) = l.l4.filter(|&o| o < f.len()) else {
                return true;
            };
            g.kinds.push("mutated: transport first byte");
            let any = rng.byte();
            f[l4] = rng.pick(&[0, 1, 2, 3, 4, 5, 8, 11, 12, 128, 133, 135, 137, any]);
            false
        }
        _ => {
            g.kinds.push("mutated: VLAN tag inserted");
            let tpid: u16 = rng.pick(&[0x8100, 0x88A8]);
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend((rng.word() & 0x0FFF).to_be_bytes());
            f.splice(12..12, tag);
            let shift = |o: &mut usize| *o += 4;
            let lay = &mut g.layout;
            lay.l3.iter_mut().for_each(shift);
            lay.l4.iter_mut().for_each(shift);
            lay.quote.iter_mut().for_each(shift);
            lay.checksums.iter_mut().for_each(shift);
            lay.addrs.iter_mut().for_each(shift);
            false
        }
    }
}
