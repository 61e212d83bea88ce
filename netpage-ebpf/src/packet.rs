//! Bounds-checked access to the packet: every read and write goes through here.

use aya_ebpf::programs::XdpContext;
use netpage_common::{
    counters::Counter,
    proto::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, MAX_VLAN_TAGS, VLAN_HLEN},
};

/// Headers that start beyond this offset are not read (the packet is passed as malformed);
/// real headers, even behind six extension headers, end well before it.
const MAX_OFFSET: usize = 0x3FFF;

/// The packet of one XDP invocation.
pub struct Packet {
    data: usize,
    end: usize,
}

/// A bounds-checked pointer into the packet.
pub type Field<T> = *mut T;

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            data: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Whether the packet holds at least `len` bytes from the Ethernet header on.
    ///
    /// For lengths the headers declare; it proves nothing to the verifier, which needs
    /// [`Self::field`] for every access.
    #[inline(always)]
    pub fn holds(&self, len: usize) -> bool {
        self.data + len <= self.end
    }

    /// A pointer to the `T` at `off` (`T` has alignment 1), or `PassTruncated` if the
    /// packet ends before.
    #[inline(always)]
    pub fn field<T>(&self, off: usize) -> Result<Field<T>, Counter> {
        // LLVM would drop this check where an earlier length comparison implies it, but the
        // verifier needs it on the pointer itself: a volatile read makes `end` opaque.
        // SAFETY: reads a field of `self`.
        let end = unsafe { core::ptr::read_volatile(&self.end) };
        // LLVM may compute `off` as `(x + k) - k`, reusing a sum from a length check, whose
        // lower bound the verifier loses. This test restores both bounds, and the verifier
        // grants a range only to pointers whose offset stays below 64 KiB.
        if off > MAX_OFFSET {
            return Err(Counter::PassMalformed);
        }
        let at = self.data + off;
        if at + core::mem::size_of::<T>() > end {
            return Err(Counter::PassTruncated);
        }
        Ok(at as Field<T>)
    }

    /// The `N` bytes at `off`.
    #[inline(always)]
    pub fn read<const N: usize>(&self, off: usize) -> Result<[u8; N], Counter> {
        // SAFETY: `field` checked that the bytes lie inside the packet.
        Ok(unsafe { *self.field::<[u8; N]>(off)? })
    }

    /// The big-endian 16-bit word at `off`.
    #[inline(always)]
    pub fn be16(&self, off: usize) -> Result<u16, Counter> {
        self.read::<2>(off).map(u16::from_be_bytes)
    }

    /// Steps over the Ethernet header and up to two VLAN tags (802.1ad, 802.1Q).
    /// Returns the offset of the network header and its EtherType.
    #[inline(always)]
    pub fn skip_l2(&self) -> Result<(usize, u16), Counter> {
        let mut off = ETH_HLEN;
        let mut proto = self.be16(ETH_HLEN - 2)?;
        for _ in 0..MAX_VLAN_TAGS {
            if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
                return Ok((off, proto));
            }
            proto = self.be16(off + 2)?;
            off += VLAN_HLEN;
        }
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            return Err(Counter::PassVlanDepth);
        }
        Ok((off, proto))
    }
}

/// A checked pointer to a big-endian 16-bit word (a checksum).
pub type Word = Field<[u8; 2]>;

/// `off` with only its bounds known to the verifier: `[0, MAX_OFFSET]`.
///
/// Offsets that went through a variable walk (IPv6 extension headers) otherwise carry a
/// different range on every path, which keeps the verifier from pruning equivalent states
/// and multiplies the paths it explores. The volatile read keeps LLVM from dropping the mask.
#[inline(always)]
pub fn settle(off: usize) -> Result<usize, Counter> {
    if off > MAX_OFFSET {
        return Err(Counter::PassMalformed);
    }
    // SAFETY: reads a local.
    Ok(unsafe { core::ptr::read_volatile(&off) } & MAX_OFFSET)
}

/// A pointer to the `T` at constant offset `OFF` inside a checked header of `N` bytes.
///
/// `T` may have an alignment the packet does not honour (addresses are moved as 32-bit
/// words): such a pointer is only read and written with `read_unaligned` and
/// `write_unaligned`, since a plain deref or a reference would assume the alignment.
/// Fields are derived from one checked header pointer by constant offsets, so the verifier
/// sees them inside the range it proved for the header. (A separate variable-offset
/// pointer per field would need its own bounds check.)
#[inline(always)]
pub fn sub<T, const N: usize, const OFF: usize>(hdr: Field<[u8; N]>) -> Field<T> {
    const { assert!(OFF + core::mem::size_of::<T>() <= N) };
    (hdr as usize + OFF) as Field<T>
}

/// Reads a big-endian 16-bit word through a checked pointer.
#[inline(always)]
pub fn get16(p: Word) -> u16 {
    // SAFETY: `p` came from `Packet::field`.
    u16::from_be_bytes(unsafe { *p })
}

/// Writes a big-endian 16-bit word through a checked pointer.
#[inline(always)]
pub fn put16(p: Word, v: u16) {
    // SAFETY: `p` came from `Packet::field`.
    unsafe { *p = v.to_be_bytes() }
}
