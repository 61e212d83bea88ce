//! Part 7, continued: how fast one TCP connection runs through the WAN delay line, against
//! the plain link, so that tests over the WAN world (a migration stream, say) know the
//! rate they can expect.
//!
//! The gateway writes to host A's uplink address for a while over one connection; host A
//! reads and counts. The rate is what host A read over the whole run, slow start included.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    bench::{Config, note, report::Row, wan::DELAY},
    wan::Wan,
    world::{Node, Options, World},
};

/// Host A's address on its uplink.
const HOST_A: &str = "198.18.3.2:7001";

/// The variant names.
pub const PLAIN: &str = "plain link";
pub const LINE: &str = "delay line";

/// One connection over the plain link and one through the delay line, `cfg.wan_time`
/// each: Mbit/s read by host A, the delay line's against the plain link's.
pub fn run(cfg: &Config) -> Vec<Row> {
    note("wan: one TCP connection over the plain link");
    let plain = mbps(&World::new(), cfg.wan_time);
    note("wan: one TCP connection through the delay line");
    let world = World::with(Options {
        wan: Some(Wan::delay(DELAY)),
        ..Options::default()
    });
    let line = mbps(&world, cfg.wan_time);
    let flow = world.wan_flow(Node::Gw, Node::HostA);
    note(format_args!(
        "wan: TCP {plain:.0} Mbit/s over the plain link, {line:.0} through the delay line \
         (dropped {}, unread {})",
        flow.dropped.frames, flow.unread
    ));
    let params = |dropped: u64, unread: u64| {
        json!({
            "seconds": cfg.wan_time.as_secs_f64(),
            "delay_ms": DELAY.as_millis() as u64,
            "dropped": dropped,
            "unread": unread,
        })
    };
    vec![
        Row::new("wan_tcp", PLAIN, params(0, 0), plain, "Mbit/s"),
        Row::new(
            "wan_tcp",
            LINE,
            params(flow.dropped.frames, flow.unread),
            line,
            "Mbit/s",
        )
        .against(PLAIN, plain),
    ]
}

/// Mbit/s that host A reads from one connection the gateway writes to for `time`.
fn mbps(world: &World, time: Duration) -> f64 {
    let addr: SocketAddr = HOST_A.parse().unwrap();
    let listener = world
        .in_ns(Node::HostA, || TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("listen on {addr} at host A: {e}"));
    let reader = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept the gateway's connection");
        let start = Instant::now();
        let (mut total, mut buf) = (0u64, vec![0u8; 1 << 16]);
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read at host A: {e}"),
            }
        }
        total as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
    });
    let mut conn = world
        .tcp_connect(Node::Gw, addr, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let chunk = vec![0x5au8; 1 << 16];
    let start = Instant::now();
    while start.elapsed() < time {
        conn.write_all(&chunk).expect("write to host A");
    }
    drop(conn);
    reader.join().expect("the reader")
}
