//! Bounds-checked access to the packet: every read and write goes through here, under XDP
//! and under tc alike.

use aya_ebpf::{
    bindings::{__sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, xdp_md},
    helpers::bpf_l4_csum_replace,
    programs::{TcContext, XdpContext},
};
use netpage_common::{
    counters::Counter,
    csum::Delta,
    proto::{ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, MAX_VLAN_TAGS, VLAN_HLEN},
};

/// Headers that start beyond this offset are not read (the packet is passed as malformed);
/// real headers, even behind six extension headers, end well before it.
const MAX_OFFSET: usize = 0x3FFF;

/// Bytes of a socket buffer made linear (and writable) before tc reads it: every header
/// netpage reads or rewrites, ICMP quotes included, unless extension headers push them
/// further (those are then passed untouched).
const TC_PULL: u32 = 256;

/// The packet of one XDP or tc invocation.
pub struct Packet {
    data: usize,
    /// The end of what the program may access directly: under tc, the linear part of the
    /// socket buffer, whose tail (a GSO packet's payload, say) may lie beyond.
    end: usize,
    /// The invocation's context: the socket buffer under tc, the `xdp_md` under XDP.
    ctx: *mut core::ffi::c_void,
}

/// A bounds-checked pointer into the packet.
pub type Field<T> = *mut T;

impl Packet {
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        Self {
            data: ctx.data(),
            end: ctx.data_end(),
            ctx: ctx.ctx.cast(),
        }
    }

    /// The packet of a tc invocation, its headers first made linear and writable.
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        let len = ctx.len();
        // On failure (no memory) the headers stay where they are: whatever lies beyond the
        // linear part is then passed untouched, as truncated.
        let _ = ctx.pull_data(if len < TC_PULL { len } else { TC_PULL });
        Self {
            data: ctx.data(),
            end: ctx.data_end(),
            ctx: ctx.skb.skb.cast(),
        }
    }

    /// The packet of the invocation whose context is `ctx` (a socket buffer if `TC`, else
    /// an `xdp_md`), its bounds read afresh: for code that runs after the translation,
    /// which may have invalidated the packet pointers (a checksum helper under tc).
    #[inline(always)]
    pub fn of_ctx<const TC: bool>(ctx: *mut core::ffi::c_void) -> Self {
        let (data, end) = if TC {
            let c = TcContext::new(ctx.cast());
            (c.data(), c.data_end())
        } else {
            let c = XdpContext::new(ctx.cast());
            (c.data(), c.data_end())
        };
        Self { data, end, ctx }
    }

    /// The bytes the program may access directly (under XDP, the whole frame).
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.data
    }

    /// The socket buffer of a tc invocation.
    #[inline(always)]
    fn skb(&self) -> *mut __sk_buff {
        self.ctx.cast()
    }

    /// The index of the interface the packet (of a tc invocation if `TC`) arrived on: under
    /// tc the device the program runs on, which at ingress is the one it arrived on.
    #[inline(always)]
    pub fn ingress<const TC: bool>(&self) -> u32 {
        // SAFETY: `ctx` is this invocation's context, of the type the hook gives.
        unsafe {
            if TC {
                (*self.skb()).ifindex
            } else {
                (*self.ctx.cast::<xdp_md>()).ingress_ifindex
            }
        }
    }

    /// Whether the program runs where the packet arrived (of a tc invocation if `TC`):
    /// always under XDP; under tc at ingress, and not at a tap's egress, where the kernel
    /// has routed the packet already. (A packet that arrived on the interface and is
    /// routed back out of it looks alike there.)
    #[inline(always)]
    pub fn at_ingress<const TC: bool>(&self) -> bool {
        // SAFETY: under tc, the context is this invocation's socket buffer.
        !TC || unsafe { (*self.skb()).ingress_ifindex == (*self.skb()).ifindex }
    }

    /// Whether the packet (of a tc invocation if `TC`) holds at least `len` bytes from
    /// the Ethernet header on, linear or not.
    ///
    /// For lengths the headers declare; it proves nothing to the verifier, which needs
    /// [`Self::field`] for every access.
    #[inline(always)]
    pub fn holds<const TC: bool>(&self, len: usize) -> bool {
        if TC {
            // SAFETY: under tc, the context is this invocation's socket buffer.
            len <= unsafe { (*self.skb()).len } as usize
        } else {
            self.data + len <= self.end
        }
    }

    /// Under tc: applies `d`, the change of a pseudo-header, to the transport checksum at
    /// `p`, through the kernel, which knows what the field holds: a final checksum, or the
    /// partial sum that the device or GSO completes (CHECKSUM_PARTIAL); it also keeps the
    /// sum of a CHECKSUM_COMPLETE packet in step. A UDP checksum of 0 (none) stays 0, and
    /// a computed 0 becomes 0xFFFF. Every packet pointer is invalid afterwards.
    // A BPF-to-BPF call: keeps the helper's arguments out of the caller's frame.
    #[inline(never)]
    pub fn replace_pseudo(&self, p: Word, d: Delta, udp: bool) {
        let off = (p as usize - self.data) as u32;
        let mangled = if udp { BPF_F_MARK_MANGLED_0 } else { 0 };
        // Field size 0: `to` is a difference to add, not a value to replace.
        let flags = u64::from(BPF_F_PSEUDO_HDR | mangled);
        // The kernel sums 16-bit words as they lie in memory, read in the CPU's order;
        // netpage's deltas are of big-endian words.
        let diff = u16::from_ne_bytes(d.folded().to_be_bytes());
        // SAFETY: the context is this tc invocation's socket buffer; the helper checks `off`. A
        // failure (the field not writable) leaves the checksum as it was, and the kernel
        // drops the packet as it would any packet with a bad checksum.
        unsafe { bpf_l4_csum_replace(self.skb().cast(), off, 0, u64::from(diff), flags) };
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
