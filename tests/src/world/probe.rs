//! A UDP prober: a sequence-numbered probe every interval to an echo server, and a report
//! of which probes were answered and the longest silence between answers.
//!
//! [`Prober::spawn`] runs it on threads while the caller does something mid-stream (such as
//! moving a VM), then [`ProbeHandle::join`] gives the report, or [`ProbeHandle::stop`] ends
//! the run early and gives it.

use std::{
    fmt,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Marks a datagram as one of ours, before its big-endian sequence number.
const MAGIC: &[u8; 8] = b"NPPROBE1";

/// What a probe run saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Probes sent.
    pub sent: u64,
    /// Distinct probes answered by the target.
    pub received: u64,
    /// Probes never answered (`sent - received`).
    pub lost: u64,
    /// Sequence numbers never answered, in order.
    pub lost_seqs: Vec<u64>,
    /// The longest run of consecutive unanswered probes.
    pub longest_loss_run: u64,
    /// The longest time between two consecutive answers (zero with fewer than two).
    pub largest_gap: Duration,
    /// Answers to a probe already answered.
    pub duplicates: u64,
    /// Datagrams from anyone but the target, or not answering our probes.
    pub strangers: u64,
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} probes sent, {} answered, {} lost (longest run {}), largest gap {} ms",
            self.sent,
            self.received,
            self.lost,
            self.longest_loss_run,
            self.largest_gap.as_millis()
        )
    }
}

/// Sends probes and collects answers; see [`Prober::run`] and [`Prober::spawn`].
pub struct Prober;

/// A prober running on its own threads.
pub struct ProbeHandle {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeReport>,
}

impl ProbeHandle {
    /// Probes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops sending now, then waits for late answers and returns the report.
    pub fn stop(self) -> ProbeReport {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the run to end and returns its report.
    pub fn join(self) -> ProbeReport {
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// One answer: its sequence number and when it arrived.
pub type Answer = (u64, Instant);

impl Prober {
    /// Sends a probe from `socket` to `target` every `interval` for `duration`, waits a
    /// little for late answers, and reports.
    pub fn run(
        socket: UdpSocket,
        target: SocketAddr,
        interval: Duration,
        duration: Duration,
    ) -> ProbeReport {
        Self::spawn(socket, target, interval, duration).join()
    }

    /// Like [`Prober::run`], on a thread: returns at once. `duration` is then the longest
    /// the run lasts, as [`ProbeHandle::stop`] can end it sooner.
    pub fn spawn(
        socket: UdpSocket,
        target: SocketAddr,
        interval: Duration,
        duration: Duration,
    ) -> ProbeHandle {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            interval,
            duration,
            sent: sent.clone(),
            stop: stop.clone(),
        };
        let thread = thread::spawn(move || probe(socket, target, &run));
        ProbeHandle { sent, stop, thread }
    }
}

/// How a run sends, and what it shares with its handle.
struct Run {
    interval: Duration,
    duration: Duration,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn probe(socket: UdpSocket, target: SocketAddr, run: &Run) -> ProbeReport {
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let socket = socket.try_clone().expect("clone the probe socket");
        let done = done.clone();
        thread::spawn(move || receive(&socket, target, &done))
    };
    send(&socket, target, run);
    thread::sleep((run.interval * 2).max(Duration::from_millis(300)));
    done.store(true, Ordering::Relaxed);
    let (answers, strangers) = receiver.join().expect("probe receiver");
    ProbeReport::from_answers(run.sent.load(Ordering::Relaxed), &answers, strangers)
}

fn send(socket: &UdpSocket, target: SocketAddr, run: &Run) {
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < run.duration && !run.stop.load(Ordering::Relaxed) {
        let mut probe = MAGIC.to_vec();
        probe.extend(seq.to_be_bytes());
        // A send can fail while a route is missing; the probe then counts as lost.
        let _ = socket.send_to(&probe, target);
        seq += 1;
        run.sent.store(seq, Ordering::Relaxed);
        let next = run.interval * seq as u32;
        thread::sleep(next.saturating_sub(start.elapsed()));
    }
}

fn receive(socket: &UdpSocket, target: SocketAddr, done: &AtomicBool) -> (Vec<Answer>, u64) {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (mut answers, mut strangers) = (Vec::new(), 0);
    let mut buf = [0u8; 64];
    while !done.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        match parse(&buf[..n]) {
            Some(seq) if from == target => answers.push((seq, Instant::now())),
            _ => strangers += 1,
        }
    }
    (answers, strangers)
}

fn parse(datagram: &[u8]) -> Option<u64> {
    let seq = datagram.strip_prefix(MAGIC.as_slice())?;
    Some(u64::from_be_bytes(seq.try_into().ok()?))
}

impl ProbeReport {
    /// The report of `sent` probes numbered from 0, given the answers in the order they
    /// arrived and how many datagrams came from anyone else.
    pub fn from_answers(sent: u64, answers: &[Answer], strangers: u64) -> Self {
        let mut got = vec![false; sent as usize];
        let mut duplicates = 0;
        for &(seq, _) in answers {
            match got.get_mut(seq as usize) {
                Some(g) if !*g => *g = true,
                _ => duplicates += 1,
            }
        }
        let lost_seqs: Vec<u64> = (0..sent).filter(|&s| !got[s as usize]).collect();
        let received = sent - lost_seqs.len() as u64;
        ProbeReport {
            sent,
            received,
            lost: lost_seqs.len() as u64,
            longest_loss_run: longest_run(&lost_seqs),
            lost_seqs,
            largest_gap: largest_gap(answers),
            duplicates,
            strangers,
        }
    }
}

fn longest_run(seqs: &[u64]) -> u64 {
    let (mut best, mut run) = (0, 0);
    for (i, &s) in seqs.iter().enumerate() {
        run = if i > 0 && seqs[i - 1] + 1 == s {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

fn largest_gap(answers: &[Answer]) -> Duration {
    answers
        .windows(2)
        .map(|w| w[1].1.saturating_duration_since(w[0].1))
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_losses() {
        assert_eq!(longest_run(&[]), 0);
        assert_eq!(longest_run(&[3]), 1);
        assert_eq!(longest_run(&[1, 2, 3, 7, 8]), 3);
    }

    #[test]
    fn report_counts_losses_and_duplicates() {
        let t = Instant::now();
        let answers = [(0, t), (2, t + Duration::from_millis(30)), (2, t)];
        let r = ProbeReport::from_answers(4, &answers, 1);
        assert_eq!((r.sent, r.received, r.lost), (4, 2, 2));
        assert_eq!(r.lost_seqs, vec![1, 3]);
        assert_eq!((r.duplicates, r.strangers), (1, 1));
        assert_eq!(r.largest_gap, Duration::from_millis(30));
    }

    #[test]
    fn parses_only_probes() {
        let mut p = MAGIC.to_vec();
        p.extend(7u64.to_be_bytes());
        assert_eq!(parse(&p), Some(7));
        assert_eq!(parse(b"hello"), None);
    }
}
