//! The queue of one direction of a delay line: when each frame may leave (its arrival plus
//! the delay plus a random share of the jitter, never before the frame ahead of it), and
//! how many frames it holds at most.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Frames waiting for their release time, oldest first.
pub struct DelayQueue {
    delay: Duration,
    jitter: Duration,
    limit: usize,
    rng: u64,
    /// The release time of the last frame admitted: no later frame leaves before it.
    last: Option<Instant>,
    frames: VecDeque<(Instant, Vec<u8>)>,
}

impl DelayQueue {
    /// A queue that holds each frame for `delay` plus up to `jitter`, at most `limit`
    /// frames at once; `seed` starts the jitter's random sequence.
    pub fn new(delay: Duration, jitter: Duration, limit: usize, seed: u64) -> Self {
        Self {
            delay,
            jitter,
            limit,
            // xorshift has no zero state.
            rng: seed | 1,
            last: None,
            frames: VecDeque::new(),
        }
    }

    /// Queues `frame`, which arrived at `arrival`; gives it back if the queue is full.
    pub fn admit(&mut self, arrival: Instant, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        if self.frames.len() >= self.limit {
            return Err(frame);
        }
        let mut release = arrival + self.delay + self.jitter_sample();
        if let Some(last) = self.last {
            release = release.max(last);
        }
        self.last = Some(release);
        self.frames.push_back((release, frame));
        Ok(())
    }

    /// When the frame at the head may leave, if any waits.
    pub fn next_release(&self) -> Option<Instant> {
        self.frames.front().map(|(t, _)| *t)
    }

    /// The head frame, if its time has come by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        match self.frames.front() {
            Some((t, _)) if *t <= now => self.frames.pop_front().map(|(_, f)| f),
            _ => None,
        }
    }

    /// A uniform draw from [0, jitter] (xorshift64*).
    fn jitter_sample(&mut self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let span = self.jitter.as_nanos() as u64 + 1;
        Duration::from_nanos(r % span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn holds_each_frame_for_the_delay() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(20 * MS, Duration::ZERO, 10, 1);
        q.admit(t0, vec![1]).unwrap();
        q.admit(t0 + MS, vec![2]).unwrap();
        assert_eq!(q.next_release(), Some(t0 + 20 * MS));
        assert_eq!(q.pop_due(t0 + 19 * MS), None);
        assert_eq!(q.pop_due(t0 + 20 * MS), Some(vec![1]));
        assert_eq!(q.pop_due(t0 + 20 * MS), None);
        assert_eq!(q.pop_due(t0 + 21 * MS), Some(vec![2]));
        assert_eq!(q.next_release(), None);
    }

    #[test]
    fn jitter_never_reorders_nor_shortens() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(5 * MS, 10 * MS, 10_000, 42);
        let arrivals: Vec<Instant> = (0..1000u32).map(|i| t0 + MS / 10 * i).collect();
        for (i, &a) in arrivals.iter().enumerate() {
            q.admit(a, (i as u32).to_be_bytes().to_vec()).unwrap();
        }
        let (mut prev, mut i, mut longest) = (t0, 0usize, Duration::ZERO);
        while let Some(t) = q.next_release() {
            assert!(t >= prev, "release times go backwards");
            assert!(
                t >= arrivals[i] + 5 * MS,
                "frame {i} held less than the delay"
            );
            longest = longest.max(t - arrivals[i]);
            let f = q.pop_due(t).unwrap();
            assert_eq!(f, (i as u32).to_be_bytes().to_vec(), "order");
            (prev, i) = (t, i + 1);
        }
        assert_eq!(i, 1000);
        assert!(longest > 5 * MS, "no jitter at all");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let mut q = DelayQueue::new(Duration::ZERO, 3 * MS, 1, 7);
        for _ in 0..10_000 {
            assert!(q.jitter_sample() <= 3 * MS);
        }
    }

    #[test]
    fn a_full_queue_gives_the_frame_back() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(MS, Duration::ZERO, 2, 1);
        q.admit(t0, vec![1]).unwrap();
        q.admit(t0, vec![2]).unwrap();
        assert_eq!(q.admit(t0, vec![3]), Err(vec![3]));
        assert_eq!(q.pop_due(t0 + MS), Some(vec![1]));
        assert_eq!(q.pop_due(t0 + MS), Some(vec![2]));
        assert_eq!(q.pop_due(t0 + MS), None);
    }
}
