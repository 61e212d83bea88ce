//! Bulk TCP through the world, every byte checked: a stream sent to an echo server and
//! read back, and the checksum errors a node's stack counted meanwhile.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::world::{Node, World};

/// How long a transfer may stand still before it counts as stalled.
pub const STALL: Duration = Duration::from_secs(60);

/// The TCP checksum errors `node`'s stack has counted (`InCsumErrors` of /proc/net/snmp,
/// which IPv4 and IPv6 share).
pub fn tcp_csum_errors(world: &World, node: Node) -> u64 {
    let snmp = world.in_ns(node, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp").expect("read /proc/net/snmp")
    });
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "InCsumErrors")
        .expect("InCsumErrors in /proc/net/snmp");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Byte `i` of the stream: a pattern in which a lost, repeated or corrupted byte shows.
fn pattern(i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (i >> 12) as u8
}

/// Sends `bytes` bytes from the client to the echo server at `server` and reads them
/// back as they come, checking every byte; the time it took, or what went wrong.
pub fn echo_bulk(world: &World, server: SocketAddr, bytes: usize) -> Result<Duration, String> {
    let mut stream = world
        .tcp_connect(Node::Client, server, Duration::from_secs(3))
        .map_err(|e| format!("connect to {server}: {e}"))?;
    stream.set_read_timeout(Some(STALL)).unwrap();
    stream.set_write_timeout(Some(STALL)).unwrap();
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let sender = thread::spawn(move || -> Result<(), String> {
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0;
        while sent < bytes {
            let n = buf.len().min(bytes - sent);
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + k);
            }
            writer
                .write_all(&buf[..n])
                .map_err(|e| format!("sending at byte {sent}: {e}"))?;
            sent += n;
        }
        Ok(())
    });
    let result = receive(&mut stream, bytes).map(|()| started.elapsed());
    let _ = stream.shutdown(std::net::Shutdown::Both);
    match sender.join().expect("the sender") {
        Err(e) if result.is_ok() => Err(e),
        _ => result,
    }
}

/// Reads `bytes` bytes of the pattern from `stream`.
fn receive(stream: &mut TcpStream, bytes: usize) -> Result<(), String> {
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0;
    while got < bytes {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(format!("the connection closed after {got} bytes")),
            Ok(n) => n.min(bytes - got),
            Err(e) => return Err(format!("receiving after {got} of {bytes} bytes: {e}")),
        };
        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(got + k)) {
            return Err(format!("byte {} came back corrupted", got + k));
        }
        got += n;
    }
    Ok(())
}
