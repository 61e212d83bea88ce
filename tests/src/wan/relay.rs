//! The loop that carries one link's frames both ways: it waits for a frame or for the next
//! release time, whichever comes first, stamps what arrived with the kernel's receive time,
//! queues it, and sends every frame whose time has come, in order.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    counters::FlowCounters,
    packet::{PacketSocket, Received, VNET_HDR, reinsert_vlan},
    queue::DelayQueue,
};

/// The longest the loop sleeps before it looks at its stop flag.
const POLL_CAP: Duration = Duration::from_millis(20);
/// Frames read from one socket in a row before due frames are sent again.
const BATCH: usize = 64;
/// Room for a whole GSO frame and its virtio-net header.
const BUF: usize = VNET_HDR + 65_536 + 4;

/// One direction: where frames come in, what holds them, and what counts them. Frames
/// leave through the other direction's socket.
pub struct Direction {
    pub socket: Arc<PacketSocket>,
    pub queue: DelayQueue,
    pub counters: Arc<FlowCounters>,
}

/// Relays between the two sockets of a link until `stop` is set.
pub fn run(mut dirs: [Direction; 2], stop: &AtomicBool) -> Result<()> {
    // Sleeps end within a microsecond of their deadline rather than the default 50 us.
    // SAFETY: prctl with an integer argument changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut buf = vec![0u8; BUF];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for d in 0..2 {
            let (this, other) = pair(&mut dirs, d);
            while let Some(frame) = this.queue.pop_due(now) {
                let eth = &frame[VNET_HDR..];
                match other.socket.send(&frame) {
                    Ok(()) => this.counters.carried(eth),
                    Err(e) if transient(&e) => this.counters.dropped(eth),
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("send on {}", other.socket.ifname()));
                    }
                }
            }
        }
        let next = dirs.iter().filter_map(|d| d.queue.next_release()).min();
        let timeout = next.map_or(POLL_CAP, |t| t.saturating_duration_since(Instant::now()));
        let ready = wait(&dirs, timeout.min(POLL_CAP))?;
        for (d, readable) in ready.into_iter().enumerate() {
            if readable {
                receive(&mut dirs[d], &mut buf)?;
            }
        }
    }
    Ok(())
}

/// Direction `d` mutably and the other one.
fn pair(dirs: &mut [Direction; 2], d: usize) -> (&mut Direction, &Direction) {
    let [a, b] = dirs;
    if d == 0 { (a, b) } else { (b, a) }
}

/// Reads up to [`BATCH`] waiting frames of `dir` into its queue.
fn receive(dir: &mut Direction, buf: &mut [u8]) -> Result<()> {
    for _ in 0..BATCH {
        let got = dir
            .socket
            .recv(buf)
            .with_context(|| format!("receive on {}", dir.socket.ifname()))?;
        let Some(r) = got else {
            return Ok(());
        };
        let arrival = Instant::now()
            .checked_sub(r.age)
            .unwrap_or_else(Instant::now);
        let frame = frame_of(buf, &r);
        if r.truncated || frame.len() < VNET_HDR + 14 {
            dir.counters.dropped(&frame[VNET_HDR.min(frame.len())..]);
            continue;
        }
        if let Err(frame) = dir.queue.admit(arrival, frame) {
            dir.counters.dropped(&frame[VNET_HDR..]);
        }
    }
    Ok(())
}

/// The frame as it is to be sent: what was received, with its VLAN tag back in place.
fn frame_of(buf: &[u8], r: &Received) -> Vec<u8> {
    let got = &buf[..r.len];
    match r.vlan {
        Some(tag) if got.len() >= VNET_HDR + 12 => reinsert_vlan(got, tag),
        _ => got.to_vec(),
    }
}

/// Waits up to `timeout` for frames on either socket; says which have some.
fn wait(dirs: &[Direction; 2], timeout: Duration) -> Result<[bool; 2]> {
    let mut fds = dirs.each_ref().map(|d| libc::pollfd {
        fd: d.socket.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` holds two pollfds; `ts` is a valid timespec; no signal mask.
    let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &raw const ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; 2]);
        }
        return Err(e).context("poll the delay line's sockets");
    }
    Ok(fds.map(|f| f.revents != 0))
}

/// Errors of one frame that the relay counts as a drop and survives: a full device queue,
/// a frame the device refuses (too long, a malformed offload header), an interface down.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EAGAIN
                | libc::ENOBUFS
                | libc::EMSGSIZE
                | libc::EINVAL
                | libc::ENETDOWN
                | libc::ENXIO
        )
    )
}
