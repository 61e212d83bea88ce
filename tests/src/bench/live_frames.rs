//! A sender that hands frames to a veth as a NIC driver hands them to the stack: as XDP
//! frames, not socket buffers. `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs a
//! three-instruction XDP program on a prepared frame, in batches from a page pool, and
//! carries out its verdict, `XDP_REDIRECT` to the sender's veth, whose `ndo_xdp_xmit` puts
//! the frame in its peer's receive ring (the same path as xdp-trafficgen). The gateway's
//! veth then sees an XDP frame, which native XDP runs on in place: no `skb_pp_cow_data`
//! copy as for a packet that came from a socket.
//!
//! Frames come from a page pool whose pages the kernel fills with the frame once, when it
//! first allocates them; a receiver that changes a frame in place (the gateway rewrites
//! MACs, TTL, addresses and checksums in the very page) hands the page back changed. So
//! the program writes the whole frame anew before it redirects: one 4-byte store per word,
//! about 30 instructions for a 106-byte frame, on the sender's CPU.
//!
//! The program is made of raw instructions and loaded with the `bpf` system call: it is a
//! tool of the bench, not part of netpage's object. So is the bench's receiver, [`Sink`].

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

/// `bpf(2)` commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// The helper `bpf_redirect(ifindex, flags)`.
const BPF_FUNC_REDIRECT: i32 = 23;
/// Frames the kernel builds and sends per batch (its maximum is 256).
const BATCH: u32 = 64;

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// Opcodes used (include/uapi/linux/bpf_common.h).
const LDX_W: u8 = 0x61;
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const JGT_REG: u8 = 0x2d;
const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
const ST_B: u8 = 0x72;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// `XDP_DROP`: the sender's verdict for a frame shorter than the one to write (none is),
/// and the sink's for every frame.
const XDP_DROP: i32 = 1;

/// The program: writes `frame` over the packet (which has its length), then
/// `bpf_redirect(ifindex, 0)`.
///
/// ```text
/// r2 = ctx->data; r3 = ctx->data_end; r4 = r2 + len; if r4 > r3 goto drop
/// *(u32 *)(r2 + i) = frame[i..i + 4] ...   (then 2- and 1-byte stores for the tail)
/// r1 = ifindex; r2 = 0; call bpf_redirect; exit
/// drop: r0 = XDP_DROP; exit
/// ```
fn redirect_program(ifindex: u32, frame: &[u8]) -> Vec<u8> {
    let mut stores = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let rest = &frame[at..];
        let (code, width, imm) = match rest.len() {
            4.. => (
                ST_W,
                4,
                u32::from_ne_bytes(rest[..4].try_into().unwrap()) as i32,
            ),
            2 | 3 => (ST_H, 2, i32::from(u16::from_ne_bytes([rest[0], rest[1]]))),
            _ => (ST_B, 1, i32::from(rest[0])),
        };
        stores.push(insn(code, 2, 0, at as i16, imm));
        at += width;
    }
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(LDX_W, 3, 1, 4, 0),
        insn(MOV64_REG, 4, 2, 0, 0),
        insn(ADD64_IMM, 4, 0, 0, frame.len() as i32),
    ];
    // The jump skips the stores and the redirect's four instructions.
    p.push(insn(JGT_REG, 4, 3, (stores.len() + 4) as i16, 0));
    p.extend(stores);
    p.extend([
        insn(MOV64_IMM, 1, 0, 0, ifindex as i32),
        insn(MOV64_IMM, 2, 0, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_REDIRECT),
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_IMM, 0, 0, 0, XDP_DROP),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p.concat()
}

/// `bpf(cmd, attr)` with `attr` as the attribute union's bytes.
fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a buffer of the size passed, which the kernel reads and writes
    // within; pointers inside it are valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put_u32(attr: &mut [u8], at: usize, v: u32) {
    attr[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], at: usize, v: u64) {
    attr[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Loads an XDP program of raw instructions `insns`, named `name` (at most 15 bytes).
fn load_xdp(insns: &[u8], name: &[u8]) -> io::Result<OwnedFd> {
    let license = CString::new("GPL").unwrap();
    let mut attr = [0u8; 128];
    // union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, and prog_name.
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, (insns.len() / 8) as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + name.len()].copy_from_slice(name);
    bpf_fd(BPF_PROG_LOAD, &mut attr)
}

/// `bpf(cmd, attr)` for a command that makes a file descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)? as RawFd;
    // SAFETY: the kernel just made this descriptor, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The receiver of the forwarding bench: an XDP program that drops every frame, attached
/// by a BPF link (native mode) to the receiver's veth. A veth with an XDP program receives
/// in NAPI and takes XDP frames, which the fast path's `XDP_REDIRECT` needs, and counts
/// every frame it polls in its `rx_packets`. Dropping at once keeps the receiver's own
/// work small (it runs on the sender's CPU); the link is detached on drop.
pub struct Sink {
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Sink {
    /// Attaches the sink to interface `ifindex` of the calling thread's network namespace.
    pub fn attach(ifindex: u32) -> io::Result<Self> {
        let drop_all = [insn(MOV64_IMM, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)].concat();
        let prog = load_xdp(&drop_all, b"np_bench_sink")?;
        let mut attr = [0u8; 64];
        // union bpf_attr, BPF_LINK_CREATE: prog_fd, target_ifindex, attach_type, flags.
        put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
        put_u32(&mut attr, 4, ifindex);
        put_u32(&mut attr, 8, BPF_XDP);
        let link = bpf_fd(BPF_LINK_CREATE, &mut attr)?;
        Ok(Self {
            _prog: prog,
            _link: link,
        })
    }
}

/// `BPF_LINK_CREATE` and the attach type `BPF_XDP` (include/uapi/linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_XDP: u32 = 37;

/// The redirecting program, loaded, and the frame it sends.
pub struct LiveFrames {
    prog: OwnedFd,
    frame: Vec<u8>,
}

impl LiveFrames {
    /// Loads the program that redirects every frame to the interface `ifindex` of the
    /// calling thread's network namespace.
    pub fn new(ifindex: u32, frame: &[u8]) -> io::Result<Self> {
        Ok(Self {
            prog: load_xdp(&redirect_program(ifindex, frame), b"np_bench_s")?,
            frame: frame.to_vec(),
        })
    }

    /// Sends `count` copies of the frame. (In this mode the kernel reports no verdict: what
    /// reaches the gateway is counted there.)
    pub fn send(&self, count: u32) -> io::Result<()> {
        let mut attr = [0u8; 80];
        // union bpf_attr, BPF_PROG_TEST_RUN: prog_fd, retval, data_size_in, data_size_out,
        // data_in, data_out, repeat, duration, ctx sizes and pointers, flags, cpu,
        // batch_size.
        put_u32(&mut attr, 0, self.prog.as_raw_fd() as u32);
        put_u32(&mut attr, 8, self.frame.len() as u32);
        put_u64(&mut attr, 16, self.frame.as_ptr() as u64);
        put_u32(&mut attr, 32, count);
        put_u32(&mut attr, 64, BPF_F_TEST_XDP_LIVE_FRAMES);
        put_u32(&mut attr, 72, BATCH);
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_writes_the_frame_then_redirects() {
        let frame: Vec<u8> = (1..=7).collect();
        let p = redirect_program(9, &frame);
        let insns: Vec<&[u8]> = p.chunks(8).collect();
        // Bounds check, a word, a half word, a byte, redirect, drop.
        assert_eq!(insns.len(), 5 + 3 + 6);
        assert_eq!(insns[3], [ADD64_IMM, 0x04, 0, 0, 7, 0, 0, 0]);
        assert_eq!(insns[4], [JGT_REG, 0x34, 7, 0, 0, 0, 0, 0], "to the drop");
        assert_eq!(insns[5], [ST_W, 0x02, 0, 0, 1, 2, 3, 4]);
        assert_eq!(insns[6], [ST_H, 0x02, 4, 0, 5, 6, 0, 0]);
        assert_eq!(insns[7], [ST_B, 0x02, 6, 0, 7, 0, 0, 0]);
        assert_eq!(insns[8], [MOV64_IMM, 0x01, 0, 0, 9, 0, 0, 0]);
        assert_eq!(insns[10], [CALL, 0, 0, 0, 23, 0, 0, 0]);
        assert_eq!(insns[12], [MOV64_IMM, 0, 0, 0, 1, 0, 0, 0]);
    }
}
