//! Small servers to run inside a namespace: UDP echo, TCP echo, and a TCP line responder.
//!
//! Each records the peers it served, so a test can check which source address the VM saw,
//! and stops when its [`Server`] handle is dropped.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use super::{Node, World};

/// How often a blocked server thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// A line responder's answer to one line (without its newline) from a peer.
pub type Reply = fn(&str, SocketAddr) -> String;

/// State shared by a server and its handle.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn saw(&self, peer: SocketAddr) {
        let mut peers = self.peers.lock().unwrap();
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
}

/// A running server; dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(addr: SocketAddr, body: impl FnOnce(Arc<Shared>) + Send + 'static) -> Self {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = Some(thread::spawn(move || body(s)));
        Self {
            addr,
            shared,
            thread,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every distinct peer (address and port) served so far, in order of first contact.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.peers.lock().unwrap().clone()
    }

    /// Every distinct peer address served so far.
    pub fn peer_ips(&self) -> Vec<std::net::IpAddr> {
        let mut ips: Vec<_> = self.peers().iter().map(|p| p.ip()).collect();
        ips.sort();
        ips.dedup();
        ips
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes every datagram on `socket` back to its sender.
pub fn udp_echo(socket: UdpSocket) -> Server {
    let addr = socket.local_addr().expect("UDP local address");
    socket.set_read_timeout(Some(POLL)).unwrap();
    Server::spawn(addr, move |shared| {
        let mut buf = [0u8; 65536];
        while !shared.stopped() {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                shared.saw(peer);
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    })
}

/// Echoes every byte of every connection accepted on `listener`, a thread per connection.
pub fn tcp_echo(listener: TcpListener) -> Server {
    serve_tcp(listener, echo)
}

/// Answers each line received on a connection with `reply(line, peer)` and a newline.
pub fn tcp_lines(listener: TcpListener, reply: Reply) -> Server {
    serve_tcp(listener, move |stream, shared| lines(stream, shared, reply))
}

fn serve_tcp(
    listener: TcpListener,
    handle: impl Fn(TcpStream, &Shared) + Send + Sync + Copy + 'static,
) -> Server {
    let addr = listener.local_addr().expect("TCP local address");
    listener.set_nonblocking(true).unwrap();
    Server::spawn(addr, move |shared| {
        while !shared.stopped() {
            match listener.accept() {
                Ok((stream, peer)) => {
                    shared.saw(peer);
                    let s = shared.clone();
                    thread::spawn(move || handle(stream, &s));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL / 5),
                Err(e) => panic!("accept on {addr}: {e}"),
            }
        }
    })
}

/// Reads what is available, waking up now and then to look at the stop flag. `None` once
/// the peer has closed, the connection failed or the server stopped.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], shared: &Shared) -> Option<usize> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(POLL)).ok()?;
    while !shared.stopped() {
        match stream.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
    None
}

fn echo(mut stream: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 65536];
    while let Some(n) = read_some(&mut stream, &mut buf, shared) {
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn lines(mut stream: TcpStream, shared: &Shared, reply: Reply) {
    let peer = stream.peer_addr().expect("peer address");
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = read_some(&mut stream, &mut buf, shared) {
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let answer = reply(&text, peer) + "\n";
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

impl World {
    /// A UDP echo server bound to `addr` inside `node`.
    pub fn udp_echo(&self, node: Node, addr: SocketAddr) -> Server {
        let socket = self.in_ns(node, || UdpSocket::bind(addr));
        udp_echo(socket.unwrap_or_else(|e| panic!("bind UDP {addr} in {node:?}: {e}")))
    }

    /// A TCP echo server listening on `addr` inside `node`.
    pub fn tcp_echo(&self, node: Node, addr: SocketAddr) -> Server {
        tcp_echo(self.tcp_listener(node, addr))
    }

    /// A TCP line responder listening on `addr` inside `node`.
    pub fn tcp_lines(&self, node: Node, addr: SocketAddr, reply: Reply) -> Server {
        tcp_lines(self.tcp_listener(node, addr), reply)
    }

    /// A UDP socket bound to `addr` inside `node`.
    pub fn udp_socket(&self, node: Node, addr: SocketAddr) -> UdpSocket {
        self.in_ns(node, || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind UDP {addr} in {node:?}: {e}"))
    }

    /// A TCP connection from inside `node` to `dst`, failing after `timeout`.
    pub fn tcp_connect(
        &self,
        node: Node,
        dst: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<TcpStream> {
        self.in_ns(node, || TcpStream::connect_timeout(&dst, timeout))
    }

    /// A TCP listener bound to `addr` inside `node`.
    pub fn tcp_listener(&self, node: Node, addr: SocketAddr) -> TcpListener {
        self.in_ns(node, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listen TCP {addr} in {node:?}: {e}"))
    }
}
