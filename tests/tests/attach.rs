//! Both programs attached to a veth pair, in native (driver) and skb mode: the kernel accepts
//! the attachment, and frames crossing the pair are translated and counted by the program.
//!
//! Each test has its own network namespace holding one veth pair: `np-p` (physical side)
//! and `np-v` (virtual side). A frame sent on one end arrives on the other, where XDP sees
//! it before anything else does. Frames are sent through an `AF_PACKET` socket, so no
//! routing or neighbour resolution stands between the sender and the program.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use aya::programs::{ProgramError, XdpMode};
use netpage::{counters::Totals, loader::Side};
use netpage_common::counters::Counter;
use netpage_tests::{
    build::{frame4, udp},
    datapath::Datapath,
    netns::NetNs,
};

const PHYSICAL_IF: &str = "np-p";
const VIRTUAL_IF: &str = "np-v";
const FRAMES: u64 = 3;

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// A namespace with the veth pair up, named uniquely for this process and test.
fn veth_netns(what: &str) -> NetNs {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let ns = NetNs::create(&format!("np-attach-{what}-{}-{n}", std::process::id()));
    ns.veth(PHYSICAL_IF, VIRTUAL_IF, None);
    for iface in [PHYSICAL_IF, VIRTUAL_IF] {
        ns.ip(&["link", "set", iface, "up"]);
    }
    ns
}

/// The index of `iface` in the calling thread's network namespace.
fn if_index(iface: &str) -> i32 {
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: `name` is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {iface}");
    index as i32
}

/// Sends `frame` as is out of `iface` through a raw packet socket.
fn send(iface: &str, frame: &[u8]) {
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        raw >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = if_index(iface);
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `to` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "sendto {iface}: {}",
        std::io::Error::last_os_error()
    );
}

/// Whether attaching failed only because the kernel cannot run XDP in this mode here.
fn mode_unsupported(e: &ProgramError) -> bool {
    matches!(e, ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// Waits until the program has counted `want` of `counter` since `before`, or a generous
/// deadline passes (veth delivers asynchronously), and returns what it counted.
fn counted(dp: &Datapath, before: &Totals, counter: Counter, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = dp.counters().since(before).get(counter);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Attaches the virtual program to `np-v` and the physical one to `np-p` in `mode`, then
/// sends mapped traffic each way and checks that each program translated it.
fn attach_and_translate(mode: XdpMode, what: &str) {
    let ns = veth_netns(what);
    let (client, va, ra) = (ip4(203, 0, 113, 5), ip4(10, 0, 0, 10), ip4(192, 0, 2, 10));
    ns.run(|| {
        let mut dp = Datapath::load(1024);
        dp.map(va, ra);
        for (side, iface) in [(Side::Virtual, VIRTUAL_IF), (Side::Physical, PHYSICAL_IF)] {
            match dp.program_mut(side).attach(iface, mode) {
                Ok(_) => {}
                Err(e) if mode_unsupported(&e) => {
                    eprintln!("skipped: the kernel cannot attach XDP in {what} mode to veth: {e}");
                    return;
                }
                Err(e) => panic!("attaching the {side:?} program to {iface} in {what} mode: {e:?}"),
            }
        }
        let identity = |a| a;
        let before = dp.counters();
        for _ in 0..FRAMES {
            // Arrives on np-v: the virtual program rewrites the VA to its RA.
            send(
                PHYSICAL_IF,
                &frame4(&identity, client, va, 17, |s, d| udp(s, d, b"to the VM")),
            );
            // Arrives on np-p: the physical program rewrites the RA to its VA.
            send(
                VIRTUAL_IF,
                &frame4(&identity, ra, client, 17, |s, d| udp(s, d, b"from the VM")),
            );
        }
        assert_eq!(
            counted(&dp, &before, Counter::V4ToReal, FRAMES),
            FRAMES,
            "virtual program in {what} mode"
        );
        assert_eq!(
            counted(&dp, &before, Counter::V4ToVirtual, FRAMES),
            FRAMES,
            "physical program in {what} mode"
        );
        assert_eq!(
            dp.stats(va).packets,
            2 * FRAMES,
            "mapping counters in {what} mode"
        );
    });
}

#[test]
fn native_mode_attaches_and_translates() {
    attach_and_translate(XdpMode::Driver, "native");
}

#[test]
fn skb_mode_attaches_and_translates() {
    attach_and_translate(XdpMode::Skb, "skb");
}
