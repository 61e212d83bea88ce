//! The datapath's per-CPU outcome counters, summed for reporting.

use aya::maps::{Map, MapError, PerCpuArray};
use netpage_common::counters::Counter;

/// Outcome totals over all CPUs, indexed like [`Counter::ALL`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals(pub [u64; Counter::COUNT as usize]);

impl Totals {
    /// Reads and sums the counter array.
    pub fn read(map: &Map) -> Result<Self, MapError> {
        let array = PerCpuArray::<_, u64>::try_from(map)?;
        let mut t = Totals::default();
        for (slot, c) in t.0.iter_mut().zip(Counter::ALL) {
            *slot = array.get(&(c as u32), 0)?.iter().sum();
        }
        Ok(t)
    }

    /// The total of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// What changed since `before`.
    pub fn since(&self, before: &Totals) -> Totals {
        let mut d = Totals::default();
        for (i, slot) in d.0.iter_mut().enumerate() {
            *slot = self.0[i] - before.0[i];
        }
        d
    }

    /// Named totals, in index order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}
