//! Every migration this machine ran, tallied for the metrics: the count by outcome, and
//! histograms of QEMU's downtime and of the gap a client saw at least. One small JSON file
//! in the state directory, [`FILE`], rewritten as each migration ends (under an exclusive
//! lock, through a temporary file and a rename, so that a scrape never reads half of it);
//! `netpage metrics` and the agent read it at each scrape. It lives as long as the state
//! directory (by default under /run: until a reboot, which Prometheus sees as a reset).

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::fd::AsRawFd,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::MigrateReport;

/// The tally's file in the state directory (not a migration record: those are `<VA>.json`).
pub const FILE: &str = "migrations.tally";

/// The histograms' upper bounds, in seconds: 5 ms to 30 s.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram over [`BUCKETS`]: `counts[i]` observations in bucket `i` alone (above
/// the previous bound, at most this one), the last one above every bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        self.counts.resize(BUCKETS.len() + 1, 0);
        let i = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// (upper bound, observations in that bucket alone), the last bound +Inf.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, b)| (b, self.counts.get(i).copied().unwrap_or(0)))
            .collect()
    }
}

/// The migrations so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Migrations by outcome: `completed`, `rolled_back` (failed, every node back at the
    /// source), `failed` (failed and not rolled back: its record is kept for `--recover`).
    pub outcomes: BTreeMap<String, u64>,
    /// QEMU's downtime of each completed migration.
    pub downtime_seconds: Histogram,
    /// The gap a client saw at least in each completed migration: from the switch or
    /// STOP, whichever came first, to RESUME.
    pub gap_seconds: Histogram,
}

/// A failure to read or write the tally.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    #[error("the migration tally {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the migration tally {} is not readable JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl Tally {
    /// The outcome of a migration as the tally names it.
    pub fn outcome(report: &MigrateReport) -> &'static str {
        match (report.status.as_str(), report.rolled_back) {
            ("completed", _) => "completed",
            (_, true) => "rolled_back",
            _ => "failed",
        }
    }

    /// Counts `report`.
    pub fn add(&mut self, report: &MigrateReport) {
        let outcome = Self::outcome(report);
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        if outcome != "completed" {
            return;
        }
        if let Some(ms) = report.qemu_downtime_ms {
            self.downtime_seconds.observe(ms as f64 / 1e3);
        }
        if let Some(ms) = report.stop_to_resume_ms {
            let lead = report.switch_to_stop_ms.unwrap_or(0.0);
            self.gap_seconds.observe((ms + lead) / 1e3);
        }
    }

    /// The tally in `state_dir` (empty if no migration ended there yet).
    pub fn read(state_dir: &Path) -> Result<Self, TallyError> {
        let path = state_dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| TallyError::Json { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(TallyError::Io { path, source }),
        }
    }

    /// Adds `report` to the tally in `state_dir`, under an exclusive lock against other
    /// migrations ending at the same time.
    pub fn record(state_dir: &Path, report: &MigrateReport) -> Result<(), TallyError> {
        let lock_path = state_dir.join(format!("{FILE}.lock"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TallyError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io(state_dir))?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: a valid descriptor, held until the end of this function.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(&lock_path)(io::Error::last_os_error()));
        }
        let mut tally = Self::read(state_dir)?;
        tally.add(report);
        let path = state_dir.join(FILE);
        let tmp = state_dir.join(format!("{FILE}.new"));
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&serde_json::to_vec(&tally).expect("a tally serializes"))
            .and_then(|()| file.sync_all())
            .map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_their_bucket() {
        let mut h = Histogram::default();
        for s in [0.005, 0.006, 0.3, 100.0] {
            h.observe(s);
        }
        let b = h.buckets();
        assert_eq!(b.len(), BUCKETS.len() + 1);
        assert_eq!(b[0], (0.005, 1), "a bound is inclusive");
        assert_eq!(b[1], (0.01, 1));
        assert_eq!(b[6], (0.5, 1));
        assert_eq!(b[BUCKETS.len()], (f64::INFINITY, 1));
        assert_eq!(h.count, 4);
        assert!((h.sum - 100.311).abs() < 1e-9);
    }
}
