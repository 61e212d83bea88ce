//! IPv6 destination options (RFC 8200 4.2, 4.6): the scan that finds a Mobile IPv6 home
//! address option (RFC 6275 6.3).
//!
//! A mobile node away from home sends from its care-of address and carries its home
//! address in a home address option of a destination options header. Its transport
//! checksum is over the home address (the receiver swaps the two before the transport sees
//! the packet, RFC 6275 9.3.1), not over the header's source that a translation rewrites,
//! and the option's address is not one netpage translates. Such a packet is passed
//! untouched (as an IPv4 source route or an IPv6 routing header with segments left keeps
//! the final destination out of reach).
//!
//! The XDP program [`walk`]s a destination options header of at most [`MAX_DSTOPTS_LEN`]
//! bytes and [`MAX_OPTIONS`] options, reading each option's type and length from the
//! packet. A longer header, or one with more options, is not scanned to its end, and the
//! packet is passed untouched rather than translated blindly.

/// The longest destination options header scanned (Hdr Ext Len 4): room for a home address
/// option (18 bytes at 8n+6) and a few others.
pub const MAX_DSTOPTS_LEN: usize = 40;
/// The most options (Pad1 included) scanned in one header.
pub const MAX_OPTIONS: usize = 8;
/// Pad1: one byte of padding, without length.
pub const OPT_PAD1: u8 = 0;
/// The home address option (RFC 6275 6.3).
pub const OPT_HOME_ADDRESS: u8 = 0xC9;

/// What a destination options header means for a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DstOptions {
    /// No option keeps the header's source out of the pseudo-header.
    Translatable,
    /// A home address option: passed untouched.
    HomeAddress,
    /// Longer than [`MAX_DSTOPTS_LEN`], or more than [`MAX_OPTIONS`] options: not scanned
    /// to its end, passed untouched.
    TooLong,
    /// An option running past the header (or cut after its type): the walk cannot tell
    /// what follows, so the packet is passed untouched (the receiver drops it).
    Malformed,
}

/// What one option says, and where the next one starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Another option follows this many bytes on.
    Next(usize),
    HomeAddress,
    Malformed,
}

/// The length in bytes of a destination options header with this Hdr Ext Len, if the walk
/// scans it.
pub const fn header_len(hdr_ext_len: u8) -> Option<usize> {
    let len = (hdr_ext_len as usize + 1) * 8;
    if len > MAX_DSTOPTS_LEN {
        None
    } else {
        Some(len)
    }
}

/// Judges the option whose first bytes are `kind` and `len`, with `left` bytes of the
/// header from its start. A length byte past the header may hold anything: the option is
/// malformed whatever it holds.
pub const fn option(kind: u8, len: u8, left: usize) -> Step {
    if kind == OPT_PAD1 {
        return Step::Next(1);
    }
    let n = 2 + len as usize;
    if n > left {
        Step::Malformed
    } else if kind == OPT_HOME_ADDRESS {
        Step::HomeAddress
    } else {
        Step::Next(n)
    }
}

/// Walks the options of a destination options header of `len` bytes (from
/// [`header_len`]); `read(i)` returns the two bytes at offset `i` of the header (the bytes
/// after the header may hold anything), or `None` if the packet ends before them.
///
/// The walk hops from option to option, at most [`MAX_OPTIONS`] of them: few steps, each
/// with one read, which keeps the verifier's work small where the walk runs for every
/// extension header.
#[inline(always)]
pub fn walk(len: usize, mut read: impl FnMut(usize) -> Option<[u8; 2]>) -> DstOptions {
    // The options follow Next Header and Hdr Ext Len.
    let mut i = 2;
    for _ in 0..MAX_OPTIONS {
        if i >= len {
            return DstOptions::Translatable;
        }
        let Some([kind, olen]) = read(i) else {
            return DstOptions::Malformed;
        };
        match option(kind, olen, len - i) {
            Step::Next(n) => i += n,
            Step::HomeAddress => return DstOptions::HomeAddress,
            Step::Malformed => return DstOptions::Malformed,
        }
    }
    if i >= len {
        DstOptions::Translatable
    } else {
        DstOptions::TooLong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk over the header `h` (Next Header and Hdr Ext Len first), with every
    /// filling of the bytes after it.
    fn check(h: &[u8]) -> DstOptions {
        let Some(len) = header_len(h[1]) else {
            return DstOptions::TooLong;
        };
        assert_eq!(len, h.len());
        let verdicts = [0, 1, 4, OPT_HOME_ADDRESS, 0xFF].map(|fill| {
            let mut buf = [fill; MAX_DSTOPTS_LEN + 2];
            buf[..len].copy_from_slice(h);
            walk(len, |i| Some([buf[i], buf[i + 1]]))
        });
        assert!(verdicts.iter().all(|v| *v == verdicts[0]), "{verdicts:?}");
        verdicts[0]
    }

    /// A header of `units` 8-byte units whose options are `opts`, padded with Pad1.
    fn header(units: u8, opts: &[u8]) -> [u8; 48] {
        let mut h = [OPT_PAD1; 48];
        h[0] = 6;
        h[1] = units - 1;
        h[2..2 + opts.len()].copy_from_slice(opts);
        h
    }

    /// A home address option at 8n+6 after a PadN, as RFC 6275 6.3 aligns it.
    fn home() -> [u8; 24] {
        let mut h = header(3, &[1, 2, 0, 0, OPT_HOME_ADDRESS, 16]);
        h[8..24].copy_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99,
        ]);
        h[..24].try_into().unwrap()
    }

    #[test]
    fn padding_and_other_options() {
        assert_eq!(check(&header(1, &[])[..8]), DstOptions::Translatable);
        assert_eq!(
            check(&header(1, &[1, 4, 0, 0, 0, 0])[..8]),
            DstOptions::Translatable
        );
        // Tunnel encapsulation limit (4), then a PadN.
        assert_eq!(
            check(&header(1, &[4, 1, 0, 1, 0])[..8]),
            DstOptions::Translatable
        );
        // An option of unknown type whose data holds 0xC9 is not a home address.
        let h = header(
            2,
            &[0x1E, 4, OPT_HOME_ADDRESS, 16, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(check(&h[..16]), DstOptions::Translatable);
    }

    #[test]
    fn home_address_options_are_found() {
        assert_eq!(check(&home()), DstOptions::HomeAddress);
        // Behind another option, in the last header bytes scanned.
        let mut h = header(5, &[1, 18]);
        h[24..40].copy_from_slice(&home()[8..24]);
        h[22..24].copy_from_slice(&[OPT_HOME_ADDRESS, 16]);
        assert_eq!(check(&h[..40]), DstOptions::HomeAddress);
        // Whatever its length, if it fits.
        assert_eq!(
            check(&header(1, &[OPT_HOME_ADDRESS, 4])[..8]),
            DstOptions::HomeAddress
        );
    }

    #[test]
    fn longer_headers_are_not_scanned() {
        assert_eq!(header_len(4), Some(40));
        assert_eq!(header_len(5), None);
        assert_eq!(header_len(255), None);
        assert_eq!(check(&header(6, &[])), DstOptions::TooLong);
    }

    #[test]
    fn more_options_than_scanned() {
        let eight = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0];
        let mut h = header(3, &eight);
        assert_eq!(check(&h[..24]), DstOptions::TooLong);
        // Eight that fill the header.
        h[16..24].copy_from_slice(&[1, 6, 0, 0, 0, 0, 0, 0]);
        h[1] = 2;
        assert_eq!(check(&h[..24]), DstOptions::Translatable);
        assert_eq!(check(&header(1, &[0; 6])[..8]), DstOptions::Translatable);
        assert_eq!(check(&header(2, &[0; 14])[..16]), DstOptions::TooLong);
        // The packet ends inside the options.
        assert_eq!(
            walk(16, |i| (i < 8).then_some([1, 2])),
            DstOptions::Malformed
        );
    }

    #[test]
    fn malformed_options() {
        // Running past the header.
        assert_eq!(check(&header(1, &[1, 5])[..8]), DstOptions::Malformed);
        assert_eq!(
            check(&header(1, &[OPT_HOME_ADDRESS, 16])[..8]),
            DstOptions::Malformed
        );
        // Cut after its type, in the last byte.
        let mut h = header(1, &[1, 3]);
        h[7] = 4;
        assert_eq!(check(&h[..8]), DstOptions::Malformed);
        // A malformed option hides what follows.
        let h = header(2, &[1, 200, OPT_HOME_ADDRESS, 16]);
        assert_eq!(check(&h[..16]), DstOptions::Malformed);
    }

    #[test]
    fn options_alone() {
        assert_eq!(option(OPT_PAD1, 0xFF, 1), Step::Next(1));
        assert_eq!(option(1, 0, 2), Step::Next(2));
        assert_eq!(option(1, 0, 1), Step::Malformed);
        assert_eq!(option(OPT_HOME_ADDRESS, 16, 18), Step::HomeAddress);
        assert_eq!(option(OPT_HOME_ADDRESS, 16, 17), Step::Malformed);
    }
}
