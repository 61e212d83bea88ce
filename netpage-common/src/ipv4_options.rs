//! IPv4 options (RFC 791 3.1): the walk that finds a source route with hops left.
//!
//! A loose or strict source route (LSRR, SSRR) whose pointer is not past its length still
//! has hops to visit: the header's destination is the next hop, and the final destination
//! waits in the option. The sender's transport pseudo-header holds the final destination
//! (as with an IPv6 routing header, RFC 8200 8.1), so a rewrite of the header's destination
//! could not be matched by a checksum update; and the hops in the option are addresses
//! netpage does not translate. Such a packet is passed untouched. A route whose hops are all used (pointer past its
//! length) has brought the final destination into the header and translates as usual.
//!
//! The XDP program copies the options into a buffer and [`walk`]s it.

/// The most option bytes an IPv4 header carries (IHL 15).
pub const MAX_OPTIONS_LEN: usize = 40;
/// End of option list.
pub const IPOPT_END: u8 = 0;
/// No operation (one byte of padding between options).
pub const IPOPT_NOOP: u8 = 1;
/// Loose source and record route.
pub const IPOPT_LSRR: u8 = 131;
/// Strict source and record route.
pub const IPOPT_SSRR: u8 = 137;

/// What the options of an IPv4 header mean for a translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Options {
    /// No option keeps the header's destination out of the pseudo-header.
    Translatable,
    /// A source route with hops left: passed untouched.
    SourceRoute,
    /// An option shorter than its own type and length (and pointer, for a source route),
    /// a source route whose pointer is below 4, or an option running past the options: the walk cannot tell what follows, so the packet is
    /// passed untouched (the kernel drops it with a parameter problem).
    Malformed,
}

/// What one option says, and where the next one starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The end of the option list: what follows is padding.
    End,
    /// Another option follows this many bytes on.
    Next(usize),
    SourceRoute,
    Malformed,
}

/// Whether an option type is a source route (loose or strict).
pub const fn is_source_route(kind: u8) -> bool {
    kind == IPOPT_LSRR || kind == IPOPT_SSRR
}

/// The smallest pointer of a source route (RFC 791: it counts from 1 at the type byte, and
/// the first address is the fourth byte). A smaller one is malformed.
pub const MIN_POINTER: u8 = 4;

/// Bytes of the buffer the walk reads: the options, and room for the length and pointer
/// bytes of an option that starts in the last byte.
pub const OPTIONS_BUF: usize = MAX_OPTIONS_LEN + 2;

/// Judges the option whose first bytes are `kind`, `len` and `ptr`, with `left` bytes of
/// options from its start. Bytes past the options may hold anything: an option whose
/// length byte or pointer lies past them is malformed whatever they hold.
pub const fn option(kind: u8, len: u8, ptr: u8, left: usize) -> Step {
    let len = len as usize;
    match kind {
        IPOPT_END => Step::End,
        IPOPT_NOOP => Step::Next(1),
        _ => {
            let min = if is_source_route(kind) { 3 } else { 2 };
            if len < min || len > left || (is_source_route(kind) && ptr < MIN_POINTER) {
                Step::Malformed
            } else if is_source_route(kind) && ptr as usize <= len {
                // The pointer counts from 1 at the type byte: while it points inside the
                // option, an address is left to visit.
                Step::SourceRoute
            } else {
                Step::Next(len)
            }
        }
    }
}

/// Walks the first `len` bytes of `buf` (at most [`MAX_OPTIONS_LEN`]) as options.
///
/// The walk goes byte by byte at fixed positions and carries only how many bytes of the
/// current option are left to skip, so that the XDP program reads the buffer at constant
/// offsets and the verifier sees the same kind of state at every position.
#[inline(always)]
pub fn walk(buf: &[u8; OPTIONS_BUF], len: usize) -> Options {
    let mut skip = 0;
    for j in 0..MAX_OPTIONS_LEN {
        if j >= len {
            break;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        match option(buf[j], buf[j + 1], buf[j + 2], len - j) {
            Step::End => break,
            Step::Next(n) => skip = n - 1,
            Step::SourceRoute => return Options::SourceRoute,
            Step::Malformed => return Options::Malformed,
        }
    }
    Options::Translatable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk over `options`, with every filling of the bytes after them.
    fn check(options: &[u8]) -> Options {
        assert!(options.len().is_multiple_of(4) && options.len() <= MAX_OPTIONS_LEN);
        let verdicts = [0, 1, 3, 4, IPOPT_LSRR, 0xFF].map(|fill| {
            let mut buf = [fill; OPTIONS_BUF];
            buf[..options.len()].copy_from_slice(options);
            walk(&buf, options.len())
        });
        assert!(verdicts.iter().all(|v| *v == verdicts[0]), "{verdicts:?}");
        verdicts[0]
    }

    /// A source route of `kind` with pointer `ptr` over `hops` addresses, then the end of
    /// the list.
    fn route(kind: u8, ptr: u8, hops: usize) -> [u8; 40] {
        let mut o = [IPOPT_END; 40];
        o[0] = kind;
        o[1] = 3 + 4 * hops as u8;
        o[2] = ptr;
        for (i, b) in o[3..3 + 4 * hops].iter_mut().enumerate() {
            *b = 10 + i as u8;
        }
        o
    }

    #[test]
    fn no_options_and_padding() {
        assert_eq!(check(&[]), Options::Translatable);
        assert_eq!(check(&[IPOPT_NOOP; 40]), Options::Translatable);
        assert_eq!(check(&[IPOPT_END; 4]), Options::Translatable);
        // Router alert (RFC 2113), then the end of the list.
        assert_eq!(check(&[148, 4, 0, 0, 0, 0, 0, 0]), Options::Translatable);
    }

    #[test]
    fn source_routes_with_hops_left_are_found() {
        for kind in [IPOPT_LSRR, IPOPT_SSRR] {
            // Two hops in 11 bytes: pointers 4 to 11 are inside, 12 is past the length.
            for (ptr, left) in [(4, true), (8, true), (11, true), (12, false), (255, false)] {
                let want = if left {
                    Options::SourceRoute
                } else {
                    Options::Translatable
                };
                assert_eq!(check(&route(kind, ptr, 2)[..12]), want, "{kind} ptr {ptr}");
            }
            // Nine hops fill the options: 3 + 36 bytes and the end of the list.
            assert_eq!(check(&route(kind, 36, 9)), Options::SourceRoute);
            assert_eq!(check(&route(kind, 40, 9)), Options::Translatable);
            // Behind padding and another option.
            let mut o = [IPOPT_NOOP, 148, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            o[5..].copy_from_slice(&route(kind, 4, 1)[..7]);
            assert_eq!(check(&o), Options::SourceRoute);
            // A route in the last bytes of the options, its pointer in the last byte.
            let mut o = [IPOPT_NOOP; 12];
            o[5..].copy_from_slice(&[kind, 7, 4, 10, 11, 12, 13]);
            assert_eq!(check(&o), Options::SourceRoute);
            o[7] = 8;
            assert_eq!(check(&o), Options::Translatable);
            // A route without hops: only the pointer.
            assert_eq!(check(&[kind, 3, 4, IPOPT_END]), Options::Translatable);
        }
    }

    #[test]
    fn only_a_source_route_hides_the_destination() {
        // Record route (7) and timestamp (68) have pointers too.
        assert_eq!(check(&[7, 7, 4, 0, 0, 0, 0, 0]), Options::Translatable);
        assert_eq!(check(&[68, 8, 5, 0, 0, 0, 0, 0]), Options::Translatable);
        // A route's bytes are not options: 131 inside a record route is an address byte.
        assert_eq!(check(&[7, 7, 4, 131, 7, 4, 0, 0]), Options::Translatable);
    }

    #[test]
    fn the_end_of_the_list_ends_the_walk() {
        assert_eq!(check(&[IPOPT_END, IPOPT_LSRR, 7, 4]), Options::Translatable);
        assert_eq!(check(&[IPOPT_NOOP, IPOPT_END, 0, 1]), Options::Translatable);
    }

    #[test]
    fn malformed_options() {
        // A length below 2, or below 3 for a source route.
        assert_eq!(check(&[148, 1, 0, 0]), Options::Malformed);
        assert_eq!(check(&[148, 0, 0, 0]), Options::Malformed);
        assert_eq!(check(&[IPOPT_SSRR, 2, 0, 0]), Options::Malformed);
        // An option that runs past the options, or is cut before its length.
        assert_eq!(check(&[68, 40, 5, 0]), Options::Malformed);
        assert_eq!(
            check(&[IPOPT_NOOP, IPOPT_NOOP, IPOPT_NOOP, 68]),
            Options::Malformed
        );
        assert_eq!(
            check(&route(IPOPT_LSRR, 4, 2)[..8]),
            Options::Malformed,
            "a route longer than the options"
        );
        // A source route whose pointer is below the first address.
        for ptr in 0..MIN_POINTER {
            assert_eq!(
                check(&[IPOPT_LSRR, 7, ptr, 0, 0, 0, 0, 0]),
                Options::Malformed
            );
        }
        // Whatever a malformed option hides is not read.
        assert_eq!(
            check(&[148, 1, IPOPT_LSRR, 3, 3, 0, 0, 0]),
            Options::Malformed
        );
    }

    #[test]
    fn options_alone() {
        assert_eq!(option(IPOPT_LSRR, 7, 4, 7), Step::SourceRoute);
        assert_eq!(option(IPOPT_LSRR, 3, 3, 3), Step::Malformed);
        assert_eq!(option(IPOPT_LSRR, 3, 4, 3), Step::Next(3));
        assert_eq!(option(IPOPT_LSRR, 3, 3, 2), Step::Malformed);
        assert_eq!(option(68, 0, 0, 1), Step::Malformed);
        assert_eq!(option(7, 3, 4, 4), Step::Next(3));
        assert_eq!(option(IPOPT_NOOP, 0, 0, 1), Step::Next(1));
        assert_eq!(option(IPOPT_END, 0, 0, 1), Step::End);
    }
}
