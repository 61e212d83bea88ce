//! Internet checksum arithmetic: incremental updates per RFC 1624.
//!
//! XDP has no `l3_csum_replace`/`l4_csum_replace` helpers, so every checksum the datapath
//! touches is patched arithmetically. A change is accumulated as a [`Delta`] (the
//! one's-complement sum of `~old + new` over each changed 16-bit word) and then applied to
//! a checksum with RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`.
//!
//! All words are big-endian (network order), read from the packet as bytes. A changed field
//! must start at an even offset from the start of the checksummed data; every field netpage
//! rewrites (addresses, checksums) does.

/// The pending change to a checksum: a one's-complement sum of `~old + new` words.
///
/// The accumulator is kept unfolded in a `u64`; it is folded when applied. Summing 32-bit
/// words and folding later gives the same one's-complement result as 16-bit words
/// (RFC 1071 section 2(B)), with half the operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const ZERO: Self = Self(0);

    /// Adds the change of one 16-bit word from `old` to `new`.
    #[inline(always)]
    #[must_use]
    pub const fn word(self, old: u16, new: u16) -> Self {
        Self(self.0 + (!old) as u64 + new as u64)
    }

    /// Adds the change of a 32-bit word from `old` to `new` (values of big-endian words).
    #[inline(always)]
    #[must_use]
    pub const fn word32(self, old: u32, new: u32) -> Self {
        Self(self.0 + (!old) as u64 + new as u64)
    }

    /// Adds the change of a field whose length is a multiple of 4 (an address) from `old`
    /// to `new`.
    #[inline(always)]
    #[must_use]
    pub fn bytes<const N: usize>(self, old: &[u8; N], new: &[u8; N]) -> Self {
        const { assert!(N.is_multiple_of(4)) };
        let mut d = self;
        let mut i = 0;
        while i < N {
            let o = u32::from_be_bytes([old[i], old[i + 1], old[i + 2], old[i + 3]]);
            let n = u32::from_be_bytes([new[i], new[i + 1], new[i + 2], new[i + 3]]);
            d = d.word32(o, n);
            i += 4;
        }
        d
    }

    /// Combines two pending changes to the same checksum.
    #[inline(always)]
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self(fold(self.0) as u64 + fold(other.0) as u64)
    }

    /// The change folded to 16 bits, to pass it on as a plain integer.
    #[inline(always)]
    pub const fn folded(self) -> u16 {
        fold(self.0)
    }

    /// A change from its folded form.
    #[inline(always)]
    pub const fn from_folded(f: u16) -> Self {
        Self(f as u64)
    }

    /// True when applying this delta leaves every checksum as it is.
    #[inline(always)]
    pub const fn is_zero(self) -> bool {
        let f = fold(self.0);
        f == 0 || f == 0xFFFF
    }
}

/// What translating an ICMP error's quote did: whether an address of the quoted packet was
/// translated, and the change of the quoted bytes (folded). One `u64`, so that a BPF-to-BPF
/// call returns it in a register. (The change alone cannot tell: translating an IPv6 quote
/// with its transport checksum changes the sum of the quoted bytes by nothing.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted(u64);

impl Quoted {
    /// No address of the quote was translated.
    pub const NONE: Self = Self(0);

    /// The quote was translated, its bytes changed by `body`.
    #[inline(always)]
    pub const fn translated(body: Delta) -> Self {
        Self(1 << 16 | fold(body.0) as u64)
    }

    #[inline(always)]
    pub const fn hit(self) -> bool {
        self.0 >> 16 != 0
    }

    /// The change of the quoted bytes.
    #[inline(always)]
    pub const fn body(self) -> Delta {
        Delta(self.0 & 0xFFFF)
    }
}

/// Folds a one's-complement accumulator to 16 bits (end-around carry).
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

/// Applies `delta` to checksum `check` (RFC 1624 eqn. 3). For IPv4 headers, TCP, ICMP and
/// ICMPv6 checksums.
#[inline(always)]
pub const fn apply(check: u16, delta: Delta) -> u16 {
    !fold((!check) as u64 + fold(delta.0) as u64)
}

/// Applies `delta` to a UDP checksum.
///
/// A transmitted 0 means "no checksum" (RFC 768; over IPv6 only for tunnels, RFC 6935), so
/// it stays 0. A computed 0 is transmitted as 0xFFFF.
#[inline(always)]
pub const fn apply_udp(check: u16, delta: Delta) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, delta) {
        0 => 0xFFFF,
        c => c,
    }
}

/// Checksums computed from scratch, written independently of the code under test, for the
/// tests of this crate.
#[cfg(test)]
pub(crate) mod reference {
    /// A full RFC 1071 checksum over `data`.
    pub fn checksum(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for chunk in data.chunks(2) {
            let hi = u64::from(chunk[0]) << 8;
            let lo = chunk.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The checksum an IPv4 header should carry: over the header with its checksum field
    /// taken as zero.
    pub fn ipv4_header(h: &[u8; 20]) -> u16 {
        let mut zeroed = *h;
        zeroed[10..12].fill(0);
        checksum(&zeroed)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{reference::checksum as full, *};

    /// splitmix64: a small deterministic generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Checksums 0x0000 and 0xFFFF are the same one's-complement value.
    fn same(a: u16, b: u16) -> bool {
        a == b || (a | b == 0xFFFF && a & b == 0)
    }

    /// Rewrites a random field of a random buffer (with its checksum at offset 0) and checks
    /// the incrementally updated checksum against a full recomputation.
    fn check_field<const N: usize>(rng: &mut Rng) {
        let len = 2 * (N / 2 + 1 + (rng.next() % 40) as usize);
        let mut buf = rng.bytes(len);
        buf[0] = 0;
        buf[1] = 0;
        let c = full(&buf);
        buf[..2].copy_from_slice(&c.to_be_bytes());
        assert_eq!(full(&buf), 0, "a buffer with its checksum sums to zero");

        let slots = (len - 2 - N) / 2;
        let at = 2 + 2 * (rng.next() as usize % (slots + 1));
        let old: [u8; N] = buf[at..at + N].try_into().unwrap();
        let new: [u8; N] = rng.bytes(N).try_into().unwrap();
        buf[at..at + N].copy_from_slice(&new);

        let got = apply(c, Delta::ZERO.bytes(&old, &new));
        buf[..2].copy_from_slice(&[0, 0]);
        let want = full(&buf);
        assert!(
            same(got, want),
            "incremental {got:#06x} vs full {want:#06x}"
        );
        // The result must also verify: data plus checksum sums to zero.
        buf[..2].copy_from_slice(&got.to_be_bytes());
        assert!(same(full(&buf), 0));
    }

    #[test]
    fn ipv4_address_updates_match_full_recomputation() {
        let mut rng = Rng(1);
        for _ in 0..20_000 {
            check_field::<4>(&mut rng);
        }
    }

    #[test]
    fn ipv6_address_updates_match_full_recomputation() {
        let mut rng = Rng(2);
        for _ in 0..20_000 {
            check_field::<16>(&mut rng);
        }
    }

    #[test]
    fn combined_deltas_match_full_recomputation() {
        let mut rng = Rng(3);
        for _ in 0..20_000 {
            let mut buf = rng.bytes(64);
            buf[..2].copy_from_slice(&[0, 0]);
            let c = full(&buf);
            let (a, b) = (8, 40);
            let old_a: [u8; 16] = buf[a..a + 16].try_into().unwrap();
            let old_b: [u8; 4] = buf[b..b + 4].try_into().unwrap();
            let new_a: [u8; 16] = rng.bytes(16).try_into().unwrap();
            let new_b: [u8; 4] = rng.bytes(4).try_into().unwrap();
            buf[a..a + 16].copy_from_slice(&new_a);
            buf[b..b + 4].copy_from_slice(&new_b);
            let d = Delta::ZERO
                .bytes(&old_a, &new_a)
                .add(Delta::ZERO.bytes(&old_b, &new_b));
            assert!(same(apply(c, d), full(&buf)));
        }
    }

    #[test]
    fn word_changes_match_full_recomputation() {
        let mut rng = Rng(4);
        for _ in 0..20_000 {
            let mut buf = rng.bytes(32);
            buf[..2].copy_from_slice(&[0, 0]);
            let c = full(&buf);
            let old = u16::from_be_bytes([buf[10], buf[11]]);
            let new = rng.next() as u16;
            buf[10..12].copy_from_slice(&new.to_be_bytes());
            assert!(same(apply(c, Delta::ZERO.word(old, new)), full(&buf)));
        }
    }

    #[test]
    fn extreme_words_are_exact() {
        // Checksum values at the one's-complement edges.
        for &(c, old, new) in &[
            (0x0000u16, 0xFFFFu16, 0x0000u16),
            (0xFFFF, 0x0000, 0xFFFF),
            (0x0000, 0x0000, 0x0000),
            (0x1234, 0x1234, 0x1234),
            (0xFFFE, 0x0001, 0x0000),
        ] {
            let d = Delta::ZERO.word(old, new);
            let got = apply(c, d);
            // ~got == ~c - old + new (mod one's complement)
            let lhs = fold(u64::from(!got));
            let rhs = fold(u64::from(!c) + u64::from(!old) + u64::from(new));
            assert!(same(lhs, rhs), "{c:#x} {old:#x} {new:#x}");
        }
    }

    #[test]
    fn udp_zero_stays_zero_and_computed_zero_is_ffff() {
        let d = Delta::ZERO.bytes(&[10, 0, 0, 1], &[10, 0, 0, 2]);
        assert_eq!(apply_udp(0, d), 0);
        // Find a checksum whose update computes to zero: ~HC + delta == 0xFFFF.
        let delta = Delta::ZERO.word(0x0000, 0x0001); // +1 (with ~0 = 0xFFFF == -0)
        let hc = 0x0001u16; // ~HC = 0xFFFE; 0xFFFE + 0x0001 (folded) = 0xFFFF -> HC' = 0
        assert_eq!(apply(hc, delta), 0);
        assert_eq!(apply_udp(hc, delta), 0xFFFF);
        // An unchanged address leaves the checksum as it is.
        assert!(Delta::ZERO.bytes(&[1, 2, 3, 4], &[1, 2, 3, 4]).is_zero());
        assert_eq!(apply_udp(0xABCD, Delta::ZERO), 0xABCD);
    }

    #[test]
    fn a_quote_says_whether_it_hit_even_when_its_sum_did_not_change() {
        assert!(!Quoted::NONE.hit());
        assert_eq!(Quoted::NONE.body(), Delta::ZERO);
        let neutral = Quoted::translated(Delta::ZERO.word(0x1234, 0x1234));
        assert!(neutral.hit());
        assert!(neutral.body().is_zero());
        let d = Delta::ZERO.word32(0xC612_0A64, 0xC613_000A);
        let q = Quoted::translated(d);
        assert!(q.hit());
        assert_eq!(apply(0x62FC, q.body()), apply(0x62FC, d));
    }
}
