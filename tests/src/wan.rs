//! A WAN delay line, a test instrument: it sits in the middle of veth links and holds
//! every frame for a one-way delay (plus optional jitter), in order, counting what it
//! carries and drops in each direction.
//!
//! ```text
//!   gw ── ga ═══ wga ┐  wan namespace   ┌ wa0 ═══ a0 ── hostA
//!                    └── relay thread ──┘
//! ```
//!
//! Each link of the plain world (a veth pair `ga`–`a0`) becomes two veth pairs that meet
//! in a namespace of their own, where one thread per link reads every frame arriving on
//! either end through an AF_PACKET socket and writes it out of the other end when its time
//! has come. Why this way:
//!
//! - **No qdisc can do it here.** The kernel has no netem and no fq, so neither a delaying
//!   qdisc nor earliest-departure-time pacing (a BPF program setting `skb->tstamp`) is
//!   available. A userspace relay needs only veth and AF_PACKET.
//! - **The edges see nothing new.** Their interfaces keep their names, addresses, MTU and
//!   settings; netpage attaches to them and its programs run there as in the plain world.
//!   The relay forwards every frame untouched (ARP, neighbour discovery, multicast), so
//!   neighbour resolution happens end to end, and the middle namespace has IPv6 disabled
//!   and no addresses, so that it sends nothing of its own.
//! - **Offloads survive.** The sockets carry a virtio-net header (`PACKET_VNET_HDR`): a
//!   frame with a partial checksum or a GSO frame leaves as it came, as across a plain veth
//!   pair. A VLAN tag the device took out of the frame is put back.
//! - **Timing comes from the kernel.** A frame's release time is its kernel receive time
//!   (`SO_TIMESTAMPNS`), not when the thread got round to reading it, plus the delay; the
//!   thread sleeps until the earliest release time with a timer slack of 1 ns. A frame is
//!   never sent before its time: the delay is a floor, and scheduling latency adds to it.
//! - **Order is kept.** Jitter draws a uniform extra delay in [0, jitter] per frame, but no
//!   frame leaves before the one ahead of it in its direction (a frame whose draw would
//!   overtake waits for it instead), as on a real path without multipath.
//! - **Finite buffer.** Each direction holds at most [`Wan::limit`] frames; a frame that
//!   finds it full is dropped and counted, as a router's queue would.
//! - **Peers move.** The edges' veths have their peers in the delay line's namespace now:
//!   a test that needs something of a peer (GRO on, for netpage's XDP fast path to redirect
//!   into the veth) sets it there ([`DelayLine::ns`]). The ends there keep veth's defaults.
//! - **In-process.** The relay runs on threads of the process that made it, so it cannot
//!   outlive it: dropping the [`DelayLine`] (during a panic too) stops the threads, closes
//!   the sockets and deletes the namespace, which deletes the veths and their peers.

mod counters;
pub mod packet;
mod queue;
mod relay;
pub mod stamp;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result};

pub use counters::{Flow, Tally};

use crate::netns::NetNs;
use counters::FlowCounters;
use packet::PacketSocket;
use queue::DelayQueue;
use relay::Direction;

/// How a delay line delays, the same both ways on every link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wan {
    /// The least time each frame is held.
    pub delay: Duration,
    /// Each frame is held up to this much longer (uniformly drawn), order kept.
    pub jitter: Duration,
    /// The most frames held at once in one direction; more are dropped.
    pub limit: usize,
    /// The start of the jitter's random sequence (runs are repeatable).
    pub seed: u64,
}

impl Wan {
    /// The default queue limit, netem's: about 12 ms of a gigabit link's full-size frames.
    pub const DEFAULT_LIMIT: usize = 1000;

    /// A line that holds every frame for `delay`, with no jitter.
    pub const fn delay(delay: Duration) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            limit: Self::DEFAULT_LIMIT,
            seed: 1,
        }
    }

    /// The same with up to `jitter` more per frame.
    pub const fn jitter(self, jitter: Duration) -> Self {
        Self { jitter, ..self }
    }

    /// The same with at most `limit` frames held per direction.
    pub const fn limit(self, limit: usize) -> Self {
        Self { limit, ..self }
    }
}

/// One link through the delay line: its two ends in the delay line's namespace.
struct Link {
    ends: [String; 2],
    sockets: [Arc<PacketSocket>; 2],
    /// Frames that came in at `ends[i]`.
    counters: [Arc<FlowCounters>; 2],
    thread: Option<JoinHandle<()>>,
}

/// A running delay line; dropping it stops it and deletes its namespace.
pub struct DelayLine {
    wan: Wan,
    stop: Arc<AtomicBool>,
    /// The first error that stopped a link's relay.
    failure: Arc<Mutex<Option<String>>>,
    links: Vec<Link>,
    // Last: the namespace goes once the sockets in it are closed.
    ns: NetNs,
}

impl DelayLine {
    /// A namespace for a delay line: IPv6 off before any interface exists, so that the
    /// ends moved in later send nothing of their own (no router or multicast listener
    /// messages).
    pub fn namespace(name: &str) -> NetNs {
        let ns = NetNs::create(name);
        ns.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6".into(), "1"),
            ("net.ipv6.conf.default.disable_ipv6".into(), "1"),
        ]);
        ns
    }

    /// Starts relaying between each pair of `links`, interfaces of `ns` (made with
    /// [`DelayLine::namespace`]), which it raises, in promiscuous mode, and owns from now on.
    pub fn start(ns: NetNs, links: &[(&str, &str)], wan: Wan) -> Result<Self> {
        let mut line = Self {
            wan,
            stop: Arc::new(AtomicBool::new(false)),
            failure: Arc::new(Mutex::new(None)),
            links: Vec::new(),
            ns,
        };
        for (i, &(a, b)) in links.iter().enumerate() {
            let link = line
                .link(i as u64, [a, b])
                .with_context(|| format!("start the delay line between {a} and {b}"))?;
            line.links.push(link);
        }
        Ok(line)
    }

    /// The delay line's settings.
    pub fn wan(&self) -> Wan {
        self.wan
    }

    /// The namespace the relay's ends live in.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// The error that stopped a link's relay, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    /// The counts of the frames that entered the delay line at `ingress` (one of the ends
    /// given to [`DelayLine::start`]) and left at the other end of its link. Panics if the
    /// relay has stopped on an error, with that error.
    pub fn flow(&self, ingress: &str) -> Flow {
        if let Some(e) = self.failure() {
            panic!("the delay line has stopped: {e}");
        }
        let (link, d) = self
            .links
            .iter()
            .find_map(|l| l.ends.iter().position(|e| e == ingress).map(|d| (l, d)))
            .unwrap_or_else(|| panic!("the delay line has no end {ingress}"));
        let drops = link.sockets[d]
            .kernel_drops()
            .unwrap_or_else(|e| panic!("socket statistics of {ingress}: {e}"));
        link.counters[d].unread(drops);
        link.counters[d].get()
    }

    fn link(&self, index: u64, ends: [&str; 2]) -> Result<Link> {
        for end in ends {
            let out = self
                .ns
                .exec("ip", &["link", "set", end, "up", "promisc", "on"]);
            anyhow::ensure!(
                out.status.success(),
                "raise {end}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let open = |end: &str| {
            self.ns
                .run(|| PacketSocket::open(end))
                .map(Arc::new)
                .with_context(|| format!("open a packet socket on {end} in {}", self.ns.name()))
        };
        let sockets = [open(ends[0])?, open(ends[1])?];
        let counters = [Arc::default(), Arc::default()];
        let w = self.wan;
        let dirs = [0u64, 1].map(|d| Direction {
            socket: sockets[d as usize].clone(),
            queue: DelayQueue::new(w.delay, w.jitter, w.limit, w.seed ^ ((index * 2 + d) << 32)),
            counters: Arc::clone(&counters[d as usize]),
        });
        let (stop, failure) = (self.stop.clone(), self.failure.clone());
        let thread = thread::Builder::new()
            .name(format!("wan-{}", ends[0]))
            .spawn(move || {
                if let Err(e) = relay::run(dirs, &stop) {
                    failure.lock().unwrap().get_or_insert(format!("{e:#}"));
                }
            })
            .context("spawn the relay thread")?;
        Ok(Link {
            ends: ends.map(str::to_owned),
            sockets,
            counters,
            thread: Some(thread),
        })
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for link in &mut self.links {
            if let Some(t) = link.thread.take() {
                let _ = t.join();
            }
        }
        if let Some(e) = self.failure()
            && !thread::panicking()
        {
            eprintln!("the delay line in {} had stopped: {e}", self.ns.name());
        }
    }
}
