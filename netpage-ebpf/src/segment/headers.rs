//! Reading the inner packet and writing headers: the bytes both hooks read and write the
//! same way, once the packet has its room (see `room`).

use aya_ebpf::{bindings::__sk_buff, helpers::generated::bpf_csum_diff};
use netpage_common::{
    counters::Counter,
    csum::fold,
    proto::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, ipv4_header_len},
    segment::{UDP_HLEN, mix},
};

use super::Ctx;
use crate::packet::Packet;

/// Writes `bytes` at `off`.
#[inline(always)]
pub fn put<const N: usize>(pkt: &Packet, off: usize, bytes: &[u8; N]) -> Result<(), Counter> {
    let p = pkt.field::<[u8; N]>(off)?;
    // SAFETY: checked by `field`; a whole array is written through the pointer.
    unsafe { p.write(*bytes) };
    Ok(())
}

/// Writes an Ethernet header (`macs` as read, then the EtherType) at `off`.
#[inline(always)]
pub fn put_eth(pkt: &Packet, off: usize, macs: &[u8; 12], ethertype: u16) -> Result<(), Counter> {
    let mut h = [0u8; ETH_HLEN];
    h[..12].copy_from_slice(macs);
    h[12..].copy_from_slice(&ethertype.to_be_bytes());
    put(pkt, off, &h)
}

/// The concatenation of an IP header and the 8-byte header (UDP, ICMP) after it.
#[inline(always)]
pub fn joined<const N: usize, const M: usize>(ip: &[u8; N], next: &[u8; 8]) -> [u8; M] {
    const { assert!(N + 8 == M) };
    let mut h = [0u8; M];
    h[..N].copy_from_slice(ip);
    h[N..].copy_from_slice(next);
    h
}

/// The one's-complement sum of the first `len` bytes (a multiple of 4, at most `N`) at
/// `off`, as big-endian words, by the kernel (`bpf_csum_diff`): a loop over the packet
/// here would be unrolled into more stack than a frame has.
#[inline(always)]
pub fn csum_at<const N: usize>(pkt: &Packet, off: usize, len: usize) -> Result<u64, Counter> {
    let p = pkt.field::<[u8; N]>(off)?;
    let len = if len > N { N } else { len & !3 };
    // SAFETY: the helper reads `len` bytes, inside the `N` that `field` checked.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), len as u32, 0) };
    if r < 0 {
        return Err(Counter::PassMiss);
    }
    // The kernel sums words as they lie in memory, read in the CPU's order.
    let f = fold(r as u64);
    Ok(u64::from(u16::from_be_bytes(f.to_ne_bytes())))
}

/// The inner packet's addresses, TOS or traffic class, length, transport protocol (the
/// next header, for IPv6), whether it may be fragmented, and its flow hash.
pub struct Inner<A> {
    pub src: A,
    pub dst: A,
    pub tos: u8,
    pub len: usize,
    pub proto: u8,
    pub df: bool,
    pub hash: u32,
}

/// The length of the packets a packet stands for (`len` bytes from its network header on):
/// itself, or, if it is a GSO packet (under tc), one of its segments: its network header
/// (`l3` bytes), its transport header (of protocol `proto`, at `ETH_HLEN + l3`) and
/// `gso_size` bytes of payload, as the kernel cuts it (`skb_gso_network_seglen`). A GSO
/// packet of another transport than TCP or UDP, or whose transport header does not follow
/// the network header (IPv6 extension headers), goes on untouched.
#[inline(always)]
pub fn seg_len<const TC: bool>(
    ctx: Ctx,
    len: usize,
    l3: usize,
    proto: u8,
) -> Result<usize, Counter> {
    if !TC {
        return Ok(len);
    }
    match gso_seg_len(ctx, l3, proto) {
        0 => Err(Counter::PassUnknownProto),
        usize::MAX => Ok(len),
        seg => Ok(seg),
    }
}

/// Under tc: a GSO packet's segment length as [`seg_len`] has it, 0 if unknown, or
/// `usize::MAX` for a packet that is not GSO.
// A BPF-to-BPF call: the departure's frame holds the inner headers already.
#[inline(never)]
fn gso_seg_len(ctx: Ctx, l3: usize, proto: u8) -> usize {
    // SAFETY: under tc, the context is this invocation's socket buffer.
    let gso = unsafe { (*ctx.cast::<__sk_buff>()).gso_size } as usize;
    if gso == 0 {
        return usize::MAX;
    }
    let l4 = match proto {
        IPPROTO_TCP => match Packet::of_ctx::<true>(ctx).read::<1>(ETH_HLEN + l3 + 12) {
            Ok([off]) => usize::from(off >> 4) * 4,
            Err(_) => return 0,
        },
        IPPROTO_UDP => UDP_HLEN,
        _ => return 0,
    };
    l3 + l4 + gso
}

/// Reads the IPv4 packet at `ETH_HLEN`; also returns its header length.
#[inline(always)]
pub fn inner4<const TC: bool>(pkt: &Packet) -> Result<(Inner<[u32; 1]>, usize), Counter> {
    // SAFETY: checked by `field`.
    let h = unsafe { *pkt.field::<[u8; 20]>(ETH_HLEN)? };
    let ihl = ipv4_header_len(h[0]).ok_or(Counter::PassMalformed)?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if len < ihl {
        return Err(Counter::PassMalformed);
    }
    if !pkt.holds::<TC>(ETH_HLEN + len) {
        return Err(Counter::PassTruncated);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let src = [u32::from_ne_bytes([h[12], h[13], h[14], h[15]])];
    let dst = [u32::from_ne_bytes([h[16], h[17], h[18], h[19]])];
    let ports = if (h[9] == IPPROTO_TCP || h[9] == IPPROTO_UDP) && frag & 0x1FFF == 0 {
        pkt.read::<4>(ETH_HLEN + ihl).map_or(0, u32::from_ne_bytes)
    } else {
        0
    };
    let hash = mix(mix(mix(u32::from(h[9]), src[0]), dst[0]), ports);
    let inner = Inner {
        src,
        dst,
        tos: h[1],
        len,
        proto: h[9],
        df: frag & 0x4000 != 0,
        hash,
    };
    Ok((inner, ihl))
}

/// Reads the IPv6 packet at `ETH_HLEN`.
#[inline(always)]
pub fn inner6<const TC: bool>(pkt: &Packet) -> Result<Inner<[u32; 4]>, Counter> {
    // SAFETY: checked by `field`.
    let h = unsafe { *pkt.field::<[u8; 40]>(ETH_HLEN)? };
    let len = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if !pkt.holds::<TC>(ETH_HLEN + len) {
        return Err(Counter::PassTruncated);
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let src = [word(8), word(12), word(16), word(20)];
    let dst = [word(24), word(28), word(32), word(36)];
    // The flow label, as the sender set it, stands in for the ports (RFC 6438).
    let mut hash = mix(
        u32::from(h[6]),
        word(0) & u32::from_ne_bytes([0, 0x0F, 0xFF, 0xFF]),
    );
    for i in 0..4 {
        hash = mix(mix(hash, src[i]), dst[i]);
    }
    let tclass = (h[0] << 4) | (h[1] >> 4);
    let inner = Inner {
        src,
        dst,
        tos: tclass,
        len,
        proto: h[6],
        df: true,
        hash,
    };
    Ok(inner)
}
