//! Raw bpf(2) calls: loading a bare `XDP_PASS` program (the floor every per-packet cost is
//! compared with) and BPF_PROG_TEST_RUN timed by the calling thread's CPU clock.
//!
//! The floor is not part of netpage's object, so it is loaded here from two instructions.
//! Every program, the floor and netpage's, is run through the same [`test_run`], so that
//! they differ only in the program.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

// Commands and types from include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_TEST_RUN: libc::c_int = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// `r0 = 2 (XDP_PASS); exit`, as `struct bpf_insn` words: opcode in the low byte,
/// registers in the next, the 32-bit immediate in the high half.
const XDP_PASS_PROGRAM: [u64; 2] = [
    0x0000_0002_0000_00b7, // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 2
    0x0000_0000_0000_0095, // BPF_JMP | BPF_EXIT
];

/// `r0 = -1 (TC_ACT_UNSPEC: the next program, or pass); exit`.
const TC_NEXT_PROGRAM: [u64; 2] = [
    0xffff_ffff_0000_00b7, // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm -1
    0x0000_0000_0000_0095, // BPF_JMP | BPF_EXIT
];

/// The leading fields of `union bpf_attr` used by BPF_PROG_LOAD; the kernel reads the rest
/// as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `test` member of `union bpf_attr`, used by BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

fn bpf<A>(cmd: libc::c_int, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a `repr(C)` prefix of `union bpf_attr` of the size passed, and
    // every pointer in it refers to memory that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the two-instruction XDP program that passes every packet.
pub fn load_xdp_pass() -> io::Result<OwnedFd> {
    load_bare(BPF_PROG_TYPE_XDP, &XDP_PASS_PROGRAM, b"xdp_pass")
}

/// Loads the two-instruction tc program that lets every packet go on.
pub fn load_tc_next() -> io::Result<OwnedFd> {
    load_bare(BPF_PROG_TYPE_SCHED_CLS, &TC_NEXT_PROGRAM, b"tc_next")
}

fn load_bare(prog_type: u32, insns: &[u64], program: &[u8]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..program.len()].copy_from_slice(program);
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// One BPF_PROG_TEST_RUN call.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// The program's verdict on the last run.
    pub verdict: u32,
    /// CPU time of the calling thread over the whole call.
    pub cpu: Duration,
    /// The kernel's own time per run, in whole nanoseconds: the runs alone, without the
    /// system call and the copies of the packet in and out.
    pub kernel_ns: u32,
}

/// Runs `prog` `repeat` times on `data`, timing the call with the thread's CPU clock.
///
/// The kernel also reports a time per run, but rounded down to whole nanoseconds, which is
/// too coarse for a program that takes a few; the thread's CPU time over a call of many
/// runs is exact to well under a nanosecond per run, includes the same test-run loop, and,
/// unlike a wall clock, leaves out the time other tasks of a busy machine run instead.
pub fn test_run(prog: BorrowedFd, data: &[u8], repeat: u32) -> io::Result<Run> {
    let mut out = vec![0u8; data.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    let start = thread_cpu_time();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    let cpu = thread_cpu_time().saturating_sub(start);
    Ok(Run {
        verdict: attr.retval,
        cpu,
        kernel_ns: attr.duration,
    })
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
