//! Summaries of samples: median and nearest-rank percentiles.

/// Samples sorted once, summarised by rank.
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// Sorts `samples`, which must not be empty or hold NaN.
    pub fn new(mut samples: Vec<f64>) -> Self {
        assert!(!samples.is_empty(), "no samples to summarise");
        samples.sort_by(f64::total_cmp);
        Self(samples)
    }

    /// The nearest-rank percentile `p` (0 < p <= 100): the smallest sample with at least
    /// `p` percent of the samples at or below it.
    pub fn percentile(&self, p: f64) -> f64 {
        let rank = (p / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let n = self.0.len();
        if n % 2 == 1 {
            self.0[n / 2]
        } else {
            (self.0[n / 2 - 1] + self.0[n / 2]) / 2.0
        }
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.0[0]
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.0[self.0.len() - 1]
    }

    /// How many samples there are.
    pub fn count(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Sorted;

    #[test]
    fn ranks() {
        let s = Sorted::new((1..=100).rev().map(f64::from).collect());
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(99.0), 99.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(s.max(), 100.0);
        assert_eq!(s.min(), 1.0);
        assert_eq!(s.median(), 50.5);
        assert_eq!(Sorted::new(vec![3.0, 1.0, 2.0]).median(), 2.0);
    }
}
