//! Part 7: the accuracy of the WAN delay line, the test instrument of [`crate::wan`].
//!
//! A UDP stream from the gateway to host A's uplink address (no netpage: the path is the
//! link alone) at each rate, once over the plain world's link and once through the delay
//! line set to [`DELAY`]. Each datagram carries its send time (realtime clock, read just
//! before `send`); the receiver takes the kernel's receive time (`SO_TIMESTAMPNS`), so the
//! receiver's own scheduling is not counted. The one-way time over the plain link is the
//! path's own latency; the delay line's added delay is each datagram's one-way time through
//! it minus the plain link's median at that rate, compared with the configured delay.
//! Then one TCP connection's rate ([`wan_tcp`]).

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, stats::Sorted, wan_tcp},
    wan::{Wan, stamp},
    world::{Node, Options, World},
};

/// The delay the line is set to.
pub const DELAY: Duration = Duration::from_millis(20);
/// Host A's address on its uplink, the gateway's on the other end.
const HOST_A: &str = "198.18.3.2:7000";
const GW: &str = "198.18.3.1:0";

/// The variant names.
pub const PLAIN: &str = "plain link";
pub const LINE: &str = "delay line";
pub const CONFIGURED: &str = "configured";

/// What one stream saw: one-way times in ms, and how many datagrams were sent.
struct Stream {
    one_way_ms: Vec<f64>,
    sent: u64,
}

/// Streams at every rate of `cfg.wan_rates` over the plain link and through the delay line,
/// then one TCP connection over each.
pub fn run(cfg: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    for &pps in &cfg.wan_rates {
        note(format_args!("wan: {pps} packets/s over the plain link"));
        let plain = stream(&World::new(), pps, cfg.wan_time);
        note(format_args!("wan: {pps} packets/s through the delay line"));
        let world = World::with(Options {
            wan: Some(Wan::delay(DELAY)),
            ..Options::default()
        });
        let line = stream(&world, pps, cfg.wan_time);
        let flow = world.wan_flow(Node::Gw, Node::HostA);
        note(format_args!(
            "wan: {pps} packets/s: plain link {} of {} received, delay line {} of {} \
             (dropped {}, unread {})",
            plain.one_way_ms.len(),
            plain.sent,
            line.one_way_ms.len(),
            line.sent,
            flow.dropped.frames,
            flow.unread
        ));
        rows.extend(rows_of(pps, &plain, &line));
    }
    rows.extend(wan_tcp::run(cfg));
    rows
}

/// p50 and p99 of the one-way time of each variant, and of the delay line's added delay
/// against the configured one.
fn rows_of(pps: u32, plain: &Stream, line: &Stream) -> Vec<Row> {
    let mut rows = Vec::new();
    let params = |stat: &str, s: &Stream| {
        json!({
            "pps": pps,
            "stat": stat,
            "sent": s.sent,
            "received": s.one_way_ms.len(),
        })
    };
    let (Some(p), Some(l)) = (sorted(&plain.one_way_ms), sorted(&line.one_way_ms)) else {
        note(format_args!("wan: {pps} packets/s: no datagram arrived"));
        return rows;
    };
    let base = p.median();
    let added = Sorted::new(line.one_way_ms.iter().map(|v| v - base).collect());
    let configured = DELAY.as_secs_f64() * 1e3;
    for (stat, pct) in [("p50", 50.0), ("p99", 99.0)] {
        let n = |s: &Sorted| s.count();
        rows.push(
            Row::new(
                "wan_one_way",
                PLAIN,
                params(stat, plain),
                p.percentile(pct),
                "ms",
            )
            .repeats(n(&p)),
        );
        rows.push(
            Row::new(
                "wan_one_way",
                LINE,
                params(stat, line),
                l.percentile(pct),
                "ms",
            )
            .repeats(n(&l)),
        );
        rows.push(Row::new(
            "wan_added_delay",
            CONFIGURED,
            json!({"pps": pps, "stat": stat}),
            configured,
            "ms",
        ));
        rows.push(
            Row::new(
                "wan_added_delay",
                LINE,
                params(stat, line),
                added.percentile(pct),
                "ms",
            )
            .against(format!("{CONFIGURED}, pps={pps}, stat={stat}"), configured)
            .repeats(n(&added)),
        );
    }
    rows
}

fn sorted(samples: &[f64]) -> Option<Sorted> {
    (!samples.is_empty()).then(|| Sorted::new(samples.to_vec()))
}

/// Sends `pps` datagrams a second for `time` from the gateway to host A and returns their
/// one-way times.
fn stream(world: &World, pps: u32, time: Duration) -> Stream {
    let dst: SocketAddr = HOST_A.parse().unwrap();
    let rx = world.udp_socket(Node::HostA, dst);
    stamp::enable(rx.as_raw_fd()).expect("receive timestamps");
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let tx = world.udp_socket(Node::Gw, GW.parse().unwrap());
    // Resolve the neighbours first: the first datagram would otherwise wait for ARP.
    assert!(
        world.ping(Node::Gw, dst.ip()),
        "host A answers no ping from the gateway"
    );
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        thread::spawn(move || receive(&rx, &done))
    };
    let sent = send(&tx, dst, pps, time);
    // Late datagrams: the delay and then some.
    thread::sleep(DELAY * 2 + Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let one_way_ms = receiver.join().expect("the receiver");
    Stream { one_way_ms, sent }
}

/// Sends datagrams holding their send time (ns since the epoch) at `pps` for `time`;
/// returns how many it sent.
fn send(tx: &UdpSocket, dst: SocketAddr, pps: u32, time: Duration) -> u64 {
    // SAFETY: prctl with an integer argument changes only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let interval = Duration::from_secs(1) / pps;
    let start = Instant::now();
    let (mut tries, mut sent) = (0u32, 0u64);
    while start.elapsed() < time {
        thread::sleep((interval * tries).saturating_sub(start.elapsed()));
        tries += 1;
        let now = stamp::realtime().as_nanos() as u64;
        if tx.send_to(&now.to_be_bytes(), dst).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// One-way times in ms of every datagram received until `done`.
fn receive(rx: &UdpSocket, done: &AtomicBool) -> Vec<f64> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while !done.load(Ordering::Relaxed) {
        let Ok(Some(m)) = stamp::recv(rx.as_raw_fd(), &mut buf, 0) else {
            continue;
        };
        let (Some(at), Ok(bytes)) = (m.received_at, buf[..m.len.min(8)].try_into()) else {
            continue;
        };
        let sent = Duration::from_nanos(u64::from_be_bytes(bytes));
        out.push(at.saturating_sub(sent).as_secs_f64() * 1e3);
    }
    out
}
